"""Local-directory data sets for the memory benchmark: `count` inputs that all have a current result,
so a worker pass walks every listing and sends nothing."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

from bench.common import png
from ocrbatch.locations import Location
from ocrbatch.storage.local import LocalStorage

RESULT_BODY = b'{"version": "V2", "requestId": "bench", "timestamp": 0, "images": []}'


def input_key(index: int, per_directory: int | None) -> str:
    """Flat (`scan-0000001.png`) or spread over directories of `per_directory` inputs."""
    name = f"scan-{index:07}.png"
    return f"d{index // per_directory:05}/{name}" if per_directory else name


def _no_fsync(fd: int) -> None:
    del fd


def _write_results(results_dir: str, entries: list[tuple[str, str]]) -> None:
    """In a child process: the result of each (input key, input etag), fsync off."""

    async def write_all() -> None:
        results = LocalStorage(Location.parse(results_dir))
        for start in range(0, len(entries), 500):
            await asyncio.gather(
                *(
                    results.write(
                        key + ".json",
                        RESULT_BODY,
                        metadata={"source-etag": etag, "source-key": key},
                        content_type="application/json",
                    )
                    for key, etag in entries[start : start + 500]
                )
            )

    with mock.patch.object(os, "fsync", _no_fsync):
        asyncio.run(write_all())


async def make_done_dataset(root: Path, count: int, *, per_directory: int | None = None) -> tuple[Path, Path]:
    """`root/in` with `count` inputs and `root/out` with a current result for each; returns both.

    Results are written through `LocalStorage` (so their metadata is what the worker reads), by
    one process per CPU and with fsync turned off: this is set-up, and 100k synced writes from
    one process would take minutes.
    """
    inputs_dir, results_dir = root / "in", root / "out"
    blob = png(64, 48)

    def write_inputs() -> None:
        for index in range(count):
            path = inputs_dir / input_key(index, per_directory)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        results_dir.mkdir(parents=True, exist_ok=True)

    await asyncio.to_thread(write_inputs)
    inputs = LocalStorage(Location.parse(str(inputs_dir)))
    entries = [(info.key, info.etag) async for info in inputs.list()]
    processes = os.cpu_count() or 1
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        await asyncio.gather(
            *(
                loop.run_in_executor(pool, _write_results, str(results_dir), entries[shard::processes])
                for shard in range(processes)
            )
        )
    return inputs_dir, results_dir
