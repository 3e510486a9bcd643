"""`make bench`: ocrbatch against the emulator, beside a plain baseline script, as one table.

    python -m bench.run                      # every row (a few minutes)
    python -m bench.run --only utilisation   # one group: utilisation, s3, s3walk, overcap,
                                             # highcap, startup, replicas, memory, events

Each row names the command that reproduces it. Figures are timings on a shared machine: other
processes running at the same time make them noisier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import replicas, scenarios
from bench.common import percentile
from bench.events_bench import upload_latencies
from bench.scenarios import EMULATOR_CAP, JITTER_MS, LATENCY_MS, STORAGE_DELAY_MS, Figures

GROUPS = ("utilisation", "s3", "s3walk", "overcap", "highcap", "startup", "replicas", "memory", "events")
IDEAL_PER_S = EMULATOR_CAP / (LATENCY_MS / 1000)
TARGET_UTILISATION = 0.98
TARGET_S3_SPEEDUP = 1.35  # ocrbatch's items/s against the baseline's, on S3
TARGET_S3_SPEEDUP_FAULTS = 1.7  # the same with 10 % of the calls answered 0500/0501
S3_ERROR_RATE = 0.10
# Answers that fail take the slot as long as the others: at most this many items/s succeed.
FAULTY_BOUND_PER_S = IDEAL_PER_S * (1 - S3_ERROR_RATE)
STARTUP_RUNS = 5
TARGET_STARTUP_S = 1.0
HIGHCAP_ITEMS = 3000
FAST_IDEAL_PER_S = scenarios.FAST_CAP / (scenarios.FAST_LATENCY_MS / 1000)
TARGET_OF_LOOP = 0.90  # ocrbatch's items/s against the minimal loop's
TARGET_CPU_OF_LOOP = 1.5  # ocrbatch's CPU per item against the minimal loop's
TARGET_RSS_GROWTH = 0.10
TARGET_WALK_CPU_S = 5.0  # a pass over 100k done local objects
TARGET_REPLICA_UTILISATION = 0.95
EXIT_TERMINATED = 143


@dataclass(frozen=True)
class Row:
    measure: str
    ocrbatch: str
    baseline: str
    target: str
    group: str
    met: bool | None = None  # None: no target


@dataclass(frozen=True)
class Options:
    items: int
    uploads: int
    work: Path
    walk_items: int = 10_000


def _command(group: str) -> str:
    return f"`.venv/bin/python -m bench.run --only {group}`"


def _failed_row(measure: str, ours: Figures, theirs: Figures, items: int, group: str) -> Row:
    """Items without a result, of `items`: none, with every one succeeded, is the target."""
    met = ours.failed == 0 and ours.succeeded == items
    return Row(measure, f"{ours.failed} of {items}", f"{theirs.failed} of {items}", "0", group, met)


def _util(figures: Figures) -> str:
    return "n/a" if figures.utilisation is None else f"{figures.utilisation:.3f}"


def _speedup_of(items_per_s: float, baseline: Figures) -> float:
    return items_per_s / baseline.items_per_s if baseline.items_per_s else float("inf")


def _rate(figures: Figures) -> str:
    return f"{figures.items_per_s:.2f} ({figures.items_per_s / IDEAL_PER_S:.0%} of ideal)"


async def utilisation(options: Options) -> list[Row]:
    ours, theirs = await scenarios.throughput(options.work / "utilisation", items=options.items, worker_cap=5)
    group = "utilisation"
    util_met = ours.utilisation is not None and ours.utilisation >= TARGET_UTILISATION
    return [
        Row(
            f"items/s, cap right (5 = 5); ideal cap/latency = {IDEAL_PER_S:.2f}",
            _rate(ours),
            _rate(theirs),
            "-",
            group,
        ),
        Row("slot utilisation, cap right", _util(ours), _util(theirs), ">= 0.98", group, util_met),
        Row(
            "0025 answers, cap right",
            str(ours.answers_0025),
            str(theirs.answers_0025),
            "0",
            group,
            ours.answers_0025 == 0,
        ),
        _failed_row("items failed, cap right", ours, theirs, options.items, group),
        Row(
            "CPU ms per item (the whole process, all threads)",
            f"{ours.cpu_ms_per_item:.1f}",
            f"{theirs.cpu_ms_per_item:.1f}",
            "-",
            group,
        ),
    ]


async def s3(options: Options) -> list[Row]:
    """S3 (moto) behind a proxy that delays every request: ocrbatch and the baseline, without and
    with 10 % of the calls answered 0500/0501."""
    ours, theirs = await scenarios.s3_throughput(options.work / "s3", items=options.items)
    ours_f, theirs_f = await scenarios.s3_throughput(
        options.work / "s3-faults", items=options.items, error_rate=S3_ERROR_RATE
    )
    group = "s3"

    def speedup(a: Figures, b: Figures) -> float:
        return _speedup_of(a.items_per_s, b)

    clean, faulty = speedup(ours, theirs), speedup(ours_f, theirs_f)
    bound = _speedup_of(FAULTY_BOUND_PER_S, theirs_f)
    return [
        Row(
            f"S3, every request +{STORAGE_DELAY_MS:.0f} ms: items/s (speed-up)",
            f"{_rate(ours)} ({clean:.2f}x)",
            _rate(theirs),
            f">= {TARGET_S3_SPEEDUP}x",
            group,
            clean >= TARGET_S3_SPEEDUP,
        ),
        Row("S3: slot utilisation", _util(ours), _util(theirs), ">= 0.98", group, _met_util(ours)),
        _failed_row("S3: items failed", ours, theirs, options.items, group),
        Row(
            f"S3, {S3_ERROR_RATE:.0%} of calls 0500/0501: items/s (speed-up)",
            f"{_rate(ours_f)} ({faulty:.2f}x)",
            _rate(theirs_f),
            f">= {TARGET_S3_SPEEDUP_FAULTS}x",
            group,
            faulty >= TARGET_S3_SPEEDUP_FAULTS,
        ),
        Row(
            # A failed call holds its slot as long as a good one: no client makes more than this.
            f"S3, {S3_ERROR_RATE:.0%} 0500/0501: the most any client makes (cap / latency x 0.9)",
            f"{FAULTY_BOUND_PER_S:.2f} items/s, {bound:.2f}x the baseline",
            "n/a",
            "-",
            group,
        ),
        _failed_row(
            f"S3, {S3_ERROR_RATE:.0%} 0500/0501: items failed", ours_f, theirs_f, options.items, group
        ),
        Row(
            "S3: CPU ms per item",
            f"{ours.cpu_ms_per_item:.1f}",
            f"{theirs.cpu_ms_per_item:.1f}",
            "-",
            group,
        ),
    ]


async def s3_walk(options: Options) -> list[Row]:
    figures = await scenarios.s3_walk(options.work / "s3-walk", options.walk_items)
    requests = figures.requests
    heads = sum(count for kind, count in requests.items() if kind.endswith(" head"))
    pages = sum(count for kind, count in requests.items() if kind.endswith(" list"))
    return [
        Row(
            f"S3, pass over {options.walk_items:,} done objects: wall s / CPU s; list pages; HEADs",
            f"{_cost(figures)}; {pages}; {heads}",
            "n/a",
            "HEADs 0 (results newer than their inputs)",
            "s3walk",
            heads == 0,
        )
    ]


def _met_util(figures: Figures) -> bool:
    return figures.utilisation is not None and figures.utilisation >= TARGET_UTILISATION


async def overcap(options: Options) -> list[Row]:
    ours, theirs = await scenarios.throughput(options.work / "overcap", items=options.items, worker_cap=15)
    group = "overcap"
    return [
        Row(
            "0025 answers, cap 3x too high (15, service 5)",
            str(ours.answers_0025),
            str(theirs.answers_0025),
            "-",
            group,
        ),
        Row("items/s, cap 3x too high", _rate(ours), _rate(theirs), "-", group),
        Row("slot utilisation, cap 3x too high", _util(ours), _util(theirs), "-", group),
        _failed_row("items failed, cap 3x too high", ours, theirs, options.items, group),
    ]


async def highcap(options: Options) -> list[Row]:
    """The fast service (cap 32, 50 +/- 10 ms): the baseline column is the minimal asyncio loop."""
    ours, loop = await scenarios.high_throughput(options.work / "highcap", items=HIGHCAP_ITEMS)
    group = "highcap"
    ideal = f"ideal cap/latency = {FAST_IDEAL_PER_S:.0f}"
    share = ours.items_per_s / loop.items_per_s if loop.items_per_s else 0.0
    cpu_ratio = ours.cpu_ms_per_item / loop.cpu_ms_per_item if loop.cpu_ms_per_item else float("inf")
    return [
        Row(
            f"items/s, cap 32, 50 ms, {HIGHCAP_ITEMS} items, local ({ideal}); baseline = minimal loop",
            f"{ours.items_per_s:.0f} ({share:.0%} of the loop)",
            f"{loop.items_per_s:.0f}",
            ">= 90 % of the loop",
            group,
            share >= TARGET_OF_LOOP,
        ),
        Row("slot utilisation, cap 32", _util(ours), _util(loop), "-", group),
        Row(
            "CPU ms per item, cap 32",
            f"{ours.cpu_ms_per_item:.2f} ({cpu_ratio:.1f}x the loop)",
            f"{loop.cpu_ms_per_item:.2f}",
            "<= 1.5x the loop",
            group,
            cpu_ratio <= TARGET_CPU_OF_LOOP,
        ),
        _failed_row("items failed, cap 32", ours, loop, HIGHCAP_ITEMS, group),
    ]


async def startup(options: Options) -> list[Row]:
    walls = sorted(await scenarios.startup(options.work / "startup", runs=STARTUP_RUNS))
    median_s = walls[len(walls) // 2]
    return [
        Row(
            f"`ocrbatch run --once` on an empty local batch: median (slowest) wall s of {STARTUP_RUNS}",
            f"{median_s:.2f} ({walls[-1]:.2f})",
            "n/a",
            f"< {TARGET_STARTUP_S:.0f} s",
            "startup",
            median_s < TARGET_STARTUP_S,
        )
    ]


def _replica_util(figures: replicas.ReplicaFigures) -> str:
    return "n/a" if figures.utilisation is None else f"{figures.utilisation:.3f}"


def _replica_rate(figures: replicas.ReplicaFigures) -> str:
    return f"{figures.items_per_s:.2f} ({figures.items_per_s / IDEAL_PER_S:.0%} of ideal)"


async def replica_rows(options: Options) -> list[Row]:
    figures = await replicas.compare(options.work / "replicas", items=options.items)
    shared, full, split = figures["shared"], figures["static-5-each"], figures["static-2-2-1"]
    ncp = figures["shared-ncp"]
    group = "replicas"
    both = "shared via Redis vs static 5 each"

    def clean(run: replicas.ReplicaFigures) -> bool:
        return run.succeeded == run.items and run.recognised_twice == 0 and set(run.exit_codes) == {0}

    return [
        Row(
            f"3 replicas, slot utilisation ({both}; static 2+2+1: {_replica_util(split)})",
            _replica_util(shared),
            _replica_util(full),
            f">= {TARGET_REPLICA_UTILISATION}",
            group,
            shared.utilisation is not None and shared.utilisation >= TARGET_REPLICA_UTILISATION,
        ),
        Row(
            f"3 replicas, 0025 answers ({both}; static 2+2+1: {split.answers_0025})",
            str(shared.answers_0025),
            str(full.answers_0025),
            "0",
            group,
            shared.answers_0025 == 0,
        ),
        Row(
            f"3 replicas, items/s ({both}; static 2+2+1: {_replica_rate(split)})",
            _replica_rate(shared),
            _replica_rate(full),
            "-",
            group,
        ),
        Row(
            f"3 replicas, {options.items} inputs: results / images recognised twice / exit codes ({both})",
            f"{shared.succeeded} / {shared.recognised_twice} / {shared.exit_codes}",
            f"{full.succeeded} / {full.recognised_twice} / {full.exit_codes}",
            f"{options.items} / 0 / 0",
            group,
            clean(shared),
        ),
        Row(
            "3 replicas on the NCP profile, shared via Redis: slot utilisation; 0025s; results / twice",
            f"{_replica_util(ncp)}; {ncp.answers_0025}; {ncp.succeeded} / {ncp.recognised_twice}",
            "n/a (without Redis a second replica refuses)",
            f">= {TARGET_REPLICA_UTILISATION}; 0; {options.items} / 0",
            group,
            clean(ncp)
            and ncp.answers_0025 == 0
            and ncp.utilisation is not None
            and ncp.utilisation >= TARGET_REPLICA_UTILISATION,
        ),
    ]


def _mb(figures: Figures) -> float:
    return figures.peak_rss_kb / 1024


def _cost(figures: Figures) -> str:
    return f"{figures.wall_s:.1f} / {figures.cpu_s:.1f}"


def _growth(figures: Figures, base: Figures) -> str:
    return f"{_mb(figures):.1f} MB ({_mb(figures) / _mb(base) - 1:+.0%})"


async def memory(options: Options) -> list[Row]:
    work = options.work / "memory"
    ours_1k, theirs_1k = await scenarios.memory(work / "1k", 1_000, per_directory=None)
    ours_flat, theirs_flat = await scenarios.memory(work / "100k-flat", 100_000, per_directory=None)
    ours_tree, theirs_tree = await scenarios.memory(work / "100k-tree", 100_000, per_directory=1_000)
    group = "memory"

    def within(figures: Figures) -> bool:
        return _mb(figures) <= _mb(ours_1k) * (1 + TARGET_RSS_GROWTH)

    return [
        Row(
            "peak RSS, pass over 1k done objects",
            f"{_mb(ours_1k):.1f} MB",
            f"{_mb(theirs_1k):.1f} MB",
            "-",
            group,
        ),
        Row(
            "peak RSS, 100k done objects, 1 directory (local)",
            _growth(ours_flat, ours_1k),
            _growth(theirs_flat, theirs_1k),
            "<= +10 %",
            group,
            within(ours_flat),
        ),
        Row(
            "peak RSS, 100k done objects, 100 directories of 1k (local)",
            _growth(ours_tree, ours_1k),
            _growth(theirs_tree, theirs_1k),
            "<= +10 %",
            group,
            within(ours_tree),
        ),
        Row(
            "pass over 100k done objects: wall s / CPU s (1 dir; 100 dirs)",
            f"{_cost(ours_flat)}; {_cost(ours_tree)}",
            f"{_cost(theirs_flat)}; {_cost(theirs_tree)}",
            f"CPU <= {TARGET_WALK_CPU_S:.0f} s",
            group,
            max(ours_flat.cpu_s, ours_tree.cpu_s) <= TARGET_WALK_CPU_S,
        ),
    ]


async def events(options: Options) -> list[Row]:
    latencies = await upload_latencies(options.work / "events", uploads=options.uploads, interval_s=0.5)
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    return [
        Row(
            f"upload -> result p50 / p95, event mode ({len(latencies)} uploads, 2/s, S3 on moto)",
            f"{p50:.2f} s / {p95:.2f} s",
            "n/a (no event mode)",
            "-",
            "events",
        )
    ]


RUNNERS: dict[str, Callable[[Options], Awaitable[list[Row]]]] = {
    "utilisation": utilisation,
    "s3": s3,
    "s3walk": s3_walk,
    "startup": startup,
    "overcap": overcap,
    "highcap": highcap,
    "replicas": replica_rows,
    "memory": memory,
    "events": events,
}


def render(rows: list[Row], elapsed_s: float) -> str:
    machine = f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines = [
        f"ocrbatch benchmark, {datetime.now(UTC):%Y-%m-%d}, {machine}, {elapsed_s:.0f} s. "
        f"Emulator: cap {EMULATOR_CAP}, latency {LATENCY_MS:.0f} +/- {JITTER_MS:.0f} ms; "
        f"every storage request +{STORAGE_DELAY_MS:.0f} ms (throughput rows). "
        "Baseline: bench/baseline.py (list, skip done, thread pool of urllib calls, 3 tries 1 s apart); "
        "in the replicas rows, 3 replicas with static shares (bench/replicas.py).",
        "",
        "| Measure | ocrbatch | baseline | target | met | reproduce |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**NO**")
        cells = (row.measure, row.ocrbatch, row.baseline, row.target, met, _command(row.group))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def _main(groups: list[str], options: Options) -> list[Row]:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM cancels the run, so every child process is stopped on the way out
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    rows: list[Row] = []
    for group in groups:
        print(f"bench: {group} ...", file=sys.stderr, flush=True)
        started_s = time.monotonic()
        rows += await RUNNERS[group](options)
        print(f"bench: {group} done in {time.monotonic() - started_s:.0f} s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=GROUPS, help="run only this group (repeatable)")
    parser.add_argument("--items", type=int, default=600, help="inputs per throughput run (default 600)")
    parser.add_argument("--uploads", type=int, default=40, help="uploads in the event-mode run (default 40)")
    parser.add_argument(
        "--walk-items", type=int, default=10_000, help="done objects in the S3 walk (default 10,000)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary directory)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    groups = [group for group in GROUPS if group in (args.only or GROUPS)]
    started_s = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ocrbatch-bench-") as tmp:
        work = args.workdir or Path(tmp)
        try:
            rows = asyncio.run(
                _main(
                    groups,
                    Options(items=args.items, uploads=args.uploads, work=work, walk_items=args.walk_items),
                )
            )
        except asyncio.CancelledError:  # SIGTERM: the child processes are stopped by now
            print("bench: stopped by SIGTERM", file=sys.stderr)
            sys.exit(EXIT_TERMINATED)
    print(render(rows, time.monotonic() - started_s))
    missed = [row.measure for row in rows if row.met is False]
    for measure in missed:
        print(f"target missed: {measure}")
    if missed and args.strict:
        sys.exit(1)


if __name__ == "__main__":
    main()
