"""Helpers for the domain limiter's tests: a limiter on the fake clock, slots held until a stack
closes, and waiters started up to their first await."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from fake_clock import FakeClock

from ocrbatch.worker.limiter import DomainLimiter, Permit


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


async def start_at(limiter: DomainLimiter, fake_time: FakeClock) -> float:
    async with limiter.slot("batch-b"):
        return fake_time()
