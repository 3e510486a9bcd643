"""A domain limiter whose slots are shared through Redis: replicas together never exceed the
domain's cap, and one replica's 0025 lowers the cap the others see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from ocrbatch.coordination.slots import SharedSlots
from ocrbatch.worker.limiter import DomainLimiter


async def _yield(delay_s: float) -> None:
    """Waits on other tasks (and Redis) pass without sleeping for real."""
    await asyncio.sleep(0)


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[list[redis.asyncio.Redis]]:
    """Two clients of one Redis database: two replicas."""
    opened = [redis.asyncio.from_url(redis_url) for _ in range(2)]
    yield opened
    for client in opened:
        await client.aclose()


def replica(client: redis.asyncio.Redis, cap: int) -> DomainLimiter:
    shared = SharedSlots(
        client,
        key_prefix="test:",
        domain="receipts",
        max_concurrent_calls=cap,
        calls_per_second=None,
        sleep=_yield,
        poll_s=0.001,
    )
    return DomainLimiter("receipts", max_concurrent_calls=cap, sleep=_yield, shared=shared)


async def test_replicas_never_exceed_the_shared_cap(clients: list[redis.asyncio.Redis]) -> None:
    """Two replicas with 40 calls between them hold at most the domain's 3 slots at once, and every
    call gets its turn; all slots are given back."""
    limiters = [replica(client, 3) for client in clients]
    in_flight, peak, done = 0, 0, 0

    async def call(limiter: DomainLimiter, index: int) -> None:
        nonlocal in_flight, peak, done
        async with limiter.slot(f"batch-{index % 2}") as permit:
            in_flight += 1
            peak = max(peak, in_flight)
            for _ in range(3):
                await asyncio.sleep(0)
            in_flight -= 1
            permit.succeeded()
        done += 1

    calls = [call(limiters[index % 2], index) for index in range(40)]
    await asyncio.wait_for(asyncio.gather(*calls), timeout=30)
    assert (peak, done) == (3, 40)
    assert [limiter.in_flight for limiter in limiters] == [0, 0]
    assert await clients[0].zcard("test:slots:receipts") == 0


async def test_one_replicas_0025_lowers_the_cap_for_all(clients: list[redis.asyncio.Redis]) -> None:
    """A 0025 answered to one replica halves the shared cap, which the other replica then sees."""
    first, second = (replica(client, 4) for client in clients)
    async with first.slot("b") as permit:
        permit.rate_limited()
    async with second.slot("b") as permit:
        permit.succeeded()
    assert (first.cap, second.cap) == (2, 2)
    assert second.snapshot()["shared"] == "redis"
