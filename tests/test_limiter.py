"""The domain limiter: cap on calls in flight, fairness, AIMD on 0025, pause on 0023, rate budget."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import pytest
from fake_clock import FakeClock

from ocrbatch.worker.limiter import DomainLimiter, Permit


@pytest.fixture
def fake_time() -> FakeClock:
    """Time from 0 s, moved only by the limiter's sleeps."""
    return FakeClock(now_s=0.0)


def make_limiter(fake_time: FakeClock, max_concurrent_calls: int = 5, **options: Any) -> DomainLimiter:
    return DomainLimiter(
        "general-1",
        max_concurrent_calls=max_concurrent_calls,
        clock=fake_time,
        sleep=fake_time.sleep,
        **options,
    )


async def take(limiter: DomainLimiter, stack: AsyncExitStack, batch_id: str = "batch-a") -> Permit:
    """Hold a slot until `stack` closes."""
    return await stack.enter_async_context(limiter.slot(batch_id))


async def start_waiters(tasks: list[asyncio.Task[Any]], limiter: DomainLimiter, expected: int) -> None:
    """Let the just-created tasks run up to their first await: one turn of the loop, deterministic."""
    await asyncio.sleep(0)
    assert limiter.waiting == expected, f"{limiter.waiting} waiting, expected {expected}"


async def test_never_more_than_cap_in_flight_under_100_tasks(fake_time: FakeClock) -> None:
    """100 concurrent tasks on a cap of 5: at most 5 are ever inside a slot, and all 5 are used."""
    limiter = make_limiter(fake_time, max_concurrent_calls=5)
    inside = 0
    max_inside = 0
    full = asyncio.Event()
    release = asyncio.Event()

    async def call() -> None:
        nonlocal inside, max_inside
        async with limiter.slot("batch-a"):
            inside += 1
            max_inside = max(max_inside, inside)
            if inside == 5:
                full.set()
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(call()) for _ in range(100)]
    await full.wait()
    assert (limiter.in_flight, limiter.waiting) == (5, 95)
    release.set()
    await asyncio.gather(*tasks)
    assert max_inside == 5
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def test_fifo_within_a_batch(fake_time: FakeClock) -> None:
    """Waiters of one batch are admitted in the order they asked."""
    limiter = make_limiter(fake_time, max_concurrent_calls=1)
    order: list[int] = []

    async def call(n: int) -> None:
        async with limiter.slot("batch-a"):
            order.append(n)

    async with AsyncExitStack() as holder:
        await take(limiter, holder)
        tasks = [asyncio.create_task(call(n)) for n in range(8)]
        await start_waiters(tasks, limiter, 8)
    await asyncio.gather(*tasks)
    assert order == list(range(8))


async def test_round_robin_across_batches(fake_time: FakeClock) -> None:
    """A batch with many waiters and one with few alternate; the rest of the big one follows in order."""
    limiter = make_limiter(fake_time, max_concurrent_calls=1)
    order: list[str] = []

    async def call(name: str) -> None:
        async with limiter.slot(name[0]):
            order.append(name)

    async with AsyncExitStack() as holder:
        await take(limiter, holder, "other")
        tasks = [asyncio.create_task(call(f"A{n}")) for n in range(1, 7)]
        tasks += [asyncio.create_task(call(f"B{n}")) for n in range(1, 4)]
        await start_waiters(tasks, limiter, 9)
    await asyncio.gather(*tasks)
    assert order == ["A1", "B1", "A2", "B2", "A3", "B3", "A4", "A5", "A6"]


async def test_rate_limited_halves_the_cap_down_to_one(fake_time: FakeClock) -> None:
    """Each 0025 from a call of the current round halves the cap: 10 -> 5 -> 2 -> 1, never below 1."""
    limiter = make_limiter(fake_time, max_concurrent_calls=10)
    caps = []
    for _ in range(4):
        async with limiter.slot("batch-a") as permit:
            permit.rate_limited()
        caps.append(limiter.cap)
    assert caps == [5, 2, 1, 1]
    assert limiter.max_cap == 10


async def test_a_burst_of_rate_limits_from_one_round_lowers_the_cap_once(fake_time: FakeClock) -> None:
    """Ten calls started under cap 10 all answered 0025: the cap drops once, to 5, not to 1."""
    limiter = make_limiter(fake_time, max_concurrent_calls=10)
    async with AsyncExitStack() as stack:
        permits = [await take(limiter, stack) for _ in range(10)]
        for permit in permits:
            permit.rate_limited()
        assert limiter.cap == 5
    async with limiter.slot("batch-a") as permit:
        permit.rate_limited()  # started after the decrease: a new round
    assert limiter.cap == 2


async def succeed_at_cap(limiter: DomainLimiter, times: int) -> None:
    """`times` successful calls, each taking the last free slot: the domain is saturated."""
    async with AsyncExitStack() as others:
        for _ in range(times):
            while limiter.in_flight < limiter.cap - 1:
                await take(limiter, others)
            async with limiter.slot("batch-a") as permit:
                assert permit.at_cap
                permit.succeeded()
                permit.succeeded()  # only the first report of a permit counts


async def fail_at_cap(limiter: DomainLimiter) -> None:
    """A call taking the last free slot is answered 0025."""
    async with AsyncExitStack() as others:
        while limiter.in_flight < limiter.cap - 1:
            await take(limiter, others)
        async with limiter.slot("batch-a") as permit:
            permit.rate_limited()


async def test_a_round_of_successes_raises_the_cap_by_one_up_to_max(fake_time: FakeClock) -> None:
    """After a decrease, each round of `cap` successes adds one slot; stale successes do not count."""
    limiter = make_limiter(fake_time, max_concurrent_calls=10)
    async with AsyncExitStack() as stack:
        old_round = [await take(limiter, stack) for _ in range(10)]
        old_round[0].rate_limited()
        assert old_round[-1].at_cap
        old_round[-1].succeeded()  # started under cap 10, before the decrease
    assert limiter.cap == 5
    await succeed_at_cap(limiter, 4)
    assert limiter.cap == 5
    await succeed_at_cap(limiter, 1)
    assert limiter.cap == 6
    caps = []
    for cap in range(6, 12):
        await succeed_at_cap(limiter, cap)
        caps.append(limiter.cap)
    assert caps == [7, 8, 9, 10, 10, 10]


async def test_successes_with_slots_to_spare_do_not_raise_the_cap(fake_time: FakeClock) -> None:
    """Only calls that took the last free slot count: a domain that never fills its cap keeps it."""
    limiter = make_limiter(fake_time, max_concurrent_calls=4)
    await fail_at_cap(limiter)
    for _ in range(20):
        async with limiter.slot("batch-a") as permit:
            assert not permit.at_cap
            permit.succeeded()
    assert limiter.cap == 2
    await succeed_at_cap(limiter, 2)
    assert limiter.cap == 3


async def test_recover_after_successes_sets_the_round_length(fake_time: FakeClock) -> None:
    """With recover_after_successes=2, two successes add a slot whatever the cap."""
    limiter = make_limiter(fake_time, max_concurrent_calls=8, recover_after_successes=2)
    await fail_at_cap(limiter)
    caps = []
    for _ in range(4):
        await succeed_at_cap(limiter, 1)
        caps.append(limiter.cap)
    assert caps == [4, 5, 5, 6]


async def test_repeated_rate_limits_at_one_level_slow_the_probes_back_to_it(fake_time: FakeClock) -> None:
    """Each new 0025 at the level that failed before doubles the rounds needed to climb back to it,
    so a cap set too high costs few 0025s; once that level holds for those rounds it is forgotten."""
    limiter = make_limiter(fake_time, max_concurrent_calls=4, recover_after_successes=1)

    async def successes_to_climb_back() -> int:
        await fail_at_cap(limiter)
        assert limiter.cap == 2
        await succeed_at_cap(limiter, 1)
        assert limiter.cap == 3
        successes = 0
        while limiter.cap == 3:
            await succeed_at_cap(limiter, 1)
            successes += 1
        return successes

    assert [await successes_to_climb_back() for _ in range(4)] == [1, 2, 4, 8]
    await succeed_at_cap(limiter, 8)  # cap 4 holds for 8 rounds: the limit was raised
    assert await successes_to_climb_back() == 1


async def test_a_raised_cap_admits_a_waiter_at_once(fake_time: FakeClock) -> None:
    """When a success raises the cap, a waiting call starts without waiting for a release."""
    limiter = make_limiter(fake_time, max_concurrent_calls=4, recover_after_successes=1)
    admitted = asyncio.Event()

    async def call() -> None:
        async with limiter.slot("batch-b"):
            admitted.set()

    await fail_at_cap(limiter)
    async with AsyncExitStack() as stack:
        await take(limiter, stack)
        last_slot = await take(limiter, stack)
        assert (limiter.cap, limiter.in_flight) == (2, 2)
        waiter = asyncio.create_task(call())
        await start_waiters([waiter], limiter, 1)
        last_slot.succeeded()
        assert (limiter.cap, limiter.in_flight, limiter.waiting) == (3, 3, 0)
        await admitted.wait()
        await waiter
    assert limiter.in_flight == 0


async def test_a_lower_cap_evicts_no_call_in_flight(fake_time: FakeClock) -> None:
    """Halving the cap keeps the calls in flight; new calls start only once fewer than the cap remain."""
    limiter = make_limiter(fake_time, max_concurrent_calls=4)
    admitted = asyncio.Event()

    async def call() -> None:
        async with limiter.slot("batch-b"):
            admitted.set()

    holders = [AsyncExitStack() for _ in range(4)]
    permits = [await take(limiter, holder) for holder in holders]
    permits[0].rate_limited()
    assert (limiter.cap, limiter.in_flight) == (2, 4)
    waiter = asyncio.create_task(call())
    await start_waiters([waiter], limiter, 1)
    for holder, in_flight in zip(holders[:2], (3, 2), strict=True):
        await holder.aclose()
        assert (limiter.in_flight, limiter.waiting) == (in_flight, 1)
    await holders[2].aclose()
    await admitted.wait()
    await waiter
    await holders[3].aclose()
    assert limiter.in_flight == 0


async def test_pause_holds_new_calls_until_the_longest_pause_ends(fake_time: FakeClock) -> None:
    """0023 pauses: a call in flight goes on, new calls start only when the longest pause is over."""
    limiter = make_limiter(fake_time, max_concurrent_calls=5)
    started_at_s: list[float] = []

    async def call() -> None:
        async with limiter.slot("batch-a"):
            started_at_s.append(fake_time())

    async with AsyncExitStack() as stack:
        permit = await take(limiter, stack)
        limiter.pause(10)
        limiter.pause(3)  # shorter: ignored
        assert limiter.paused_for_s == 10
        tasks = [asyncio.create_task(call()) for _ in range(3)]
        permit.succeeded()
        await asyncio.gather(*tasks)
        assert limiter.in_flight == 1  # the call in flight was never interrupted
    assert started_at_s == [10, 10, 10]
    assert fake_time.sleeps_s == [10]  # one waiter did the timed wait for all of them
    assert limiter.paused_for_s == 0


async def test_a_longer_pause_during_the_wait_extends_it(fake_time: FakeClock) -> None:
    """A 0023 arriving while calls wait out a pause pushes their start to the end of the new pause."""
    limiter = make_limiter(fake_time, max_concurrent_calls=5)
    limiter.pause(5)

    def quota_error_at_start() -> None:
        if fake_time.now_s == 0:
            limiter.pause(20)

    fake_time.on_sleep = quota_error_at_start
    async with limiter.slot("batch-a"):
        assert fake_time() == 20
    assert fake_time.sleeps_s == [5, 15]


async def test_calls_per_second_spaces_admissions(fake_time: FakeClock) -> None:
    """At 2 calls/s, no more than 2 start in any second: 6 concurrent calls take 2 s of fake time."""
    limiter = make_limiter(fake_time, max_concurrent_calls=10, calls_per_second=2)
    started_at_s: list[float] = []

    async def call() -> None:
        async with limiter.slot("batch-a"):
            started_at_s.append(fake_time())

    await asyncio.gather(*(call() for _ in range(6)))
    assert started_at_s == [0, 0, 1, 1, 2, 2]


async def test_calls_per_second_below_one(fake_time: FakeClock) -> None:
    """At 0.5 calls/s, calls start 2 s apart."""
    limiter = make_limiter(fake_time, max_concurrent_calls=10, calls_per_second=0.5)
    started_at_s: list[float] = []
    for _ in range(3):
        async with limiter.slot("batch-a"):
            started_at_s.append(fake_time())
    assert started_at_s == [0, 2, 4]


async def test_cancelled_waiters_leak_no_slot(fake_time: FakeClock) -> None:
    """Cancelling queued waiters, or one admitted in the same instant, frees everything they held."""
    limiter = make_limiter(fake_time, max_concurrent_calls=2)
    order: list[str] = []

    async def call(name: str) -> None:
        async with limiter.slot(name[0]):
            order.append(name)

    holders = [AsyncExitStack(), AsyncExitStack()]
    for holder in holders:
        await take(limiter, holder, "other")
    tasks = {name: asyncio.create_task(call(name)) for name in ("A1", "A2", "B1", "A3")}
    await start_waiters(list(tasks.values()), limiter, 4)
    tasks["A2"].cancel()
    tasks["B1"].cancel()  # the only waiter of its batch
    for name in ("A2", "B1"):
        with pytest.raises(asyncio.CancelledError):
            await tasks[name]
    assert limiter.waiting == 2
    await holders[0].aclose()
    assert (limiter.in_flight, limiter.waiting) == (2, 1)  # the slot is A1's, though A1 has not run yet
    tasks["A1"].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks["A1"]
    await tasks["A3"]
    assert order == ["A3"]  # A1's slot went to A3 while the other holder kept its own
    assert (limiter.in_flight, limiter.waiting) == (1, 0)
    await holders[1].aclose()
    assert (limiter.in_flight, limiter.waiting) == (0, 0)
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await take(limiter, stack)
        assert limiter.in_flight == 2


async def test_cancelling_the_waiter_doing_the_timed_wait_hands_it_on(fake_time: FakeClock) -> None:
    """If the waiter sleeping out a pause is cancelled, the next one takes over the wait."""
    limiter = make_limiter(fake_time, max_concurrent_calls=2)
    fake_time.gate = asyncio.Event()
    limiter.pause(10)
    first = asyncio.create_task(_start_at(limiter, fake_time))
    await fake_time.sleeping.wait()
    fake_time.sleeping.clear()
    second = asyncio.create_task(_start_at(limiter, fake_time))
    await start_waiters([second], limiter, 2)
    first.cancel()
    await fake_time.sleeping.wait()
    assert limiter.waiting == 1
    fake_time.gate.set()
    assert await second == 10
    with pytest.raises(asyncio.CancelledError):
        await first
    assert fake_time.sleeps_s == [10, 10]
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def _start_at(limiter: DomainLimiter, fake_time: FakeClock) -> float:
    async with limiter.slot("batch-b"):
        return fake_time()


async def test_an_exception_inside_the_slot_releases_it(fake_time: FakeClock) -> None:
    """A call that raises gives its slot back, to the next waiter."""
    limiter = make_limiter(fake_time, max_concurrent_calls=1)

    async def failing_call() -> None:
        async with limiter.slot("batch-a"):
            raise RuntimeError("boom")

    waiter = asyncio.create_task(_start_at(limiter, fake_time))
    with pytest.raises(RuntimeError, match="boom"):
        await failing_call()
    assert await waiter == 0
    assert limiter.in_flight == 0


async def test_snapshot(fake_time: FakeClock) -> None:
    """snapshot() names the domain and reports cap, max cap, calls in flight and waiting, and the pause."""
    limiter = make_limiter(fake_time, max_concurrent_calls=4)
    assert limiter.snapshot() == {
        "name": "general-1",
        "cap": 4,
        "settled_cap": 4,
        "max_cap": 4,
        "in_flight": 0,
        "waiting": 0,
        "paused_for_s": 0,
    }
    fake_time.gate = asyncio.Event()
    async with AsyncExitStack() as stack:
        permit = await take(limiter, stack)
        permit.rate_limited()
        limiter.pause(2.5)
        waiter = asyncio.create_task(_start_at(limiter, fake_time))
        await fake_time.sleeping.wait()
        assert limiter.snapshot() == {
            "name": "general-1",
            "cap": 2,
            "settled_cap": 2,
            "max_cap": 4,
            "in_flight": 1,
            "waiting": 1,
            "paused_for_s": 2.5,
        }
        fake_time.gate.set()
    assert await waiter == 2.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrent_calls": 0}, "max_concurrent_calls"),
        ({"calls_per_second": 0}, "calls_per_second"),
        ({"decrease_factor": 1.0}, "decrease_factor"),
        ({"recover_after_successes": 0}, "recover_after_successes"),
    ],
)
def test_invalid_settings_are_refused(options: dict[str, Any], message: str) -> None:
    """Settings that would stall or never adapt are refused with the setting's name."""
    settings: dict[str, Any] = {"max_concurrent_calls": 5} | options
    with pytest.raises(ValueError, match=message):
        DomainLimiter("general-1", **settings)


def test_a_negative_pause_is_refused() -> None:
    """pause() takes a duration; a negative one is a caller's bug."""
    with pytest.raises(ValueError, match="negative"):
        DomainLimiter("general-1", max_concurrent_calls=1).pause(-1)


async def test_settled_cap_excludes_a_probe_in_progress() -> None:
    """After a 0025 at level 4, climbing back to 4 is a probe: settled_cap stays 3 until 4 has held."""
    limiter = DomainLimiter("d", max_concurrent_calls=4, recover_after_successes=1)
    async with limiter.slot("b") as permit:
        permit.rate_limited()
    assert (limiter.cap, limiter.settled_cap) == (2, 2)
    for expected in (3, 4):
        async with AsyncExitStack() as stack:
            permits = [await stack.enter_async_context(limiter.slot("b")) for _ in range(limiter.cap)]
            permits[-1].succeeded()
        assert limiter.cap == expected
    assert limiter.settled_cap == 3
    assert limiter.snapshot()["settled_cap"] == 3
