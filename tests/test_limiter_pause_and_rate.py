"""The domain limiter's pauses and rate budget: 0023 holds new calls until the longest pause ends,
the timed wait is handed on when its waiter is cancelled, and calls_per_second spaces admissions."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from fixtures.clock import FakeClock
from fixtures.limiter import make_limiter, start_at, start_waiters, take
from fixtures.waits import within

from ocrbatch.worker.limiter import DomainLimiter


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


async def test_cancelling_the_waiter_doing_the_timed_wait_hands_it_on(fake_time: FakeClock) -> None:
    """If the waiter sleeping out a pause is cancelled, the next one takes over the wait."""
    limiter = make_limiter(fake_time, max_concurrent_calls=2)
    fake_time.gate = asyncio.Event()
    limiter.pause(10)
    first = asyncio.create_task(start_at(limiter, fake_time))
    await within(fake_time.sleeping.wait(), 10, "the first waiter did not sleep out the pause")
    fake_time.sleeping.clear()
    second = asyncio.create_task(start_at(limiter, fake_time))
    await start_waiters([second], limiter, 2)
    first.cancel()
    await within(fake_time.sleeping.wait(), 10, "the second waiter did not take over the pause")
    assert limiter.waiting == 1
    fake_time.gate.set()
    assert await second == 10
    with pytest.raises(asyncio.CancelledError):
        await first
    assert fake_time.sleeps_s == [10, 10]
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


def test_a_negative_pause_is_refused() -> None:
    """pause() takes a duration; a negative one is a caller's bug."""
    with pytest.raises(ValueError, match="negative"):
        DomainLimiter("general-1", max_concurrent_calls=1).pause(-1)
