"""The batch worker: every pending input of every batch becomes a result or a failure record.

One pass (`Worker.run_pass`) runs every active batch at once (`batch_run.BatchRun`), sharing one
limiter per OCR domain, the HTTP clients and the memory budget for reads; it logs progress and
keeps `_report.json` current meanwhile. `run_forever` repeats passes every poll interval.

The control path (batch documents, claims) can fail for a while: a pass reads the catalog again
with backoff (`catalog.CatalogReader`) until it answers (`run_forever`) or for
`control_max_attempts` attempts (a single `run_pass`), and a batch interrupted by a control-path
error keeps its status for the next pass.
Broken batch documents are skipped (the store lists them apart and logs them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from ocrbatch.batches.events import Upload, batches_for
from ocrbatch.batches.report import BatchReport
from ocrbatch.batches.spec import Batch, BatchStatus
from ocrbatch.batches.store import BatchStore
from ocrbatch.clova.client import OcrClient
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.coordination.factory import shared_slots
from ocrbatch.errors import StorageError
from ocrbatch.metrics import LiveState, WorkerMetrics
from ocrbatch.settings import Settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.types import Sleep
from ocrbatch.webhooks.service import WebhookService
from ocrbatch.worker.batch_run import BatchRun, PassContext
from ocrbatch.worker.catalog import CatalogReader
from ocrbatch.worker.limiter import DomainLimiter
from ocrbatch.worker.prepare import MemoryBudget

log = structlog.get_logger("ocrbatch.worker")
# Announcements processed at once; beyond that an announcement starts a pass, which finds the rest.
MAX_ANNOUNCEMENTS_IN_FLIGHT = 64


@dataclass
class PassResult:
    """What one pass did: per batch its report, and the batches that ended in error."""

    reports: dict[str, BatchReport] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # batch id -> reason


class _NotRunnable(Exception):
    """The batch cannot run now: paused or in error already, its domain is not configured, or its
    locations cannot be opened (`unreachable`). `new_status`: its status must now say so."""

    def __init__(self, reason: str, *, new_status: bool = True, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.new_status = new_status
        self.unreachable = unreachable


class Worker:
    """Runs passes over every active batch; one instance per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: BatchStore,
        storages: StorageFactory,
        session: aiohttp.ClientSession,
        outbound_session: aiohttp.ClientSession,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        claims: ItemClaims | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._storages = storages
        self._sleep = sleep
        self._clock = clock
        self.stopping = asyncio.Event()
        self._triggered = asyncio.Event()
        self._runs: list[BatchRun] = []
        self._statuses: dict[str, tuple[str, str | None]] = {}  # batch id -> last status we know
        self._announcements: set[asyncio.Task[None]] = set()
        self._catalog = CatalogReader(
            store, settings.worker, stopping=self.stopping, sleep=sleep, clock=clock
        )
        self.metrics = WorkerMetrics()
        self.limiters = {
            name: DomainLimiter(
                name,
                max_concurrent_calls=domain.max_concurrent_calls,
                calls_per_second=domain.calls_per_second,
                clock=clock,
                sleep=sleep,
                shared=shared_slots(
                    store.coordination, name, domain, lease_s=settings.coordination.slot_lease_s, sleep=sleep
                ),
            )
            for name, domain in settings.domains.items()
        }
        self.webhooks = WebhookService(
            settings.webhook,
            outbound_session,
            set_status=self._set_status,
            domain_secrets={
                name: domain.webhook_secret.get_secret_value()
                for name, domain in settings.domains.items()
                if domain.webhook_secret is not None
            },
            clock=clock,
            sleep=sleep,
            metrics=self.metrics,
            claims=claims,
            coordination=store.coordination,
        )
        self.context = PassContext(
            settings=settings,
            limiters=self.limiters,
            clients={
                name: OcrClient.for_domain(session, domain) for name, domain in settings.domains.items()
            },
            budget=MemoryBudget(settings.worker.prefetch_memory_mb * 1024 * 1024),
            sleep=sleep,
            clock=clock,
            stopping=self.stopping,
            set_status=self._set_status,
            metrics=self.metrics,
            webhooks=self.webhooks,
            claims=claims,
        )
        self.metrics.watch(self._live_state)

    async def finish(self, timeout_s: float) -> None:
        """Make chunks of what is buffered and give deliveries `timeout_s` to complete; whatever
        is not delivered by then stays in the outboxes and is sent by the next run."""
        await self.webhooks.flush()
        if not await self.webhooks.drain(timeout_s):
            log.warning("webhook.undelivered_at_exit", chunks=self.webhooks.outbox_size)
        await self.webhooks.close()

    def stop(self) -> None:
        """Stop taking new items; items already being processed finish."""
        self.stopping.set()

    def announce(self, uploads: list[Upload]) -> None:
        """Process uploads an event announced now, beside any pass (which may be long); when too
        many announcements are under way, or one leaves items unsettled, start a pass instead."""
        if len(self._announcements) >= MAX_ANNOUNCEMENTS_IN_FLIGHT or self.stopping.is_set():
            self.trigger("too many announcements under way")
            return
        task = asyncio.create_task(self._process_announced(uploads))
        self._announcements.add(task)
        task.add_done_callback(self._announcements.discard)

    async def _process_announced(self, uploads: list[Upload]) -> None:
        try:
            settled = await self.process_uploads(uploads)
        except Exception as exc:  # the pass below covers whatever this left
            log.error("events.processing_failed", error=str(exc))
            settled = False
        if not settled and not self.stopping.is_set():
            self.trigger("announced inputs left unsettled")

    async def wait_for_announcements(self) -> None:
        """Until every announcement under way is processed (after `stop()`, that is quick)."""
        while self._announcements:
            await asyncio.gather(*self._announcements, return_exceptions=True)

    def trigger(self, reason: str) -> None:
        """Start the next pass now (an upload was announced) rather than at the next poll."""
        log.info("worker.pass_requested", reason=reason)
        self._triggered.set()

    @property
    def control_error(self) -> str | None:
        """Why the batch catalog cannot be read, while passes retry it; None when it can."""
        return self._catalog.error

    async def run_forever(self) -> None:
        """Pass after pass, every poll interval or sooner when triggered, until `stop()`; an outage
        of the control path delays passes (retried with backoff) but never ends the loop."""
        while not self.stopping.is_set():
            self._triggered.clear()
            await self.run_pass(wait_for_control=True)
            wake = [asyncio.create_task(self.stopping.wait()), asyncio.create_task(self._triggered.wait())]
            try:
                await asyncio.wait(
                    wake, timeout=self.settings.worker.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in wake:
                    task.cancel()
                await asyncio.gather(*wake, return_exceptions=True)

    async def run_pass(self, *, wait_for_control: bool = False) -> PassResult:
        """Discover and process every active batch once; returns when all their items are handled.

        The catalog is read again with backoff while the control path fails: with
        `wait_for_control` until it answers or `stop()`, otherwise `control_max_attempts` times,
        then `StorageError`."""
        result = PassResult()
        self.context.dead_domains.clear()
        catalog = await self._catalog.read(forever=wait_for_control)
        if catalog is None:
            return result  # stopped while the control path was down
        batches = [item.batch for item in catalog]
        self._statuses = {batch.id: (batch.status, batch.status_reason) for batch in batches}
        if self.context.claims is not None:
            await self.context.claims.check_alone_elsewhere()  # then its items are left to it
        runs = []
        for batch in batches:
            try:
                runs.append(await self._batch_run(batch))
            except _NotRunnable as refused:
                if refused.new_status:
                    await self._set_status(batch, "error", refused.reason)
                if batch.status != "paused":
                    result.errors[batch.id] = refused.reason
        self._runs = runs
        ticker = asyncio.create_task(self._tick(runs))
        try:
            outcomes = await asyncio.gather(*(run.run() for run in runs), return_exceptions=True)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        for run, outcome in zip(runs, outcomes, strict=True):
            result.reports[run.batch.id] = run.report
            if isinstance(outcome, StorageError) and self._on_control_path(outcome):
                # Claims or documents failed under the batch: not the batch's fault, so its status
                # stays as it is and the next pass runs it again.
                reason = f"the control path failed during the pass: {outcome}"
                log.error("batch.control_path_failed", batch_id=run.batch.id, error=reason)
                result.errors[run.batch.id] = reason
            elif isinstance(outcome, BaseException):
                reason = f"the batch could not be processed: {outcome}"
                log.error("batch.failed", batch_id=run.batch.id, error=reason)
                await self._set_status(run.batch, "error", reason)
                result.errors[run.batch.id] = reason
            elif run.fatal_reason is not None:
                result.errors[run.batch.id] = run.fatal_reason
        return result

    def _on_control_path(self, error: StorageError) -> bool:
        """Whether `error` came from the coordination backend (claims, documents)."""
        return error.location == self._store.coordination.where

    async def process_uploads(self, uploads: list[Upload]) -> bool:
        """Process the announced inputs now, beside any pass; True once every one is settled
        (result or failure record written, not a document, gone, or its batch is not running).
        False when some are left pending (shutdown, a fatal error) or held by another worker."""
        runs, settled = [], True
        for stored in await self._store.list_batches():
            batch = stored.batch
            prefix = batch.input_location.prefix
            keys = sorted({upload.key[len(prefix) :] for upload in uploads if batches_for(upload, [batch])})
            if not keys:
                continue
            try:
                runs.append(await self._batch_run(batch, keys=keys))
            except _NotRunnable as refused:
                # The pass sets such batches' status; their inputs wait for it.
                if refused.unreachable:
                    log.error("batch.announced_failed", batch_id=batch.id, error=refused.reason)
                    settled = False
        outcomes = await asyncio.gather(*(run.run() for run in runs), return_exceptions=True)
        for run, outcome in zip(runs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("batch.announced_failed", batch_id=run.batch.id, error=str(outcome))
                settled = False
            elif run.unsettled:
                settled = False
        return settled

    async def _batch_run(self, batch: Batch, *, keys: list[str] | None = None) -> BatchRun:
        """A run of the batch over its whole input, or over the announced `keys`; `_NotRunnable`
        says why the batch cannot run now."""
        if batch.status in ("paused", "error"):
            raise _NotRunnable(batch.status_reason or batch.status, new_status=False)
        if batch.domain not in self.settings.domains:
            raise _NotRunnable(f"domain {batch.domain!r} is not configured")
        try:
            inputs = await self._storages.open(batch.input_location)
            results = await self._storages.open(batch.result_location, create=True)
        except StorageError as exc:
            raise _NotRunnable(str(exc), unreachable=True) from None
        return BatchRun(self.context, batch, inputs, results, keys=keys)

    async def keep_alive(self) -> None:
        """Renew the leases of the shared call slots held (with Redis) until cancelled."""
        renewals = [limiter.shared.keep_alive() for limiter in self.limiters.values() if limiter.shared]
        await asyncio.gather(*renewals)

    def _live_state(self) -> LiveState:
        """What the metrics' gauges show now."""
        return LiveState(
            domains={name: limiter.snapshot() for name, limiter in self.limiters.items()},
            queue_depths={run.batch.name: run.queue_depth for run in self._runs},
            outbox_chunks=self.webhooks.outbox_size,
            storage_endpoints=[endpoint.as_dict() for endpoint in self._storages.endpoints()],
            coordination_backend=self._store.coordination.backend,
        )

    def batch_changed(self, batch: Batch) -> None:
        """A batch was edited in this process (the API, the console): its webhook applies from the
        next chunk; paused, its runs start no new item; made available again, a pass starts."""
        self.webhooks.update(batch)
        if batch.status == "paused":
            for run in self._runs_of(batch.id):
                run.pause()
        elif batch.status == "available" and not any(run.active for run in self._runs_of(batch.id)):
            self.trigger(f"batch {batch.name!r} changed")

    def live_report(self, batch_id: str) -> dict[str, Any] | None:
        """The report of the batch as the pass working on it has it now; None when no pass is."""
        for run in self._runs_of(batch_id):
            if run.active:
                return run.report.to_json(now_monotonic_s=self._clock())
        return None

    def _runs_of(self, batch_id: str) -> list[BatchRun]:
        return [run for run in self._runs if run.batch.id == batch_id]

    async def _refresh_batches(self) -> None:
        """Read the catalog again for webhooks edited and batches paused elsewhere (another
        replica's API, the CLI) while a long pass runs; a failed read is left to the next one."""
        try:
            catalog = await self._store.list_batches()
        except StorageError as exc:
            log.warning("webhook.refresh_failed", error=str(exc))
            return
        for stored in catalog:
            self.webhooks.update(stored.batch)
            if stored.batch.status == "paused":  # paused elsewhere: another replica, the CLI
                for run in self._runs_of(stored.batch.id):
                    run.pause()

    async def _tick(self, runs: list[BatchRun]) -> None:
        """Progress lines every few seconds, `_report.json` refreshed every report interval, and
        webhooks read again every poll interval."""
        worker = self.settings.worker
        last_report_s = last_refresh_s = self._clock()
        while True:
            await self._sleep(worker.progress_interval_s)
            for run in runs:  # before anything that waits, so the line is of this moment
                if run.active:
                    log.info("batch.progress", **run.report.progress(self._clock()))
            if self._clock() - last_refresh_s >= worker.poll_interval_s:
                last_refresh_s = self._clock()
                await self._refresh_batches()
            if self.webhooks.outbox_size:
                log.info(
                    "webhook.outbox",
                    chunks=self.webhooks.outbox_size,
                    sent=self.webhooks.sent,
                    retried=self.webhooks.retried,
                    dead_lettered=self.webhooks.dead_lettered,
                )
            if self._clock() - last_report_s >= worker.report_interval_s:
                last_report_s = self._clock()
                await asyncio.gather(
                    *(run.write_report() for run in runs if run.active), return_exceptions=True
                )

    async def _set_status(self, batch: Batch, status: BatchStatus, reason: str | None = None) -> None:
        if self._statuses.get(batch.id) == (status, reason):
            return
        self._statuses[batch.id] = (status, reason)
        try:
            stored = await self._store.set_status(batch.id, status, reason)
        except Exception as exc:  # the status is informative; processing goes on without it
            log.warning("batch.status_not_saved", batch_id=batch.id, status=status, error=str(exc))
            return
        if stored.status != status:  # paused or in error meanwhile: that stands, and stops the runs here
            self._statuses[batch.id] = (stored.status, stored.status_reason)
            log.info(
                "batch.status_kept", batch_id=batch.id, batch=batch.name, status=stored.status, wanted=status
            )
            for run in self._runs_of(batch.id):
                run.pause(stored.status)
            return
        log.info("batch.status", batch_id=batch.id, batch=batch.name, status=status, reason=reason)
