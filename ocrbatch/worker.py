"""The batch worker: every pending input of every batch becomes a result or a failure record.

One pass (`Worker.run_pass`) discovers each active batch's pending items and processes them:
each batch has a bounded queue fed by discovery and a pool of item tasks that read ahead (within
a memory budget) and then wait for a call slot of the domain's limiter, shared fairly by every
batch on the domain. Calls are retried with backoff; fatal domain errors stop only the batches
they concern and leave their items pending. `run_forever` repeats passes every poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from ocrbatch.batch_report import BatchReport, billable_units
from ocrbatch.batch_store import BatchStore
from ocrbatch.batches import Batch
from ocrbatch.clova import ErrorClass, OcrError, OcrResponse
from ocrbatch.discovery import REPORT_KEY, DiscoveredItem, discover, failure_record_key, image_format
from ocrbatch.errors import ObjectNotFound, StorageError
from ocrbatch.limiter import DomainLimiter
from ocrbatch.ocr_client import OcrCall, OcrClient
from ocrbatch.prepare import ItemRefused, MemoryBudget, Part, PreparedItem, needs_bytes, prepare_item
from ocrbatch.result_files import CONTENT_TYPES, RESULT_SUFFIX, merge_responses, render_json, render_xlsx
from ocrbatch.retries import Sleep, ocr_retrying
from ocrbatch.settings import Settings
from ocrbatch.storage import Storage
from ocrbatch.storage_factory import StorageFactory

log = structlog.get_logger("ocrbatch.worker")
QUEUE_ITEMS_PER_SLOT = 4


def item_tasks_per_batch(max_concurrent_calls: int) -> int:
    """Items a batch works on at once: enough to read ahead of every slot and to store results
    while the slots are busy again. Also the most items a killed worker can have had in flight."""
    return max_concurrent_calls * 2 + 2


@dataclass
class PassResult:
    """What one pass did: per batch its report, and the batches that ended in error."""

    reports: dict[str, BatchReport] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # batch id -> reason


class _CallFailed(Exception):
    """A call that failed for good, with the attempts it took (tenacity's error alone loses them)."""

    def __init__(self, error: OcrError, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


class _BatchStopped(Exception):
    """The batch was stopped (fatal error on its domain, or shutdown): leave the item pending."""


class Worker:
    """Runs passes over every active batch; one instance per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: BatchStore,
        storages: StorageFactory,
        session: aiohttp.ClientSession,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._store = store
        self._storages = storages
        self._sleep = sleep
        self._clock = clock
        self.limiters = {
            name: DomainLimiter(
                name,
                max_concurrent_calls=domain.max_concurrent_calls,
                calls_per_second=domain.calls_per_second,
                clock=clock,
                sleep=sleep,
            )
            for name, domain in settings.domains.items()
        }
        self._clients = {
            name: OcrClient.for_domain(session, domain) for name, domain in settings.domains.items()
        }
        self._budget = MemoryBudget(settings.worker.prefetch_memory_mb * 1024 * 1024)
        self.stopping = asyncio.Event()
        self.dead_domains: dict[str, str] = {}  # domain -> reason, for this pass
        self._statuses: dict[str, tuple[str, str | None]] = {}  # batch id -> last status we know

    def stop(self) -> None:
        """Stop taking new items; items already being processed finish."""
        self.stopping.set()

    async def run_forever(self) -> None:
        """Pass after pass, re-discovering every poll interval, until `stop()`."""
        while not self.stopping.is_set():
            await self.run_pass()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=self.settings.worker.poll_interval_s)

    async def run_pass(self) -> PassResult:
        """Discover and process every active batch once; returns when all their items are handled."""
        result = PassResult()
        self.dead_domains.clear()
        batches = [item.batch for item in await self._store.list_batches()]
        self._statuses = {batch.id: (batch.status, batch.status_reason) for batch in batches}
        runs = []
        for batch in batches:
            if batch.status in ("paused", "error"):
                if batch.status == "error":
                    result.errors[batch.id] = batch.status_reason or "error"
                continue
            if batch.domain not in self.settings.domains:
                reason = f"domain {batch.domain!r} is not configured"
                await self._set_status(batch, "error", reason)
                result.errors[batch.id] = reason
                continue
            try:
                inputs = await self._storages.open(batch.input_location)
                results = await self._storages.open(batch.result_location, create=True)
            except StorageError as exc:
                await self._set_status(batch, "error", str(exc))
                result.errors[batch.id] = str(exc)
                continue
            runs.append(_BatchRun(self, batch, inputs, results))
        ticker = asyncio.create_task(self._tick(runs))
        try:
            outcomes = await asyncio.gather(*(run.run() for run in runs), return_exceptions=True)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        for run, outcome in zip(runs, outcomes, strict=True):
            result.reports[run.batch.id] = run.report
            if isinstance(outcome, BaseException):
                reason = f"the batch could not be processed: {outcome}"
                log.error("batch.failed", batch_id=run.batch.id, error=reason)
                await self._set_status(run.batch, "error", reason)
                result.errors[run.batch.id] = reason
            elif run.fatal_reason is not None:
                result.errors[run.batch.id] = run.fatal_reason
        return result

    async def _tick(self, runs: list[_BatchRun]) -> None:
        """Progress lines every few seconds, `_report.json` refreshed every report interval."""
        worker = self.settings.worker
        last_report_s = self._clock()
        while True:
            await asyncio.sleep(worker.progress_interval_s)
            for run in runs:
                if run.active:
                    log.info("batch.progress", **run.report.progress(self._clock()))
            if self._clock() - last_report_s >= worker.report_interval_s:
                last_report_s = self._clock()
                await asyncio.gather(
                    *(run.write_report() for run in runs if run.active), return_exceptions=True
                )

    async def _set_status(self, batch: Batch, status: Any, reason: str | None = None) -> None:
        if self._statuses.get(batch.id) == (status, reason):
            return
        self._statuses[batch.id] = (status, reason)
        try:
            await self._store.set_status(batch.id, status, reason)
        except Exception as exc:  # the status is informative; processing goes on without it
            log.warning("batch.status_not_saved", batch_id=batch.id, status=status, error=str(exc))
            return
        log.info("batch.status", batch_id=batch.id, batch=batch.name, status=status, reason=reason)


class _BatchRun:
    """One batch during one pass."""

    def __init__(self, worker: Worker, batch: Batch, inputs: Storage, results: Storage) -> None:
        self.worker = worker
        self.batch = batch
        self.domain = worker.settings.domains[batch.domain]
        self.limiter = worker.limiters[batch.domain]
        self.client = worker._clients[batch.domain]
        self.suffix = RESULT_SUFFIX[batch.file_format]
        self.report = BatchReport(batch.id, batch.name, datetime.now(UTC), worker._clock())
        self.fatal_reason: str | None = None
        self.active = False
        self._inputs = inputs
        self._results = results

    @property
    def stopped(self) -> bool:
        return (
            self.fatal_reason is not None
            or self.batch.domain in self.worker.dead_domains
            or self.worker.stopping.is_set()
        )

    async def run(self) -> None:
        queue: asyncio.Queue[DiscoveredItem | None] = asyncio.Queue(
            maxsize=self.limiter.max_cap * QUEUE_ITEMS_PER_SLOT
        )
        workers = [
            asyncio.create_task(self._work(queue)) for _ in range(item_tasks_per_batch(self.limiter.max_cap))
        ]
        try:
            await self._discover(queue)
        finally:
            for _ in workers:
                await queue.put(None)
            outcomes = await asyncio.gather(*workers, return_exceptions=True)
        self.active = False
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        dead = self.worker.dead_domains.get(self.batch.domain)
        if dead is not None and self.report.pending_found:
            await self._stop_batch_with(dead)
        if self.fatal_reason is None and self.report.pending_found:
            await self.worker._set_status(self.batch, "available")
        await self.write_report()
        log.info("batch.pass_done", **self.report.progress(self.worker._clock()), failed=self.report.failed)

    async def _discover(self, queue: asyncio.Queue[DiscoveredItem | None]) -> None:
        report = self.report
        async for item in discover(self._inputs, self._results, result_suffix=self.suffix):
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
                if not self.active:
                    self.active = True
                    await self.worker._set_status(self.batch, "running")
                if self.stopped:
                    continue  # counted, left pending
                await queue.put(item)

    async def _work(self, queue: asyncio.Queue[DiscoveredItem | None]) -> None:
        while (item := await queue.get()) is not None:
            if self.stopped:
                self.report.left_pending += 1
                continue
            await self._process(item)

    async def _process(self, item: DiscoveredItem, *, again: bool = False) -> None:
        fmt = image_format(item.key) or ""
        reserve = item.size if needs_bytes(fmt, self.domain.transfer_mode) else 0
        async with self.worker._budget.reserve(min(reserve, self.worker._budget.limit_bytes)):
            try:
                prepared = await prepare_item(
                    item,
                    image_format=fmt,
                    inputs=self._inputs,
                    transfer_mode=self.domain.transfer_mode,
                    long_image=bool(self.batch.long_image),
                )
            except ItemRefused as refused:
                await self._record_failure(item, item.etag, None, str(refused), retryable=False, attempts=0)
                return
            except ObjectNotFound:
                log.info("item.vanished", batch_id=self.batch.id, key=item.key)
                self.report.left_pending += 1
                return
            changed = await self._recognise(prepared)
        if changed is not None and not again:
            await self._process(changed, again=True)
        elif changed is not None:
            self.report.left_pending += 1  # changing faster than it is recognised: next pass

    async def _recognise(self, prepared: PreparedItem) -> DiscoveredItem | None:
        """Recognise and store the item; returns it again (newer version) if it changed meanwhile."""
        item = prepared.item
        attempts = 0
        responses: list[OcrResponse] = []
        try:
            for part in prepared.parts:
                response, part_attempts = await self._call(item, prepared.image_format, part)
                attempts += part_attempts
                responses.append(response)
        except _BatchStopped:
            self.report.left_pending += 1
            return None
        except _CallFailed as failed_call:
            error, attempts = failed_call.error, attempts + failed_call.attempts
            if error.error_class.fatal:
                await self._stop_batch(error)
                self.report.left_pending += 1
                return None
            await self._record_failure(
                item,
                prepared.etag,
                error,
                error.detail,
                retryable=error.error_class.retryable,
                attempts=attempts,
            )
            return None
        response = merge_responses(responses) if len(responses) > 1 else responses[0]
        failed = [image for image in response.images if image.infer_result != "SUCCESS"]
        if failed:
            message = f"recognition {failed[0].infer_result}: {failed[0].message or 'no message'}"
            await self._record_failure(item, prepared.etag, None, message, retryable=False, attempts=attempts)
            return None
        await asyncio.shield(self._write_result(prepared, response, attempts))
        self.report.billable_units += billable_units(response.images)  # billed, kept or not
        changed = await self._changed_since_read(prepared)
        if changed is None:
            self.report.succeeded += 1
            log.info(
                "item.done",
                batch_id=self.batch.id,
                key=item.key,
                outcome="succeeded",
                attempts=attempts,
                pages=len(response.images),
            )
        return changed

    async def _changed_since_read(self, prepared: PreparedItem) -> DiscoveredItem | None:
        """The input as it is now if it was replaced while recognised (its result is then removed).

        Discovery trusts a result newer than its input; a result made from a version replaced
        during recognition would look current, so it must not stay.
        """
        item = prepared.item
        try:
            current = await self._inputs.head(item.key)
        except ObjectNotFound:
            return None  # deleted meanwhile: the result of what was there stays
        if current.etag == prepared.etag:
            return None
        log.info("item.changed_during_recognition", batch_id=self.batch.id, key=item.key)
        await self._results.delete(item.key + self.suffix)
        return dataclasses.replace(
            item, etag=current.etag, size=current.size, last_modified=current.last_modified
        )

    async def _call(self, item: DiscoveredItem, fmt: str, part: Part) -> tuple[OcrResponse, int]:
        """One part through the limiter with retries; returns the response and the attempts it took."""
        settings = self.worker.settings.worker
        call = OcrCall(
            name=part.image_name(item.key),
            image_format=fmt,
            data=part.data,
            url=part.url,
            lang=self.batch.language,
            template_ids=tuple(self.batch.template_ids or ()),
            table_detection=bool(self.batch.table_extraction),
        )
        attempts = 0
        try:
            async for attempt in ocr_retrying(
                max_attempts=settings.max_attempts,
                backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s,
                sleep=self.worker._sleep,
            ):
                with attempt:
                    if self.stopped:
                        raise _BatchStopped
                    attempts += 1
                    response = await self._one_call(call)
                    return response, attempts
        except OcrError as error:
            raise _CallFailed(error, attempts) from error
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _one_call(self, call: OcrCall) -> OcrResponse:
        async with self.limiter.slot(self.batch.id) as permit:
            self.report.calls += 1
            try:
                response = await self.client.recognize(call)
            except OcrError as error:
                if error.error_class is ErrorClass.RATE_LIMITED:
                    permit.rate_limited()
                elif error.error_class is ErrorClass.QUOTA:
                    self.limiter.pause(error.retry_after_s or self.worker.settings.worker.quota_pause_s)
                elif error.error_class is not ErrorClass.TRANSPORT:
                    permit.succeeded()  # the service answered: the concurrency was fine
                if error.error_class.retryable:
                    self.report.retries_by_code[error.code or error.error_class.value] += 1
                raise
            permit.succeeded()
        errors = [image for image in response.images if image.infer_result == "ERROR"]
        if errors:
            self.report.retries_by_code["ERROR"] += 1
            raise OcrError(ErrorClass.SERVICE, f"inferResult ERROR: {errors[0].message or 'no message'}")
        return response

    async def _write_result(self, prepared: PreparedItem, response: OcrResponse, attempts: int) -> None:
        item = prepared.item
        kind = self.domain.kind
        body = (
            render_json(response)
            if self.suffix == ".json"
            else await asyncio.to_thread(render_xlsx, response, kind=kind)
        )
        metadata = {
            "source-key": item.key,
            "source-etag": prepared.etag,
            "batch-id": self.batch.id,
            "domain": self.batch.domain,
            "attempts": str(attempts),
        }
        await self._results.write(
            item.key + self.suffix, body, metadata=metadata, content_type=CONTENT_TYPES[self.suffix]
        )
        if item.retry_of_failure:
            await self._results.delete(failure_record_key(item.key))

    async def _record_failure(
        self,
        item: DiscoveredItem,
        etag: str,
        error: OcrError | None,
        message: str,
        *,
        retryable: bool,
        attempts: int,
    ) -> None:
        record = {
            "key": item.key,
            "source_etag": etag,
            "code": error.code if error else None,
            "message": message,
            "trace_id": error.trace_id if error else None,
            "attempts": attempts,
            "retryable": retryable,
            "failed_at": datetime.now(UTC).isoformat(),
        }
        await asyncio.shield(
            self._results.write(
                failure_record_key(item.key),
                json.dumps(record, ensure_ascii=False, indent=1).encode(),
                metadata={"source-etag": etag, "retryable": "true" if retryable else "false"},
                content_type="application/json",
            )
        )
        self.report.failed += 1
        log.info(
            "item.done",
            batch_id=self.batch.id,
            key=item.key,
            outcome="failed",
            code=record["code"],
            reason=message,
            retryable=retryable,
            attempts=attempts,
        )

    async def _stop_batch(self, error: OcrError) -> None:
        reason = f"{error.code or error.error_class.value}: {error.detail}"
        if error.error_class is ErrorClass.FATAL_DOMAIN:
            # The domain itself is misconfigured: every batch on it stops, once, with this reason.
            self.worker.dead_domains.setdefault(self.batch.domain, reason)
        await self._stop_batch_with(reason)

    async def _stop_batch_with(self, reason: str) -> None:
        if self.fatal_reason is not None:
            return
        self.fatal_reason = reason
        log.error("batch.stopped", batch_id=self.batch.id, batch=self.batch.name, reason=reason)
        await self.worker._set_status(self.batch, "error", reason)

    async def write_report(self) -> None:
        try:
            body = json.dumps(self.report.to_json(), ensure_ascii=False, indent=1).encode()
            await self._results.write(REPORT_KEY, body, content_type="application/json")
        except StorageError as exc:
            log.warning("batch.report_not_saved", batch_id=self.batch.id, error=str(exc))
