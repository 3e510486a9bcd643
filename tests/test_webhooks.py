"""Webhook delivery against a real aiohttp receiver: chunking, idle flush, retries, 410, dead
letters, durability across restarts, and signatures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from samples import png
from webhook_receiver import Receiver
from worker_fixtures import create_batch

from ocrbatch.batches.layout import OUTBOX_PREFIX
from ocrbatch.batches.spec import Batch
from ocrbatch.locations import Location
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.settings import WebhookSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.claims import ItemClaims
from ocrbatch.storage.local import LocalStorage
from ocrbatch.webhooks.outbox import DEAD_PREFIX, ITEMS_PREFIX, MANIFESTS_PREFIX
from ocrbatch.webhooks.service import RECOVER_INTERVAL_S, WebhookService
from ocrbatch.webhooks.signing import InvalidSignature, verify

SECRET = "whsec_" + base64.b64encode(b"a-receiver-shared-secret-32bytes").decode()


class ManualTime:
    """A clock that moves only when the test calls `advance`; sleepers wake when their time comes."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self.now:
                self._sleepers.remove((deadline, future))
                if not future.done():
                    future.set_result(None)
        await asyncio.sleep(0)


class Backoffs:
    """Records the backoff waits asked for and returns at once (no time passes)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def results(tmp_path: Path) -> Storage:
    root = tmp_path / "results"
    root.mkdir()
    return LocalStorage(Location.parse(str(root)))


def batch(url: str, *, secret: str | None = SECRET, locations_only: bool = False) -> Batch:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    webhook: dict[str, Any] | None = {"url": url, "secret": secret, "locations_only": locations_only}
    return Batch.model_validate(
        {
            "id": "b0000000000000001",
            "name": "receipts",
            "domain": "receipts",
            "language": "ko",
            "table_extraction": False,
            "long_image": False,
            "input_path": "s3://data/in",
            "result_path": "s3://data/out",
            "webhook": webhook if url else None,
            "created_at": now,
            "updated_at": now,
        }
    )


class StatusLog:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, batch: Batch, status: Any, reason: str | None) -> None:
        self.calls.append((status, reason))


def service(
    session: aiohttp.ClientSession,
    time: ManualTime,
    statuses: StatusLog,
    backoffs: Backoffs | None = None,
    claims: ItemClaims | None = None,
    **settings: Any,
) -> WebhookService:
    """A service on manual time: the idle timer waits for `time.advance`, backoffs are recorded."""
    return WebhookService(
        WebhookSettings(**settings),
        session,
        set_status=statuses,
        clock=time,
        wall_clock=time,
        sleep=(backoffs or Backoffs()).sleep,
        idle_sleep=time.sleep,
        claims=claims,
    )


def item(index: int) -> dict[str, Any]:
    return {
        "key": f"scans/{index:05}.png",
        "resultLocation": f"s3://data/out/scans/{index:05}.png.json",
        "status": "succeeded",
        "inferResult": "SUCCESS",
        "message": "SUCCESS",
    }


async def outbox_keys(results: Storage, prefix: str = OUTBOX_PREFIX) -> list[str]:
    return [info.key async for info in results.list(prefix)]


async def test_chunks_of_1000_then_an_idle_flush(receiver: Receiver, results: Storage) -> None:
    """2,500 items make exactly three POSTs of 1,000, 1,000 and 500, the last after the idle
    timeout, and every item arrives exactly once."""
    time, statuses = ManualTime(), StatusLog()
    async with aiohttp.ClientSession() as session:
        webhooks = service(session, time, statuses, idle_flush_s=60)
        await webhooks.attach(batch(receiver.url), results)
        started = time.now
        for index in range(2500):
            await webhooks.item_finished("b0000000000000001", item(index))
        await receiver.wait_for(2)  # the two full chunks, at once
        await time.advance(59)
        assert len(receiver.received) == 2  # not idle long enough yet
        await time.advance(1)
        await receiver.wait_for(3)
        assert await webhooks.drain(10)
        await webhooks.close()
    payloads = [request.payload for request in receiver.received]
    assert [payload["count"] for payload in payloads] == [1000, 1000, 500]
    assert [payload["sequence"] for payload in payloads] == [1, 2, 3]
    keys = [entry["key"] for payload in payloads for entry in payload["items"]]
    assert sorted(keys) == [item(index)["key"] for index in range(2500)]
    assert int(receiver.received[2].headers["webhook-timestamp"]) == started + 60  # after the idle wait
    assert int(receiver.received[1].headers["webhook-timestamp"]) == started  # full chunks at once
    assert await outbox_keys(results) == ["_outbox/sequence.json"]


async def test_failing_receiver_gets_every_chunk_without_blocking_items(
    receiver: Receiver, results: Storage
) -> None:
    """503, then 429 with Retry-After, then 200: every chunk arrives; meanwhile items keep being accepted."""
    receiver.answers = [(503, {}), (429, {"Retry-After": "7"})]
    time, statuses, backoffs = ManualTime(), StatusLog(), Backoffs()
    async with aiohttp.ClientSession() as session:
        webhooks = service(session, time, statuses, backoffs, chunk_size=10, idle_flush_s=60)
        await webhooks.attach(batch(receiver.url), results)
        receiver.gate.clear()  # the receiver hangs: the first delivery is stuck
        for index in range(30):  # three full chunks made while it waits
            await asyncio.wait_for(webhooks.item_finished("b0000000000000001", item(index)), timeout=5)
        receiver.gate.set()
        await receiver.wait_for(3)
        assert await webhooks.drain(10)
        await webhooks.close()
    assert list(receiver._statuses) == [503, 429, 200, 200, 200]
    assert backoffs.waits[1] == 7  # Retry-After honoured
    first_ids = {request.headers["webhook-id"] for request in receiver.received[:3]}
    assert len(first_ids) == 1  # the same chunk id on every attempt
    assert sum(request.payload["count"] for request in receiver.accepted) == 30
    assert webhooks.retried == 2


async def test_signature_verifies_independently_and_tampering_fails(
    receiver: Receiver, results: Storage
) -> None:
    """The receiver can check the signature with a plain HMAC; a tampered body fails verification."""
    time, statuses = ManualTime(), StatusLog()
    async with aiohttp.ClientSession() as session:
        webhooks = service(session, time, statuses, chunk_size=2)
        await webhooks.attach(batch(receiver.url), results)
        for index in range(2):
            await webhooks.item_finished("b0000000000000001", item(index))
        await receiver.wait_for(1)
        await webhooks.close()
    request = receiver.received[0]
    headers = {name.lower(): value for name, value in request.headers.items()}
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    now_s = int(headers["webhook-timestamp"])
    verify(SECRET, headers, request.body, now_s=now_s)
    with pytest.raises(InvalidSignature):
        verify(SECRET, headers, request.body.replace(b"00000", b"99999"), now_s=now_s)


async def test_gone_stops_deliveries_and_flags_the_batch(receiver: Receiver, results: Storage) -> None:
    """410 stops deliveries for the batch, puts the reason in its status, and keeps the chunks."""
    receiver.answers = [(410, {})]
    time, statuses = ManualTime(), StatusLog()
    async with aiohttp.ClientSession() as session:
        webhooks = service(session, time, statuses, chunk_size=1)
        await webhooks.attach(batch(receiver.url), results)
        for index in range(3):
            await webhooks.item_finished("b0000000000000001", item(index))
        assert await webhooks.drain(10)
        await webhooks.close()
    assert len(receiver.received) == 1
    assert statuses.calls[0][0] == "error"
    assert "410" in (statuses.calls[0][1] or "")
    assert len([key for key in await outbox_keys(results) if key != "_outbox/sequence.json"]) == 3


async def test_other_client_errors_become_dead_letters(receiver: Receiver, results: Storage) -> None:
    """A 400 is retried max_attempts times, then the chunk is parked under _outbox/dead/."""
    receiver.answers = [(400, {})] * 3
    time, statuses = ManualTime(), StatusLog()
    async with aiohttp.ClientSession() as session:
        webhooks = service(session, time, statuses, chunk_size=1, max_attempts=3)
        await webhooks.attach(batch(receiver.url), results)
        await webhooks.item_finished("b0000000000000001", item(0))
        await webhooks.item_finished("b0000000000000001", item(1))
        assert await webhooks.drain(10)
        await webhooks.close()
    assert list(receiver._statuses) == [400, 400, 400, 200]
    assert webhooks.dead_lettered == 1
    keys = await outbox_keys(results)
    assert len([key for key in keys if key.startswith(DEAD_PREFIX)]) == 1
    assert len(keys) == 2  # the dead letter and the sequence document
    assert webhooks.status_note("b0000000000000001") == (
        "webhook: 1 chunk(s) refused by the receiver, parked under _outbox/dead/"
    )
    async with aiohttp.ClientSession() as session:  # after a restart the note is still there
        restarted = service(session, time, statuses, chunk_size=1)
        await restarted.attach(batch(receiver.url), results)
        assert restarted.status_note("b0000000000000001") is not None
        await restarted.close()


async def test_chunks_survive_a_restart_with_their_id(receiver: Receiver, results: Storage) -> None:
    """A chunk that could not be delivered is resent after a restart with its original webhook-id."""
    time, statuses = ManualTime(), StatusLog()
    async with aiohttp.ClientSession() as session:
        down = service(session, time, statuses, chunk_size=1)
        await down.attach(batch("http://127.0.0.1:9/hook"), results)  # nothing listens there
        await down.item_finished("b0000000000000001", item(0))
        await asyncio.sleep(0)
        await down.close()  # the process ends with the chunk in the outbox
        [chunk_key] = [key for key in await outbox_keys(results) if key != "_outbox/sequence.json"]
        chunk_id = (await results.head(chunk_key)).metadata["chunk-id"]
        restarted = service(session, time, statuses, chunk_size=1)
        await restarted.attach(batch(receiver.url), results)
        await receiver.wait_for(1)
        assert await restarted.drain(10)
        await restarted.close()
    assert receiver.received[0].headers["webhook-id"] == chunk_id
    assert receiver.received[0].payload["chunkId"] == chunk_id


async def test_a_batch_without_webhook_writes_no_outbox(results: Storage) -> None:
    """Batches without a webhook are ignored: nothing is buffered or written."""
    time, statuses = ManualTime(), StatusLog()
    async with aiohttp.ClientSession() as session:
        webhooks = service(session, time, statuses, chunk_size=1)
        await webhooks.attach(batch(""), results)
        await webhooks.item_finished("b0000000000000001", item(0))
        await webhooks.flush()
        await webhooks.close()
    assert await outbox_keys(results) == []


async def test_worker_delivers_every_item_with_the_documented_payload(
    make_worker_setup: Any, receiver: Receiver
) -> None:
    """A batch with a webhook gets every finished item (succeeded and failed) delivered by `run --once`,
    with the fields of SPEC §6, and `locations_only` leaves the OCR results out."""
    setup = await make_worker_setup()
    settings = setup.settings()
    for index in range(5):
        await setup.inputs.write(f"{index}.png", png(100 + index, 100))
    await setup.inputs.write("empty.png", b"")
    batch_id = await create_batch(setup, settings, webhook={"url": receiver.url, "secret": SECRET})
    assert await run_worker(settings, once=True) == 0
    [request] = receiver.received
    payload = request.payload
    assert {"batchId", "batchName", "chunkId", "sequence", "count", "items"} <= set(payload)
    assert (payload["batchId"], payload["batchName"], payload["count"]) == (batch_id, "receipts", 6)
    assert request.headers["webhook-id"] == payload["chunkId"]
    by_key = {entry["key"]: entry for entry in payload["items"]}
    assert by_key["0.png"]["status"] == "succeeded"
    assert by_key["0.png"]["inferResult"] == "SUCCESS"
    assert by_key["0.png"]["resultLocation"] == f"s3://{setup.bucket}/out/0.png.json"
    assert by_key["0.png"]["result"]["images"][0]["convertedImageInfo"]["width"] == 100
    assert by_key["empty.png"]["status"] == "failed"
    assert "empty" in by_key["empty.png"]["message"]
    verify(
        SECRET,
        {k.lower(): v for k, v in request.headers.items()},
        request.body,
        now_s=int(request.headers["webhook-timestamp"]),
    )
    assert [key async for key in _keys(setup.results, "_outbox/") if key != "_outbox/sequence.json"] == []


async def _keys(storage: Storage, prefix: str) -> AsyncIterator[str]:
    async for info in storage.list(prefix):
        yield info.key


async def test_items_of_a_gone_worker_are_chunked_by_another_and_a_live_ones_are_not(
    receiver: Receiver, results: Storage, tmp_path: Path
) -> None:
    """Finished items wait in the outbox as markers until chunked. Another worker attaching the batch
    leaves a live worker's markers alone; once that worker is gone (its registration ended without a
    flush), the next look chunks and delivers them, each once."""
    (tmp_path / "control").mkdir()
    control = LocalStorage(Location.parse(str(tmp_path / "control")))
    time, statuses = ManualTime(), StatusLog()
    live, other = ItemClaims(control, ttl_s=600), ItemClaims(control, ttl_s=600)
    await live.register()
    await other.register()
    async with aiohttp.ClientSession() as session:
        first = service(session, time, statuses, claims=live, idle_flush_s=3600)
        await first.attach(batch(receiver.url), results)
        for index in range(5):
            await first.item_finished("b0000000000000001", item(index))
        second = service(session, time, statuses, claims=other, idle_flush_s=3600)
        await second.attach(batch(receiver.url), results)
        assert len(await outbox_keys(results, ITEMS_PREFIX)) == 5  # the live worker's: left alone
        await first.close()
        await live.unregister()  # gone, its buffer never flushed
        await time.advance(RECOVER_INTERVAL_S)
        await second.attach(batch(receiver.url), results)
        await receiver.wait_for(1)
        assert await second.drain(10)
        await second.close()
    assert sorted(entry["key"] for entry in receiver.received[0].payload["items"]) == [
        item(index)["key"] for index in range(5)
    ]
    assert await outbox_keys(results) == ["_outbox/sequence.json"]


async def test_a_chunk_written_before_a_crash_is_sent_once_and_its_markers_removed(
    receiver: Receiver, results: Storage
) -> None:
    """A crash after a chunk was written but before its items' markers were removed: the next worker
    removes the markers instead of chunking those items again."""
    time, statuses = ManualTime(), StatusLog()
    async with aiohttp.ClientSession() as session:
        crashed = service(session, time, statuses, idle_flush_s=3600)
        await crashed.attach(batch(receiver.url), results)
        for index in range(3):
            await crashed.item_finished("b0000000000000001", item(index))
        markers = [info.key async for info in results.list(ITEMS_PREFIX)]
        chunk_key = f"{OUTBOX_PREFIX}000000000001-msg_1.json"
        manifest = {"chunk": chunk_key, "markers": markers}
        await results.write(f"{MANIFESTS_PREFIX}msg_1.json", json.dumps(manifest).encode())
        chunk = {"chunkId": "msg_1", "items": [item(index) for index in range(3)]}
        await results.write(chunk_key, json.dumps(chunk).encode(), metadata={"chunk-id": "msg_1"})
        await crashed.close()
        restarted = service(session, time, statuses, idle_flush_s=3600)
        await restarted.attach(batch(receiver.url), results)
        await receiver.wait_for(1)
        assert await restarted.drain(10)
        await restarted.close()
    assert [request.headers["webhook-id"] for request in receiver.received] == ["msg_1"]
    assert await outbox_keys(results) == []


async def test_an_item_whose_result_was_never_written_is_not_announced_after_a_crash(
    receiver: Receiver, results: Storage
) -> None:
    """A worker dies between making an item durable and writing its result: the next worker drops
    that item (its input is still pending and will be announced when done) and delivers the one
    whose result was written from the same version of its input."""
    time, statuses = ManualTime(), StatusLog()
    async with aiohttp.ClientSession() as session:
        crashed = service(session, time, statuses, idle_flush_s=3600)
        await crashed.attach(batch(receiver.url), results)
        for index in range(3):
            await crashed.item_pending(
                "b0000000000000001",
                item(index),
                result_key=f"scans/{index:05}.png.json",
                source_etag="etag-now",
            )
        await results.write("scans/00000.png.json", b"{}", metadata={"source-etag": "etag-now"})
        await results.write("scans/00001.png.json", b"{}", metadata={"source-etag": "etag-before"})
        await crashed.close()
        restarted = service(session, time, statuses, idle_flush_s=3600)
        await restarted.attach(batch(receiver.url), results)
        await receiver.wait_for(1)
        assert await restarted.drain(10)
        await restarted.close()
    assert [entry["key"] for entry in receiver.received[0].payload["items"]] == [item(0)["key"]]
    assert await outbox_keys(results) == ["_outbox/sequence.json"]
