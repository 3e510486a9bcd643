"""The domain limiter's slots: the cap on calls in flight, fairness within and across batches,
slots given back by cancelled waiters and failing calls, its snapshot, and its settings."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import pytest
from fixtures.clock import FakeClock
from fixtures.limiter import make_limiter, start_at, start_waiters, take
from fixtures.waits import within

from ocrbatch.worker.limiter import DomainLimiter


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
    await within(full.wait(), 10, "five calls did not get a slot")
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


async def test_an_exception_inside_the_slot_releases_it(fake_time: FakeClock) -> None:
    """A call that raises gives its slot back, to the next waiter."""
    limiter = make_limiter(fake_time, max_concurrent_calls=1)

    async def failing_call() -> None:
        async with limiter.slot("batch-a"):
            raise RuntimeError("boom")

    waiter = asyncio.create_task(start_at(limiter, fake_time))
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
        waiter = asyncio.create_task(start_at(limiter, fake_time))
        await within(fake_time.sleeping.wait(), 10, "the waiter did not sleep out the pause")
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
