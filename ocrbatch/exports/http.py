"""The export as an HTTP download, shared by the API (`GET /api/v1/batches/{ref}/export`) and the
console's download button: options from the query, refused with `ExportRefused` (a 4xx) before
anything is sent, then the file streamed in chunks with its name in `Content-Disposition`.

Query: `format` (csv | xlsx | jsonl, default csv) and the flags `confidence`, `lines`,
`include_failed` and `bom` (default true), each `true|false|1|0|yes|no`. Once the first bytes
are sent, a failure can no longer be a status code: it is logged and the connection is closed
without the stream's end, so no client takes a cut export for a whole one.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import structlog
from aiohttp import web

from ocrbatch.errors import ExportRefused
from ocrbatch.exports.export import ExportOptions, open_export
from ocrbatch.exports.formats import FORMAT_NAMED, FORMATS
from ocrbatch.worker.operations import BatchOperations, BatchRef

log = structlog.get_logger("ocrbatch.exports")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def export_options(query: Mapping[str, str]) -> ExportOptions:
    """The options a query asks for; `ExportRefused` naming each bad one."""
    problems: list[tuple[str, str]] = []
    export_format = FORMAT_NAMED.get(query.get("format") or "csv")
    if export_format is None:
        problems.append(("format", f"must be one of {', '.join(FORMATS)}"))

    def flag(name: str, default: bool) -> bool:
        value = query.get(name, "").strip().lower()
        if value and value not in _TRUE | _FALSE:
            problems.append((name, "must be true or false"))
        return value in _TRUE if value else default

    flags = {name: flag(name, False) for name in ("confidence", "lines", "include_failed")}
    bom = flag("bom", True)
    if problems or export_format is None:
        raise ExportRefused(problems)
    return ExportOptions(export_format=export_format, bom=bom, **flags)


async def stream_export(
    request: web.Request, operations: BatchOperations, ref: BatchRef
) -> web.StreamResponse:
    """The export `request`'s query asks of batch `ref`, streamed as a download."""
    export = await open_export(operations, ref, export_options(request.query))
    fallback = f"batch-{export.batch.id}.{export.options.export_format}"
    response = web.StreamResponse(
        headers={
            "Content-Type": export.content_type,
            "Content-Disposition": (
                f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(export.filename, safe='')}"
            ),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async for chunk in export.chunks():
            await response.write(chunk)
    except Exception as error:
        log.error("export.failed", batch_id=export.batch.id, error=str(error), exc_info=True)
        response.force_close()
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    log.info("export.sent", batch_id=export.batch.id, documents=export.documents, rows=export.rows)
    return response
