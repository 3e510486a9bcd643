"""A worker alone (`run --once` on the control storage's documents) keeps its item claims in memory,
and a worker beside it never processes unclaimed.

The lone worker takes the `_alone` lease before it looks for other registrations; every other
worker registers before it checks that lease. Whatever the interleaving, one of the two sees the
other: either nobody works alone, or the lone worker's items are refused to the others."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fixtures.clock import FakeClock
from fixtures.process import start_ocrbatch
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, create_batch, keys, open_worker, write_config

from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.claims import ALONE, CLAIM_PREFIX, ItemClaims, claim_key
from ocrbatch.coordination.memory import MemoryCoordination

INPUTS_SHARED = 160  # at 2 calls of 200 ms at once, a lone run takes 16 s: time for a second to join


async def _documents(coordination: Coordination, prefix: str) -> list[str]:
    return [key async for key in coordination.keys(prefix)]


async def test_a_worker_alone_claims_in_memory_and_the_others_leave_its_items(
    coordination: Coordination,
) -> None:
    """On the control storage (local, moto), a registered worker with nobody else registered works
    alone: its item claims write no document. A worker registered after it cannot work alone and is
    refused every item claim (webhook ones included) until the lone worker unregisters; with Redis
    (the NAVER profile) nobody works alone."""
    lone, other = ItemClaims(coordination, ttl_s=60), ItemClaims(coordination, ttl_s=60)
    await lone.register()
    if coordination.backend != "storage":
        assert not await lone.work_alone()
        assert await _documents(coordination, f"{CLAIM_PREFIX}{ALONE}/") == []
        return
    assert await lone.work_alone()
    assert await lone.take("b1", "scans/a.png")
    assert not await lone.take("b1", "scans/a.png")  # its own tasks are still kept apart
    assert await _documents(coordination, f"{CLAIM_PREFIX}b1/") == []

    await other.register()
    assert not await other.work_alone()
    assert other.alone_elsewhere
    assert not await other.take("b1", "scans/b.png")
    assert not await other.take("webhook-b1", lone.owner)
    assert other.held == 1  # its registration only

    await lone.release("b1", "scans/a.png")
    await lone.unregister()
    assert await _documents(coordination, f"{CLAIM_PREFIX}{ALONE}/") == []
    assert not await other.check_alone_elsewhere()
    assert await other.take("b1", "scans/b.png")
    assert await _documents(coordination, f"{CLAIM_PREFIX}b1/") == [claim_key("b1", "scans/b.png")]


async def test_a_single_writer_s_claims_in_memory_are_alone_already() -> None:
    """Claims in memory (a single writer's, on a store without conditional writes) are alone by
    construction: `work_alone` says so without any lease."""
    memory = MemoryCoordination()
    claims = ItemClaims(memory, ttl_s=60)
    await claims.register()
    assert await claims.work_alone()
    assert await _documents(memory, f"{CLAIM_PREFIX}{ALONE}/") == []
    assert await claims.take("b1", "a.png")
    assert not await claims.take("b1", "a.png")


async def test_a_worker_beside_a_registered_one_does_not_work_alone(coordination: Coordination) -> None:
    """With another worker registered, `work_alone` gives the `_alone` lease back and claims go to
    the shared documents; a registration that expired does not count."""
    clock = FakeClock()
    first = ItemClaims(coordination, ttl_s=30, clock=clock)
    second = ItemClaims(coordination, ttl_s=30, clock=clock)
    await first.register()
    await second.register()
    assert not await second.work_alone()
    assert not second.alone
    assert await _documents(coordination, f"{CLAIM_PREFIX}{ALONE}/") == []
    assert await second.take("b1", "a.png")
    assert await coordination.read(claim_key("b1", "a.png")) is not None

    if coordination.backend != "storage":
        return
    late = ItemClaims(coordination, ttl_s=30, clock=clock)
    clock.now_s += 31  # first and second stopped renewing: their registrations lapsed
    await late.register()
    assert await late.work_alone()


async def test_workers_starting_together_never_both_process_unclaimed(coordination: Coordination) -> None:
    """Rounds of two workers registering and asking to work alone at the same moment: at most one
    works alone, and then the other knows it and takes no item claim."""
    for round_index in range(8):
        pair = [ItemClaims(coordination, ttl_s=60), ItemClaims(coordination, ttl_s=60)]

        async def start(claims: ItemClaims, delay_s: float) -> bool:
            await claims.register()
            await asyncio.sleep(delay_s)
            return await claims.work_alone()

        delays = (0.0, 0.001 * (round_index % 3))
        alone = await asyncio.gather(
            *(start(claims, delay) for claims, delay in zip(pair, delays, strict=True))
        )
        assert sum(alone) <= 1
        for claims, is_alone in zip(pair, alone, strict=True):
            if not is_alone and any(alone):
                await claims.check_alone_elsewhere()
                assert claims.alone_elsewhere
                assert not await claims.take("b1", f"round-{round_index}.png")
        for claims in pair:
            await claims.unregister()
        assert await _documents(coordination, f"{CLAIM_PREFIX}{ALONE}/") == []


async def test_a_pass_beside_a_lone_worker_leaves_its_items_and_the_lone_pass_claims_nothing_shared(
    make_worker_setup: MakeSetup,
) -> None:
    """On moto: a worker's pass while another works alone calls nothing and counts every input as
    claimed elsewhere; the lone worker's pass then recognises each input once, and no claim document
    of the batch was ever written to the control location."""
    setup = await make_worker_setup(max_concurrent_calls=3)
    settings = setup.settings()
    for index in range(12):
        await setup.inputs.write(f"scan-{index:02}.png", png(120 + index, 80))
    batch_id = await create_batch(setup, settings)
    async with open_worker(settings) as (_, store):
        lone = ItemClaims(store.coordination, ttl_s=60)
        other = ItemClaims(store.coordination, ttl_s=60)
        await lone.register()
        assert await lone.work_alone()
        await other.register()
        async with (
            open_worker(settings, claims=other) as (beside, _),
            open_worker(settings, claims=lone) as (alone, _),
        ):
            skipped = next(iter((await beside.run_pass()).reports.values()))
            assert (skipped.elsewhere, skipped.succeeded) == (12, 0)
            assert setup.emulator.stats()["calls"] == 0
            done = next(iter((await alone.run_pass()).reports.values()))
            assert done.succeeded == 12
        assert await _documents(store.coordination, f"{CLAIM_PREFIX}{batch_id}/") == []
        await lone.unregister()
        await other.unregister()
    stats = setup.emulator.stats()
    assert (len(stats["recognitions"]), stats["recognised_more_than_once"]) == (12, {})
    assert len([key for key in await keys(setup.results) if key.startswith("scan-")]) == 12


async def test_run_once_works_alone_and_leaves_no_lease(make_worker_setup: MakeSetup, tmp_path: Path) -> None:
    """`ocrbatch run --once` with nobody else registered says it works alone, recognises every
    input, and leaves neither its registration nor the `_alone` lease behind."""
    setup = await make_worker_setup(max_concurrent_calls=2)
    settings = setup.settings()
    for index in range(4):
        await setup.inputs.write(f"page-{index}.png", png(100 + index, 60))
    await create_batch(setup, settings)
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    process = await start_ocrbatch(config, "run", "--once")
    assert await process.wait(timeout_s=120) == 0, process.explain("run --once failed")
    assert process.events("claims.working_alone")
    assert len(process.events("item.done", outcome="succeeded")) == 4
    async with open_worker(settings) as (_, store):
        left = await _documents(store.coordination, CLAIM_PREFIX)
    assert left == [], json.dumps(left)


async def _no_wait(delay_s: float) -> None:
    """An injected sleep that waits for nothing: each loop turn runs at once."""
    await asyncio.sleep(0)


async def test_a_lone_worker_shares_once_another_registers(coordination: Coordination) -> None:
    """A lone worker holding item claims in memory sees a newcomer register: it copies its held
    claims to the shared documents, gives the `_alone` lease back and claims in storage from then
    on; the newcomer, told to wait until shared, then takes part and cannot take the copied claims."""
    if coordination.backend != "storage":
        return
    lone = ItemClaims(coordination, ttl_s=60, sleep=_no_wait)
    await lone.register()
    assert await lone.work_alone()
    assert await lone.take("b1", "held.png")
    assert await _documents(coordination, f"{CLAIM_PREFIX}b1/") == []

    newcomer = ItemClaims(coordination, ttl_s=60, sleep=_no_wait)
    await newcomer.register()
    assert not await newcomer.work_alone()
    waiting = asyncio.create_task(newcomer.wait_until_shared(asyncio.Event(), timeout_s=60))
    await within(lone.share_when_joined(), 10, "the lone worker did not share")
    assert await within(waiting, 10, "the newcomer did not see the sharing")

    assert not lone.alone
    assert await _documents(coordination, f"{CLAIM_PREFIX}{ALONE}/") == []
    assert await _documents(coordination, f"{CLAIM_PREFIX}b1/") == [claim_key("b1", "held.png")]
    assert not await newcomer.take("b1", "held.png")  # the copied claim is the lone worker's
    assert await newcomer.take("b1", "other.png")
    assert await lone.take("b1", "third.png")  # in the shared documents now
    await lone.release("b1", "held.png")
    assert await newcomer.take("b1", "held.png")
    assert len(await _documents(coordination, f"{CLAIM_PREFIX}b1/")) == 3


async def test_run_once_started_beside_a_lone_one_waits_and_takes_part(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """Two `ocrbatch run --once` on one batch (a service of 2 calls at once, 200 ms each), the
    second started while the first works alone: the first shares, the second waits for that and
    then settles inputs too; each input ends once (a result or a failure record) and none is
    recognised twice."""
    setup = await make_worker_setup(max_concurrent_calls=2, faults={"latency_ms": 200, "seed": 5})
    settings = setup.settings()
    for index in range(INPUTS_SHARED):
        await setup.inputs.write(f"scan-{index:03}.png", png(90 + index, 50))
    await create_batch(setup, settings)
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    first = await start_ocrbatch(config, "run", "--once")
    await first.wait_for_log("claims.working_alone")
    await within(
        setup.emulator.wait_until(lambda: len(setup.emulator.recognitions) >= 4), 60, "no call was made"
    )
    second = await start_ocrbatch(config, "run", "--once")
    assert await first.wait(timeout_s=120) == 0, first.explain("the first run failed")
    assert await second.wait(timeout_s=120) == 0, second.explain("the second run failed")
    assert first.events("claims.sharing")
    # Without Redis each run keeps its own cap of 2, so together they may draw 0025s and a few
    # items end as retryable failure records, which the other run may then retry: every input
    # ends as exactly one of the two.
    ended = [len(process.events("item.done")) for process in (first, second)]
    assert sum(ended) >= INPUTS_SHARED
    assert ended[1] > 0, second.explain("the second run settled nothing")
    stats = setup.emulator.stats()
    assert stats["recognised_more_than_once"] == {}
    stored = await keys(setup.results)
    results = {key.removesuffix(".json") for key in stored if key.startswith("scan-")}
    failures = {
        key.removeprefix("_failed/").removesuffix(".json") for key in stored if key.startswith("_failed/")
    }
    assert len(results | failures) == INPUTS_SHARED
    assert not results & failures
    assert results == set(stats["recognitions"])
