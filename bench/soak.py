"""`make soak`: thousands of items through faults, webhook outages and SIGKILLs, then the invariants.

    python -m bench.soak                          # local directories, 5,000 items, 4 SIGKILL restarts
    python -m bench.soak --profile ncp            # 2 replicas on S3 as NAVER's (1,500 items by default)
    python -m bench.soak --break double-billing   # break an invariant on purpose: the run must fail
    make soak ARGS="--profile ncp --items 600"    # the same through make

The emulator (in this process) injects 0500/0501, bare 5xx, 0025, dropped connections and latency
spikes; the webhook receiver (in this process) answers 10 % of requests 500 and goes down for a
while. Workers are `ocrbatch run` child processes:

- `--profile local` (default): one worker on local directories; claims and batches in a local
  control directory.
- `--profile ncp`: 2 replicas at once on a moto bucket (in this process) that they reach through
  the "ncp" S3 proxy (V1 listings only, conditional headers dropped, as NAVER Object Storage), with
  `[coordination] backend = "redis"` on a redis-server child process: batches, claims and the
  shared cap of 5 calls live there. Inputs are uploaded to moto directly, and the soak reads the
  results there directly too, never through the proxy. moto is slow, hence 1,500 items by default.

At random points a random replica among those at work (a few items done in its run) is SIGKILLed,
one at a time (frozen with SIGSTOP while the soak notes the claims it holds, then killed), and
restarted; in the last stage every replica runs until everything is settled and delivered, then
each is stopped with SIGTERM and must exit 0. Then every invariant is printed as PASS or FAIL, and
the last line is `N passed, N failed` (exit 1 on a FAIL). `--workdir DIR` keeps the files: the
workers' logs, this process's own (`logs/soak.log`) and every webhook request (`deliveries.jsonl`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import SecretStr

from bench.common import OCR_SECRET, PYTHON, child_process, general_domain, write_config
from bench.ncp_world import S3World, open_s3_world
from bench.receiver import Delivery, FlakyReceiver
from bench.soak_checks import SoakState, run_checks, summary
from bench.soak_world import (
    BREAKS,
    LocalView,
    LocationView,
    S3View,
    apply_break,
    copy_inputs,
    held_claims,
    leftover_temp_files,
    read_objects,
    settled,
    stored_inputs,
    write_soak_inputs,
)
from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import BatchStore, batch_store_in
from ocrbatch.emulator.faults import FaultSettings, ScriptedFault
from ocrbatch.emulator.server import Emulator
from ocrbatch.emulator.settings import EmulatorSettings
from ocrbatch.logs import configure_logging
from ocrbatch.settings import WorkerSettings, load_settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.sizing import max_item_tasks_per_batch

CAP = 5  # the service's cap, and each worker's max_concurrent_calls (with Redis: their total)
EXIT_TERMINATED = 143
PROFILES = ("local", "ncp")
DEFAULT_ITEMS = {"local": 5000, "ncp": 1500}
REPLICAS = {"local": 1, "ncp": 2}
SLOT_LEASE_S = 5.0  # a killed replica's shared call slots come back after this
STOP_SETTLE_S = 0.3  # after SIGSTOP: calls the frozen worker had sent reach the emulator
CRASHES_TOLERATED = 3  # replicas that end on their own are restarted this often, then the soak gives up
DELIVERY_GRACE_S = 30.0  # after the last item is settled, for the last chunks to reach the receiver
SETTLED_POLL_S = 1.0  # the least time between two looks at the result location in the last stage
SERVER_LOGGERS = ("aiohttp.server", "werkzeug")  # the emulator, receiver and proxy; moto
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"ocrbatch-soak-webhook-key-0001").decode()
SEALING_KEY = base64.urlsafe_b64encode(b"ocrbatch-soak-sealing-key-000001").decode()  # seals WEBHOOK_SECRET
FAULTS = FaultSettings(
    latency_ms=20.0,
    latency_jitter_ms=10.0,
    error_rate=0.02,  # 0500/0501
    http_error_rate=0.01,  # bare 502/503/504
    rate_limit_rate=0.01,  # 0025 although the cap is kept
    drop_rate=0.01,  # connection closed without an answer
    failure_rate=0.002,  # inferResult FAILURE: a final failure record
)
T = TypeVar("T")


class SoakGaveUp(Exception):
    """A wait of the soak ran out: what it waited for, and where to look."""


async def within(awaitable: Awaitable[T], timeout_s: float, message: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        raise SoakGaveUp(f"{message} (waited {timeout_s:g} s)") from None


@dataclass
class Options:
    items: int
    kills: int
    seed: int
    outage_s: float
    timeout_s: float
    work: Path
    breaks: list[str]
    profile: str = "local"


@dataclass
class Place:
    """Where the batch reads and writes: its paths for the workers, and the soak's views of them."""

    input_path: str
    result_path: str
    inputs: LocationView
    results: LocationView
    sections: dict[str, dict[str, object]]  # [storage], and [coordination] with Redis
    secrets: dict[str, str]  # besides the OCR and webhook secrets: what no log may carry
    replicas: int
    world: S3World | None = None


@asynccontextmanager
async def open_place(options: Options) -> AsyncIterator[Place]:
    work = options.work
    if options.profile == "local":
        yield Place(
            input_path=str(work / "in"),
            result_path=str(work / "out"),
            inputs=LocalView(work / "in"),
            results=LocalView(work / "out"),
            sections={"storage": {"control_path": str(work / "control")}},
            secrets={},
            replicas=REPLICAS["local"],
        )
        return
    async with (
        open_s3_world(
            work,
            profile=options.profile,
            bucket="ocrbatch-soak",
            key_prefix="soak:",
            slot_lease_s=SLOT_LEASE_S,
        ) as world,
        AsyncExitStack() as stack,
    ):
        client = await world.direct_client(stack)
        yield Place(
            input_path=world.location("in"),
            result_path=world.location("out"),
            inputs=S3View(client, world.bucket, "in"),
            results=S3View(client, world.bucket, "out"),
            sections={"storage": world.storage_section(), "coordination": world.coordination_section()},
            secrets={"S3 secret key": world.secret_access_key},
            replicas=REPLICAS[options.profile],
            world=world,
        )


@dataclass
class Replica:
    """One run of the worker in replica slot `slot`."""

    slot: int
    process: asyncio.subprocess.Process
    log: Path
    ended: asyncio.Future[int]
    stack: AsyncExitStack
    killed: bool = False


@dataclass
class Soak:
    """One soak: the emulator, the receiver, the replicas, and what happened to their runs."""

    options: Options
    place: Place
    emulator: Emulator
    receiver: FlakyReceiver
    config: Path
    store: BatchStore
    batch_id: str
    documents: set[str]
    rng: random.Random
    replicas: list[Replica] = field(default_factory=list)
    unsettled_at_kills: list[set[str]] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    spikes: int = 0
    crashes: int = 0

    def _recognised(self) -> int:
        return len(self.emulator.recognitions)

    async def _start(self, slot: int) -> Replica:
        log = self.options.work / "logs" / f"worker-{len(self.logs) + 1}.log"
        self.logs.append(log)
        args = [PYTHON, "-m", "ocrbatch", "--config", str(self.config), "run"]
        stack = AsyncExitStack()
        try:
            output = stack.enter_context(log.open("ab"))
            process = await stack.enter_async_context(
                child_process(args, stdout=output, stderr=output, stop_timeout_s=30)
            )
        except BaseException:
            await stack.aclose()
            raise
        return Replica(slot, process, log, asyncio.ensure_future(process.wait()), stack)

    async def start_all(self) -> None:
        self.replicas = [await self._start(slot) for slot in range(self.place.replicas)]

    async def stop_all(self) -> None:
        """Stop whatever still runs (SIGTERM, then SIGKILL) and close the logs; for the way out."""
        for replica in self.replicas:
            await replica.stack.aclose()

    async def _restart_ended(self) -> None:
        """A replica that ended without being killed crashed: its exit code is kept (it fails the
        restarts check) and it is started again, up to `CRASHES_TOLERATED` times."""
        for replica in list(self.replicas):
            if replica.killed or not replica.ended.done():
                continue
            self.exit_codes.append(replica.ended.result())
            self.crashes += 1
            print(
                f"soak: {replica.log.name} (replica {replica.slot + 1}) ended on its own with exit code "
                f"{replica.ended.result()}",
                file=sys.stderr,
                flush=True,
            )
            await replica.stack.aclose()
            if self.crashes > CRASHES_TOLERATED:
                raise SoakGaveUp(f"replicas ended on their own {self.crashes} times; see {self.logs}")
            self.replicas[replica.slot] = await self._start(replica.slot)

    async def _progress(self, at_recognised: int) -> None:
        """Wait until `at_recognised` images are recognised (restarting crashed replicas)."""
        deadline_s = time.monotonic() + self.options.timeout_s
        while self._recognised() < at_recognised:
            left_s = deadline_s - time.monotonic()
            if left_s <= 0:
                print(
                    f"soak: only {self._recognised()} of {at_recognised} images recognised after "
                    f"{self.options.timeout_s:g} s; killing anyway",
                    file=sys.stderr,
                    flush=True,
                )
                return
            progress = asyncio.ensure_future(
                self.emulator.wait_until(lambda: self._recognised() >= at_recognised)
            )
            waits: set[asyncio.Future[Any]] = {progress, *(replica.ended for replica in self.replicas)}
            await asyncio.wait(waits, timeout=left_s, return_when=asyncio.FIRST_COMPLETED)
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            await self._restart_ended()

    async def killed_run(self, at_recognised: int) -> None:
        """Once `at_recognised` images are done (and at least 2 % more than now, so every run gets
        some work done), SIGKILL a random replica that is at work, at a random moment, and start
        it again."""
        await self._progress(max(at_recognised, self._recognised() + len(self.documents) // 50))
        while True:
            victim = await self._victim()
            await asyncio.sleep(self.rng.uniform(0, 0.5))
            if not victim.ended.done():
                break
            await self._restart_ended()  # it crashed meanwhile: choose again
        unsettled, claimed = await self._kill(victim)
        self.unsettled_at_kills.append(unsettled)
        print(
            f"soak: SIGKILL {len(self.unsettled_at_kills)} ({victim.log.name}, replica {victim.slot + 1}) "
            f"at {self._recognised()} recognised, {len(claimed)} items claimed, "
            f"{len(unsettled)} items unsettled",
            file=sys.stderr,
            flush=True,
        )
        self.replicas[victim.slot] = await self._start(victim.slot)

    async def _victim(self) -> Replica:
        """A random replica among those that finished a few items in their current run: one just
        restarted may still be starting, or find every item claimed by the others for a while."""
        least = max(1, len(self.documents) // 100 // len(self.replicas))
        deadline_s = time.monotonic() + self.options.timeout_s
        while True:
            await self._restart_ended()
            done = await asyncio.to_thread(lambda: [_items_done(replica.log) for replica in self.replicas])
            ready = [replica for replica, count in zip(self.replicas, done, strict=True) if count >= least]
            if ready:
                return self.rng.choice(ready)
            if time.monotonic() >= deadline_s:
                print(
                    f"soak: no replica finished {least} items in its run within "
                    f"{self.options.timeout_s:g} s; killing one anyway",
                    file=sys.stderr,
                    flush=True,
                )
                return self.rng.choice(self.replicas)
            await asyncio.sleep(0.2)  # the replicas' logs are all there is to wait on

    async def _kill(self, victim: Replica) -> tuple[set[str], set[str]]:
        """SIGKILL `victim`; returns the items it may have had billed without storing their result
        (those in flight at the emulator, or recognised but not stored), and the items it claimed.

        It is frozen first (SIGSTOP), so what it holds cannot change while that is read: the
        claims it holds (no one else can take them while it lives) and which of them have a
        result. The calls it had sent are answered (and counted) even after its death.
        """
        process, victim.killed = victim.process, True
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(STOP_SETTLE_S)
            claimed = await held_claims(self.store.coordination, self.batch_id, self.documents, process.pid)
            in_flight = claimed & self.emulator.names_in_flight.keys()
            stored = await stored_inputs(self.place.results, claimed)
        finally:
            process.kill()
        await within(victim.ended, 30, f"{victim.log.name} did not die of SIGKILL")
        await victim.stack.aclose()
        await within(
            self.emulator.wait_until(lambda: not claimed & self.emulator.names_in_flight.keys()),
            120,
            f"calls of {victim.log.name} were still in flight at the emulator",
        )
        earlier = set().union(*self.unsettled_at_kills)  # recognised, not yet stored again
        recognised = claimed & self.emulator.recognitions.keys()
        return in_flight | (recognised - stored - earlier), claimed

    async def final_run(self) -> None:
        """Run every replica until every document is settled and delivered, then SIGTERM each (a
        clean stop: exit code 0)."""
        deadline_s = time.monotonic() + self.options.timeout_s
        settled_since_s: float | None = None
        looked_at_s = 0.0
        while True:
            if time.monotonic() >= deadline_s:
                print(
                    f"soak: not everything settled and delivered within {self.options.timeout_s:g} s; "
                    "stopping the workers (the checks say what is missing)",
                    file=sys.stderr,
                    flush=True,
                )
                break
            await self._restart_ended()
            await self.receiver.next_request(timeout_s=1.0)
            await asyncio.sleep(max(0.0, looked_at_s + SETTLED_POLL_S - time.monotonic()))
            looked_at_s = time.monotonic()
            results, failures, outbox = await settled(self.place.results)
            if (results | failures) >= self.documents and not outbox:
                settled_since_s = settled_since_s or time.monotonic()
                delivered = self.receiver.received_keys() >= results | failures
                # Items finished just now reach the receiver within the idle flush and backoff.
                if delivered or time.monotonic() - settled_since_s > DELIVERY_GRACE_S:
                    break
            else:
                settled_since_s = None
        for replica in self.replicas:
            if not replica.ended.done():
                replica.process.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            try:
                code: int | None = await within(
                    asyncio.shield(replica.ended), 60, f"{replica.log.name} did not exit after SIGTERM"
                )
            except SoakGaveUp as gave_up:
                print(f"soak: {gave_up}", file=sys.stderr, flush=True)
                code = None  # fails the restarts check; `stop_all` SIGKILLs it
            self.exit_codes.append(code)

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


def _items_done(log: Path) -> int:
    """`item.done` lines in a worker's log (one run)."""
    try:
        return log.read_bytes().count(b'"event": "item.done"')
    except FileNotFoundError:
        return 0


def _config(place: Place) -> dict[str, dict[str, object]]:
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
        **place.sections,
        "worker": worker,
        "webhook": {
            "chunk_size": 100,
            "idle_flush_s": 1.0,
            "request_timeout_s": 5.0,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 2.0,
            "allow_networks": ["127.0.0.0/8"],  # the receiver listens on loopback
        },
        "security": {"secret_key": SEALING_KEY},
        "logging": {"format": "json", "level": "info"},
    }


async def _create_batch(
    stack: AsyncExitStack, config: Path, place: Place, webhook_url: str
) -> tuple[BatchStore, str]:
    """The batch, in the store the workers use; the store stays open (its claims are read)."""
    settings = load_settings(config)
    storages = await stack.enter_async_context(StorageFactory(settings.storage))
    store = await batch_store_in(settings, storages)
    spec = {
        "name": "soak",
        "domain": "receipts",
        "input_path": place.input_path,
        "result_path": place.result_path,
        "webhook": {"url": webhook_url, "secret": WEBHOOK_SECRET},
    }
    return store, (await store.create(parse_spec(spec))).batch.id


@contextmanager
def this_process_logging(path: Path) -> Iterator[None]:
    """This process's own logs go to `path`, not the console: ocrbatch's (batch creation, the
    control path's probe) and the in-process servers' errors (a SIGKILLed worker's cut requests)."""
    with path.open("a", encoding="utf-8") as output:
        configure_logging(output_format="json", stream=output)
        handler = logging.StreamHandler(output)
        loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
        for logger in loggers:
            logger.addHandler(handler)
            logger.propagate = False
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
                logger.propagate = True
            structlog.reset_defaults()


async def run_soak(options: Options) -> int:
    work, rng = options.work, random.Random(options.seed)
    await asyncio.to_thread((work / "logs").mkdir, parents=True, exist_ok=True)
    documents, skipped = await asyncio.to_thread(write_soak_inputs, work / "in", options.items)
    started_s = time.monotonic()
    async with AsyncExitStack() as stack:
        own_log = work / "logs" / "soak.log"
        stack.enter_context(this_process_logging(own_log))
        place = await stack.enter_async_context(open_place(options))
        if place.world is not None:
            uploaded = await copy_inputs(work / "in", place.inputs)
            upload_s = time.monotonic() - started_s
            print(
                f"soak: {uploaded} inputs uploaded to {place.input_path} in {upload_s:.0f} s",
                file=sys.stderr,
                flush=True,
            )
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
        sections = {**_config(place), "domains.receipts": general_domain(emulator.url, CAP)}
        config = await asyncio.to_thread(write_config, work / "ocrbatch.toml", sections)
        store, batch_id = await _create_batch(stack, config, place, receiver.url)
        soak = Soak(options, place, emulator, receiver, config, store, batch_id, documents, rng)
        stack.push_async_callback(soak.stop_all)  # before the world they run in is torn down
        background = [asyncio.create_task(soak.latency_spikes()), asyncio.create_task(soak.receiver_outage())]
        try:
            await soak.start_all()
            span = range(len(documents) // 10, len(documents) * 85 // 100)
            for threshold in sorted(rng.sample(span, options.kills)):
                await soak.killed_run(threshold)
            await soak.final_run()
        finally:
            for task in background:
                task.cancel()
            outcomes = await asyncio.gather(*background, return_exceptions=True)
            await soak.stop_all()
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        notes = [
            await apply_break(
                name, results=place.results, emulator=emulator, receiver=receiver, log=soak.logs[-1]
            )
            for name in options.breaks
        ]
        state = await _state(soak, skipped)
        await asyncio.to_thread(_write_deliveries, work / "logs" / "deliveries.jsonl", state.deliveries)
        stats = emulator.stats()
        temp_files = await leftover_temp_files(place.results)
    tracebacks = (await asyncio.to_thread(own_log.read_text, encoding="utf-8")).count("Traceback")
    _report(soak, state, stats, notes, temp_files=temp_files, elapsed_s=time.monotonic() - started_s)
    print(f"soak: {tracebacks} tracebacks in {own_log} (this process's servers and ocrbatch calls)")
    checks = run_checks(state)
    for check in checks:
        print(check.line())
    print(summary(checks))
    return 0 if all(check.passed for check in checks) else 1


async def _state(soak: Soak, skipped: set[str]) -> SoakState:
    logs = await asyncio.to_thread(
        lambda: {path.name: path.read_text(encoding="utf-8", errors="replace") for path in soak.logs}
    )
    return SoakState(
        documents=soak.documents,
        skipped=skipped,
        objects=await read_objects(soak.place.results),
        recognitions=dict(soak.emulator.recognitions),
        unsettled_at_kills=soak.unsettled_at_kills,
        max_unsettled_per_kill=max_item_tasks_per_batch(CAP),  # the killed replica's item tasks
        deliveries=list(soak.receiver.deliveries),
        logs=logs,
        secrets={"OCR secret": OCR_SECRET, "webhook secret": WEBHOOK_SECRET, **soak.place.secrets},
        kills=len(soak.unsettled_at_kills),
        min_kills=soak.options.kills,
        exit_codes=soak.exit_codes,
    )


def _write_deliveries(path: Path, deliveries: Sequence[Delivery]) -> None:
    """Every webhook request the receiver answered, one JSON line each (evidence for the checks)."""
    with path.open("w", encoding="utf-8") as output:
        for delivery in deliveries:
            line = {"chunk_id": delivery.chunk_id, "status": delivery.status, "items": delivery.items}
            output.write(json.dumps(line) + "\n")


def _report(
    soak: Soak,
    state: SoakState,
    stats: dict[str, object],
    notes: list[str],
    *,
    temp_files: int,
    elapsed_s: float,
) -> None:
    deliveries = state.deliveries
    refused = sum(1 for delivery in deliveries if not delivery.accepted)
    place = soak.place
    where = f"{soak.options.profile} profile, {place.replicas} replica{'s' if place.replicas > 1 else ''}"
    print(
        f"soak: {len(state.documents)} documents + {len(state.skipped)} unsupported, {elapsed_s:.0f} s "
        f"({where}); emulator: {stats['calls']} calls, answers {stats['answers']}, "
        f"{soak.spikes} latency spikes; receiver: {len(deliveries)} requests, {refused} answered 500, "
        f"{soak.receiver.outages} outage(s); {state.kills} SIGKILLs; {temp_files} temp files of cut "
        "writes left"
    )
    done = {name: text.count('"event": "item.done"') for name, text in state.logs.items()}
    print(f"soak: item.done lines per worker log: {done}")
    if place.world is not None:
        counts = place.world.proxy.counts
        print(
            f"soak: {place.world.proxy.profile} proxy: {sum(counts.values())} counted, "
            f"{counts['list_v1']} V1 listings, {counts['list_v2']} V2 listings asked "
            f"({counts['v2_downgraded']} answered V1), {counts['conditional_dropped']} requests with "
            f"conditional headers dropped; {counts['put']} PUTs, {counts['get']} GETs, "
            f"{counts['head']} HEADs, {counts['delete']} DELETEs"
        )
    for note in notes:
        print(f"soak: --break: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="local",
        help="local: 1 worker on local directories (default); ncp: 2 replicas on moto behind the "
        '"ncp" proxy, coordinated through Redis',
    )
    parser.add_argument(
        "--items",
        type=int,
        help=f"PNG documents (default {DEFAULT_ITEMS['local']} with --profile local, "
        f"{DEFAULT_ITEMS['ncp']} with ncp: moto is slow)",
    )
    parser.add_argument("--kills", type=int, default=4, help="SIGKILL restarts (default 4)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--outage-s", type=float, default=8.0, help="how long the receiver is down")
    parser.add_argument(
        "--timeout-s", type=float, default=600.0, help="longest wait for one stage (to a kill, or to settle)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary directory)")
    parser.add_argument("--break", dest="breaks", action="append", choices=BREAKS, default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocrbatch-soak-") as tmp:
        options = Options(
            items=args.items if args.items is not None else DEFAULT_ITEMS[args.profile],
            kills=args.kills,
            seed=args.seed,
            outage_s=args.outage_s,
            timeout_s=args.timeout_s,
            work=args.workdir or Path(tmp),
            breaks=args.breaks,
            profile=args.profile,
        )
        try:
            code = asyncio.run(_main(options))
        except asyncio.CancelledError:  # SIGTERM: the child processes are stopped by now
            print("soak: stopped by SIGTERM", file=sys.stderr)
            code = EXIT_TERMINATED
        except SoakGaveUp as gave_up:  # the child processes are stopped by now
            print(f"soak: gave up: {gave_up}", file=sys.stderr)
            code = 1
    sys.exit(code)


async def _main(options: Options) -> int:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM cancels the soak, so the workers are stopped on the way out
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_soak(options)


if __name__ == "__main__":
    main()
