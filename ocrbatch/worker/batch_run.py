"""One batch during one pass of the worker: its pending items become results or failure records.

Discovery feeds a bounded queue; a pool of item tasks reads ahead (within the shared memory budget)
and then waits for a call slot of the domain's limiter, so a slot never waits on storage. Calls are
retried with backoff (`calls.py`); a fatal domain error stops the batch (and, for the domain's own
configuration, every batch on the domain) and leaves its items pending.

Containment: whatever an item raises (a storage error on its own keys, a document that does not
decode, a bug) becomes that item's failure record, retryable for storage errors and final
otherwise, and its task goes on with the next item; an item task never dies, so the pass always
ends. Only what concerns the whole batch stops it: a fatal domain code, or a result location where
not even failure records can be written (`RESULT_LOCATION_FAILURES` items in a row). On shutdown,
discovery and the item tasks are cancelled together, even with the queue full.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from ocrbatch.batches.layout import REPORT_KEY, RESULT_SUFFIX
from ocrbatch.batches.report import BatchReport
from ocrbatch.batches.spec import Batch, BatchStatus, SetStatus
from ocrbatch.clova.client import OcrClient
from ocrbatch.clova.contract import ErrorClass, OcrError
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.errors import ObjectNotFound, StorageError
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.settings import Settings
from ocrbatch.storage.base import ObjectInfo, Storage
from ocrbatch.types import Sleep
from ocrbatch.webhooks.service import WebhookService
from ocrbatch.worker.calls import BatchCalls
from ocrbatch.worker.discovery import (
    REASON_NEW,
    DiscoveredItem,
    discover,
    judge_item,
    skip_reason,
)
from ocrbatch.worker.limiter import DomainLimiter
from ocrbatch.worker.outcomes import ItemOutcomes
from ocrbatch.worker.prepare import MemoryBudget
from ocrbatch.worker.recognise import ItemRecognition
from ocrbatch.worker.sizing import ITEMS_PER_RESIZE, item_tasks_by_little, item_tasks_per_batch

log = structlog.get_logger("ocrbatch.worker")
QUEUE_ITEMS_PER_SLOT = 4
# Items in a row whose failure record could not be written either: the result location is down.
RESULT_LOCATION_FAILURES = 8


@dataclass
class PassContext:
    """What every batch run of a pass shares with the worker."""

    settings: Settings
    limiters: dict[str, DomainLimiter]
    clients: dict[str, OcrClient]
    budget: MemoryBudget
    sleep: Sleep
    clock: Callable[[], float]
    stopping: asyncio.Event
    set_status: SetStatus
    metrics: WorkerMetrics
    webhooks: WebhookService
    claims: ItemClaims | None = None  # None: this process is the only worker (tests, `run --once` alone)
    dead_domains: dict[str, str] = dataclasses.field(default_factory=dict)  # domain -> reason


class BatchRun:
    """One batch during one pass, or (with `keys`) the inputs an event announced."""

    def __init__(
        self,
        context: PassContext,
        batch: Batch,
        inputs: Storage,
        results: Storage,
        *,
        keys: list[str] | None = None,
    ) -> None:
        self.context = context
        self.batch = batch
        self.domain = context.settings.domains[batch.domain]
        self.limiter = context.limiters[batch.domain]
        self.suffix = RESULT_SUFFIX[batch.file_format]
        self.report = BatchReport(batch.id, batch.name, datetime.now(UTC), context.clock())
        self.fatal_reason: str | None = None
        self.paused = False  # paused by the operator during the pass: no new items are started
        self.active = False
        self.queue: asyncio.Queue[DiscoveredItem | None] = asyncio.Queue(
            maxsize=self.limiter.max_cap * QUEUE_ITEMS_PER_SLOT
        )
        self._inputs = inputs
        self._results = results
        self.outcomes = ItemOutcomes(
            batch,
            results,
            suffix=self.suffix,
            domain_kind=self.domain.kind,
            report=self.report,
            metrics=context.metrics,
            webhooks=context.webhooks,
        )
        self.calls = BatchCalls(
            batch,
            limiter=self.limiter,
            client=context.clients[batch.domain],
            report=self.report,
            metrics=context.metrics,
            settings=context.settings.worker,
            clock=context.clock,
            sleep=context.sleep,
            stopped=lambda: self.stopped,
        )
        self._recognition = ItemRecognition(
            batch,
            self.domain,
            inputs=inputs,
            results=results,
            suffix=self.suffix,
            calls=self.calls,
            outcomes=self.outcomes,
            report=self.report,
            budget=context.budget,
            max_pages=context.settings.worker.max_pages_per_document,
            leave_pending=self._leave_pending,
            stop_batch=self._stop_batch,
            stored=self._stored,
        )
        self._keys = keys
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False  # every item is queued: the pool of item tasks grows no more
        self._item_s = 0.0  # time the item tasks spent on their items, for Little's law
        self._items_timed = 0
        # Announced keys not settled by this run (left pending, or held by another worker).
        self.unsettled: set[str] = set()
        self._unrecorded_in_a_row = 0  # items whose failure could not be recorded, since one could

    @property
    def queue_depth(self) -> int:
        """Discovered items waiting for an item task."""
        return self.queue.qsize()

    @property
    def stopped(self) -> bool:
        return (
            self.fatal_reason is not None
            or self.paused
            or self.batch.domain in self.context.dead_domains
            or self.context.stopping.is_set()
        )

    @property
    def item_tasks(self) -> int:
        """Item tasks working on this batch now (they grow by Little's law, `_resize`)."""
        return len(self._workers)

    async def run(self) -> None:
        queue = self.queue
        self._add_workers(item_tasks_per_batch(self.limiter.max_cap))
        queued_all = False
        try:
            await self.context.webhooks.attach(self.batch, self._results)
            if self._keys is None:
                await self._discover(queue)
            else:
                await self._announced(queue, self._keys)
            self._closing = True
            for _ in self._workers:  # the item tasks never die, so they take these in turn
                await queue.put(None)
            queued_all = True
        finally:
            self._closing = True
            if not queued_all:
                # Cancelled (the grace period is over) or failed, maybe blocked on a full queue:
                # the item tasks stop now, whatever the queue still holds.
                for worker in self._workers:
                    worker.cancel()
            outcomes = await asyncio.gather(*self._workers, return_exceptions=True)
        self.active = False
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome  # an item task died after all: a bug in containment itself
        dead = self.context.dead_domains.get(self.batch.domain)
        if dead is not None and self.report.pending_found:
            await self._stop_batch_with(dead)
        if self._keys is None:  # the pass, not an event, keeps the status and `_report.json`
            await self._end_pass()

    async def _end_pass(self) -> None:
        """The batch's status and `_report.json` after its pass, as far as they are now true."""
        if self.paused:
            # The status is the operator's "paused"; the figures are true for what was listed.
            await self.write_report()
            log.info("batch.paused_mid_pass", **self.report.progress(self.context.clock()))
            return
        if self.context.stopping.is_set():
            # Interrupted: items are still pending and the listing was cut short, so neither the
            # status nor a report built from part of the listing would be true.
            log.info("batch.interrupted", **self.report.progress(self.context.clock()))
            return
        note = self.context.webhooks.status_note(self.batch.id)
        if self.fatal_reason is None and (self.report.pending_found or note):
            # Two objects apart (the batch's document, the report): written at once.
            await asyncio.gather(self.context.set_status(self.batch, "available", note), self.write_report())
        else:
            await self.write_report()
        log.info("batch.pass_done", **self.report.progress(self.context.clock()), failed=self.report.failed)

    def pause(self, status: BatchStatus = "paused") -> None:
        """The batch was paused (or, `status`, put in error elsewhere): items in flight finish, the
        others stay pending (the listing goes on, counting them) until it is resumed."""
        if not self.paused:
            self.paused = True
            log.info("batch.pausing", batch_id=self.batch.id, batch=self.batch.name, status=status)

    async def _discover(self, queue: asyncio.Queue[DiscoveredItem | None]) -> None:
        """List the batch and queue its pending items; the status becomes "running" with the first
        one, written while the listing goes on (its failure fails the run, once listed)."""
        running: list[asyncio.Future[None]] = []
        try:
            await self._queue_discovered(queue, running)
        except BaseException:
            await asyncio.gather(*running, return_exceptions=True)  # the listing's error is the one told
            raise
        await asyncio.gather(*running)

    async def _queue_discovered(
        self, queue: asyncio.Queue[DiscoveredItem | None], running: list[asyncio.Future[None]]
    ) -> None:
        report = self.report
        async for item in discover(self._inputs, self._results, result_suffix=self.suffix):
            if self.context.stopping.is_set():
                return  # shutting down: no need to list the rest (a fatal error still counts it)
            report.discovered += 1
            if item.state == "skipped":
                report.skipped += 1
                log.debug("item.skipped", batch_id=self.batch.id, key=item.key, reason=item.reason)
            elif item.state == "done":
                report.done_before += 1
            elif item.state == "failed":
                report.failed_before += 1
            else:
                report.pending_found += 1
                first = not self.active
                self.active = True
                if self.stopped:
                    continue  # counted, left pending
                await queue.put(item)
                if first and not self.paused:  # the item tasks go on meanwhile
                    running.append(
                        asyncio.ensure_future(self.context.set_status(self.batch, "running", None))
                    )

    async def _announced(self, queue: asyncio.Queue[DiscoveredItem | None], keys: list[str]) -> None:
        """Queue the announced inputs that exist and are documents; their results are checked
        once they are claimed."""
        for key in keys:
            try:
                info = await self._inputs.head(key)
            except ObjectNotFound:
                continue  # deleted since: nothing to do
            except StorageError as error:  # a key that cannot be read: its failure record says why
                self.report.pending_found += 1
                await self._contain(_pending(ObjectInfo(key, 0, "", datetime.now(UTC))), error)
                continue
            if reason := skip_reason(key):
                log.debug("item.skipped", batch_id=self.batch.id, key=key, reason=reason)
                continue
            self.report.pending_found += 1
            if self.stopped:
                self._leave_pending(key)
                continue
            await queue.put(_pending(info))

    def _add_workers(self, count: int) -> None:
        for _ in range(count):
            self._workers.append(asyncio.create_task(self._work(self.queue)))

    def _resize(self) -> None:
        """Grow the item tasks to what Little's law asks for the latencies seen so far."""
        calls = self.calls
        busy_s = self._item_s - calls.slot_wait_s
        wanted = item_tasks_by_little(self.limiter.max_cap, busy_s=busy_s, slot_s=calls.slot_s)
        if wanted > len(self._workers) and not self._closing:
            log.info("batch.item_tasks", batch_id=self.batch.id, item_tasks=wanted, was=len(self._workers))
            self._add_workers(wanted - len(self._workers))

    async def _work(self, queue: asyncio.Queue[DiscoveredItem | None]) -> None:
        clock = self.context.clock
        while (item := await queue.get()) is not None:
            if self.stopped:
                self._leave_pending(item.key)
                continue
            started_s = clock()
            try:
                await self._claimed(item)
            except Exception as error:  # containment: one item never ends the task
                await self._contain(item, error)
            self._item_s += clock() - started_s
            self._items_timed += 1
            if self._items_timed % ITEMS_PER_RESIZE == 0:
                self._resize()

    async def _contain(self, item: DiscoveredItem, error: Exception) -> None:
        """Make what an item raised its failure record: retryable for a transient storage error
        (the next pass tries again), final otherwise. If not even that can be written, the item stays
        pending; `RESULT_LOCATION_FAILURES` such items in a row stop the batch."""
        retryable = isinstance(error, StorageError) and error.transient
        reason = str(error) if retryable else f"unexpected {type(error).__name__}: {error}"
        log.error(
            "item.failed_unexpectedly",
            batch_id=self.batch.id,
            key=item.key,
            error=reason,
            retryable=retryable,
            exc_info=not retryable,  # a storage error needs no traceback; anything else is a bug
        )
        try:
            await self.outcomes.record_failure(item, item.etag, None, reason, retryable=retryable, attempts=0)
        except Exception as unrecorded:  # the batch, not the task, decides below
            self._leave_pending(item.key)
            self._unrecorded_in_a_row += 1
            log.error(
                "item.failure_not_recorded", batch_id=self.batch.id, key=item.key, error=str(unrecorded)
            )
            if self._unrecorded_in_a_row >= RESULT_LOCATION_FAILURES:
                await self._stop_batch_with(
                    f"the result location {self.batch.result_path} takes no writes: {unrecorded}"
                )
            return
        self._unrecorded_in_a_row = 0

    async def _claimed(self, item: DiscoveredItem) -> None:
        """Process the item under its claim, if it is still pending once claimed: another worker
        may hold it, or have settled it since the listing was read."""
        claims = self.context.claims
        if claims is None:
            await self._recognition.process(item)
            return
        if not await claims.take(self.batch.id, item.key):
            log.info("item.claimed_elsewhere", batch_id=self.batch.id, key=item.key)
            self.report.elsewhere += 1
            if self._keys is not None:
                self.unsettled.add(item.key)
            return
        try:
            if claims.alone and self._keys is None:
                current = item  # listed by this pass, and no other worker can have settled it since
            else:
                current = await judge_item(self._results, _info(item), result_suffix=self.suffix)
            if current.state == "pending":
                await self._recognition.process(current)
            else:
                self.report.elsewhere += 1
        finally:
            await claims.release(self.batch.id, item.key)

    def _leave_pending(self, key: str) -> None:
        self.report.left_pending += 1
        if self._keys is not None:
            self.unsettled.add(key)

    def _stored(self) -> None:
        """A result was stored: the result location takes writes again."""
        self._unrecorded_in_a_row = 0

    async def _stop_batch(self, error: OcrError) -> None:
        reason = f"{error.code or error.error_class.value}: {error.detail}"
        if error.error_class is ErrorClass.FATAL_DOMAIN:
            # The domain itself is misconfigured: every batch on it stops, once, with this reason.
            self.context.dead_domains.setdefault(self.batch.domain, reason)
        await self._stop_batch_with(reason)

    async def _stop_batch_with(self, reason: str) -> None:
        if self.fatal_reason is not None:
            return
        self.fatal_reason = reason
        log.error("batch.stopped", batch_id=self.batch.id, batch=self.batch.name, reason=reason)
        await self.context.set_status(self.batch, "error", reason)

    async def write_report(self) -> None:
        try:
            report = self.report.to_json(now_monotonic_s=self.context.clock())
            body = json.dumps(report, ensure_ascii=False, indent=1).encode()
            await self._results.write(REPORT_KEY, body, content_type="application/json")
        except StorageError as exc:
            log.warning("batch.report_not_saved", batch_id=self.batch.id, error=str(exc))


def _pending(info: ObjectInfo) -> DiscoveredItem:
    return DiscoveredItem(info.key, info.size, info.etag, info.last_modified, "pending", REASON_NEW)


def _info(item: DiscoveredItem) -> ObjectInfo:
    return ObjectInfo(item.key, item.size, item.etag, item.last_modified)
