"""Three `ocrbatch run` replicas on the NAVER Object Storage profile (V1 listings only, conditional
headers ignored), coordinated through Redis: one shared cap of 5 at the service, every input
recognised once, and a SIGKILLed replica costs no more than the items it had in hand."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from fixtures.process import OcrbatchProcess, start_ocrbatch
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, WorkerSetup, create_batch, keys, write_config

from ocrbatch.coordination.claims import claim_key
from ocrbatch.storage.base import Storage
from ocrbatch.worker.sizing import max_item_tasks_per_batch

CAP = 5
INPUTS = 600
REPLICAS = 3
SLOT_LEASE_S = 3.0
LATENCY = {"latency_ms": 300.0, "latency_jitter_ms": 100.0}  # as `make bench`


async def write_inputs(inputs: Storage, count: int) -> list[str]:
    """`count` small PNGs, 100 writes at a time; returns their keys."""
    image, names = png(64, 32), [f"scan-{index:05}.png" for index in range(count)]
    for start in range(0, count, 100):
        await asyncio.gather(*(inputs.write(name, image) for name in names[start : start + 100]))
    return names


@dataclass(frozen=True)
class Shared:
    """The NCP-profile bucket with its inputs and batch, and the replicas' settings file."""

    setup: WorkerSetup
    config: Path
    batch_id: str
    key_prefix: str  # of the replicas' keys in Redis
    names: list[str]  # the input keys


async def ncp_setup(make_worker_setup: MakeSetup, tmp_path: Path, redis_url: str) -> Shared:
    """`INPUTS` inputs, a batch, and the settings of a replica: cap 5 for the domain, which with
    Redis is the total of all replicas, as the service allows 5."""
    setup = await make_worker_setup(store="ncp", max_concurrent_calls=CAP, faults=LATENCY)
    key_prefix = f"t{uuid.uuid4().hex[:8]}:"
    shared = {"backend": "redis", "url": redis_url, "key_prefix": key_prefix, "slot_lease_s": SLOT_LEASE_S}
    names = await write_inputs(setup.inputs, INPUTS)
    batch_id = await create_batch(setup, setup.settings(coordination=shared))
    config = write_config(setup, tmp_path / "ocrbatch.toml", coordination=shared, claim_ttl_s=30)
    return Shared(setup, config, batch_id, key_prefix, names)


@asynccontextmanager
async def replicas(config: Path, *args: str) -> AsyncIterator[list[OcrbatchProcess]]:
    """`REPLICAS` worker processes started together; any still running at the end is SIGTERMed
    and must exit 0."""
    started = [await start_ocrbatch(config, "run", *args) for _ in range(REPLICAS)]
    async with AsyncExitStack() as stack:
        for process in started:
            stack.push_async_callback(_stopped_cleanly, process)
        yield started


async def _stopped_cleanly(process: OcrbatchProcess) -> None:
    if process.process.returncode == -signal.SIGKILL:
        return
    assert await process.stop(timeout_s=60) == 0, process.explain("a replica did not stop cleanly")


async def results_of(results: Storage) -> list[str]:
    return [key.removesuffix(".json") for key in await keys(results) if key.endswith(".png.json")]


def assert_within_the_cap(setup: WorkerSetup) -> dict[str, Any]:
    stats = setup.emulator.stats()
    print(f"slot utilisation {stats['domains']['general']['slot_utilisation']}")  # shown on failure
    assert stats["peak_in_flight"] <= CAP, f"the service saw {stats['peak_in_flight']} calls at once"
    assert stats["rejections"] == {}, f"the service refused calls: {stats['rejections']}"
    return stats


@pytest.mark.timeout(240)
async def test_three_replicas_share_one_cap_and_recognise_each_input_once(
    make_worker_setup: MakeSetup, tmp_path: Path, redis_url: str
) -> None:
    """3 `run --once` replicas, 600 inputs, a service capped at 5 and each replica configured for
    the domain's 5: the replicas share the 5 through Redis. Each pass ends by itself (exit 0), every
    input has exactly one result, each image was recognised once, the service never saw more than
    5 calls at once, and no call was answered 0025."""
    shared = await ncp_setup(make_worker_setup, tmp_path, redis_url)
    setup = shared.setup
    async with replicas(shared.config, "--once") as started:
        for process in started:
            assert await process.wait(timeout_s=180) == 0, process.explain("a replica's pass failed")
    assert sorted(await results_of(setup.results)) == sorted(setup.emulator.recognitions)
    assert len(await results_of(setup.results)) == INPUTS
    stats = assert_within_the_cap(setup)
    assert (stats["successes"], stats["recognised_more_than_once"]) == (INPUTS, {})
    assert all(process.events("worker.started") for process in started)
    done = [len(process.events("item.done", outcome="succeeded")) for process in started]
    assert sum(done) == INPUTS
    assert sum(1 for count in done if count) >= 2, f"the work was not spread over the replicas: {done}"


def _held_claims(client: redis.Redis, shared: Shared, pid: int) -> set[str]:
    """The inputs whose claim in Redis is held by process `pid`."""
    held = set()
    for name in shared.names:
        document = client.hget(f"{shared.key_prefix}doc:{claim_key(shared.batch_id, name)}", "data")
        if document is not None and json.loads(document).get("pid") == pid:
            held.add(name)
    return held


@pytest.mark.timeout(240)
async def test_a_sigkilled_replica_costs_only_its_items_in_hand_and_its_slots_come_back(
    make_worker_setup: MakeSetup, tmp_path: Path, redis_url: str
) -> None:
    """3 `run` replicas; once a third of the inputs are recognised, one is frozen (SIGSTOP), the
    items it has claimed and the slot leases held are noted, and it is SIGKILLed. The other two
    finish the batch: every input has exactly one result, an image recognised twice is one the
    dead replica had in hand, the cap of 5 is never exceeded, and the dead replica's slot leases
    are gone within `slot_lease_s` (plus the next acquisition), so the survivors get all 5."""
    shared = await ncp_setup(make_worker_setup, tmp_path, redis_url)
    setup, emulator, names = shared.setup, shared.setup.emulator, shared.names
    with redis.Redis.from_url(redis_url) as client:
        async with replicas(shared.config) as started:
            await within(
                emulator.wait_until(lambda: len(emulator.recognitions) >= INPUTS // 3),
                120,
                "the replicas did not recognise a third of the inputs",
            )
            victim = started[0]
            victim.process.send_signal(signal.SIGSTOP)
            slots = f"{shared.key_prefix}slots:receipts"
            leases_at_kill = {member.decode() for member in client.zrange(slots, 0, -1)}
            in_hand = _held_claims(client, shared, victim.process.pid)
            victim.process.kill()
            assert await victim.wait(timeout_s=30) == -signal.SIGKILL
            await within(
                emulator.wait_until(
                    lambda: not leases_at_kill & {member.decode() for member in client.zrange(slots, 0, -1)}
                ),
                SLOT_LEASE_S + 5,
                f"slot leases {leases_at_kill} were still held {SLOT_LEASE_S + 5:g} s after the kill",
            )
            await within(
                emulator.wait_until(lambda: len(emulator.recognitions) >= INPUTS),
                180,
                "the surviving replicas did not finish the batch",
            )
            await within(
                emulator.wait_until(lambda: sum(meter.in_flight for meter in emulator.meters.values()) == 0),
                30,
                "calls were still in flight after every input was recognised",
            )
    # SIGTERM lets the survivors write what they recognised last before they exit 0.
    stored = await results_of(setup.results)
    assert sorted(stored) == names, f"{len(stored)} results for {INPUTS} inputs"
    stats = assert_within_the_cap(setup)
    twice = set(stats["recognised_more_than_once"])
    assert twice <= in_hand, f"recognised twice but not in the dead replica's hands: {twice - in_hand}"
    assert len(in_hand) <= max_item_tasks_per_batch(CAP)
    assert stats["successes"] == INPUTS + sum(
        count - 1 for count in stats["recognised_more_than_once"].values()
    )
