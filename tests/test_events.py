"""S3 event notifications: parsing every accepted shape, and `serve` acting on them within seconds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures.process import TOKEN, ServeProcess
from fixtures.receiver import Receiver
from fixtures.samples import png
from fixtures.worker import MakeSetup, create_batch, write_config
from structlog.testing import capture_logs

from ocrbatch.batches.events import (
    NotAnEvent,
    SnsConfirmation,
    Upload,
    parse_notification,
)
from ocrbatch.batches.store import batch_store_in
from ocrbatch.clova.client import open_ocr_session
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.emulator.faults import ScriptedFault
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.webhooks.delivery import open_webhook_session
from ocrbatch.worker.worker import Worker


def record(bucket: str, key: str, event: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10}}}


@pytest.mark.parametrize(
    ("body", "uploads"),
    [
        ({"Records": [record("scans", "in/a.png")]}, [Upload("scans", "in/a.png")]),
        (
            {"Records": [record("scans", "in/%EC%98%81%EC%88%98%EC%A6%9D+1.png")]},
            [Upload("scans", "in/영수증 1.png")],
        ),
        (
            {
                "EventName": "s3:ObjectCreated:Put",
                "Key": "scans/in/b.png",
                "Records": [record("scans", "in/b.png")],
            },
            [Upload("scans", "in/b.png")],
        ),
        ({"Records": [record("scans", "in/c.png", "ObjectRemoved:Delete")]}, []),
        ({"Event": "s3:TestEvent", "Bucket": "scans"}, []),
        (
            {"Type": "Notification", "Message": json.dumps({"Records": [record("scans", "x.pdf")]})},
            [Upload("scans", "x.pdf")],
        ),
        ({"Type": "Notification", "Message": json.dumps({"Event": "s3:TestEvent"})}, []),
    ],
    ids=["aws", "url-encoded key", "minio", "deletion", "test event", "sns", "sns test event"],
)
def test_uploads_are_read_from_every_shape(body: dict[str, Any], uploads: list[Upload]) -> None:
    """S3, MinIO and SNS-wrapped events give their created objects with decoded keys; others give none."""
    assert parse_notification(body) == uploads


def test_sns_confirmation_and_bad_bodies() -> None:
    """A SubscriptionConfirmation asks for its URL to be fetched; anything else is refused with a reason."""
    confirmation = {"Type": "SubscriptionConfirmation", "TopicArn": "arn:t", "SubscribeURL": "https://sns/x"}
    assert parse_notification(confirmation) == SnsConfirmation("arn:t", "https://sns/x")
    bad_bodies: list[Any] = [[], {"hello": 1}, {"Type": "Notification", "Message": "not json"}]
    for bad in bad_bodies:
        with pytest.raises(NotAnEvent):
            parse_notification(bad)


async def test_an_upload_event_gets_its_result_without_waiting_for_a_pass(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """With the next pass an hour away, an event makes serve recognise the upload at once (the
    event, not a pass, made its result: the one pass after the batch was created found nothing);
    unknown prefixes are ignored. Without an event, the periodic reconcile pass still picks an
    upload up."""
    receiver = Receiver()
    await receiver.start()
    setup = await make_worker_setup()
    flush = {"idle_flush_s": 0.05}
    events_config = write_config(setup, tmp_path / "events.toml", webhook=flush, poll_interval_s=3600.0)
    polling_config = write_config(setup, tmp_path / "polling.toml", webhook=flush, poll_interval_s=0.2)
    for config in (events_config, polling_config):
        with config.open("a", encoding="utf-8") as file:
            file.write(f'[api]\nport = 0\ntoken = "{TOKEN}"\nallowed_locations = ["s3://{setup.bucket}/"]\n')
    try:
        async with serve_process(events_config) as served, aiohttp.ClientSession() as session:
            url, auth = served.url, {"Authorization": f"Bearer {TOKEN}"}
            spec = setup.batch_spec(name="scans", webhook={"url": receiver.url})
            async with session.post(url + "/api/v1/batches", json=spec, headers=auth) as response:
                assert response.status == 201
            created = await served.wait_for_log("batch.pass_done", batch="scans")  # creating starts a pass
            assert created["total"] == 0
            await setup.inputs.write("fresh upload.png", png(123, 45))
            event = {
                "Records": [record(setup.bucket, "in/fresh+upload.png"), record("elsewhere", "in/x.png")]
            }
            async with session.post(url + "/api/v1/events/s3", json=event, headers=auth) as response:
                assert response.status == 200
                assert await response.json() == {"uploads": 2, "for_batches": 1}
            await receiver.wait_for(1, timeout_s=30)  # recognised, stored and delivered
            assert receiver.received[0].payload["items"][0]["key"] == "fresh upload.png"
            await served.wait_for_log("item.done", key="fresh upload.png", outcome="succeeded")
            # Only the pass the creation started ran, before the upload: the event made the result.
            assert [entry["done"] for entry in served.events("batch.pass_done")] == [0]
            assert [entry["reason"] for entry in served.events("worker.pass_requested")] == [
                "batch 'scans' changed"
            ]
            async with session.post(url + "/api/v1/events/s3", json=event) as response:
                assert response.status == 401  # the event endpoint needs the token too
        await setup.inputs.write("no event.png", png(67, 89))  # no notification for this one
        async with serve_process(polling_config):
            await receiver.wait_for(2, timeout_s=30)  # the reconcile pass finds it
            assert receiver.received[1].payload["items"][0]["key"] == "no event.png"
    finally:
        await receiver.stop()


async def test_an_announced_upload_does_not_wait_for_a_pass_under_way(make_worker_setup: MakeSetup) -> None:
    """While a pass is busy with a slow item, an announced upload is recognised beside it; an
    announced upload another worker holds is left to a pass, which the announcement starts."""
    setup = await make_worker_setup()
    settings = setup.settings()
    batch_id = await create_batch(setup, settings)
    setup.emulator.faults.script([ScriptedFault(latency_ms=60_000, name="slow.png")])
    await setup.inputs.write("slow.png", png(100, 100))
    async with (
        StorageFactory(settings.storage) as storages,
        open_ocr_session(max_connections=16) as session,
        open_webhook_session(settings.webhook) as outbound,
    ):
        store = await batch_store_in(settings, storages)
        worker = Worker(
            settings,
            store=store,
            storages=storages,
            session=session,
            outbound_session=outbound,
            claims=ItemClaims(store.coordination, ttl_s=60),
        )
        busy_pass = asyncio.create_task(worker.run_pass())
        await setup.emulator.wait_for_in_flight(1)
        await setup.inputs.write("fresh.png", png(120, 80))
        with capture_logs() as logs:
            worker.announce([Upload(setup.bucket, "in/fresh.png")])
            await worker.wait_for_announcements()
        assert not busy_pass.done()
        assert await setup.results.head("fresh.png.json")
        assert not [entry for entry in logs if entry["event"] == "worker.pass_requested"]

        other = ItemClaims(store.coordination, ttl_s=60)
        await setup.inputs.write("held.png", png(130, 80))
        assert await other.take(batch_id, "held.png")
        with capture_logs() as logs:
            worker.announce([Upload(setup.bucket, "in/held.png")])
            await worker.wait_for_announcements()
        requested = [entry for entry in logs if entry["event"] == "worker.pass_requested"]
        assert requested  # the next pass will look at it again
        assert requested[0]["reason"] == "announced inputs left unsettled"
        worker.stop()
        busy_pass.cancel()
        await asyncio.gather(busy_pass, return_exceptions=True)
    assert setup.emulator.stats()["recognitions"] == {"fresh.png": 1}
