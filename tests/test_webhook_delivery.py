"""Webhook delivery against a real aiohttp receiver: retries and their waits, Retry-After, 410,
dead letters, an unreachable receiver, and signatures the receiver can verify.

The outbox is on each storage profile (`results`), its records in the profile's `coordination`:
a local directory or moto with the control location's conditional writes, or the NAVER profile
(no conditional writes) with Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fixtures.clock import FakeClock
from fixtures.receiver import Receiver
from fixtures.waits import within
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
)
from structlog.testing import capture_logs

from ocrbatch.coordination.base import Coordination
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.outbound import OutboundPolicy
from ocrbatch.storage.base import Storage
from ocrbatch.webhooks.outbox import DEAD_PREFIX, SEQUENCE_KEY
from ocrbatch.webhooks.signing import InvalidSignature, verify

CHUNKS, OUTCOMES = "ocrbatch_webhook_chunks_total", ("made", "sent", "retried", "dead_lettered")


async def test_failing_receiver_gets_every_chunk_without_blocking_items(
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """503, then 429 with Retry-After, then 200: every chunk arrives; meanwhile items keep being accepted."""
    receiver.answers = [(503, {}), (429, {"Retry-After": "7"})]
    backoffs = FakeClock(advance_on_sleep=False)
    async with attached(
        receiver.url, results, backoffs=backoffs, coordination=coordination, chunk_size=10, idle_flush_s=60
    ) as webhooks:
        receiver.gate.clear()  # the receiver hangs: the first delivery is stuck
        for index in range(30):  # three full chunks made while it waits
            await within(finish(webhooks, index), 5, "an item was not accepted while the receiver hung")
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
    coordination: Coordination,
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
            coordination=coordination,
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


async def test_an_unreachable_receiver_is_retried_forever_with_the_same_waits(
    results: Storage, coordination: Coordination
) -> None:
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
            coordination=coordination,
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
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """The receiver can check the signature with a plain HMAC; a tampered body fails verification."""
    async with attached(receiver.url, results, items=2, coordination=coordination, chunk_size=2):
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


async def test_gone_stops_deliveries_and_flags_the_batch(
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """410 stops deliveries for the batch, puts the reason in its status, and keeps the chunks."""
    receiver.answers = [(410, {})]
    statuses = StatusLog()
    async with attached(
        receiver.url, results, items=3, statuses=statuses, coordination=coordination, chunk_size=1
    ) as webhooks:
        assert await webhooks.drain(10)
    assert len(receiver.received) == 1
    assert statuses.calls[0][0] == "error"
    assert "410" in (statuses.calls[0][1] or "")
    assert len([key for key in await outbox_keys(results) if key != SEQUENCE_KEY]) == 3


async def test_other_client_errors_become_dead_letters(
    receiver: Receiver, results: Storage, coordination: Coordination
) -> None:
    """A 400 is retried max_attempts times, then the chunk is parked under _outbox/dead/; the note
    on the batch's status survives a restart."""
    receiver.answers = [(400, {})] * 3
    async with attached(
        receiver.url, results, items=2, coordination=coordination, chunk_size=1, max_attempts=3
    ) as webhooks:
        assert await webhooks.drain(10)
    assert list(receiver._statuses) == [400, 400, 400, 200]
    assert webhooks.dead_lettered == 1
    keys = [key for key in await outbox_keys(results) if key != SEQUENCE_KEY]
    assert len([key for key in keys if key.startswith(DEAD_PREFIX)]) == 1
    assert len(keys) == 1  # the dead letter only: the other chunk was delivered
    assert webhooks.status_note(BATCH_ID) == (
        "webhook: 1 chunk(s) refused by the receiver, parked under _outbox/dead/"
    )
    async with attached(receiver.url, results, coordination=coordination, chunk_size=1) as restarted:
        assert restarted.status_note(BATCH_ID) is not None


async def test_a_redirect_is_not_followed_and_dead_letters_the_chunk(local_storage: Storage) -> None:
    """A receiver answering 307 to an internal route: the signed chunk never reaches that route,
    is not retried, and is parked as a dead letter whose reason names the redirect."""
    reached: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/internal")

    async def internal(request: web.Request) -> web.Response:
        reached.append(request.headers.get("webhook-signature", ""))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", redirect)
    app.router.add_post("/internal", internal)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        with capture_logs() as logs:
            async with attached(
                str(server.make_url("/hook")), local_storage, items=1, chunk_size=1
            ) as webhooks:
                assert await webhooks.drain(10)
    assert reached == []
    assert (webhooks.sent, webhooks.retried, webhooks.dead_lettered) == (0, 0, 1)
    [dead] = [entry for entry in logs if entry["event"] == "webhook.dead_letter"]
    assert "redirects are not followed" in dead["reason"]
    assert "/internal" in dead["reason"]


async def test_a_huge_answer_is_not_read(local_storage: Storage) -> None:
    """A receiver that answers 200 with a body of 1.5 GB: the chunk counts as sent, only 64 KB of
    the answer are read (the connection is then dropped), and memory does not grow with it."""
    streamed = 0

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal streamed
        await request.read()
        response = web.StreamResponse(headers={"Content-Length": str(1536 * 1024 * 1024)})
        await response.prepare(request)
        block = b"x" * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(1536):
                await response.write(block)
                streamed += len(block)
        return response

    app = web.Application()
    app.router.add_post("/hook", huge)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        tracemalloc.start()
        try:
            async with attached(
                str(server.make_url("/hook")), local_storage, items=1, chunk_size=1
            ) as webhooks:
                assert await webhooks.drain(30)
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert webhooks.sent == 1
    assert peak_bytes < 10 * 1024 * 1024, f"{peak_bytes / 1024 / 1024:.1f} MB traced"
    assert streamed < 1536 * 1024 * 1024, "the whole answer was read"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "a cloud metadata address"),
        ("10.0.0.5", "a private address"),
        ("[::1]", "a loopback address"),
        ("localhost", "localhost (127.0.0.1) is a loopback address"),
    ],
)
async def test_a_receiver_at_a_refused_address_is_never_sent_to(
    receiver: Receiver, local_storage: Storage, address: str, kind: str
) -> None:
    """A webhook whose host is, or resolves to, a non-public address (loopback not allowed here):
    nothing is sent (the receiver on loopback hears nothing), nothing is retried, and the chunk is
    parked at once as a dead letter whose reason, like the log line, names the address and why."""
    port = receiver.url.rsplit(":", 1)[1].split("/", 1)[0]
    url = f"http://{address}:{port}/hook"
    with capture_logs() as logs:
        async with attached(url, local_storage, items=1, chunk_size=1, policy=OutboundPolicy()) as webhooks:
            assert await webhooks.drain(10)
    assert receiver.received == []
    assert (webhooks.sent, webhooks.retried, webhooks.dead_lettered) == (0, 0, 1)
    [refused] = [entry for entry in logs if entry["event"] == "webhook.address_refused"]
    [dead] = [entry for entry in logs if entry["event"] == "webhook.dead_letter"]
    assert kind in refused["reason"]
    assert dead["reason"].startswith("not sent: ")
    assert kind in dead["reason"]


async def test_an_edited_webhook_takes_the_next_attempt_and_chunk(local_storage: Storage) -> None:
    """The batch's webhook is edited while its first receiver fails: the chunk being retried goes
    to the new URL at its next attempt, signed with the new secret, and so does every later chunk;
    `locations_only` switched on strips the results from the next chunk, even of items finished
    before. The former receiver gets nothing more."""
    old, new = Receiver(answers=[(503, {})]), Receiver()
    await old.start()
    await new.start()
    old.gate.clear()  # the first attempt waits there for its 503
    rotated = "whsec_" + base64.b64encode(b"a-rotated-shared-secret-32-bytes").decode()
    try:
        async with attached(old.url, local_storage, items=1, chunk_size=1) as webhooks:
            await old.wait_for_held(1)
            webhooks.update(batch(new.url, secret=rotated))
            old.gate.set()
            await new.wait_for(1)
            await finish(webhooks, 1)
            await new.wait_for(2)
            pending = await webhooks.item_pending(BATCH_ID, {**item(2), "result": {"large": True}})
            assert pending is not None
            webhooks.update(batch(new.url, secret=rotated, locations_only=True))
            await webhooks.item_done(pending)
            await new.wait_for(3)
            assert await webhooks.drain(10)
    finally:
        await old.stop()
        await new.stop()
    assert len(old.received) == 1  # its 503; the retry went to the new URL
    for received in new.accepted:
        verify(rotated, received.headers, received.body, now_s=int(received.headers["webhook-timestamp"]))
    keys = [received.payload["items"][0]["key"] for received in new.accepted]
    assert keys == ["scans/00000.png", "scans/00001.png", "scans/00002.png"]
    assert "result" not in new.accepted[2].payload["items"][0]
