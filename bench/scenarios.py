"""The benchmark's workloads, each run by ocrbatch and by the baseline script in the same run.

- throughput: every input through the emulator (cap 5, latency 300 +/- 100 ms) with ~50 ms added
  to each storage request (reads, heads, listing pages, writes and deletes); the cap configured
  right or 3x too high;
- S3 throughput: the same on S3 (moto) behind a proxy that delays every request 50 ms, with and
  without 10 % of the calls answered 0500/0501, ocrbatch beside the baseline on the same bucket;
- high throughput: a fast service (cap 32, 50 +/- 10 ms) on local directories, ocrbatch beside
  the minimal asyncio loop (`minimal_loop.py`), the ceiling a worker could reach;
- memory: a pass over 1k and 100k inputs that are all done (local directories), peak RSS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    OCR_SECRET,
    PYTHON,
    child_process,
    emulator_process,
    flat_key,
    general_domain,
    get_json,
    png,
    write_config,
    write_inputs,
)
from bench.datasets import RESULT_BODY, make_done_dataset
from bench.ncp_world import open_s3_world

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
    requests: Mapping[str, int] = field(default_factory=dict)  # storage requests by location and kind

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
    config: Path, inputs: Path | str, results: Path | str, *, delay_ms: float, log: Path, out: Path
) -> list[str]:
    """`bench.worker_proc` on the batch `inputs` -> `results` (directories or s3:// locations)."""
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


async def s3_throughput(work: Path, *, items: int, error_rate: float = 0.0) -> tuple[Figures, Figures]:
    """ocrbatch and the baseline on S3: `items` inputs uploaded to moto, reached by both through a
    proxy that delays each request `STORAGE_DELAY_MS`; `error_rate` of the calls answered
    0500/0501 (retried by both)."""
    local_inputs = work / "in"
    keys = await asyncio.to_thread(write_inputs, local_inputs, items)
    extra = ("--error-rate", str(error_rate)) if error_rate else ()

    def emulator(log: Path) -> AbstractAsyncContextManager[str]:
        return emulator_process(
            log, max_concurrent_calls=EMULATOR_CAP, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, extra=extra
        )

    # moto keeps its buckets in this process, from one world to the next: a bucket of this run's own.
    bucket = f"ocrbatch-throughput-{int(error_rate * 100)}"
    async with open_s3_world(work / "s3", profile="aws", bucket=bucket) as world:
        async with AsyncExitStack() as stack:
            client = await world.direct_client(stack)
            for key in keys:  # straight to moto: the uploads are not what is measured
                body = await asyncio.to_thread((local_inputs / key).read_bytes)
                await client.put_object(Bucket=world.bucket, Key=f"in/{key}", Body=body)
        world.proxy.delay_s = STORAGE_DELAY_MS / 1000
        async with emulator(work / "emulator-ocrbatch.log") as url:
            config = write_config(
                work / "ocrbatch.toml",
                {
                    "storage": world.storage_section(),
                    "domains.receipts": general_domain(url, EMULATOR_CAP),
                    "logging": {"format": "json", "level": "info"},
                },
            )
            args = worker_args(
                config,
                world.location("in"),
                world.location("out"),
                delay_ms=0,  # the proxy delays each request
                log=work / "worker.log",
                out=work / "ocrbatch.json",
            )
            measured = await run_measured(args, work / "ocrbatch.json", work / "worker-stderr.log")
            ours = _figures(measured, await get_json(url + "/_emulator/stats"))
        async with emulator(work / "emulator-baseline.log") as url:
            args = [
                PYTHON,
                "-m",
                "bench.baseline",
                "--s3-endpoint",
                world.proxy_url,
                "--bucket",
                world.bucket,
            ]
            args += ["--input", "in", "--output", "baseline-out", "--url", url + "/general"]
            args += ["--workers", str(EMULATOR_CAP), "--out", str(work / "baseline.json")]
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


async def startup(work: Path, *, runs: int) -> list[float]:
    """Wall seconds of `ocrbatch run --once` on an empty batch of local directories, `runs` times
    (the process from its start to its exit: imports, settings, the probe, the pass)."""
    await asyncio.to_thread((work / "in").mkdir, parents=True, exist_ok=True)
    config = _config(work, "http://127.0.0.1:9", EMULATOR_CAP)  # nothing pending: no call is made
    create = [PYTHON, "-m", "ocrbatch", "--config", str(config), "batch", "create", "--name", "empty"]
    create += ["--domain", "receipts", "--input", str(work / "in"), "--result", str(work / "out")]
    with (work / "startup.log").open("ab") as log:
        async with child_process(create, stdout=log, stderr=log) as process:
            if await asyncio.wait_for(process.wait(), CHILD_TIMEOUT_S) != 0:
                raise RuntimeError(f"batch create failed; see {work / 'startup.log'}")
        walls = []
        for _ in range(runs):
            started_s = time.monotonic()
            args = [PYTHON, "-m", "ocrbatch", "--config", str(config), "run", "--once"]
            async with child_process(args, stdout=log, stderr=log) as process:
                if await asyncio.wait_for(process.wait(), CHILD_TIMEOUT_S) != 0:
                    raise RuntimeError(f"run --once failed; see {work / 'startup.log'}")
            walls.append(time.monotonic() - started_s)
    return walls


async def s3_walk(work: Path, count: int) -> Figures:
    """A pass of ocrbatch over `count` done inputs on S3 (moto behind the proxy, no added delay):
    each input has a result written after it, so discovery needs the listing pages only. The
    figures carry the storage requests the pass made (`requests`)."""
    bucket = "ocrbatch-walk"
    async with open_s3_world(work / "s3", profile="aws", bucket=bucket) as world:
        async with AsyncExitStack() as stack:
            client = await world.direct_client(stack)
            gate = asyncio.Semaphore(32)
            blob = png(64, 48)

            async def put(key: str, body: bytes, metadata: dict[str, str]) -> str:
                async with gate:
                    answer = await client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
                return str(answer["ETag"])

            keys = [flat_key(index) for index in range(count)]
            etags = await asyncio.gather(*(put(f"in/{key}", blob, {}) for key in keys))
            await asyncio.gather(
                *(
                    put(f"out/{key}.json", RESULT_BODY, {"source-etag": etag, "source-key": key})
                    for key, etag in zip(keys, etags, strict=True)
                )
            )
        config = write_config(
            work / "ocrbatch.toml",
            {
                "storage": world.storage_section(),
                "domains.receipts": general_domain("http://127.0.0.1:9", EMULATOR_CAP),
                "logging": {"format": "json", "level": "info"},
            },
        )
        args = worker_args(
            config,
            world.location("in"),
            world.location("out"),
            delay_ms=0,
            log=work / "worker.log",
            out=work / "walk.json",
        )
        measured = await run_measured(args, work / "walk.json", work / "worker-stderr.log")
    if measured["done_before"] != count:
        raise RuntimeError(f"the walk found {measured['done_before']} of {count} inputs done; see {work}")
    return dataclasses.replace(_figures(measured, None), requests=dict(measured["storage_requests"]))
