"""`make soak`: thousands of items through faults, webhook outages and SIGKILLs, then the invariants.

    python -m bench.soak                          # 5,000 items, 4 SIGKILL restarts
    python -m bench.soak --break double-billing   # break an invariant on purpose: the run must fail

The emulator (in this process) injects 0500/0501, bare 5xx, 0025, dropped connections and latency
spikes; the webhook receiver (in this process) answers 10 % of requests 500 and goes down for a
while. The worker (`ocrbatch run`, a child process, local directories) is SIGKILLed at random
points and restarted; the last run is stopped with SIGTERM once everything is settled. Then every
invariant is printed as PASS or FAIL, and the last line is `N passed, N failed` (exit 1 on a FAIL).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from bench.common import OCR_SECRET, PYTHON, child_process, general_domain, write_config
from bench.receiver import FlakyReceiver
from bench.soak_checks import SoakState, run_checks, summary
from bench.soak_world import (
    BREAKS,
    apply_break,
    leftover_temp_files,
    read_objects,
    settled,
    stored_inputs,
    write_soak_inputs,
)
from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import batch_store_in
from ocrbatch.emulator.faults import FaultSettings, ScriptedFault
from ocrbatch.emulator.server import Emulator
from ocrbatch.emulator.settings import EmulatorSettings
from ocrbatch.settings import WorkerSettings, load_settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.batch_run import item_tasks_per_batch

CAP = 5
EXIT_TERMINATED = 143
DELIVERY_GRACE_S = 30.0  # after the last item is settled, for the last chunks to reach the receiver
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"ocrbatch-soak-webhook-key-0001").decode()
FAULTS = FaultSettings(
    latency_ms=20.0,
    latency_jitter_ms=10.0,
    error_rate=0.02,  # 0500/0501
    http_error_rate=0.01,  # bare 502/503/504
    rate_limit_rate=0.01,  # 0025 although the cap is kept
    drop_rate=0.01,  # connection closed without an answer
    failure_rate=0.002,  # inferResult FAILURE: a final failure record
)


@dataclass
class Options:
    items: int
    kills: int
    seed: int
    outage_s: float
    timeout_s: float
    work: Path
    breaks: list[str]


@dataclass
class Soak:
    """One soak: the emulator, the receiver, and what happened to the worker runs."""

    options: Options
    emulator: Emulator
    receiver: FlakyReceiver
    config: Path
    documents: set[str]
    rng: random.Random
    unsettled_at_kills: list[set[str]] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    spikes: int = 0

    @property
    def results_dir(self) -> Path:
        return self.options.work / "out"

    def _recognised(self) -> int:
        return len(self.emulator.recognitions)

    def _in_flight(self) -> int:
        return sum(meter.in_flight for meter in self.emulator.meters.values())

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[asyncio.subprocess.Process]:
        log = self.options.work / "logs" / f"worker-{len(self.logs) + 1}.log"
        self.logs.append(log)
        args = [PYTHON, "-m", "ocrbatch", "--config", str(self.config), "run"]
        with log.open("ab") as output:
            async with child_process(args, stdout=output, stderr=output, stop_timeout_s=30) as process:
                yield process

    async def killed_run(self, at_recognised: int) -> None:
        """Start the worker, SIGKILL it at a random moment once `at_recognised` images are done
        (and at least 2 % more than at its start, so every run gets some work done)."""
        at_recognised = max(at_recognised, self._recognised() + len(self.documents) // 50)
        async with self.worker() as process:
            progress = asyncio.ensure_future(
                self.emulator.wait_until(lambda: self._recognised() >= at_recognised)
            )
            ended = asyncio.ensure_future(process.wait())
            await asyncio.wait(
                {progress, ended}, timeout=self.options.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            if ended.done():  # it ended on its own: a crash, not a kill
                self.exit_codes.append(process.returncode)
                return
            await asyncio.sleep(self.rng.uniform(0, 0.5))
            process.kill()
            in_flight = set(self.emulator.names_in_flight)
            await ended
        # Calls the dead worker sent still finish (and count) at the service.
        await asyncio.wait_for(self.emulator.wait_until(lambda: self._in_flight() == 0), 120)
        stored = await asyncio.to_thread(stored_inputs, self.results_dir)
        earlier = set().union(*self.unsettled_at_kills)  # recognised, not yet stored again
        unsettled = in_flight | (set(self.emulator.recognitions) - stored - earlier)
        self.unsettled_at_kills.append(unsettled)
        print(
            f"soak: SIGKILL {len(self.unsettled_at_kills)} at {self._recognised()} recognised, "
            f"{len(unsettled)} items unsettled",
            file=sys.stderr,
            flush=True,
        )

    async def final_run(self) -> None:
        """Run until every document is settled and delivered, then SIGTERM (a clean stop)."""
        async with self.worker() as process:
            ended = asyncio.ensure_future(process.wait())
            deadline_s = time.monotonic() + self.options.timeout_s
            settled_since_s: float | None = None
            while not ended.done() and time.monotonic() < deadline_s:
                await self.receiver.next_request(timeout_s=1.0)
                results, failures, outbox = await asyncio.to_thread(settled, self.results_dir)
                if (results | failures) >= self.documents and not outbox:
                    settled_since_s = settled_since_s or time.monotonic()
                    delivered = self.receiver.received_keys() >= results | failures
                    # Items finished just now reach the receiver within the idle flush and backoff.
                    if delivered or time.monotonic() - settled_since_s > DELIVERY_GRACE_S:
                        break
                else:
                    settled_since_s = None
            if not ended.done():
                process.send_signal(signal.SIGTERM)
            self.exit_codes.append(await asyncio.wait_for(ended, 60))

    async def latency_spikes(self) -> None:
        """Every few seconds the next few calls take 1-3 s."""
        while True:
            await asyncio.sleep(self.rng.uniform(3, 8))
            latency_ms = self.rng.uniform(1000, 3000)
            self.emulator.faults.script([ScriptedFault(latency_ms=latency_ms, times=self.rng.randint(3, 10))])
            self.spikes += 1

    async def receiver_outage(self) -> None:
        """Once 40 % of the images are recognised, the receiver goes down for `outage_s`."""
        await self.emulator.wait_until(lambda: self._recognised() >= 0.4 * len(self.documents))
        print(f"soak: webhook receiver down for {self.options.outage_s:g} s", file=sys.stderr, flush=True)
        await self.receiver.outage(self.options.outage_s)


def _config(work: Path) -> dict[str, dict[str, object]]:
    worker: dict[str, object] = {
        "poll_interval_s": 1.0,
        "progress_interval_s": 5.0,
        "report_interval_s": 2.0,
        "shutdown_grace_s": 10.0,
        "max_attempts": 10,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 1.0,
    }
    if "claim_ttl_s" in WorkerSettings.model_fields:  # claims of a killed worker expire quickly
        worker["claim_ttl_s"] = 5.0
    return {
        "storage": {"control_path": str(work / "control")},
        "worker": worker,
        "webhook": {
            "chunk_size": 100,
            "idle_flush_s": 1.0,
            "request_timeout_s": 5.0,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 2.0,
        },
        "logging": {"format": "json", "level": "info"},
    }


async def _create_batch(config: Path, work: Path, webhook_url: str) -> None:
    settings = load_settings(config)
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        spec = {
            "name": "soak",
            "domain": "receipts",
            "input_path": str(work / "in"),
            "result_path": str(work / "out"),
            "webhook": {"url": webhook_url, "secret": WEBHOOK_SECRET},
        }
        await store.create(parse_spec(spec))


async def run_soak(options: Options) -> int:
    work, rng = options.work, random.Random(options.seed)
    await asyncio.to_thread((work / "logs").mkdir, parents=True, exist_ok=True)
    documents, skipped = await asyncio.to_thread(write_soak_inputs, work / "in", options.items)
    started_s = time.monotonic()
    async with AsyncExitStack() as stack:
        emulator = await stack.enter_async_context(
            Emulator(
                EmulatorSettings(
                    general_secret=SecretStr(OCR_SECRET),
                    max_concurrent_calls=CAP,
                    faults=FAULTS.model_copy(update={"seed": options.seed}),
                )
            )
        )
        receiver = FlakyReceiver(secret=WEBHOOK_SECRET, failure_rate=0.1, seed=options.seed)
        await receiver.start()
        stack.push_async_callback(receiver.stop)
        sections = {**_config(work), "domains.receipts": general_domain(emulator.url, CAP)}
        config = await asyncio.to_thread(write_config, work / "ocrbatch.toml", sections)
        await _create_batch(config, work, receiver.url)
        soak = Soak(options, emulator, receiver, config, documents, rng)
        background = [asyncio.create_task(soak.latency_spikes()), asyncio.create_task(soak.receiver_outage())]
        try:
            span = range(len(documents) // 10, len(documents) * 85 // 100)
            for threshold in sorted(rng.sample(span, options.kills)):
                await soak.killed_run(threshold)
            await soak.final_run()
        finally:
            for task in background:
                task.cancel()
            outcomes = await asyncio.gather(*background, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        notes = [
            await apply_break(
                name, results_dir=soak.results_dir, emulator=emulator, receiver=receiver, log=soak.logs[-1]
            )
            for name in options.breaks
        ]
        state = await asyncio.to_thread(_state, soak, skipped)
        stats = emulator.stats()
    _report(soak, state, stats, notes, time.monotonic() - started_s)
    checks = run_checks(state)
    for check in checks:
        print(check.line())
    print(summary(checks))
    return 0 if all(check.passed for check in checks) else 1


def _state(soak: Soak, skipped: set[str]) -> SoakState:
    return SoakState(
        documents=soak.documents,
        skipped=skipped,
        objects=read_objects(soak.results_dir),
        recognitions=dict(soak.emulator.recognitions),
        unsettled_at_kills=soak.unsettled_at_kills,
        max_unsettled_per_kill=item_tasks_per_batch(CAP),
        deliveries=list(soak.receiver.deliveries),
        logs={path.name: path.read_text(encoding="utf-8", errors="replace") for path in soak.logs},
        secrets={"OCR secret": OCR_SECRET, "webhook secret": WEBHOOK_SECRET},
        kills=len(soak.unsettled_at_kills),
        min_kills=soak.options.kills,
        exit_codes=soak.exit_codes,
    )


def _report(
    soak: Soak, state: SoakState, stats: dict[str, object], notes: list[str], elapsed_s: float
) -> None:
    deliveries = state.deliveries
    refused = sum(1 for delivery in deliveries if not delivery.accepted)
    print(
        f"soak: {len(state.documents)} documents + {len(state.skipped)} unsupported, {elapsed_s:.0f} s; "
        f"emulator: {stats['calls']} calls, answers {stats['answers']}, {soak.spikes} latency spikes; "
        f"receiver: {len(deliveries)} requests, {refused} answered 500, {soak.receiver.outages} outage(s); "
        f"{state.kills} SIGKILLs; {leftover_temp_files(soak.results_dir)} temp files of cut writes left"
    )
    for note in notes:
        print(f"soak: --break: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=5000, help="PNG documents (default 5000)")
    parser.add_argument("--kills", type=int, default=4, help="SIGKILL restarts (default 4)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--outage-s", type=float, default=8.0, help="how long the receiver is down")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="longest wait for one run")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary directory)")
    parser.add_argument("--break", dest="breaks", action="append", choices=BREAKS, default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocrbatch-soak-") as tmp:
        options = Options(
            items=args.items,
            kills=args.kills,
            seed=args.seed,
            outage_s=args.outage_s,
            timeout_s=args.timeout_s,
            work=args.workdir or Path(tmp),
            breaks=args.breaks,
        )
        try:
            code = asyncio.run(_main(options))
        except asyncio.CancelledError:  # SIGTERM: the child processes are stopped by now
            print("soak: stopped by SIGTERM", file=sys.stderr)
            code = EXIT_TERMINATED
    sys.exit(code)


async def _main(options: Options) -> int:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM cancels the soak, so the worker is stopped on the way out
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_soak(options)


if __name__ == "__main__":
    main()
