"""A batch's export as a stream of bytes: checked first (`open_export` refuses what cannot be
made, before anything is sent), then made as it is read (`BatchExport.chunks`).

General batches stream row by row. A Template batch's columns are the union of its documents'
fields, known only once every document was read: its rows go to a temporary file first (one
JSON line per document), then out under the header. Either way memory is flat in the batch's
size; disk holds at most the export once (and the xlsx file while it is assembled).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ocrbatch.batches.spec import Batch
from ocrbatch.errors import ExportRefused
from ocrbatch.exports.formats import CONTENT_TYPES, ExportFormat, TableWriter, table_writer
from ocrbatch.exports.rows import (
    TemplateColumns,
    TemplateDocument,
    general_columns,
    general_rows,
    template_document,
    template_row,
)
from ocrbatch.exports.walk import ExportedDocument, walk_documents
from ocrbatch.storage.base import Storage
from ocrbatch.types import DomainKind
from ocrbatch.worker.operations import BatchOperations, BatchRef

CHUNK_BYTES = 64 * 1024  # bytes gathered before a chunk is handed on


@dataclass(frozen=True)
class ExportOptions:
    export_format: ExportFormat = "csv"
    confidence: bool = False  # Template: a confidence column beside each field
    lines: bool = False  # General: one row per recognised line
    include_failed: bool = False  # failed items as rows, with their reason
    bom: bool = True  # CSV: a UTF-8 byte-order mark first


async def open_export(operations: BatchOperations, ref: BatchRef, options: ExportOptions) -> BatchExport:
    """The export of batch `ref`; `ExportRefused` when it cannot be made as asked."""
    batch = await operations.batch(ref)
    kind = operations.domain_kind(batch)
    problems: list[tuple[str, str]] = []
    if batch.file_format == "xls":
        problems.append(
            (
                "batch",
                f"batch {batch.name!r} writes xls results; an export reads the JSON results of json "
                "and pdf batches",
            )
        )
    if options.lines and kind != "general":
        problems.append(
            ("lines", "one row per line is for General batches; Template batches have a row per document")
        )
    if options.confidence and kind != "template":
        problems.append(("confidence", "confidence columns per field are for Template batches"))
    if problems:
        raise ExportRefused(problems)
    return BatchExport(operations, batch, kind, options, await operations.result_storage(batch))


class BatchExport:
    def __init__(
        self,
        operations: BatchOperations,
        batch: Batch,
        kind: DomainKind,
        options: ExportOptions,
        results: Storage,
    ) -> None:
        self.batch = batch
        self.kind = kind
        self.options = options
        self._operations = operations
        self._results = results
        self.documents = 0  # read so far
        self.rows = 0  # written so far

    @property
    def filename(self) -> str:
        return f"{self.batch.name}.{self.options.export_format}"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.options.export_format]

    async def chunks(self) -> AsyncIterator[bytes]:
        """The export's bytes, in chunks of about `CHUNK_BYTES` (the xlsx file at the end)."""
        writer = table_writer(self.options.export_format, bom=self.options.bom)
        finished = False
        try:
            rows = self._general(writer) if self.kind == "general" else self._template(writer)
            async for chunk in rows:
                yield chunk
            finishing = writer.finish()
            while (chunk := await asyncio.to_thread(next, finishing, b"")) != b"":
                yield chunk
            finished = True
        finally:
            if not finished:
                writer.discard()

    async def _general(self, writer: TableWriter) -> AsyncIterator[bytes]:
        options = self.options
        writer.header(general_columns(lines=options.lines, include_failed=options.include_failed))
        pending = 0
        async for document in self._documents():
            self.documents += 1
            for row in general_rows(document, lines=options.lines, include_failed=options.include_failed):
                writer.row(row)
                self.rows += 1
                pending += 1
            if pending >= 256:
                pending = 0
                if chunk := writer.take():
                    yield chunk

    async def _template(self, writer: TableWriter) -> AsyncIterator[bytes]:
        options = self.options
        columns = TemplateColumns(self.batch.template_ids or [])
        with tempfile.TemporaryFile("w+", encoding="utf-8", prefix="ocrbatch-export-") as spool:
            async for document in self._documents():
                self.documents += 1
                cells, seen = template_document(document, include_failed=options.include_failed)
                columns.observe(seen)
                spool.write(json.dumps(cells.to_json(), ensure_ascii=False) + "\n")
            names = columns.field_names()
            writer.header(
                columns.columns(names, confidence=options.confidence, include_failed=options.include_failed)
            )
            spool.seek(0)
            for count, line in enumerate(spool, start=1):
                writer.row(
                    template_row(
                        TemplateDocument.from_json(json.loads(line)), names, confidence=options.confidence
                    )
                )
                self.rows = count
                if count % 256 == 0:
                    if chunk := writer.take():
                        yield chunk
                    await asyncio.sleep(0)  # other requests go on while a large spool is read back

    def _documents(self) -> AsyncIterator[ExportedDocument]:
        return walk_documents(
            self._operations, self.batch, self._results, include_failed=self.options.include_failed
        )
