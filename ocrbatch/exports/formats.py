"""The export's file formats, each written row by row with memory flat in the number of rows.

- CSV: UTF-8, with a byte-order mark unless told not to (Excel then opens Korean, Japanese and
  Chinese text correctly; tools that do not expect one can do without). A text cell that begins
  with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`, so a spreadsheet never
  runs it as a formula (OWASP's advice on CSV injection). Numbers are written as numbers.
- xlsx: XlsxWriter in constant-memory mode (each row goes to a temporary file as it is written),
  strings always as strings, never formulas or links, like the result workbooks. A sheet holds at
  most Excel's 1,048,576 rows; the export goes on in sheets "Export 2", "Export 3", … each with
  the header. A text over Excel's 32,767 characters is cut, ending in "…".
- JSON Lines: one JSON object per row, the columns as keys, numbers as numbers, null for empty.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol

from ocrbatch.exports.rows import Cell

ExportFormat = Literal["csv", "xlsx", "jsonl"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "xlsx", "jsonl")
FORMAT_NAMED: dict[str, ExportFormat] = {name: name for name in FORMATS}
CONTENT_TYPES: dict[ExportFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "jsonl": "application/x-ndjson",
}
BOM = "\ufeff"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
EXCEL_MAX_ROWS = 1_048_576
EXCEL_MAX_CHARS = 32_767
FILE_CHUNK_BYTES = 1024 * 1024


class TableWriter(Protocol):
    """Writes a header, then rows; `take` hands over the bytes ready so far, `finish` the rest
    (blocking for xlsx, which assembles its file at the end: take its chunks in a thread), and
    `discard` drops an export that stopped early."""

    def header(self, columns: Sequence[str]) -> None: ...

    def row(self, cells: Sequence[Cell]) -> None: ...

    def take(self) -> bytes: ...

    def finish(self) -> Iterator[bytes]: ...

    def discard(self) -> None: ...


def table_writer(export_format: ExportFormat, *, bom: bool = True) -> TableWriter:
    if export_format == "csv":
        return CsvWriter(bom=bom)
    if export_format == "jsonl":
        return JsonLinesWriter()
    return XlsxTableWriter()


def neutralised(text: str) -> str:
    """`text` as a spreadsheet shows it and never runs it."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


class _TextWriter:
    def __init__(self) -> None:
        self._buffer = io.StringIO()

    def take(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode("utf-8", "surrogatepass")

    def finish(self) -> Iterator[bytes]:
        rest = self.take()
        if rest:
            yield rest

    def discard(self) -> None:
        self._buffer.close()


class CsvWriter(_TextWriter):
    def __init__(self, *, bom: bool) -> None:
        super().__init__()
        self._csv = csv.writer(self._buffer, lineterminator="\r\n")  # RFC 4180's line ends
        if bom:
            self._buffer.write(BOM)

    def header(self, columns: Sequence[str]) -> None:
        self._csv.writerow([neutralised(column) for column in columns])

    def row(self, cells: Sequence[Cell]) -> None:
        self._csv.writerow([_csv_cell(cell) for cell in cells])


def _csv_cell(cell: Cell) -> str | int | float:
    if cell is None:
        return ""
    if isinstance(cell, str):
        return neutralised(cell)
    return cell if math.isfinite(cell) else ""


class JsonLinesWriter(_TextWriter):
    def __init__(self) -> None:
        super().__init__()
        self._columns: Sequence[str] = ()

    def header(self, columns: Sequence[str]) -> None:
        self._columns = list(columns)

    def row(self, cells: Sequence[Cell]) -> None:
        record = {
            column: None if isinstance(cell, float) and not math.isfinite(cell) else cell
            for column, cell in zip(self._columns, cells, strict=True)
        }
        self._buffer.write(json.dumps(record, ensure_ascii=False) + "\n")


class XlsxTableWriter:
    """A workbook in a temporary file, which `finish` reads back in chunks and removes."""

    def __init__(self) -> None:
        xlsxwriter = importlib.import_module("xlsxwriter")  # loaded when an xlsx export is made
        handle, self._path = tempfile.mkstemp(prefix="ocrbatch-export-", suffix=".xlsx")
        os.close(handle)
        self._workbook: Any = xlsxwriter.Workbook(
            self._path,
            {"constant_memory": True, "strings_to_formulas": False, "strings_to_urls": False},
        )
        self._bold = self._workbook.add_format({"bold": True, "bottom": 1})
        self._columns: Sequence[str] = ()
        self._sheets = 0
        self._sheet: Any = None
        self._row = 0

    def header(self, columns: Sequence[str]) -> None:
        self._columns = list(columns)
        self._new_sheet()

    def _new_sheet(self) -> None:
        self._sheets += 1
        self._sheet = self._workbook.add_worksheet(
            "Export" if self._sheets == 1 else f"Export {self._sheets}"
        )
        for column, title in enumerate(self._columns):
            self._sheet.write_string(0, column, _cut(title), self._bold)
        self._sheet.freeze_panes(1, 0)
        self._row = 0

    def row(self, cells: Sequence[Cell]) -> None:
        if self._row + 1 == EXCEL_MAX_ROWS:
            self._new_sheet()
        self._row += 1
        for column, cell in enumerate(cells):
            if isinstance(cell, str):
                if cell:
                    self._sheet.write_string(self._row, column, _cut(cell))
            elif cell is not None and math.isfinite(cell):
                self._sheet.write_number(self._row, column, cell)

    def take(self) -> bytes:
        return b""

    def finish(self) -> Iterator[bytes]:
        try:
            self._workbook.close()
            with open(self._path, "rb") as file:
                while chunk := file.read(FILE_CHUNK_BYTES):
                    yield chunk
        finally:
            os.unlink(self._path)

    def discard(self) -> None:
        """Remove the temporary file of an export that stopped early."""
        try:
            self._workbook.close()
        finally:
            if os.path.exists(self._path):
                os.unlink(self._path)


def _cut(text: str) -> str:
    return text if len(text) <= EXCEL_MAX_CHARS else text[: EXCEL_MAX_CHARS - 1] + "…"
