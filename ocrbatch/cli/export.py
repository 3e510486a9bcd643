"""`ocrbatch export BATCH`: one table of a whole batch's results, as CSV, xlsx or JSON Lines.

The table goes to standard output (CSV and JSON Lines only, never xlsx to a terminal), to a file
(`-o FILE`: written beside it first and renamed when complete, so a failed export leaves nothing),
or into storage (`--to LOCATION`: the object `{batch name}.{format}` in that location).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, cast

import click

from ocrbatch.cli.operations import batch_operations
from ocrbatch.cli.state import CliState
from ocrbatch.exports.export import BatchExport, ExportOptions, open_export
from ocrbatch.exports.formats import CONTENT_TYPES, FORMAT_NAMED, FORMATS, ExportFormat
from ocrbatch.locations import Location
from ocrbatch.worker.operations import BatchOperations


@click.command("export")
@click.argument("ref")
@click.option(
    "--format",
    "export_format",
    type=click.Choice(FORMATS),
    help="csv, xlsx or jsonl; by default the -o file's extension, else csv.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="File to write ('-': standard output, the default).",
)
@click.option(
    "--to",
    "to_location",
    help="Storage location to write {batch name}.{format} into (s3://bucket/prefix or a directory).",
)
@click.option("--confidence", is_flag=True, help="Template: a confidence column beside each field.")
@click.option("--lines", is_flag=True, help="General: one row per recognised line instead of per document.")
@click.option("--include-failed", is_flag=True, help="Failed items as rows too, with their reason.")
@click.option(
    "--no-bom", is_flag=True, help="CSV without the UTF-8 byte-order mark (for tools rather than Excel)."
)
@click.pass_obj
def export_command(
    state: CliState,
    *,
    ref: str,
    export_format: ExportFormat | None,
    output: Path | None,
    to_location: str | None,
    confidence: bool,
    lines: bool,
    include_failed: bool,
    no_bom: bool,
) -> None:
    """One table of the batch's results: a row per document (or per line), in key order."""
    if output is not None and to_location is not None:
        raise click.UsageError("give -o FILE or --to LOCATION, not both")
    to_stdout = output is None or str(output) == "-"
    suffix = output.suffix.lstrip(".").lower() if output is not None and not to_stdout else ""
    chosen = export_format if export_format is not None else FORMAT_NAMED.get(suffix, "csv")
    if chosen == "xlsx" and to_stdout and to_location is None and sys.stdout.isatty():
        raise click.UsageError("xlsx is a binary file: give -o FILE or --to LOCATION")
    destination = Location.parse(to_location) if to_location is not None else None
    options = ExportOptions(
        export_format=chosen,
        confidence=confidence,
        lines=lines,
        include_failed=include_failed,
        bom=not no_bom,
    )
    settings = state.settings

    async def go() -> tuple[BatchExport, str]:
        async with batch_operations(settings) as operations:
            export = await open_export(operations, ref, options)
            if destination is not None:
                where = await _to_storage(operations, export, destination)
            elif to_stdout:
                await _write_all(export.chunks(), sys.stdout.buffer)
                where = "standard output"
            else:
                assert output is not None  # noqa: S101 - to_stdout is False
                await _to_file(export, output)
                where = str(output)
            return export, where

    export, where = asyncio.run(go())
    click.echo(
        f"exported batch {export.batch.name!r}: {export.documents} documents, {export.rows} rows "
        f"({options.export_format}) to {where}",
        err=True,
    )


async def _write_all(chunks: AsyncIterator[bytes], stream: BinaryIO) -> None:
    async for chunk in chunks:
        stream.write(chunk)
    stream.flush()


async def _to_file(export: BatchExport, path: Path) -> None:
    """Written beside `path`, then renamed onto it: a failed export leaves no file."""
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            await _write_all(export.chunks(), stream)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


async def _to_storage(operations: BatchOperations, export: BatchExport, location: Location) -> str:
    """The export spooled to a temporary file, then written as one object of `location`."""
    with tempfile.TemporaryFile(prefix="ocrbatch-export-") as spool:
        await _write_all(export.chunks(), cast(BinaryIO, spool))
        spool.seek(0)
        data = spool.read()
    storage = await operations.storages.open(location, create=True)
    await storage.write(export.filename, data, content_type=CONTENT_TYPES[export.options.export_format])
    return location.join(export.filename)
