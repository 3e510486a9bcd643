"""One item of a batch from its bytes to its result or failure record: read (within the shared
memory budget), every part sent (`calls.py`), the answers merged and stored, and an input replaced
meanwhile recognised again. Whatever the item raises is left to the batch run's containment."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
from collections.abc import Awaitable, Callable

import structlog

from ocrbatch.batches.layout import COMPANION_SUFFIX, result_key
from ocrbatch.batches.report import BatchReport
from ocrbatch.batches.spec import Batch
from ocrbatch.clova.billing import billable_units
from ocrbatch.clova.contract import OcrError, OcrResponse
from ocrbatch.errors import ObjectNotFound
from ocrbatch.settings import DomainSettings
from ocrbatch.storage.base import Storage
from ocrbatch.worker.calls import BatchCalls, BatchStopped, CallFailed
from ocrbatch.worker.discovery import DiscoveredItem, image_format
from ocrbatch.worker.outcomes import ItemOutcomes
from ocrbatch.worker.prepare import ItemRefused, MemoryBudget, PreparedItem, needs_bytes, prepare_item
from ocrbatch.worker.result_files import merge_responses

log = structlog.get_logger("ocrbatch.worker")


class ItemRecognition:
    """How one batch's items are recognised; the batch run says what leaving an item pending,
    stopping the batch and a stored result mean for it."""

    def __init__(
        self,
        batch: Batch,
        domain: DomainSettings,
        *,
        inputs: Storage,
        results: Storage,
        suffix: str,
        calls: BatchCalls,
        outcomes: ItemOutcomes,
        report: BatchReport,
        budget: MemoryBudget,
        max_pages: int,
        leave_pending: Callable[[str], None],
        stop_batch: Callable[[OcrError], Awaitable[None]],
        stored: Callable[[], None],
    ) -> None:
        self._batch = batch
        self._domain = domain
        self._inputs = inputs
        self._results = results
        self._suffix = suffix
        self._calls = calls
        self._outcomes = outcomes
        self._report = report
        self._budget = budget
        self._max_pages = max_pages
        self._leave_pending = leave_pending
        self._stop_batch = stop_batch
        self._stored = stored

    async def process(self, item: DiscoveredItem, *, again: bool = False) -> None:
        fmt = image_format(item.key) or ""
        reserve = item.size if needs_bytes(fmt, self._domain.transfer_mode) else 0
        async with self._budget.reserve(reserve) as reservation:
            try:
                prepared = await prepare_item(
                    item,
                    image_format=fmt,
                    inputs=self._inputs,
                    transfer_mode=self._domain.transfer_mode,
                    long_image=bool(self._batch.long_image),
                    max_pages=self._max_pages,
                    reservation=reservation,
                )
            except ItemRefused as refused:
                await self._outcomes.record_failure(
                    item, item.etag, None, str(refused), retryable=False, attempts=0
                )
                return
            except ObjectNotFound:
                log.info("item.vanished", batch_id=self._batch.id, key=item.key)
                self._report.left_pending += 1  # nothing left to do, but not finished either
                return
            changed = await self._recognise(prepared)
        if changed is not None and not again:
            await self.process(changed, again=True)
        elif changed is not None:
            self._leave_pending(item.key)  # changing faster than it is recognised: next pass

    async def _recognise(self, prepared: PreparedItem) -> DiscoveredItem | None:
        """Recognise and store the item; returns it again (newer version) if it changed meanwhile."""
        called = await self._call_parts(prepared)
        if called is None:
            return None
        responses, attempts = called
        response = merge_responses(responses) if len(responses) > 1 else responses[0]
        failed = [image for image in response.images if image.infer_result != "SUCCESS"]
        if failed:
            message = f"recognition {failed[0].infer_result}: {failed[0].message or 'no message'}"
            await self._outcomes.record_failure(
                prepared.item, prepared.etag, None, message, retryable=False, attempts=attempts
            )
            return None
        return await self._store(prepared, response, attempts)

    async def _call_parts(self, prepared: PreparedItem) -> tuple[list[OcrResponse], int] | None:
        """The answers to every part of the item and the attempts they took; None when the item
        ended otherwise (left pending, or its failure record written)."""
        item = prepared.item
        attempts = 0
        responses: list[OcrResponse] = []
        try:
            async for part in prepared.parts:
                response, part_attempts = await self._calls.call(item.key, prepared.image_format, part)
                attempts += part_attempts
                responses.append(response)
        except BatchStopped:
            self._leave_pending(item.key)
            return None
        except ItemRefused as refused:  # a part that cannot be made: a frame that does not decode
            await self._outcomes.record_failure(
                item, prepared.etag, None, str(refused), retryable=False, attempts=attempts
            )
            return None
        except CallFailed as failed_call:
            error, attempts = failed_call.error, attempts + failed_call.attempts
            if error.error_class.fatal:
                await self._stop_batch(error)
                self._leave_pending(item.key)
                return None
            await self._outcomes.record_failure(
                item,
                prepared.etag,
                error,
                error.detail,
                retryable=error.error_class.retryable,
                attempts=attempts,
            )
            return None
        return responses, attempts

    async def _store(
        self, prepared: PreparedItem, response: OcrResponse, attempts: int
    ) -> DiscoveredItem | None:
        """Write the result and announce it; the item again if its input changed meanwhile."""
        item = prepared.item
        companion = (
            await self._searchable_pdf(prepared, response) if self._batch.file_format == "pdf" else None
        )
        notice = await self._outcomes.store_result(prepared, response, attempts, companion=companion)
        self._stored()
        self._report.billable_units += billable_units(response.images)  # billed, kept or not
        try:
            changed = await self._changed_since_read(prepared)
            if changed is not None:
                await self._outcomes.abandon(notice)
            else:
                await self._outcomes.succeeded(
                    item.key, notice, attempts=attempts, pages=len(response.images)
                )
        except Exception as error:  # the result is stored: no failure record beside it
            # A failed change check leaves the judgement to the next pass (the result names the
            # input's version); a failed announcement stays in the outbox, which recovers it.
            log.error(
                "item.settle_failed", batch_id=self._batch.id, key=item.key, error=str(error), exc_info=True
            )
            return None
        return changed

    async def _searchable_pdf(self, prepared: PreparedItem, response: OcrResponse) -> bytes | None:
        """A pdf batch's searchable PDF of the item: its input read again (the parts sent did not
        keep it) and rendered with the response's text in a thread. None, logged, when it cannot
        be made: the input changed or went meanwhile (the change check then handles the item),
        or it does not render; the response is kept either way, having been paid for."""
        item = prepared.item
        try:
            stored = await self._inputs.read(item.key)
        except ObjectNotFound:
            return None
        if stored.info.etag != prepared.etag:
            return None
        renderer = importlib.import_module(
            "ocrbatch.worker.result_pdf"
        )  # fpdf2 and fontTools: pdf batches only
        try:
            rendered: bytes = await asyncio.to_thread(
                renderer.render_searchable_pdf, response, stored.data, image_format=prepared.image_format
            )
            return rendered
        except Exception as error:  # a document the service read but the renderer cannot
            log.error(
                "item.pdf_not_made", batch_id=self._batch.id, key=item.key, reason=str(error), exc_info=True
            )
            return None

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
        log.info("item.changed_during_recognition", batch_id=self._batch.id, key=item.key)
        location = self._results.location
        await self._results.delete(result_key(item.key, self._suffix, location=location))
        companion = COMPANION_SUFFIX.get(self._batch.file_format)
        if companion is not None:
            await self._results.delete(result_key(item.key, companion, location=location))
        return dataclasses.replace(
            item, etag=current.etag, size=current.size, last_modified=current.last_modified
        )
