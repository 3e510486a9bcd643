"""The worker on NAVER Object Storage as documented (V1 listings only, conditional headers
ignored), through the proxy in front of moto: nothing is missed, and without Redis a second
worker refuses instead of billing images twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fixtures.process import start_ocrbatch
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, create_batch, keys, read_json, write_config

from ocrbatch.coordination.single_writer import SecondWriterRefused
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.storage.base import Storage

NO_SETTLE = {"single_writer_settle_s": 0}  # the read-back after becoming the single writer, at once


async def write_inputs(inputs: Storage, count: int) -> None:
    """`count` small PNGs, 100 writes at a time."""
    image = png(64, 32)
    for start in range(0, count, 100):
        batch = range(start, min(count, start + 100))
        await asyncio.gather(*(inputs.write(f"scan-{index:05}.png", image) for index in batch))


@pytest.mark.timeout(480)
async def test_2500_inputs_give_2500_results_on_the_ncp_profile(make_worker_setup: MakeSetup) -> None:
    """2,500 inputs on a store that lists only V1 pages of 1,000: `run --once` gives 2,500 results,
    `_report.json` says 2,500, and each image is recognised once (the worker is the single writer)."""
    setup = await make_worker_setup(store="ncp", max_concurrent_calls=32)
    settings = setup.settings(coordination=NO_SETTLE)
    await write_inputs(setup.inputs, 2500)
    await create_batch(setup, settings)
    assert await within(run_worker(settings, once=True), 420, "the pass over 2,500 inputs did not end") == 0
    results = [key for key in await keys(setup.results) if key.endswith(".png.json")]
    assert len(results) == 2500
    report = await read_json(setup.results, "_report.json")
    assert (report["succeeded"], report["failed"], report["pending"]) == (2500, 0, 0)
    stats = setup.emulator.stats()
    assert (stats["successes"], stats["recognised_more_than_once"]) == (2500, {})


async def test_a_second_worker_without_redis_refuses_and_nothing_is_billed_twice(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """On a store without conditional writes and no Redis, the first worker becomes the single
    writer. A second one (in-process, and as `ocrbatch run --once`) refuses with a message saying
    why and what to configure, and exits 1; the first processes every input, each once."""
    setup = await make_worker_setup(store="ncp", faults={"latency_ms": 20})
    settings = setup.settings(coordination=NO_SETTLE)
    await write_inputs(setup.inputs, 40)
    await create_batch(setup, settings)
    config = write_config(setup, tmp_path / "ocrbatch.toml", coordination=NO_SETTLE)
    first = await start_ocrbatch(config, "run")
    try:
        await first.wait_for_log("worker.single_writer")
        await first.wait_for_log("worker.started")
        with pytest.raises(SecondWriterRefused, match='backend = "redis"') as refused:
            await run_worker(settings, once=True)
        assert "does not enforce conditional writes" in str(refused.value)
        second = await start_ocrbatch(config, "run", "--once")
        assert await second.wait() == 1, second.explain("the second worker did not refuse")
        assert "another worker (host" in second.output
        await within(
            setup.emulator.wait_until(lambda: sum(setup.emulator.recognitions.values()) >= 40),
            60,
            "the first worker did not recognise the 40 inputs",
        )
    finally:
        assert await first.stop() == 0, first.explain("the first worker did not stop cleanly")
    stats = setup.emulator.stats()
    assert (stats["successes"], stats["recognised_more_than_once"]) == (40, {})
    assert len([key for key in await keys(setup.results) if key.endswith(".png.json")]) == 40
