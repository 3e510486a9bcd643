"""Item claims on each storage profile, and two workers reconciling one batch at the same time.

Claims are documents of the profile's `coordination`: objects of the control location on a local
directory and on moto, Redis on the NAVER profile (whose store ignores conditional writes)."""

from __future__ import annotations

import asyncio
import json
import os
import socket

from fixtures.clock import FakeClock
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, WorkerProfile, create_batch, keys

from ocrbatch.batches.store import batch_store_in
from ocrbatch.clova.client import open_ocr_session
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.claims import ItemClaims, claim_key
from ocrbatch.coordination.memory import MemoryCoordination
from ocrbatch.errors import StorageError
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.webhooks.delivery import open_webhook_session
from ocrbatch.worker.worker import Worker


async def test_a_claim_is_held_by_one_worker_until_released(coordination: Coordination) -> None:
    """While one worker holds an item, neither another worker nor another task of its own process can
    take it; once released, the other can."""
    first, second = ItemClaims(coordination, ttl_s=60), ItemClaims(coordination, ttl_s=60)
    assert await first.take("b1", "scans/a.png")
    assert not await first.take("b1", "scans/a.png")  # a second task of the same process
    assert not await second.take("b1", "scans/a.png")
    assert await second.take("b1", "scans/b.png")  # other items and batches are independent
    assert await second.take("b2", "scans/a.png")
    await first.release("b1", "scans/a.png")
    assert await second.take("b1", "scans/a.png")
    assert first.held == 0
    assert second.held == 3


async def test_an_expired_claim_is_taken_over_and_its_holder_loses_it(coordination: Coordination) -> None:
    """A claim not renewed within its lifetime is taken over; the old holder counts it as lost at its
    next renewal and its release leaves the new claim alone."""
    clock = FakeClock()
    stalled, other = (
        ItemClaims(coordination, ttl_s=30, clock=clock),
        ItemClaims(coordination, ttl_s=30, clock=clock),
    )
    assert await stalled.take("b1", "a.png")
    clock.now_s += 20
    await stalled.renew_all()  # renewed: good for 30 s from now
    clock.now_s += 20
    assert not await other.take("b1", "a.png")
    clock.now_s += 11
    assert await other.take("b1", "a.png")
    await stalled.renew_all()
    assert (stalled.lost, stalled.held) == (1, 0)
    await stalled.release("b1", "a.png")
    document = await coordination.read(claim_key("b1", "a.png"))
    assert document is not None
    assert json.loads(document.data)["owner"] == other.owner


async def test_a_claim_of_a_dead_process_on_this_host_is_taken_at_once(coordination: Coordination) -> None:
    """A claim left by a process of this host that no longer runs (a killed worker, restarted) is
    taken over without waiting for it to expire; one of a live process or another host is not."""
    claims = ItemClaims(coordination, ttl_s=600)
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    host = socket.gethostname()
    for key, holder in {
        "dead.png": {"host": host, "pid": dead.pid},
        "restarted.png": {"host": host, "pid": os.getpid()},  # our pid, before we were started
        "alive.png": {"host": host, "pid": os.getppid()},
        "elsewhere.png": {"host": host + "-other", "pid": dead.pid},
    }.items():
        document = {**holder, "owner": "previous", "process": "previous", "expires_at": 4_000_000_000}
        await coordination.create(claim_key("b1", key), json.dumps(document).encode())
    assert await claims.take("b1", "dead.png")
    assert await claims.take("b1", "restarted.png")
    assert not await claims.take("b1", "alive.png")
    assert not await claims.take("b1", "elsewhere.png")


async def test_two_workers_reconciling_one_batch_recognise_each_item_once(
    make_worker_setup: MakeSetup, worker_profile: WorkerProfile
) -> None:
    """Two workers (replicas) run passes over the same batch at the same time: every input gets its
    result and is recognised exactly once, and no claim is left behind; on moto, and on the NAVER
    profile with claims in Redis."""
    setup = await make_worker_setup(
        store=worker_profile.store, max_concurrent_calls=4, faults={"latency_ms": 5, "seed": 1}
    )
    settings = setup.settings(coordination=worker_profile.coordination)
    for index in range(60):
        await setup.inputs.write(f"scan-{index:03}.png", png(200 + index, 100))
    await create_batch(setup, settings)
    async with (
        StorageFactory(settings.storage) as storages,
        open_ocr_session(max_connections=32) as session,
        open_webhook_session(settings.webhook) as outbound,
    ):
        store = await batch_store_in(settings, storages)
        assert store.coordination.backend == {"moto": "storage", "ncp": "redis"}[worker_profile.store]
        workers = [
            Worker(
                settings,
                store=store,
                storages=storages,
                session=session,
                outbound_session=outbound,
                claims=ItemClaims(store.coordination, ttl_s=60),
            )
            for _ in range(2)
        ]
        passes = await within(
            asyncio.gather(*(worker.run_pass() for worker in workers)), 50, "the two passes did not end"
        )
        assert [key async for key in store.coordination.keys("claims/")] == []
    stats = setup.emulator.stats()
    assert stats["recognised_more_than_once"] == {}
    assert len(stats["recognitions"]) == 60
    assert len([key for key in await keys(setup.results) if key.startswith("scan-")]) == 60
    reports = [next(iter(result.reports.values())) for result in passes]
    assert sum(report.succeeded for report in reports) == 60
    assert all(report.pending == 0 for report in reports)


class _SlowRenewals(MemoryCoordination):
    """Renewals (replaces) that pause once written, and deletes that can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.renewed, self.go = asyncio.Event(), asyncio.Event()
        self.deletes_fail = False

    async def replace(self, key: str, data: bytes, *, version: str) -> str:
        new_version = await super().replace(key, data, version=version)
        self.renewed.set()
        await self.go.wait()
        return new_version

    async def delete(self, key: str, *, version: str | None = None) -> None:
        if self.deletes_fail:
            raise StorageError("the store is down", location="memory", key=key)
        await super().delete(key, version=version)


async def test_a_claim_released_while_renewed_is_removed_and_a_failure_then_stops_no_renewal() -> None:
    """An item settled while its claim is being renewed: the renewed claim is removed too. If that
    removal fails (storage down), it is logged and left to expire: the renewals go on."""
    coordination = _SlowRenewals()
    claims = ItemClaims(coordination, ttl_s=60)
    assert await claims.take("b1", "a.png")
    renewing = asyncio.create_task(claims.renew_all())
    await within(coordination.renewed.wait(), 10, "the claim was not renewed")
    await claims.release("b1", "a.png")  # loses against the renewal's new version: left to it
    coordination.deletes_fail = True
    coordination.go.set()
    await within(renewing, 10, "the renewal did not end")  # no StorageError out of renew_all
    assert claims.held == 0
