"""`ocrbatch estimate` and `ocrbatch retry-failed`, run as the real command against S3 and the emulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fixtures.process import start_ocrbatch
from fixtures.samples import pdf, png
from fixtures.worker import MakeSetup, create_batch, keys, write_config

from ocrbatch.emulator.faults import ScriptedFault


async def ocrbatch(config: Path, *args: str) -> tuple[int, str]:
    """The exit code and stdout of `ocrbatch ARGS` (its stderr, where the CLI logs, left out)."""
    process = await start_ocrbatch(config, *args, stderr=asyncio.subprocess.DEVNULL)
    return await process.wait(timeout_s=120), process.output


async def estimate(config: Path) -> dict[str, Any]:
    code, out = await ocrbatch(config, "estimate", "receipts", "--json", "--call-latency-s", "2")
    assert code == 0, out
    result: dict[str, Any] = json.loads(out)
    return result


async def test_estimate_counts_what_a_run_would_send_and_calls_nothing(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """40 inputs with a 23-page PDF and a long image: the estimate counts items, pages, billable units and
    calls without any API call, and a real run then makes exactly the calls it predicted."""
    setup = await make_worker_setup(max_concurrent_calls=5)
    for index in range(38):
        await setup.inputs.write(f"scan-{index:02}.png", png(200 + index, 300))
    await setup.inputs.write("contract.pdf", pdf(23))
    await setup.inputs.write("receipt-long.png", png(1000, 9000, mode="1"))
    await setup.inputs.write("notes.txt", b"not an image")
    await create_batch(setup, setup.settings(), long_image=True)
    config = write_config(setup, tmp_path / "ocrbatch.toml")

    figures = await estimate(config)
    assert setup.emulator.stats()["calls"] == 0
    assert (figures["inputs"], figures["skipped"], figures["pending"], figures["items"]) == (41, 1, 40, 40)
    assert figures["pages"] == 38 + 23 + 1
    assert figures["calls"] == 38 + 3 + 1
    assert figures["billable_units"] == 38 + 23 + 5  # the 9,000 px image bills per 2,000 px
    assert figures["expected_duration_s"] == 9 * 2  # 42 calls, 5 at a time, 2 s each
    code, text = await ocrbatch(config, "estimate", "receipts")
    assert code == 0
    assert "62 pages, 66 billable units, 42 API calls" in text

    code, _ = await ocrbatch(config, "run", "--once")
    assert code == 0
    assert setup.emulator.stats()["calls"] == 42
    assert (await estimate(config))["calls"] == 0  # everything is done now


async def test_retry_failed_sends_failed_items_again(make_worker_setup: MakeSetup, tmp_path: Path) -> None:
    """A final failure is not retried by itself; retry-failed removes its record and the next run sends it."""
    setup = await make_worker_setup()
    await setup.inputs.write("blank.png", png(100, 100))
    await create_batch(setup, setup.settings())
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    setup.emulator.faults.script([ScriptedFault(infer_result="FAILURE", name="blank.png")])
    assert (await ocrbatch(config, "run", "--once"))[0] == 0
    assert "_failed/blank.png.json" in await keys(setup.results)
    code, out = await ocrbatch(config, "retry-failed", "receipts", "--json")
    assert code == 0
    assert json.loads(out) == {"batch": "receipts", "retrying": ["blank.png"]}
    assert (await ocrbatch(config, "run", "--once"))[0] == 0
    assert await keys(setup.results) == ["_report.json", "blank.png.json"]


async def test_status_shows_each_batch_from_its_report(make_worker_setup: MakeSetup, tmp_path: Path) -> None:
    """status lists every batch with its status and report figures; before a run there is no report."""
    setup = await make_worker_setup()
    for index in range(3):
        await setup.inputs.write(f"{index}.png", png(100 + index, 100))
    await setup.inputs.write("empty.png", b"")
    await create_batch(setup, setup.settings())
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    code, out = await ocrbatch(config, "status", "--json")
    assert code == 0
    [before] = json.loads(out)
    assert (before["name"], before["status"], before["report"]) == ("receipts", "available", None)
    assert (await ocrbatch(config, "run", "--once"))[0] == 0
    [after] = json.loads((await ocrbatch(config, "status", "--json"))[1])
    report = after["report"]
    assert (report["succeeded"], report["failed"], report["pending"]) == (3, 1, 0)
    code, text = await ocrbatch(config, "status")
    assert code == 0
    assert "receipts" in text
    assert "4/4" in text
