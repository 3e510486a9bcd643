"""One domain's call slots shared by replicas through a real Redis: the cap holds over all of
them, one replica's 0025 lowers it for every one (once per epoch), successes raise it back, a
killed replica's slots come back when their leases expire, and pauses and the calls-per-second
window hold every replica. Time is a fake wall clock passed to the scripts: nothing sleeps."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
from fixtures.clock import WALL_CLOCK_START_S, FakeClock
from fixtures.waits import within
from structlog.testing import capture_logs

from ocrbatch.coordination.limits import SharedPermit
from ocrbatch.coordination.slots import SharedSlots
from ocrbatch.errors import StorageError

PREFIX = "ocrbatch-test:"
DOMAIN = "general-1"
SLOTS_KEY = f"{PREFIX}slots:{DOMAIN}"

MakeReplica = Callable[..., SharedSlots]


@pytest.fixture
async def make_replica(redis_url: str) -> AsyncIterator[MakeReplica]:
    """`make_replica(clock, max_concurrent_calls=2, ...)`: a `SharedSlots` on a client of its own,
    as each replica has, sleeping on `clock` unless given `sleep=`; the clients are closed after
    the test."""
    clients: list[redis.asyncio.Redis] = []

    def make(clock: FakeClock, *, max_concurrent_calls: int = 2, **options: Any) -> SharedSlots:
        client = redis.asyncio.from_url(redis_url)
        clients.append(client)
        options.setdefault("calls_per_second", None)
        options.setdefault("sleep", clock.sleep)
        return SharedSlots(
            client,
            key_prefix=PREFIX,
            domain=DOMAIN,
            max_concurrent_calls=max_concurrent_calls,
            clock=clock,
            **options,
        )

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def still_time() -> FakeClock:
    """Wall-clock time that sleeps only record: it moves when the test moves it."""
    return FakeClock(advance_on_sleep=False)


@pytest.fixture
def moving_time() -> FakeClock:
    """Wall-clock time moved by every sleep."""
    return FakeClock()


async def _take(replica: SharedSlots) -> SharedPermit:
    return await within(replica.acquire(), 10, f"{replica.domain}: no slot granted")


async def test_replicas_never_hold_more_than_the_cap_together(
    make_replica: MakeReplica, still_time: FakeClock, redis_url: str
) -> None:
    """40 calls over two replicas, cap 3: never more than 3 hold a slot at once, and 3 do at times."""
    replicas = [make_replica(still_time, max_concurrent_calls=3) for _ in range(2)]
    observer = redis.asyncio.from_url(redis_url)
    holding, most_holding, most_on_server = 0, 0, 0

    async def call(replica: SharedSlots) -> None:
        nonlocal holding, most_holding, most_on_server
        permit = await replica.acquire()
        holding += 1
        most_holding = max(most_holding, holding)
        most_on_server = max(most_on_server, await observer.zcard(SLOTS_KEY))
        await observer.ping()  # the call takes a round trip, so others are admitted meanwhile
        holding -= 1
        await replica.release(permit)

    try:
        calls = [call(replicas[index % 2]) for index in range(40)]
        await within(asyncio.gather(*calls), 30, "the 40 calls did not all finish")
        assert await observer.zcard(SLOTS_KEY) == 0
    finally:
        await observer.aclose()
    assert most_holding == 3
    assert most_on_server <= 3


async def test_snapshot_counts_in_flight_over_replicas_and_held_here(
    make_replica: MakeReplica, still_time: FakeClock
) -> None:
    """`in_flight` is what the last grant saw over all replicas, `held` this object's slots only."""
    a, b = make_replica(still_time, max_concurrent_calls=5), make_replica(still_time, max_concurrent_calls=5)
    await _take(a)
    await _take(a)
    await _take(b)
    assert b.snapshot() | {"epoch": 0} == {
        "domain": DOMAIN,
        "cap": 5,
        "max_cap": 5,
        "epoch": 0,
        "in_flight": 3,
        "held": 1,
        "paused_for_s": 0.0,
    }
    assert a.held == 2


async def test_a_0025_on_one_replica_lowers_the_cap_of_all(
    make_replica: MakeReplica, still_time: FakeClock
) -> None:
    """Cap 4: a 0025 on replica a halves it, and replica b then grants only up to 2 in total."""
    a, b = make_replica(still_time, max_concurrent_calls=4), make_replica(still_time, max_concurrent_calls=4)
    permit = await _take(a)
    await a.rate_limited(permit)
    assert a.cap == 2
    assert await b.try_acquire() is not None
    assert b.cap == 2
    assert await b.try_acquire() is None  # a's slot and b's make 2


async def test_a_0025_from_before_the_decrease_is_ignored(
    make_replica: MakeReplica, still_time: FakeClock
) -> None:
    """Two calls started at epoch 0 both get 0025: only the first lowers the cap (4 → 2, not 1),
    and a success of an epoch-0 call does not count towards raising it."""
    a = make_replica(still_time, max_concurrent_calls=4, recover_after_successes=1)
    b = make_replica(still_time, max_concurrent_calls=4, recover_after_successes=1)
    first, second = await _take(a), await _take(b)
    await a.rate_limited(first)
    await b.rate_limited(second)  # b has not seen the decrease: the script refuses the stale epoch
    assert (a.cap, b.cap) == (2, 2)
    assert b.snapshot()["epoch"] == 1
    await a.release(first)
    last = await _take(b)  # with `second`, fills the cap of 2, at epoch 1
    assert (last.epoch, last.at_cap) == (1, True)
    stale = SharedPermit(token="old", epoch=0, at_cap=True)
    await a.succeeded(stale)
    assert a.cap == 2


async def test_successes_at_the_cap_raise_it_back_to_the_max(
    make_replica: MakeReplica, still_time: FakeClock
) -> None:
    """After a decrease to 2, each 2 successes of calls that took the last slot add one, up to the
    max of 4; calls with slots to spare count for nothing."""
    a = make_replica(still_time, max_concurrent_calls=4, recover_after_successes=2)
    b = make_replica(still_time, max_concurrent_calls=4, recover_after_successes=2)
    first = await _take(a)
    await a.rate_limited(first)
    await a.release(first)
    caps = []
    for _ in range(6):
        spare = await _take(a)  # one slot of a cap of 2 or more: no evidence
        taken = [await _take(b)]
        while not taken[-1].at_cap:
            taken.append(await _take(b))
        await a.succeeded(spare)
        for permit in taken:
            await b.succeeded(permit)
        await a.release(spare)
        for permit in taken:
            await b.release(permit)
        caps.append(b.cap)
    assert caps == [2, 3, 3, 4, 4, 4]
    assert a.cap == 4


async def test_a_lowered_max_clamps_the_shared_cap(make_replica: MakeReplica, still_time: FakeClock) -> None:
    """A replica deployed with max 3 where the shared cap stood at 8 brings it down to 3 for all."""
    old = make_replica(still_time, max_concurrent_calls=8)
    await old.release(await _take(old))
    new = make_replica(still_time, max_concurrent_calls=3)
    await new.release(await _take(new))
    assert new.cap == 3
    await old.release(await _take(old))
    assert old.cap == 3


async def test_a_killed_replica_s_slots_come_back_after_the_lease(
    make_replica: MakeReplica, still_time: FakeClock
) -> None:
    """A replica gone without releasing its 2 slots blocks the others until its leases expire."""
    killed = make_replica(still_time, max_concurrent_calls=2, lease_s=30)
    await _take(killed)
    await _take(killed)
    del killed  # no release, no renewal: its leases stay in Redis until they expire
    survivor = make_replica(still_time, max_concurrent_calls=2, lease_s=30)
    assert await survivor.try_acquire() is None
    still_time.now_s += 29.5
    assert await survivor.try_acquire() is None
    still_time.now_s += 0.5
    assert await survivor.try_acquire() is not None
    assert await survivor.try_acquire() is not None
    assert still_time.sleeps_s == []


async def test_renewing_extends_the_leases_and_a_lost_lease_is_logged(
    make_replica: MakeReplica, still_time: FakeClock
) -> None:
    """Renewed at 20 s, a 30 s lease lasts until 50 s; renewed after that, it is found gone, logged
    and forgotten."""
    holder = make_replica(still_time, max_concurrent_calls=1, lease_s=30)
    other = make_replica(still_time, max_concurrent_calls=1, lease_s=30)
    await _take(holder)
    still_time.now_s += 20
    await holder.renew()
    still_time.now_s += 29
    assert await other.try_acquire() is None
    still_time.now_s += 1
    with capture_logs() as logs:
        await holder.renew()
    assert holder.held == 0
    assert [entry["event"] for entry in logs] == ["slots.lease_lost"]
    assert logs[0]["domain"] == DOMAIN
    assert await other.try_acquire() is not None


async def test_keep_alive_renews_every_third_of_the_lease(
    make_replica: MakeReplica, still_time: FakeClock
) -> None:
    """keep_alive renews at 10, 20 and 30 s with a 30 s lease, so the slot lasts until 60 s."""
    sleeps_s: list[float] = []
    fourth_sleep = asyncio.Event()

    async def sleep(delay_s: float) -> None:
        sleeps_s.append(delay_s)
        if len(sleeps_s) == 4:
            fourth_sleep.set()
            await asyncio.Event().wait()  # until cancelled
        still_time.now_s += delay_s

    holder = make_replica(still_time, max_concurrent_calls=1, lease_s=30, sleep=sleep)
    other = make_replica(still_time, max_concurrent_calls=1, lease_s=30)
    await _take(holder)
    keeping = asyncio.create_task(holder.keep_alive())
    try:
        await within(fourth_sleep.wait(), 10, "keep_alive did not renew three times")
    finally:
        keeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await keeping
    assert sleeps_s == [10, 10, 10, 10]
    still_time.now_s = WALL_CLOCK_START_S + 59
    assert await other.try_acquire() is None
    still_time.now_s = WALL_CLOCK_START_S + 60
    assert await other.try_acquire() is not None


async def test_a_pause_holds_every_replica_and_the_longest_wins(
    make_replica: MakeReplica, moving_time: FakeClock
) -> None:
    """A 10 s pause from one replica (a later 3 s one changes nothing) makes the other wait exactly
    10 s; then that one's 5 s pause makes the first wait 5 s."""
    a, b = (
        make_replica(moving_time, max_concurrent_calls=5),
        make_replica(moving_time, max_concurrent_calls=5),
    )
    await a.pause(10)
    await a.pause(3)
    assert a.snapshot()["paused_for_s"] == 10
    await _take(b)
    assert moving_time() == WALL_CLOCK_START_S + 10
    await b.pause(5)
    await _take(a)
    assert moving_time() == WALL_CLOCK_START_S + 15
    assert moving_time.sleeps_s == [10, 5]


async def test_calls_per_second_is_shared_by_replicas(
    make_replica: MakeReplica, moving_time: FakeClock
) -> None:
    """At 2 calls/s, calls alternating between two replicas start 2 per second: 0, 0, 1, 1, 2, 2 s,
    each waiter sleeping exactly until the window allows it."""
    a = make_replica(moving_time, max_concurrent_calls=10, calls_per_second=2)
    b = make_replica(moving_time, max_concurrent_calls=10, calls_per_second=2)
    started_s = []
    for index in range(6):
        replica = a if index % 2 == 0 else b
        permit = await _take(replica)
        started_s.append(moving_time() - WALL_CLOCK_START_S)
        await replica.release(permit)
    assert started_s == [0, 0, 1, 1, 2, 2]
    assert moving_time.sleeps_s == [1, 1]


async def test_calls_per_second_below_one(make_replica: MakeReplica, moving_time: FakeClock) -> None:
    """At 0.5 calls/s, calls start 2 s apart, whichever replica starts them."""
    a = make_replica(moving_time, max_concurrent_calls=10, calls_per_second=0.5)
    b = make_replica(moving_time, max_concurrent_calls=10, calls_per_second=0.5)
    started_s = []
    for replica in [a, b, a]:
        await replica.release(await _take(replica))
        started_s.append(moving_time() - WALL_CLOCK_START_S)
    assert started_s == [0, 2, 4]


async def test_a_full_cap_waits_for_the_release_of_another_replica_without_polling(
    make_replica: MakeReplica, still_time: FakeClock, redis_url: str
) -> None:
    """With every slot taken, acquire blocks on the wake-up list (poll_s of an hour, so a poll would
    hang the test): a release on another replica wakes it at once, and it never sleeps."""
    a = make_replica(still_time, max_concurrent_calls=1, poll_s=3600)
    b = make_replica(still_time, max_concurrent_calls=1, poll_s=3600)
    held = await _take(a)
    waiting = asyncio.create_task(b.acquire())
    await within(_until_blocked(redis_url), 10, "b did not start waiting for a slot")
    assert not waiting.done()
    await a.release(held)
    await within(waiting, 10, "b was not woken when a released its slot")
    assert still_time.sleeps_s == []


async def test_each_release_wakes_one_waiter_and_a_release_before_the_wait_is_not_lost(
    make_replica: MakeReplica, still_time: FakeClock, redis_url: str
) -> None:
    """Cap 2, two holders on one replica, two waiters on another: each release hands its slot to
    one waiter. A wake-up pushed while nobody waits stays (at most the cap of them) for the next
    waiter, which then tries at once."""
    holder = make_replica(still_time, max_concurrent_calls=2, poll_s=3600)
    waiter = make_replica(still_time, max_concurrent_calls=2, poll_s=3600)
    permits = [await _take(holder), await _take(holder)]
    waiting = [asyncio.create_task(waiter.acquire()) for _ in range(2)]
    await within(_until_blocked(redis_url, count=2), 10, "the waiters did not start waiting")
    await holder.release(permits[0])
    done, pending = await within(
        asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED), 10, "no waiter was woken"
    )
    assert len(done) == 1
    await holder.release(permits[1])
    await within(asyncio.wait(pending), 10, "the second waiter was not woken")
    for task in waiting:
        await waiter.release(task.result())
    observer = redis.asyncio.from_url(redis_url)
    try:
        assert await observer.llen(f"{PREFIX}wake:{DOMAIN}") == 2  # nobody waits: kept, at most cap
    finally:
        await observer.aclose()
    assert still_time.sleeps_s == []


async def test_a_slot_whose_lease_ran_out_is_found_within_poll_s(
    make_replica: MakeReplica, still_time: FakeClock, redis_url: str
) -> None:
    """A slot that comes back because its holder died pushes no wake-up: a waiter finds it by
    trying again after `poll_s` at most."""
    killed = make_replica(still_time, max_concurrent_calls=1, lease_s=30)
    await _take(killed)
    del killed
    survivor = make_replica(still_time, max_concurrent_calls=1, lease_s=30, poll_s=0.01)
    waiting = asyncio.create_task(survivor.acquire())
    await within(_until_blocked(redis_url), 10, "the survivor did not start waiting")
    still_time.now_s += 30
    await within(waiting, 10, "the expired slot was not found by the next try")


async def _until_blocked(redis_url: str, *, count: int = 1) -> None:
    """Until `count` acquires wait on the wake-up list (Redis counts the blocked clients)."""
    observer = redis.asyncio.from_url(redis_url)
    try:
        # Redis's count is all there is to wait on; `within` bounds the loop.
        while int((await observer.info("clients"))["blocked_clients"]) < count:  # noqa: ASYNC110
            await asyncio.sleep(0)
    finally:
        await observer.aclose()


async def test_a_cancelled_acquire_stops_and_leaves_no_slot_behind(
    make_replica: MakeReplica, still_time: FakeClock, redis_url: str
) -> None:
    """Cancelled at any point of its round trip, acquire ends cancelled (never with a permit, even
    where Python 3.11's wait_for inside redis-py drops the cancellation), and a slot granted unseen
    is removed by the next renewal."""
    replica = make_replica(still_time, max_concurrent_calls=1)
    observer = redis.asyncio.from_url(redis_url)
    try:
        for steps in range(60):
            acquiring = asyncio.create_task(replica.acquire())
            for _ in range(steps):
                await asyncio.sleep(0)
            if not acquiring.cancel():
                await replica.release(acquiring.result())  # done before the cancel: nothing to check
                continue
            await within(asyncio.wait([acquiring]), 10, f"acquire cancelled after {steps} steps did not end")
            assert acquiring.cancelled(), f"cancelled after {steps} steps, acquire gave {acquiring.result()}"
            await replica.renew()
            assert await observer.zcard(SLOTS_KEY) == 0, f"a slot left behind after {steps} steps"
            assert replica.held == 0
    finally:
        await observer.aclose()


async def test_an_unreachable_redis_is_a_storage_error(still_time: FakeClock) -> None:
    """No server: acquire fails with StorageError naming the server, not the password."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.asyncio.from_url(f"redis://:s3cret@127.0.0.1:{port}/0", socket_connect_timeout=2)
    slots = SharedSlots(
        client,
        key_prefix=PREFIX,
        domain=DOMAIN,
        max_concurrent_calls=1,
        calls_per_second=None,
        clock=still_time,
    )
    try:
        with pytest.raises(StorageError) as raised:
            await slots.acquire()
    finally:
        await client.aclose()
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "s3cret" not in str(raised.value)
