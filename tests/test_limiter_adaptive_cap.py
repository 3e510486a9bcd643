"""The domain limiter's adaptive cap (AIMD): halved on 0025 once per round, raised by one after a
round of successes at the cap, probes back to a level that failed slowed down, and no call in
flight ever evicted."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from fixtures.clock import FakeClock
from fixtures.limiter import make_limiter, start_waiters, take
from fixtures.waits import within

from ocrbatch.worker.limiter import DomainLimiter


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
        await within(admitted.wait(), 10, "the waiter was not admitted")
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
    await within(admitted.wait(), 10, "the waiter was not admitted")
    await waiter
    await holders[3].aclose()
    assert limiter.in_flight == 0


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
