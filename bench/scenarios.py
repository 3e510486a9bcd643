"""The benchmark's workloads, each run by ocrbatch and by the baseline script in the same run.

- throughput: every input through the emulator (cap 5, latency 300 +/- 100 ms) with ~50 ms added
  to each storage request (reads, heads, listing pages, writes and deletes); the cap configured
  right or 3x too high;
- high throughput: a fast service (cap 32, 50 +/- 10 ms) on local directories, ocrbatch beside
  the minimal asyncio loop (`minimal_loop.py`), the ceiling a worker could reach;
- memory: a pass over 1k and 100k inputs that are all done (local directories), peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    OCR_SECRET,
    PYTHON,
    child_process,
    emulator_process,
    general_domain,
    get_json,
    write_config,
    write_inputs,
)
from bench.datasets import make_done_dataset

EMULATOR_CAP = 5
LATENCY_MS = 300.0
JITTER_MS = 100.0
STORAGE_DELAY_MS = 50.0
CHILD_TIMEOUT_S = 600.0
FAST_CAP = 32
FAST_LATENCY_MS = 50.0
FAST_JITTER_MS = 10.0
SHM = "/dev/shm"  # noqa: S108 - a fresh mkdtemp directory is made inside it
SHM_NEEDED_BYTES = 4 * 1024**3  # a 100k data set takes about 1.2 GB there


@dataclass(frozen=True)
class Figures:
    """What one system did on one workload: its own figures and the emulator's."""

    succeeded: int
    failed: int
    wall_s: float
    cpu_s: float
    peak_rss_kb: int
    utilisation: float | None = None
    answers_0025: int = 0
    calls: int = 0

    @property
    def items_per_s(self) -> float:
        return self.succeeded / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_item(self) -> float:
        return 1000 * self.cpu_s / self.succeeded if self.succeeded else float("nan")


async def run_measured(
    args: Sequence[str], out: Path, log: Path, *, env: Mapping[str, str] | None = None
) -> Any:
    """Run a measuring child to completion; its figures (the JSON it wrote to `out`)."""
    with log.open("ab") as log_file:
        async with child_process(args, stdout=log_file, stderr=log_file, env=env) as process:
            code = await asyncio.wait_for(process.wait(), CHILD_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {code}; see {log}")
    return json.loads(await asyncio.to_thread(out.read_text, encoding="utf-8"))


def _figures(measured: Mapping[str, Any], stats: Mapping[str, Any] | None) -> Figures:
    domain = (stats or {}).get("domains", {}).get("general", {})
    return Figures(
        succeeded=int(measured["succeeded"]),
        failed=int(measured["failed"]),
        wall_s=float(measured["wall_s"]),
        cpu_s=float(measured["cpu_s"]),
        peak_rss_kb=int(measured["peak_rss_kb"]),
        utilisation=domain.get("slot_utilisation"),
        answers_0025=int((stats or {}).get("answers", {}).get("0025", 0)),
        calls=int((stats or {}).get("calls", measured.get("calls", 0))),
    )


def worker_args(
    config: Path, inputs: Path, results: Path, *, delay_ms: float, log: Path, out: Path
) -> list[str]:
    return [
        PYTHON,
        "-m",
        "bench.worker_proc",
        "--config",
        str(config),
        "--input",
        str(inputs),
        "--result",
        str(results),
        "--storage-delay-ms",
        str(delay_ms),
        "--log",
        str(log),
        "--out",
        str(out),
    ]


def baseline_args(
    inputs: Path, results: Path, *, url: str, workers: int, delay_ms: float, out: Path
) -> list[str]:
    return [
        PYTHON,
        "-m",
        "bench.baseline",
        "--input",
        str(inputs),
        "--output",
        str(results),
        "--url",
        url,
        "--workers",
        str(workers),
        "--storage-delay-ms",
        str(delay_ms),
        "--out",
        str(out),
    ]


def _config(work: Path, url: str, cap: int) -> Path:
    return write_config(
        work / "ocrbatch.toml",
        {
            "storage": {"control_path": str(work / "control")},
            "domains.receipts": general_domain(url, cap),
            "logging": {"format": "json", "level": "info"},
        },
    )


def _emulator(log: Path) -> AbstractAsyncContextManager[str]:
    return emulator_process(
        log, max_concurrent_calls=EMULATOR_CAP, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS
    )


async def throughput(work: Path, *, items: int, worker_cap: int) -> tuple[Figures, Figures]:
    """ocrbatch and the baseline (each against a fresh emulator) on `items` inputs."""
    inputs = work / "in"
    await asyncio.to_thread(write_inputs, inputs, items)
    async with _emulator(work / "emulator-ocrbatch.log") as url:
        args = worker_args(
            _config(work, url, worker_cap),
            inputs,
            work / "out",
            delay_ms=STORAGE_DELAY_MS,
            log=work / "worker.log",
            out=work / "ocrbatch.json",
        )
        measured = await run_measured(args, work / "ocrbatch.json", work / "worker-stderr.log")
        ours = _figures(measured, await get_json(url + "/_emulator/stats"))
    async with _emulator(work / "emulator-baseline.log") as url:
        args = baseline_args(
            inputs,
            work / "baseline-out",
            url=url + "/general",
            workers=worker_cap,
            delay_ms=STORAGE_DELAY_MS,
            out=work / "baseline.json",
        )
        env = {"OCR_SECRET": OCR_SECRET}
        measured = await run_measured(args, work / "baseline.json", work / "baseline.log", env=env)
        theirs = _figures(measured, await get_json(url + "/_emulator/stats"))
    return ours, theirs


async def high_throughput(work: Path, *, items: int) -> tuple[Figures, Figures]:
    """ocrbatch and the minimal loop (each against a fresh fast emulator) on `items` inputs."""
    inputs = work / "in"
    await asyncio.to_thread(write_inputs, inputs, items)

    def fast_emulator(log: Path) -> AbstractAsyncContextManager[str]:
        return emulator_process(
            log, max_concurrent_calls=FAST_CAP, latency_ms=FAST_LATENCY_MS, jitter_ms=FAST_JITTER_MS
        )

    async with fast_emulator(work / "emulator-ocrbatch.log") as url:
        args = worker_args(
            _config(work, url, FAST_CAP),
            inputs,
            work / "out",
            delay_ms=0,
            log=work / "worker.log",
            out=work / "ocrbatch.json",
        )
        measured = await run_measured(args, work / "ocrbatch.json", work / "worker-stderr.log")
        ours = _figures(measured, await get_json(url + "/_emulator/stats"))
    async with fast_emulator(work / "emulator-loop.log") as url:
        loop_args = [PYTHON, "-m", "bench.minimal_loop", "--input", str(inputs), "--output"]
        loop_args += [str(work / "loop-out"), "--url", url + "/general", "--cap", str(FAST_CAP)]
        loop_args += ["--out", str(work / "loop.json")]
        env = {"OCR_SECRET": OCR_SECRET}
        measured = await run_measured(loop_args, work / "loop.json", work / "loop.log", env=env)
        loop = _figures(measured, await get_json(url + "/_emulator/stats"))
    return ours, loop


def _scratch_root() -> str | None:
    """Where the memory data sets go: /dev/shm when it has room (100k small files are written
    several times faster on tmpfs, which changes nothing in the worker's RSS), else the default."""
    try:
        return SHM if shutil.disk_usage(SHM).free >= SHM_NEEDED_BYTES else None
    except OSError:
        return None


async def memory(work: Path, count: int, *, per_directory: int | None) -> tuple[Figures, Figures]:
    """Peak RSS of a pass over `count` done inputs: ocrbatch's worker and the baseline's listing."""
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="ocrbatch-bench-", dir=_scratch_root()))
    try:
        return await _memory(work, data, count, per_directory=per_directory)
    finally:
        await asyncio.to_thread(shutil.rmtree, data, ignore_errors=True)


async def _memory(
    work: Path, data: Path, count: int, *, per_directory: int | None
) -> tuple[Figures, Figures]:
    started_s = time.monotonic()
    inputs, results = await make_done_dataset(data, count, per_directory=per_directory)
    print(f"bench: {count} done objects made in {time.monotonic() - started_s:.0f} s", file=sys.stderr)
    unused_url = "http://127.0.0.1:9"  # every input is done: no call is made
    args = worker_args(
        _config(work, unused_url, EMULATOR_CAP),
        inputs,
        results,
        delay_ms=0,
        log=work / "worker.log",
        out=work / "ocrbatch.json",
    )
    ours = _figures(await run_measured(args, work / "ocrbatch.json", work / "worker-stderr.log"), None)
    args = baseline_args(
        inputs, results, url=unused_url, workers=EMULATOR_CAP, delay_ms=0, out=work / "baseline.json"
    )
    env = {"OCR_SECRET": OCR_SECRET}
    theirs = _figures(await run_measured(args, work / "baseline.json", work / "baseline.log", env=env), None)
    return ours, theirs
