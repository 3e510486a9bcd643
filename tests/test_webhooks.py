"""Webhook delivery against a real aiohttp receiver: chunking, idle flush, retries, 410, dead
letters, durability across restarts, and signatures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_clock import FakeClock
from samples import png
from structlog.testing import capture_logs
from webhook_receiver import Receiver
from worker_fixtures import create_batch

from ocrbatch.batches.layout import OUTBOX_PREFIX
from ocrbatch.batches.spec import Batch
from ocrbatch.locations import Location
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.settings import WebhookSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.claims import ItemClaims
from ocrbatch.storage.local import LocalStorage
from ocrbatch.webhooks.outbox import DEAD_PREFIX, ITEMS_PREFIX, MANIFESTS_PREFIX, SEQUENCE_KEY
from ocrbatch.webhooks.service import RECOVER_INTERVAL_S, WebhookService
from ocrbatch.webhooks.signing import InvalidSignature, verify

SECRET = "whsec_" + base64.b64encode(b"a-receiver-shared-secret-32bytes").decode()
BATCH_ID = "b0000000000000001"
UNREACHABLE = "http://127.0.0.1:9/hook"  # nothing listens there
CHUNKS, OUTCOMES = "ocrbatch_webhook_chunks_total", ("made", "sent", "retried", "dead_lettered")


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
            "id": BATCH_ID,
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
    time: FakeClock,
    statuses: StatusLog,
    backoffs: FakeClock | None = None,
    *,
    claims: ItemClaims | None = None,
    metrics: WorkerMetrics | None = None,
    **settings: Any,
) -> WebhookService:
    """A service on fake time: the idle timer waits for `time.advance`, backoffs are only recorded."""
    return WebhookService(
        WebhookSettings(**settings),
        session,
        set_status=statuses,
        clock=time,
        wall_clock=time,
        sleep=(backoffs or FakeClock(advance_on_sleep=False)).sleep,
        idle_sleep=time.sleep_until_advanced,
        metrics=metrics,
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


async def finish(webhooks: WebhookService, index: int) -> None:
    """Finish item `index` as the worker does: durable first, then done once its result is written."""
    pending = await webhooks.item_pending(BATCH_ID, item(index))
    assert pending is not None, "a batch with a webhook makes each finished item durable"
    await webhooks.item_done(pending)


@asynccontextmanager
async def attached(
    url: str,
    results: Storage,
    *,
    items: int = 0,
    time: FakeClock | None = None,
    statuses: StatusLog | None = None,
    backoffs: FakeClock | None = None,
    metrics: WorkerMetrics | None = None,
    **settings: Any,
) -> AsyncIterator[WebhookService]:
    """A `service` attached to a batch sending to `url`, its first `items` items finished; closed on
    leaving. Its clock stands still unless the test moves `time`."""
    async with aiohttp.ClientSession() as session:
        webhooks = service(
            session, time or FakeClock(), statuses or StatusLog(), backoffs, metrics=metrics, **settings
        )
        await webhooks.attach(batch(url), results)
        for index in range(items):
            await finish(webhooks, index)
        try:
            yield webhooks
        finally:
            await webhooks.close()


async def outbox_keys(results: Storage, prefix: str = OUTBOX_PREFIX) -> list[str]:
    return [info.key async for info in results.list(prefix)]


async def test_chunks_of_1000_then_an_idle_flush(receiver: Receiver, results: Storage) -> None:
    """2,500 items make exactly three POSTs of 1,000, 1,000 and 500, the last after the idle
    timeout, and every item arrives exactly once."""
    time = FakeClock()
    started = time.now_s
    async with attached(receiver.url, results, items=2500, time=time, idle_flush_s=60) as webhooks:
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
    assert await outbox_keys(results) == ["_outbox/sequence.json"]


async def test_failing_receiver_gets_every_chunk_without_blocking_items(
    receiver: Receiver, results: Storage
) -> None:
    """503, then 429 with Retry-After, then 200: every chunk arrives; meanwhile items keep being accepted."""
    receiver.answers = [(503, {}), (429, {"Retry-After": "7"})]
    backoffs = FakeClock(advance_on_sleep=False)
    async with attached(receiver.url, results, backoffs=backoffs, chunk_size=10, idle_flush_s=60) as webhooks:
        receiver.gate.clear()  # the receiver hangs: the first delivery is stuck
        for index in range(30):  # three full chunks made while it waits
            await asyncio.wait_for(finish(webhooks, index), timeout=5)
        receiver.gate.set()
        await receiver.wait_for(3)
        assert await webhooks.drain(10)
    assert list(receiver._statuses) == [503, 429, 200, 200, 200]
    assert backoffs.sleeps_s[1] == 7  # Retry-After honoured
    first_ids = {request.headers["webhook-id"] for request in receiver.received[:3]}
    assert len(first_ids) == 1  # the same chunk id on every attempt
    assert sum(request.payload["count"] for request in receiver.accepted) == 30
    assert webhooks.retried == 2


@dataclass(frozen=True)
class Jitter:
    """A wait drawn uniformly from [0, bound_s]: one retry's full-jitter backoff."""

    bound_s: float


def assert_waits(slept_s: list[float], waits: list[float | Jitter], state: tuple[Any, ...]) -> None:
    """Each wait is the exact one or lies within its jitter bound; replaying `random` from `state`
    (read, never set), each jittered one is exactly `uniform(0, bound_s)`, one draw per such retry."""
    assert len(slept_s) == len(waits), f"waited {slept_s}, expected {waits}"
    for number, (slept, wait) in enumerate(zip(slept_s, waits, strict=True), start=1):
        if isinstance(wait, Jitter):
            assert 0 <= slept <= wait.bound_s, f"retry {number} waited {slept} s, beyond {wait}"
        else:
            assert slept == wait, f"retry {number} waited {slept} s, not {wait} s"
    replay = random.Random()
    replay.setstate(state)
    assert slept_s == [replay.uniform(0, w.bound_s) if isinstance(w, Jitter) else w for w in waits]


@pytest.mark.parametrize(
    ("answers", "waits", "max_attempts", "outcome"),
    [
        pytest.param(
            [503, 500, 502, 504, (429, "2"), 503, (503, "3600"), 429],
            [Jitter(0.5), Jitter(1), Jitter(2), Jitter(4), 2, Jitter(6), 6, Jitter(6)],
            3,
            "sent",
            id="5xx-and-429-retried-until-accepted",
        ),
        pytest.param(
            [400, 503, (404, "3"), 429, 422],
            [Jitter(0.5), Jitter(1), 3, Jitter(4)],
            3,
            "dead_lettered",
            id="the-third-client-error-dead-letters",
        ),
        pytest.param([400], [], 1, "dead_lettered", id="the-first-client-error-dead-letters"),
        pytest.param([503, 410], [Jitter(0.5)], 3, "gone", id="410-stops"),
    ],
)
async def test_delivery_waits_and_when_a_chunk_is_given_up(
    receiver: Receiver,
    results: Storage,
    *,
    answers: list[int | tuple[int, str]],
    waits: list[float | Jitter],
    max_attempts: int,
    outcome: str,
) -> None:
    """With backoff_initial_s=0.5 and backoff_max_s=6, the wait before a chunk's n-th retry is
    uniform(0, min(0.5 x 2^(n-1), 6)), or the receiver's Retry-After capped at 6 (the bound doubles
    on regardless). 429 and 5xx are retried past max_attempts until a 2xx; client errors (other 4xx)
    count over the chunk's attempts and the max_attempts-th dead-letters it at once; 410 stops
    without a wait. Each retry is counted, and logged with the wait the receiver asked for if any."""
    scripted = [(a, {}) if isinstance(a, int) else (a[0], {"Retry-After": a[1]}) for a in answers]
    receiver.answers = list(scripted)
    statuses, backoffs = StatusLog(), FakeClock(advance_on_sleep=False)
    metrics, state = WorkerMetrics(), random.getstate()
    with capture_logs() as logs:
        async with attached(
            receiver.url,
            results,
            items=1,
            statuses=statuses,
            backoffs=backoffs,
            metrics=metrics,
            chunk_size=1,
            max_attempts=max_attempts,
            backoff_initial_s=0.5,
            backoff_max_s=6,
        ) as webhooks:
            assert await webhooks.drain(10)
    assert_waits(backoffs.sleeps_s, waits, state)
    assert list(receiver._statuses) == [status for status, _ in scripted] + [200] * (outcome == "sent")
    sent, dead = int(outcome == "sent"), int(outcome == "dead_lettered")
    assert (webhooks.sent, webhooks.retried, webhooks.dead_lettered) == (sent, len(waits), dead)
    chunks = {name: metrics.registry.get_sample_value(CHUNKS, {"outcome": name}) or 0 for name in OUTCOMES}
    assert chunks == {"made": 1, "sent": sent, "retried": len(waits), "dead_lettered": dead}
    assert [status for status, _ in statuses.calls] == ["error"] * (outcome == "gone")
    left = [key.startswith(DEAD_PREFIX) for key in await outbox_keys(results) if key != SEQUENCE_KEY]
    assert left == {"sent": [], "dead_lettered": [True], "gone": [False]}[outcome]
    chunk_id = receiver.received[0].headers["webhook-id"]
    retries = [entry for entry in logs if entry["event"] == "webhook.retry"]
    assert [(entry["status"], entry["wait_s"], entry["chunk_id"]) for entry in retries] == [
        (status, round(float(headers.get("Retry-After", slept)), 3), chunk_id)
        for (status, headers), slept in zip(scripted, backoffs.sleeps_s, strict=False)
    ]


async def test_an_unreachable_receiver_is_retried_forever_with_the_same_waits(results: Storage) -> None:
    """Nothing listens: the chunk is retried past max_attempts, before the n-th retry waiting
    uniform(0, min(0.5 x 2^(n-1), 6)), and each retry is counted and logged without a status."""
    backoffs, sixth_retry, state = FakeClock(advance_on_sleep=False), asyncio.Event(), random.getstate()

    def hold_the_sixth_retry() -> None:
        if len(backoffs.sleeps_s) == 6:
            backoffs.gate = asyncio.Event()  # never set: the delivery waits there until closed
            sixth_retry.set()

    backoffs.on_sleep = hold_the_sixth_retry
    with capture_logs() as logs:
        async with attached(
            UNREACHABLE,
            results,
            items=1,
            backoffs=backoffs,
            chunk_size=1,
            max_attempts=2,
            backoff_initial_s=0.5,
            backoff_max_s=6,
        ) as webhooks:
            try:
                await asyncio.wait_for(sixth_retry.wait(), timeout=10)
            except TimeoutError:
                pytest.fail(f"no sixth retry of an unreachable receiver; waits: {backoffs.sleeps_s}")
    assert_waits(
        backoffs.sleeps_s, [Jitter(0.5), Jitter(1), Jitter(2), Jitter(4), Jitter(6), Jitter(6)], state
    )
    retries = [(entry["status"], entry["wait_s"]) for entry in logs if entry["event"] == "webhook.retry"]
    assert retries == [(None, round(slept, 3)) for slept in backoffs.sleeps_s]
    assert (webhooks.sent, webhooks.retried, webhooks.dead_lettered) == (0, 6, 0)


async def test_signature_verifies_independently_and_tampering_fails(
    receiver: Receiver, results: Storage
) -> None:
    """The receiver can check the signature with a plain HMAC; a tampered body fails verification."""
    async with attached(receiver.url, results, items=2, chunk_size=2):
        await receiver.wait_for(1)
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
    statuses = StatusLog()
    async with attached(receiver.url, results, items=3, statuses=statuses, chunk_size=1) as webhooks:
        assert await webhooks.drain(10)
    assert len(receiver.received) == 1
    assert statuses.calls[0][0] == "error"
    assert "410" in (statuses.calls[0][1] or "")
    assert len([key for key in await outbox_keys(results) if key != "_outbox/sequence.json"]) == 3


async def test_other_client_errors_become_dead_letters(receiver: Receiver, results: Storage) -> None:
    """A 400 is retried max_attempts times, then the chunk is parked under _outbox/dead/."""
    receiver.answers = [(400, {})] * 3
    async with attached(receiver.url, results, items=2, chunk_size=1, max_attempts=3) as webhooks:
        assert await webhooks.drain(10)
    assert list(receiver._statuses) == [400, 400, 400, 200]
    assert webhooks.dead_lettered == 1
    keys = await outbox_keys(results)
    assert len([key for key in keys if key.startswith(DEAD_PREFIX)]) == 1
    assert len(keys) == 2  # the dead letter and the sequence document
    assert webhooks.status_note(BATCH_ID) == (
        "webhook: 1 chunk(s) refused by the receiver, parked under _outbox/dead/"
    )
    async with attached(receiver.url, results, chunk_size=1) as restarted:  # the note survives a restart
        assert restarted.status_note(BATCH_ID) is not None


async def test_chunks_survive_a_restart_with_their_id(receiver: Receiver, results: Storage) -> None:
    """A chunk that could not be delivered is resent after a restart with its original webhook-id."""
    async with attached(UNREACHABLE, results, items=1, chunk_size=1):
        await asyncio.sleep(0)
    # The process ended with the chunk in the outbox.
    [chunk_key] = [key for key in await outbox_keys(results) if key != "_outbox/sequence.json"]
    chunk_id = (await results.head(chunk_key)).metadata["chunk-id"]
    async with attached(receiver.url, results, chunk_size=1) as restarted:
        await receiver.wait_for(1)
        assert await restarted.drain(10)
    assert receiver.received[0].headers["webhook-id"] == chunk_id
    assert receiver.received[0].payload["chunkId"] == chunk_id


async def test_a_batch_without_webhook_writes_no_outbox(results: Storage) -> None:
    """Batches without a webhook are ignored: nothing is buffered or written."""
    async with attached("", results, chunk_size=1) as webhooks:
        assert await webhooks.item_pending(BATCH_ID, item(0)) is None
        await webhooks.flush()
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
    assert [
        key for key in await outbox_keys(setup.results, "_outbox/") if key != "_outbox/sequence.json"
    ] == []


async def test_items_of_a_gone_worker_are_chunked_by_another_and_a_live_ones_are_not(
    receiver: Receiver, results: Storage, tmp_path: Path
) -> None:
    """Finished items wait in the outbox as markers until chunked. Another worker attaching the batch
    leaves a live worker's markers alone; once that worker is gone (its registration ended without a
    flush), the next look chunks and delivers them, each once."""
    (tmp_path / "control").mkdir()
    control = LocalStorage(Location.parse(str(tmp_path / "control")))
    time, statuses = FakeClock(), StatusLog()
    live, other = ItemClaims(control, ttl_s=600), ItemClaims(control, ttl_s=600)
    await live.register()
    await other.register()
    async with aiohttp.ClientSession() as session:
        first = service(session, time, statuses, claims=live, idle_flush_s=3600)
        await first.attach(batch(receiver.url), results)
        for index in range(5):
            await finish(first, index)
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
    async with attached(receiver.url, results, items=3, idle_flush_s=3600):
        markers = [info.key async for info in results.list(ITEMS_PREFIX)]
        chunk_key = f"{OUTBOX_PREFIX}000000000001-msg_1.json"
        manifest = {"chunk": chunk_key, "markers": markers}
        await results.write(f"{MANIFESTS_PREFIX}msg_1.json", json.dumps(manifest).encode())
        chunk = {"chunkId": "msg_1", "items": [item(index) for index in range(3)]}
        await results.write(chunk_key, json.dumps(chunk).encode(), metadata={"chunk-id": "msg_1"})
    async with attached(receiver.url, results, idle_flush_s=3600) as restarted:
        await receiver.wait_for(1)
        assert await restarted.drain(10)
    assert [request.headers["webhook-id"] for request in receiver.received] == ["msg_1"]
    assert await outbox_keys(results) == []


async def test_an_item_whose_result_was_never_written_is_not_announced_after_a_crash(
    receiver: Receiver, results: Storage
) -> None:
    """A worker dies between making an item durable and writing its result: the next worker drops
    that item (its input is still pending and will be announced when done) and delivers the one
    whose result was written from the same version of its input."""
    async with attached(receiver.url, results, idle_flush_s=3600) as crashed:
        for index in range(3):
            await crashed.item_pending(
                BATCH_ID,
                item(index),
                result_key=f"scans/{index:05}.png.json",
                source_etag="etag-now",
            )
        await results.write("scans/00000.png.json", b"{}", metadata={"source-etag": "etag-now"})
        await results.write("scans/00001.png.json", b"{}", metadata={"source-etag": "etag-before"})
    async with attached(receiver.url, results, idle_flush_s=3600) as restarted:
        await receiver.wait_for(1)
        assert await restarted.drain(10)
    assert [entry["key"] for entry in receiver.received[0].payload["items"]] == [item(0)["key"]]
    assert await outbox_keys(results) == ["_outbox/sequence.json"]
