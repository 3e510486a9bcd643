"""A batch's results (and, when asked, its failure records) in input-key order, each read and
parsed, with a bounded read-ahead: S3 reads overlap, and memory holds at most `READ_AHEAD`
documents whatever the batch's size.

The results' listing and the `_failed/` listing are each sorted; they are merged by input key.
A key with both a result and a failure record is the result (a later success removes the record;
one left behind is stale). A result that cannot be parsed is not skipped: it comes back as
`unreadable`, with the reason.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from ocrbatch.batches.layout import FAILED_PREFIX, FAILURE_SUFFIX, RESULT_SUFFIX, failed_input_key
from ocrbatch.batches.spec import Batch
from ocrbatch.clova.contract import OcrResponse
from ocrbatch.errors import ObjectNotFound
from ocrbatch.storage.base import Storage, closing
from ocrbatch.worker.operations import BatchOperations
from ocrbatch.worker.views import FailureRecord

READ_AHEAD = 16  # documents read at once, and held at most
# Results parsed in the event loop up to this size; bigger ones in a thread, so the API stays live.
INLINE_PARSE_BYTES = 1024 * 1024

Status = Literal["succeeded", "failed", "unreadable"]


@dataclass(frozen=True)
class ExportedDocument:
    """One input as the export sees it: its result's response, or its failure record's reason."""

    key: str  # the input's key
    source: str  # the result or failure record the row comes from
    status: Status
    response: OcrResponse | None = None
    reason: str | None = None


async def walk_documents(
    operations: BatchOperations, batch: Batch, results: Storage, *, include_failed: bool
) -> AsyncIterator[ExportedDocument]:
    """Every result of the batch, and every failure record too when `include_failed`, in key order."""
    entries = _merged(
        _results(operations, results, batch), _failures(operations, results) if include_failed else None
    )
    pending: collections.deque[asyncio.Task[ExportedDocument]] = collections.deque()
    try:
        async for _, read in entries:
            pending.append(asyncio.ensure_future(read))
            if len(pending) >= READ_AHEAD:
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


# Each listing yields (input key, a coroutine reading the document): read-ahead starts the reads.
_Entry = tuple[str, Awaitable[ExportedDocument]]


async def _results(operations: BatchOperations, results: Storage, batch: Batch) -> AsyncIterator[_Entry]:
    suffix = RESULT_SUFFIX[batch.file_format]
    async with closing(results.list()) as listing:
        async for info in listing:
            entry = await operations.result_entry(results, info, suffix=suffix)
            if entry is not None:
                yield entry.key, _read_result(results, entry.key, entry.result_key)


async def _failures(operations: BatchOperations, results: Storage) -> AsyncIterator[_Entry]:
    async with closing(results.list(FAILED_PREFIX)) as listing:
        async for info in listing:
            if not info.key.endswith(FAILURE_SUFFIX):
                continue
            key = failed_input_key(info.key)
            if key is not None:
                yield key, _read_failure(operations, results, info.key)
                continue
            record = await operations.failure_at(results, info.key)  # fallback name: key inside
            if record is not None:
                yield record.key, _as_done(_failed(record))


async def _merged(
    first: AsyncIterator[_Entry], second: AsyncIterator[_Entry] | None
) -> AsyncIterator[_Entry]:
    """The two key-ordered listings as one; on equal keys the first's entry (the result) wins."""
    if second is None:
        async for entry in first:
            yield entry
        return
    a = await anext(first, None)
    b = await anext(second, None)
    while a is not None or b is not None:
        if a is not None and (b is None or a[0] <= b[0]):
            if b is not None and b[0] == a[0]:
                _discard(b[1])
                b = await anext(second, None)
            yield a
            a = await anext(first, None)
        elif b is not None:
            yield b
            b = await anext(second, None)


async def _read_result(results: Storage, key: str, result_key: str) -> ExportedDocument:
    try:
        data = (await results.read(result_key)).data
    except ObjectNotFound:
        return ExportedDocument(
            key, result_key, "unreadable", reason="the result was removed while exporting"
        )
    try:
        if len(data) > INLINE_PARSE_BYTES:
            response = await asyncio.to_thread(OcrResponse.model_validate_json, data)
        else:
            response = OcrResponse.model_validate_json(data)
    except ValidationError as error:
        not_json = any(problem["type"] == "json_invalid" for problem in error.errors(include_input=False))
        problem = (
            "is not valid JSON" if not_json else f"is not an OCR response ({error.error_count()} problems)"
        )
        return ExportedDocument(key, result_key, "unreadable", reason=f"the result {problem}")
    return ExportedDocument(key, result_key, "succeeded", response=response)


async def _read_failure(operations: BatchOperations, results: Storage, record_key: str) -> ExportedDocument:
    record = await operations.failure_at(results, record_key)
    if record is None:
        return ExportedDocument(
            failed_input_key(record_key) or record_key,
            record_key,
            "failed",
            reason="the failure record was removed while exporting",
        )
    return _failed(record)


def _failed(record: FailureRecord) -> ExportedDocument:
    reason = f"{record.code}: {record.message}" if record.code else record.message
    return ExportedDocument(record.key, record.record_key, "failed", reason=reason)


async def _as_done(document: ExportedDocument) -> ExportedDocument:
    return document


def _discard(read: Awaitable[ExportedDocument]) -> None:
    """A read never started (the entry lost to a result): closed, so nothing warns it was never awaited."""
    close = getattr(read, "close", None)
    if close is not None:
        close()
