"""What the CLI, the HTTP API and the web console do to a batch's work, as one set of operations:
its status with live progress, the dry-run estimate, its failure records and their retry, its
results and inputs (for the console's viewer), and its webhook outbox.

Every caller goes through `BatchOperations`, so the figures and rules are the same everywhere.
Inside `ocrbatch serve` it is given the worker (`live`), so the progress of a batch being worked
on is read from the pass itself, and `nudge` starts a pass when failed items are sent again.
Listings are paged by key (`after`), never read whole: a batch may have millions of objects.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ocrbatch.batches.layout import (
    DOWNLOAD_SUFFIX,
    FAILED_PREFIX,
    FALLBACK_PREFIX,
    RESULT_SUFFIX,
    SOURCE_KEY,
    decode_source_key,
    failed_input_key,
    failure_record_key,
    is_own_object,
    result_key,
)
from ocrbatch.batches.report import read_report
from ocrbatch.batches.spec import Batch
from ocrbatch.batches.store import BatchStore
from ocrbatch.clova.contract import MAX_IMAGE_BYTES
from ocrbatch.errors import BatchRuleViolation, ObjectNotFound, StorageError
from ocrbatch.settings import Settings
from ocrbatch.storage.base import ObjectInfo, Storage, check_key, closing
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.types import DomainKind
from ocrbatch.webhooks.outbox import DEAD_PREFIX, Outbox
from ocrbatch.worker.discovery import image_format
from ocrbatch.worker.estimate import estimate_batch
from ocrbatch.worker.result_files import CONTENT_TYPES
from ocrbatch.worker.views import (
    BatchProgress,
    FailureRecord,
    NotViewable,
    OutboxView,
    Page,
    ResultDocument,
    ResultEntry,
)

MAX_PAGE_ITEMS = 200
# Objects looked at for one page at most (failure records read for a filtered page, or objects
# listed for a page of results): a rare reason or a large `_failed/` never makes a request read all.
MAX_RECORDS_SCANNED = 1000


# A batch's id or name, or the batch itself when the caller has just read it (no second read).
BatchRef = str | Batch


class LiveReports(Protocol):
    """The worker, as far as status goes: the report of a batch its pass is working on now."""

    def live_report(self, batch_id: str) -> dict[str, Any] | None: ...


class BatchOperations:
    """The operations on batches' work; `live` and `nudge` are the worker's, inside `serve`."""

    def __init__(
        self,
        settings: Settings,
        store: BatchStore,
        storages: StorageFactory,
        *,
        live: LiveReports | None = None,
        nudge: Callable[[str], None] | None = None,
        outbox_counters: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self._settings = settings
        self.store = store
        self.storages = storages
        self._live = live
        self._nudge = nudge
        self._outbox_counters = outbox_counters

    async def batch(self, ref: BatchRef) -> Batch:
        """The batch `ref` names (id or name), read now; a `Batch` the caller just read is used as is."""
        return ref if isinstance(ref, Batch) else (await self.store.get(ref)).batch

    def domain_kind(self, batch: Batch) -> DomainKind:
        """General or Template: the batch's domain's, or (a domain no longer configured) Template
        when the batch names templates."""
        domain = self._settings.domains.get(batch.domain)
        if domain is not None:
            return domain.kind
        return "template" if batch.template_ids else "general"

    async def progress(self, ref: BatchRef) -> BatchProgress:
        """The batch's status with the figures of the pass working on it, else of `_report.json`."""
        batch = await self.batch(ref)
        live = self._live.live_report(batch.id) if self._live is not None else None
        if live is not None:
            return BatchProgress(batch, live, live=True)
        return BatchProgress(batch, await read_report(self.storages, batch), live=False)

    async def estimate(self, ref: BatchRef, *, call_latency_s: float = 1.0) -> dict[str, Any]:
        """The dry run's figures: what a run would send, cost and take; nothing is sent."""
        batch = await self.batch(ref)
        domain = self._settings.domains.get(batch.domain)
        if domain is None:
            raise BatchRuleViolation(
                [("domain", f"batch {batch.name!r} uses domain {batch.domain!r}, which is not configured")]
            )
        estimate = await estimate_batch(
            batch,
            domain,
            inputs=await self.storages.open(batch.input_location),
            results=await self.storages.open(batch.result_location, create=True),
            call_latency_s=call_latency_s,
        )
        return {"batch": batch.name, **estimate.to_json()}

    async def retry_failed(self, ref: BatchRef, keys: Sequence[str] | None = None) -> tuple[Batch, list[str]]:
        """Remove the failure records of the batch (of its inputs `keys` only, when given), so the
        next pass sends those items again; a pass is started at once inside `serve`. Returns the
        batch and the input keys whose records were removed."""
        batch = await self.batch(ref)
        results = await self.result_storage(batch)
        retried = []
        if keys is None:
            async for info in results.list(FAILED_PREFIX):
                retried.append(await self.source_of(results, info.key) or info.key)
                await results.delete(info.key)
        else:
            for key in keys:
                record = failure_record_key(key, location=batch.result_location)
                try:
                    check_key(key)
                    await results.head(record)
                except (ValueError, ObjectNotFound):  # not a key of this batch, or no record
                    continue
                await results.delete(record)
                retried.append(key)
        if retried and self._nudge is not None:
            self._nudge(f"{len(retried)} failed item(s) of batch {batch.name!r} sent again")
        return batch, retried

    async def failures(
        self, ref: BatchRef, *, reason: str | None = None, after: str | None = None, limit: int = 50
    ) -> Page[FailureRecord]:
        """A page of the batch's failure records in key order; with `reason`, only those whose
        code or message contains it (case-insensitive)."""
        batch = await self.batch(ref)
        results = await self.result_storage(batch)
        limit = max(1, min(limit, MAX_PAGE_ITEMS))
        wanted = (reason or "").strip().casefold()
        found: list[FailureRecord] = []
        scanned, last = 0, None
        async with closing(results.list(FAILED_PREFIX, start_after=after)) as listing:
            async for info in listing:
                if len(found) == limit or scanned == MAX_RECORDS_SCANNED:
                    return Page(found, last, scanned_all=len(found) == limit)
                scanned += 1
                last = info.key
                record = await self.failure_at(results, info.key)
                if record is None:
                    continue
                if wanted and wanted not in f"{record.code or ''} {record.message}".casefold():
                    continue
                found.append(record)
        return Page(found, None)

    async def failure(self, ref: BatchRef, key: str) -> FailureRecord:
        """The failure record of input `key`; `ObjectNotFound` when it has none."""
        batch = await self.batch(ref)
        _check_key(key)
        results = await self.result_storage(batch)
        with _refused_key():
            record = await self.failure_at(results, failure_record_key(key, location=batch.result_location))
        if record is None:
            raise ObjectNotFound(f"{key!r} has no failure record", location=batch.result_path)
        return record

    async def results(self, ref: BatchRef, *, after: str | None = None, limit: int = 50) -> Page[ResultEntry]:
        """A page of the batch's results (not its own objects) in key order."""
        batch = await self.batch(ref)
        results = await self.result_storage(batch)
        limit = max(1, min(limit, MAX_PAGE_ITEMS))
        suffix = RESULT_SUFFIX[batch.file_format]
        found: list[ResultEntry] = []
        scanned, last = 0, None
        async with closing(results.list(start_after=after)) as listing:
            async for info in listing:
                if len(found) == limit or scanned == MAX_RECORDS_SCANNED:
                    return Page(found, last, scanned_all=len(found) == limit)
                scanned += 1
                last = info.key
                entry = await self.result_entry(results, info, suffix=suffix)
                if entry is not None:
                    found.append(entry)
        return Page(found, None)

    async def result_entry(self, results: Storage, info: ObjectInfo, *, suffix: str) -> ResultEntry | None:
        """The result `info` lists in a result location, as its input's entry; None for any other
        object there (ocrbatch's own, or another suffix's), and for a fallback-named result whose
        metadata cannot be read."""
        fallback = info.key.startswith(FALLBACK_PREFIX)
        if not info.key.endswith(suffix) or (is_own_object(info.key) and not fallback):
            return None
        natural = None if fallback else info.key.removesuffix(suffix)
        key = natural or await self.source_of(results, info.key)
        return None if key is None else ResultEntry(key, info.key, info.size, info.last_modified.isoformat())

    async def result(self, ref: BatchRef, key: str) -> ResultDocument:
        """Input `key`'s JSON result (a pdf batch keeps it beside the PDF); `NotViewable` when the
        batch writes Excel or it has none."""
        batch = await self.batch(ref)
        _check_key(key)
        if batch.file_format == "xls":
            raise NotViewable(f"batch {batch.name!r} writes {batch.file_format} results, not JSON")
        results = await self.result_storage(batch)
        where = result_key(key, RESULT_SUFFIX["json"], location=batch.result_location)
        try:
            with _refused_key():
                data = (await results.read(where)).data
        except ObjectNotFound:
            raise NotViewable(f"{key!r} has no result yet") from None
        try:
            response = json.loads(data)
        except ValueError:
            raise NotViewable(f"the result of {key!r} is not valid JSON") from None
        if not isinstance(response, dict):
            raise NotViewable(f"the result of {key!r} is not an OCR response")
        return ResultDocument(key, where, response)

    async def result_file(self, ref: BatchRef, key: str) -> tuple[str, bytes, str]:
        """Input `key`'s result file, for download (a pdf batch's searchable PDF): its name, bytes
        and content type."""
        batch = await self.batch(ref)
        _check_key(key)
        results = await self.result_storage(batch)
        suffix = DOWNLOAD_SUFFIX[batch.file_format]
        where = result_key(key, suffix, location=batch.result_location)
        try:
            with _refused_key():
                stored = await results.read(where)
        except ObjectNotFound:
            raise NotViewable(f"{key!r} has no result yet") from None
        name = key.rsplit("/", 1)[-1] + suffix
        return name, stored.data, CONTENT_TYPES[suffix]

    async def input_bytes(self, ref: BatchRef, key: str) -> bytes:
        """The bytes of one of the batch's documents, for the viewer: only keys of its input
        location with a document's extension, at most the API's 50 MB."""
        batch = await self.batch(ref)
        _check_key(key)
        if image_format(key) is None:
            raise NotViewable(f"{key!r} is not a document this batch reads")
        inputs = await self.storages.open(batch.input_location)
        try:
            with _refused_key():
                info = await inputs.head(key)
        except ObjectNotFound:
            raise NotViewable(f"{key!r} is not in the batch's input location") from None
        if info.size > MAX_IMAGE_BYTES:
            raise NotViewable(f"{key!r} is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
        return (await inputs.read(key)).data

    async def outbox(self, ref: BatchRef, *, limit: int = 50) -> OutboxView:
        """The chunks waiting for the batch's webhook and its dead letters (with their reasons)."""
        batch = await self.batch(ref)
        results = await self.result_storage(batch)
        waiting = [key for key in await _first(results, "_outbox/", limit * 4) if Outbox.is_chunk(key)]
        dead = []
        for key in await _first(results, DEAD_PREFIX, limit):
            entry: dict[str, Any] = {"key": key, "chunk_id": None, "reason": None}
            with contextlib.suppress(StorageError):
                metadata = (await results.head(key)).metadata
                entry.update(chunk_id=metadata.get("chunk-id"), reason=metadata.get("reason"))
            dead.append(entry)
        counters = self._outbox_counters() if self._outbox_counters is not None else {}
        return OutboxView(waiting[:limit], dead, counters)

    async def result_storage(self, batch: Batch) -> Storage:
        """The batch's result location, opened (created when missing)."""
        return await self.storages.open(batch.result_location, create=True)

    async def source_of(self, results: Storage, object_key: str) -> str | None:
        """The input a failure record (or a fallback-named result) was made for."""
        source = failed_input_key(object_key)
        if source is None:  # a fallback name: its input is in its metadata
            with contextlib.suppress(StorageError):
                source = decode_source_key((await results.head(object_key)).metadata.get(SOURCE_KEY))
        return source

    async def failure_at(self, results: Storage, record_key: str) -> FailureRecord | None:
        """The record at `record_key`; None when it is gone; an unreadable one says so."""
        try:
            data = (await results.read(record_key)).data
        except ObjectNotFound:
            return None
        try:
            record = json.loads(data)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            key = await self.source_of(results, record_key) or record_key
            return FailureRecord(key, record_key, None, "the failure record is not valid JSON", *(None,) * 4)
        named = record.get("key")
        key = named if isinstance(named, str) else await self.source_of(results, record_key) or record_key
        return FailureRecord(
            key=key,
            record_key=record_key,
            code=_text_or_none(record.get("code")),
            message=str(record.get("message", "")),
            attempts=record.get("attempts") if isinstance(record.get("attempts"), int) else None,
            retryable=record.get("retryable") if isinstance(record.get("retryable"), bool) else None,
            failed_at=_text_or_none(record.get("failed_at")),
            trace_id=_text_or_none(record.get("trace_id")),
        )


def _check_key(key: str) -> None:
    """Keys from a caller name objects of the batch's own locations: relative paths only."""
    with _refused_key():
        check_key(key)


@contextlib.contextmanager
def _refused_key() -> Iterator[None]:
    """A key from a caller that the storage refuses (it raises `ValueError` saying why: a NUL, a
    name the local backend reserves) names nothing the caller may see."""
    try:
        yield
    except ValueError as exc:
        raise NotViewable(str(exc)) from None


async def _first(storage: Storage, prefix: str, limit: int) -> list[str]:
    keys: list[str] = []
    async with closing(storage.list(prefix)) as listing:
        async for info in listing:
            if len(keys) == limit:
                break
            keys.append(info.key)
    return keys


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)
