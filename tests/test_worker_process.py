"""The worker as a real process: killed and restarted, or stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from fixtures.process import OcrbatchProcess, start_ocrbatch
from fixtures.receiver import Receiver
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, WorkerSetup, create_batch, keys, write_config

from ocrbatch.batches.store import batch_store_in
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.sizing import max_item_tasks_per_batch

INPUTS = 60


async def prepare(
    setup: WorkerSetup, tmp_path: Path, *, webhook_settings: dict[str, Any] | None = None, **batch: object
) -> tuple[Path, list[str]]:
    names = [f"scan-{index:03}.png" for index in range(INPUTS)]
    for index, name in enumerate(names):
        await setup.inputs.write(name, png(100 + index, 100))
    await create_batch(setup, setup.settings(), name="scans", **batch)
    return write_config(setup, tmp_path / "ocrbatch.toml", webhook=webhook_settings), names


async def start_worker(config: Path) -> OcrbatchProcess:
    """`ocrbatch run --once` as a process."""
    return await start_ocrbatch(config, "run", "--once")


async def result_sources(setup: WorkerSetup) -> set[str]:
    return {key.removesuffix(".json") for key in await keys(setup.results) if key.endswith(".png.json")}


async def test_sigkill_halfway_then_restart_loses_nothing(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """A worker killed halfway and restarted completes every item; only items in flight at the kill
    (sent, or answered but not yet stored) are recognised twice."""
    setup = await make_worker_setup(
        max_concurrent_calls=5, faults={"latency_ms": 60, "latency_jitter_ms": 20}
    )
    config, names = await prepare(setup, tmp_path)
    emulator = setup.emulator
    process = await start_worker(config)
    await within(
        emulator.wait_until(lambda: len(emulator.recognitions) >= INPUTS // 2),
        60,
        "half the inputs were not recognised",
    )
    process.process.kill()
    in_flight_at_kill = set(emulator.names_in_flight)
    assert await process.wait() == -signal.SIGKILL
    # Calls the dead worker had sent still finish at the service (and count); wait for them.
    await within(
        emulator.wait_until(lambda: emulator.stats()["in_flight"] == 0), 30, "calls stayed in flight"
    )
    stored = await result_sources(setup)
    unsettled = in_flight_at_kill | (set(emulator.recognitions) - stored)
    assert 0 < len(stored) < INPUTS, f"{len(stored)} results stored at the kill"

    restarted = await start_worker(config)
    assert await restarted.wait() == 0
    final = await result_sources(setup)
    assert final == set(names), f"missing after the restart: {sorted(set(names) - final)}"
    twice = set(emulator.stats()["recognised_more_than_once"])
    assert twice <= unsettled, (twice, unsettled)
    limit = max_item_tasks_per_batch(emulator.settings.max_concurrent_calls)
    assert len(unsettled) <= limit, f"{len(unsettled)} unsettled at the kill: {sorted(unsettled)}"


async def test_sigterm_lets_in_flight_items_finish(make_worker_setup: MakeSetup, tmp_path: Path) -> None:
    """SIGTERM stops taking items, lets the ones in flight finish, and exits 0 with no partial results."""
    setup = await make_worker_setup(
        max_concurrent_calls=5, faults={"latency_ms": 150, "latency_jitter_ms": 50}
    )
    config, names = await prepare(setup, tmp_path)
    emulator = setup.emulator
    process = await start_worker(config)
    await within(
        emulator.wait_until(lambda: len(emulator.recognitions) >= 10), 60, "10 inputs were not recognised"
    )
    await emulator.wait_for_in_flight(1)
    in_flight = set(emulator.names_in_flight)
    assert await process.stop(signal.SIGTERM) == 0
    stored = await result_sources(setup)
    assert in_flight <= stored
    assert len(stored) < len(names)
    assert emulator.stats()["in_flight"] == 0
    for key in await keys(setup.results):
        if key.endswith(".json"):
            json.loads((await setup.results.read(key)).data)  # every object is whole
    assert process.events("worker.stopping")
    assert process.events("batch.interrupted")
    settings = setup.settings()
    async with StorageFactory(settings.storage) as storages:
        batch = (await (await batch_store_in(settings, storages)).get("scans")).batch
    assert batch.status == "running"  # items are still pending: not "available"


async def test_a_second_signal_exits_at_once(make_worker_setup: MakeSetup, tmp_path: Path) -> None:
    """A second SIGTERM during the grace period ends the process at once with exit code 130."""
    setup = await make_worker_setup(max_concurrent_calls=5)
    config, _ = await prepare(setup, tmp_path)
    emulator = setup.emulator
    emulator.hold()  # calls stay in flight, so the first signal has something to wait for
    process = await start_worker(config)
    await within(emulator.wait_for_in_flight(1), 60, "no call was in flight")
    process.process.send_signal(signal.SIGTERM)
    await process.wait_for_log("worker.stopping", timeout_s=30)
    assert await process.stop(signal.SIGTERM, timeout_s=30) == 130
    emulator.release()


async def test_chunks_in_the_outbox_survive_a_sigkill(make_worker_setup: MakeSetup, tmp_path: Path) -> None:
    """A worker killed while its webhook chunk waits in the outbox: after a restart the chunk is
    delivered with its original webhook-id."""
    receiver = Receiver()
    await receiver.start()
    try:
        setup = await make_worker_setup(max_concurrent_calls=5)
        config, names = await prepare(setup, tmp_path, webhook={"url": receiver.url})
        receiver.gate.clear()  # the receiver takes the request and never answers
        process = await start_worker(config)
        await receiver.wait_for_held(1, timeout_s=60)
        assert await process.stop(signal.SIGKILL) == -signal.SIGKILL
        held_id = receiver.held[0].headers["webhook-id"]
        receiver.gate.set()
        restarted = await start_worker(config)
        assert await restarted.wait() == 0
        delivered = [request for request in receiver.accepted if request.headers["webhook-id"] == held_id]
        assert delivered, "the chunk from the outbox was not delivered after the restart"
        assert sorted(entry["key"] for entry in delivered[0].payload["items"]) == names
    finally:
        await receiver.stop()


async def test_finished_items_not_yet_in_a_chunk_survive_a_sigkill(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """A worker killed after its items finished but before their chunk was made (the idle flush is an
    hour away): after a restart every item reaches the receiver, each exactly once."""
    receiver = Receiver()
    await receiver.start()
    try:
        setup = await make_worker_setup(max_concurrent_calls=5)
        config, names = await prepare(
            setup, tmp_path, webhook={"url": receiver.url}, webhook_settings={"idle_flush_s": 3600}
        )
        process = await start_ocrbatch(config, "run")
        await process.wait_for_log("batch.pass_done")
        await process.stop(signal.SIGKILL)
        assert receiver.accepted == []
        restarted = await start_worker(config)
        assert await restarted.wait() == 0
        delivered = [item["key"] for request in receiver.accepted for item in request.payload["items"]]
        assert sorted(delivered) == names
        assert [key for key in await keys(setup.results, "_outbox/") if key != "_outbox/sequence.json"] == []
    finally:
        await receiver.stop()


async def test_sigterm_with_calls_outlasting_the_grace_exits_within_it(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """Cap 1, calls held at the service, discovery blocked on a full queue: SIGTERM exits 0 within
    `shutdown_grace_s` + 5 s. What is still running when the grace ends (the held call, the item
    tasks, discovery waiting to queue more) is cancelled, and the items stay pending."""
    setup = await make_worker_setup(max_concurrent_calls=1)
    config, names = await prepare(setup, tmp_path)
    config = write_config(setup, config, shutdown_grace_s=1)
    emulator = setup.emulator
    emulator.hold()  # the call in flight outlasts the grace period
    try:
        process = await start_worker(config)
        await within(emulator.wait_for_in_flight(1), 60, "no call was in flight")
        process.process.send_signal(signal.SIGTERM)
        await process.wait_for_log("worker.stopping", timeout_s=30)
        assert await process.wait(timeout_s=1 + 5) == 0, process.explain("no exit within the grace + 5 s")
        assert process.events("worker.grace_expired")
    finally:
        emulator.release()
    assert await result_sources(setup) == set()
    assert len(names) == INPUTS
