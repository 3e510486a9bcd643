"""How an item ends: its result or its failure record, counted, logged and announced.

The webhook notice of an item is made durable before its result or failure record is written and
confirmed after it (or abandoned when the result is not kept), so a crash in between neither loses
the notice nor announces a result that was never written (`webhooks.py`). Every name comes from
`batches.layout`, which gives keys the storage cannot hold fallback names: the notice's
`resultLocation` is the object actually written.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import structlog

from ocrbatch.batches.layout import (
    COMPANION_SUFFIX,
    failure_record_key,
    is_fallback_name,
    result_key,
    source_key_metadata,
)
from ocrbatch.batches.report import BatchReport
from ocrbatch.batches.spec import Batch
from ocrbatch.clova.contract import OcrError, OcrResponse
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.storage.base import Storage
from ocrbatch.types import DomainKind
from ocrbatch.webhooks.outbox import announced_by
from ocrbatch.webhooks.service import PendingItem, WebhookService, item_payload
from ocrbatch.worker.discovery import DiscoveredItem
from ocrbatch.worker.prepare import PreparedItem
from ocrbatch.worker.result_files import CONTENT_TYPES, render_json, render_xlsx

log = structlog.get_logger("ocrbatch.worker")


class ItemOutcomes:
    """Writes the outcomes of one batch's items to its result location."""

    def __init__(
        self,
        batch: Batch,
        results: Storage,
        *,
        suffix: str,
        domain_kind: DomainKind,
        report: BatchReport,
        metrics: WorkerMetrics,
        webhooks: WebhookService | None,
    ) -> None:
        self._batch = batch
        self._results = results
        self._location = results.location  # the names of its objects depend on its prefix
        self._suffix = suffix
        self._domain_kind = domain_kind
        self._report = report
        self._counted = {  # looked up once: a label lookup per item costs more than the count
            outcome: metrics.items.labels(batch=batch.name, outcome=outcome)
            for outcome in ("succeeded", "failed")
        }
        self._webhooks = webhooks

    async def store_result(
        self, prepared: PreparedItem, response: OcrResponse, attempts: int, *, companion: bytes | None = None
    ) -> PendingItem | None:
        """Write the item's result (after `companion`, a pdf batch's searchable PDF, when there is
        one); returns its webhook notice, for `succeeded` or `abandon`."""
        item = prepared.item
        notice = await self._notice(
            item.key,
            self._result_key(item.key),
            prepared.etag,
            succeeded=True,
            message="SUCCESS",
            response=response,
        )
        try:
            await asyncio.shield(self._write_result(prepared, response, attempts, notice, companion))
        except BaseException:
            await self.abandon(notice)
            raise
        return notice

    async def succeeded(self, key: str, notice: PendingItem | None, *, attempts: int, pages: int) -> None:
        """The stored result stays: count it and announce it."""
        self._report.succeeded += 1
        self._counted["succeeded"].inc()
        if notice is not None and self._webhooks is not None:
            await self._webhooks.item_done(notice)
        log.info(
            "item.done", batch_id=self._batch.id, key=key, outcome="succeeded", attempts=attempts, pages=pages
        )

    async def abandon(self, notice: PendingItem | None) -> None:
        """The result is not kept (not written, or made from a replaced input): no announcement."""
        if notice is not None and self._webhooks is not None:
            await self._webhooks.item_abandoned(notice)

    async def record_failure(
        self,
        item: DiscoveredItem,
        etag: str,
        error: OcrError | None,
        message: str,
        *,
        retryable: bool,
        attempts: int,
    ) -> None:
        """Write the item's failure record (final unless `retryable`), count and announce it."""
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
        key = self._failure_record_key(item.key)
        notice = await self._notice(item.key, key, etag, succeeded=False, message=message, response=None)
        # A natural record's name says its input; a fallback record's metadata has to.
        source = source_key_metadata(key, item.key) if is_fallback_name(key) else {}
        try:
            await asyncio.shield(
                self._results.write(
                    key,
                    json.dumps(record, ensure_ascii=False, indent=1).encode(),
                    metadata={
                        **source,
                        "source-etag": etag,
                        "retryable": "true" if retryable else "false",
                        **announced_by(None if notice is None else notice.marker),
                    },
                    content_type="application/json",
                )
            )
        except BaseException:
            await self.abandon(notice)
            raise
        self._report.failed += 1
        self._counted["failed"].inc()
        if notice is not None and self._webhooks is not None:
            await self._webhooks.item_done(notice)
        log.info(
            "item.done",
            batch_id=self._batch.id,
            key=item.key,
            outcome="failed",
            code=record["code"],
            reason=message,
            retryable=retryable,
            attempts=attempts,
        )

    async def _write_result(
        self,
        prepared: PreparedItem,
        response: OcrResponse,
        attempts: int,
        notice: PendingItem | None,
        companion: bytes | None,
    ) -> None:
        item = prepared.item
        body = (
            render_json(response)
            if self._suffix == ".json"
            else await asyncio.to_thread(render_xlsx, response, kind=self._domain_kind)
        )
        key = self._result_key(item.key)
        metadata = {
            **source_key_metadata(key, item.key),
            "source-etag": prepared.etag,
            "batch-id": self._batch.id,
            "domain": self._batch.domain,
            "attempts": str(attempts),
            **announced_by(None if notice is None else notice.marker),
        }
        companion_suffix = COMPANION_SUFFIX.get(self._batch.file_format)
        if companion is not None and companion_suffix is not None:
            companion_key = result_key(item.key, companion_suffix, location=self._location)
            await self._results.write(
                companion_key,
                companion,
                metadata={**metadata, **source_key_metadata(companion_key, item.key)},
                content_type=CONTENT_TYPES[companion_suffix],
            )
        await self._results.write(
            key,
            body,
            metadata=metadata,
            content_type=CONTENT_TYPES[self._suffix],
        )
        if item.retry_of_failure:
            await self._results.delete(self._failure_record_key(item.key))

    def _result_key(self, key: str) -> str:
        return result_key(key, self._suffix, location=self._location)

    def _failure_record_key(self, key: str) -> str:
        return failure_record_key(key, location=self._location)

    async def _notice(
        self,
        key: str,
        stored_key: str,
        source_etag: str,
        *,
        succeeded: bool,
        message: str,
        response: OcrResponse | None,
    ) -> PendingItem | None:
        """The webhook notice of input `key`, made durable before its result or failure record
        (`stored_key`) is written (None for batches without a webhook)."""
        webhooks, webhook = self._webhooks, self._batch.webhook
        if webhooks is None or webhook is None:
            return None
        payload = item_payload(
            key=key,
            result_location=self._batch.result_location.join(stored_key),
            succeeded=succeeded,
            message=message,
            response=response,
            locations_only=webhooks.locations_only(self._batch),
        )
        return await webhooks.item_pending(
            self._batch.id, payload, result_key=stored_key, source_etag=source_etag
        )
