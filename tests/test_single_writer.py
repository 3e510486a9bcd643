"""The single writer of a control path on a store without conditional writes: the first worker
takes the role, a second refuses saying why, and of two that start together exactly one wins."""

from __future__ import annotations

import asyncio

import pytest
from fixtures.clock import FakeClock

from ocrbatch.coordination.single_writer import SINGLE_WRITER_KEY, SecondWriterRefused, SingleWriter
from ocrbatch.storage.base import Storage, StoredObject


def writer(storage: Storage, clock: FakeClock, *, settle_s: float = 2.0) -> SingleWriter:
    return SingleWriter(storage, ttl_s=60, settle_s=settle_s, clock=clock, sleep=clock.sleep)


async def test_a_second_writer_refuses_until_the_first_releases(storage: Storage) -> None:
    """While one worker is the single writer, another refuses with a message naming it and saying
    what to configure; after the first releases, the other takes the role."""
    clock = FakeClock()
    first, second = writer(storage, clock), writer(storage, clock)
    await first.acquire()
    with pytest.raises(SecondWriterRefused, match=r'another worker \(host .*backend = "redis"'):
        await second.acquire()
    await first.release()
    await second.acquire()
    assert SINGLE_WRITER_KEY.endswith(".json")


async def test_an_expired_single_writer_is_replaced(storage: Storage) -> None:
    """A single writer that stopped renewing (killed on another machine) is replaced once its
    document has expired, not before."""
    clock = FakeClock()
    await writer(storage, clock).acquire()
    clock.now_s += 50  # its document was written 2 s before, with 60 s to live
    with pytest.raises(SecondWriterRefused):
        await writer(storage, clock).acquire()
    clock.now_s += 10
    await writer(storage, clock).acquire()


async def test_of_two_writers_starting_together_exactly_one_wins(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers that both find no single writer and both write within the settle time: the
    read-back after it lets exactly one proceed (the window the README states)."""
    clock = FakeClock()
    both_checked, both_wrote = asyncio.Barrier(2), asyncio.Barrier(2)
    reads = 0
    read = storage.read

    async def read_together(key: str) -> StoredObject:
        """Both first checks find the path free before either writes (what starting together is)."""
        nonlocal reads
        reads += 1
        first_check = reads <= 2
        try:
            return await read(key)
        finally:
            if first_check:
                await asyncio.wait_for(both_checked.wait(), timeout=10)

    monkeypatch.setattr(storage, "read", read_together)

    async def settle(delay_s: float) -> None:
        """The settle time passes once both have written (what a real settle time allows)."""
        await asyncio.wait_for(both_wrote.wait(), timeout=10)
        await clock.sleep(delay_s)

    contenders = [SingleWriter(storage, ttl_s=60, settle_s=2.0, clock=clock, sleep=settle) for _ in range(2)]
    outcomes = await asyncio.gather(*(one.acquire() for one in contenders), return_exceptions=True)
    refused = [outcome for outcome in outcomes if isinstance(outcome, SecondWriterRefused)]
    assert (len(refused), outcomes.count(None)) == (1, 1), outcomes
