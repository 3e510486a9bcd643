"""Three replicas on one OCR domain: one cap shared through Redis, against static shares.

Each run starts 3 `ocrbatch run --once` processes at the same moment on one batch of `items`
PNGs in moto (through an `S3Proxy`), against a fresh emulator child process capped at 5 calls
(300 +/- 100 ms, as the throughput rows):
- `shared`: `[coordination] backend = "redis"`, every replica configured with the domain's 5,
  which is then the total of all replicas;
- `static 5 each`: storage coordination (conditional writes), every replica configured with the
  domain's 5, as an operator who scales out a working set-up does: 15 calls allowed for 5 slots;
- `static 2+2+1`: storage coordination, the 5 split by hand;
- `shared, NCP profile`: as `shared`, through the NAVER Object Storage profile (V1 listings only,
  no conditional writes; without Redis a second replica would refuse to start).

The service's figures (slot utilisation, 0025 answers, images recognised more than once) come from
the emulator; wall time runs from the start of the replicas to the end of the last one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import PYTHON, child_process, emulator_process, general_domain, get_json, png, write_config
from bench.ncp_world import S3World, open_s3_world

REPLICAS = 3
SERVICE_CAP = 5
LATENCY_MS = 300.0
JITTER_MS = 100.0
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Mode:
    name: str
    caps: tuple[int, ...]  # each replica's max_concurrent_calls
    redis: bool


SHARED = Mode("shared", (SERVICE_CAP,) * REPLICAS, redis=True)
STATIC_FULL = Mode("static-5-each", (SERVICE_CAP,) * REPLICAS, redis=False)
STATIC_SPLIT = Mode("static-2-2-1", (2, 2, 1), redis=False)
SHARED_NCP = Mode("shared-ncp", (SERVICE_CAP,) * REPLICAS, redis=True)


@dataclass(frozen=True)
class ReplicaFigures:
    """What 3 replicas did together on one batch, as the service saw it."""

    items: int
    succeeded: int
    wall_s: float
    utilisation: float | None
    answers_0025: int
    recognised_twice: int
    exit_codes: tuple[int, ...]

    @property
    def items_per_s(self) -> float:
        return self.succeeded / self.wall_s if self.wall_s > 0 else 0.0


async def _write_inputs(world: S3World, prefix: str, items: int) -> None:
    async with AsyncExitStack() as stack:
        client = await world.direct_client(stack)
        for start in range(0, items, 50):
            await asyncio.gather(
                *(
                    client.put_object(
                        Bucket=world.bucket,
                        Key=f"{prefix}/in/scan-{index:05}.png",
                        Body=png(160 + index % 97, 120 + index // 97 % 89, 40 + index % 200),
                    )
                    for index in range(start, min(items, start + 50))
                )
            )


def _configs(world: S3World, mode: Mode, work: Path, url: str) -> list[Path]:
    prefix = f"{mode.name}/"
    storage = world.storage_section(control_prefix=f"{prefix}control")
    configs = []
    for index, cap in enumerate(mode.caps):
        sections: dict[str, dict[str, Any]] = {
            "storage": storage,
            "domains.receipts": general_domain(url, cap),
            "worker": {"poll_interval_s": 1.0, "shutdown_grace_s": 10.0},
            "logging": {"format": "json", "level": "info"},
        }
        if mode.redis:
            sections["coordination"] = {**world.coordination_section(), "key_prefix": f"bench-{mode.name}:"}
        configs.append(write_config(work / f"replica-{index}.toml", sections))
    return configs


async def _create_batch(config: Path, world: S3World, mode: Mode, log: Path) -> None:
    args = [
        PYTHON, "-m", "ocrbatch", "--config", str(config), "batch", "create",
        "--name", mode.name, "--domain", "receipts",
        "--input", world.location(f"{mode.name}/in"), "--result", world.location(f"{mode.name}/out"),
    ]  # fmt: skip
    with log.open("ab") as output:
        async with child_process(args, stdout=output, stderr=output) as process:
            code = await asyncio.wait_for(process.wait(), 120)
    if code != 0:
        raise RuntimeError(f"batch create for {mode.name} exited {code}; see {log}")


async def _run_replicas(configs: Sequence[Path], work: Path) -> tuple[float, tuple[int, ...]]:
    async with AsyncExitStack() as stack:
        started_s = time.monotonic()
        processes = []
        for index, config in enumerate(configs):
            log = stack.enter_context((work / f"replica-{index}.log").open("ab"))
            args = [PYTHON, "-m", "ocrbatch", "--config", str(config), "run", "--once"]
            processes.append(await stack.enter_async_context(child_process(args, stdout=log, stderr=log)))
        codes = await asyncio.wait_for(
            asyncio.gather(*(process.wait() for process in processes)), RUN_TIMEOUT_S
        )
        return time.monotonic() - started_s, tuple(codes)


async def run_mode(world: S3World, mode: Mode, work: Path, items: int) -> ReplicaFigures:
    """One batch of `items` through 3 replicas configured as `mode` says."""
    work = work / mode.name
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    await _write_inputs(world, mode.name, items)
    emulator = emulator_process(
        work / "emulator.log", max_concurrent_calls=SERVICE_CAP, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS
    )
    async with emulator as url:
        configs = await asyncio.to_thread(_configs, world, mode, work, url)
        await _create_batch(configs[0], world, mode, work / "batch-create.log")
        wall_s, codes = await _run_replicas(configs, work)
        stats = await get_json(url + "/_emulator/stats")
    return ReplicaFigures(
        items=items,
        succeeded=int(stats["successes"])
        - sum(count - 1 for count in stats["recognised_more_than_once"].values()),
        wall_s=wall_s,
        utilisation=stats["domains"]["general"]["slot_utilisation"],
        answers_0025=int(stats["answers"].get("0025", 0)),
        recognised_twice=len(stats["recognised_more_than_once"]),
        exit_codes=codes,
    )


async def compare(work: Path, *, items: int) -> dict[str, ReplicaFigures]:
    """Every mode, one after the other in this run: moto as AWS-like S3, then as NCP."""
    figures: dict[str, ReplicaFigures] = {}
    async with open_s3_world(work / "aws", profile="aws") as world:
        for mode in (SHARED, STATIC_FULL, STATIC_SPLIT):
            figures[mode.name] = await run_mode(world, mode, work / "aws", items)
    async with open_s3_world(work / "ncp", profile="ncp") as world:
        figures[SHARED_NCP.name] = await run_mode(world, SHARED_NCP, work / "ncp", items)
    return figures
