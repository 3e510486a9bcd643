"""Webhook chunks against a real aiohttp receiver: finished items made into chunks of 1,000 or
flushed when idle, the payload a worker's batch delivers, and every item delivered once across
restarts, crashes and workers that are gone.

The outbox is on each storage profile (`results`), its records and claims in the profile's
`coordination`, as a worker has them: a local directory or moto with the control location's
conditional writes, or the NAVER profile (no conditional writes) with Redis."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from fixtures.clock import FakeClock
from fixtures.receiver import Receiver
from fixtures.samples import png
from fixtures.webhooks import (
    BATCH_ID,
    SECRET,
    UNREACHABLE,
    StatusLog,
    attached,
    batch,
    finish,
    item,
    outbox_keys,
    service,
)
from fixtures.worker import MakeSetup, WorkerProfile, create_batch

from ocrbatch.batches.layout import OUTBOX_PREFIX
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.storage.base import Storage
from ocrbatch.webhooks.outbox import ITEMS_PREFIX, SEQUENCE_KEY, manifest_key
from ocrbatch.webhooks.service import RECOVER_INTERVAL_S
from ocrbatch.webhooks.signing import verify


async def chunks_left(results: Storage) -> list[str]:
    """The outbox's keys in the result location but `_outbox/sequence.json`, the chunk counter of an
    outbox without a coordination."""
    return [key for key in await outbox_keys(results) if key != SEQUENCE_KEY]


@pytest.mark.parametrize("storage_profile", ["local"])
async def test_chunks_of_1000_then_an_idle_flush(
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """2,500 items make exactly three POSTs of 1,000, 1,000 and 500, the last after the idle
    timeout, and every item arrives exactly once. On a local directory only: this is about chunk
    sizes and the idle timer, and its 5,000 marker writes and deletes take about a minute on S3,
    where the other tests of this suite cover the outbox."""
    time = FakeClock()
    started = time.now_s
    async with attached(
        receiver.url, results, items=2500, time=time, coordination=coordination, idle_flush_s=60
    ) as webhooks:
        await receiver.wait_for(2)  # the two full chunks, at once
        await time.advance(59)
        assert len(receiver.received) == 2  # not idle long enough yet
        await time.advance(1)
        await receiver.wait_for(3)
        assert await webhooks.drain(10)
    payloads = [request.payload for request in receiver.received]
    assert [payload["count"] for payload in payloads] == [1000, 1000, 500]
    assert [payload["sequence"] for payload in payloads] == [1, 2, 3]
    keys = [entry["key"] for payload in payloads for entry in payload["items"]]
    assert sorted(keys) == [item(index)["key"] for index in range(2500)]
    assert int(receiver.received[2].headers["webhook-timestamp"]) == started + 60  # after the idle wait
    assert int(receiver.received[1].headers["webhook-timestamp"]) == started  # full chunks at once
    assert await chunks_left(results) == []


async def test_chunks_survive_a_restart_with_their_id(
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """A chunk that could not be delivered is resent after a restart with its original webhook-id."""
    async with attached(UNREACHABLE, results, items=1, coordination=coordination, chunk_size=1):
        await asyncio.sleep(0)
    # The process ended with the chunk in the outbox.
    [chunk_key] = await chunks_left(results)
    chunk_id = (await results.head(chunk_key)).metadata["chunk-id"]
    async with attached(receiver.url, results, coordination=coordination, chunk_size=1) as restarted:
        await receiver.wait_for(1)
        assert await restarted.drain(10)
    assert receiver.received[0].headers["webhook-id"] == chunk_id
    assert receiver.received[0].payload["chunkId"] == chunk_id


async def test_a_batch_without_webhook_writes_no_outbox(results: Storage, coordination: Coordination) -> None:
    """Batches without a webhook are ignored: nothing is buffered or written."""
    async with attached("", results, coordination=coordination, chunk_size=1) as webhooks:
        assert await webhooks.item_pending(BATCH_ID, item(0)) is None
        await webhooks.flush()
    assert await outbox_keys(results) == []


async def test_worker_delivers_every_item_with_the_documented_payload(
    make_worker_setup: MakeSetup, worker_profile: WorkerProfile, receiver: Receiver
) -> None:
    """A batch with a webhook gets every finished item (succeeded and failed) delivered by `run --once`,
    with the fields of SPEC §6, and its outbox is left empty; on moto and on the NAVER profile with
    Redis."""
    setup = await make_worker_setup(store=worker_profile.store)
    settings = setup.settings(coordination=worker_profile.coordination)
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
    assert await chunks_left(setup.results) == []


async def test_items_of_a_gone_worker_are_chunked_by_another_and_a_live_ones_are_not(
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """Finished items wait in the outbox as markers until chunked. Another worker attaching the batch
    leaves a live worker's markers alone; once that worker is gone (its registration ended without a
    flush), the next look chunks and delivers them, each once."""
    time, statuses = FakeClock(), StatusLog()
    live, other = ItemClaims(coordination, ttl_s=600), ItemClaims(coordination, ttl_s=600)
    await live.register()
    await other.register()
    async with aiohttp.ClientSession() as session:
        first = service(session, time, statuses, claims=live, coordination=coordination, idle_flush_s=3600)
        await first.attach(batch(receiver.url), results)
        for index in range(5):
            await finish(first, index)
        second = service(session, time, statuses, claims=other, coordination=coordination, idle_flush_s=3600)
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
    assert await chunks_left(results) == []


async def test_a_chunk_written_before_a_crash_is_sent_once_and_its_markers_removed(
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """A crash after a chunk was written but before its items' markers were removed: the next worker
    removes the markers instead of chunking those items again."""
    async with attached(receiver.url, results, items=3, coordination=coordination, idle_flush_s=3600):
        markers = [info.key async for info in results.list(ITEMS_PREFIX)]
        chunk_key = f"{OUTBOX_PREFIX}000000000001-msg_1.json"
        manifest = {"chunk": chunk_key, "markers": markers}
        await coordination.create(manifest_key(BATCH_ID, "msg_1"), json.dumps(manifest).encode())
        chunk = {"chunkId": "msg_1", "items": [item(index) for index in range(3)]}
        await results.write(chunk_key, json.dumps(chunk).encode(), metadata={"chunk-id": "msg_1"})
    async with attached(receiver.url, results, coordination=coordination, idle_flush_s=3600) as restarted:
        await receiver.wait_for(1)
        assert await restarted.drain(10)
    assert [request.headers["webhook-id"] for request in receiver.received] == ["msg_1"]
    assert await outbox_keys(results) == []


async def test_an_item_whose_result_was_never_written_is_not_announced_after_a_crash(
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """A worker dies between making an item durable and writing its result: the next worker drops
    that item (its input is still pending and will be announced when done) and delivers the one
    whose result was written from the same version of its input."""
    async with attached(receiver.url, results, coordination=coordination, idle_flush_s=3600) as crashed:
        for index in range(3):
            await crashed.item_pending(
                BATCH_ID,
                item(index),
                result_key=f"scans/{index:05}.png.json",
                source_etag="etag-now",
            )
        await results.write("scans/00000.png.json", b"{}", metadata={"source-etag": "etag-now"})
        await results.write("scans/00001.png.json", b"{}", metadata={"source-etag": "etag-before"})
    async with attached(receiver.url, results, coordination=coordination, idle_flush_s=3600) as restarted:
        await receiver.wait_for(1)
        assert await restarted.drain(10)
    assert [entry["key"] for entry in receiver.received[0].payload["items"]] == [item(0)["key"]]
    assert await chunks_left(results) == []
