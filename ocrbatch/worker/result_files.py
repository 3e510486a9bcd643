"""What the worker writes for one input (SPEC §5 "PDFs over 10 pages", "Results"): PDFs cut into
parts the API accepts, the parts' answers merged back into one, and the result file as JSON or
as an Excel workbook. Pure functions, no I/O; PDF splitting and workbook rendering are CPU-bound,
so callers run them in a thread for big documents.

Workbook layout (`render_xlsx`):

- "Text" (General): one row per recognised line. Words are grouped into lines by `lineBreak`: a
  line ends at a word whose `lineBreak` is true, or at the end of its page. Columns: Page
  (1-based), Line (1-based within the page), Text (the words joined by spaces), Confidence (the
  *lowest* of the words': a line is as trustworthy as its weakest word, so filtering on it finds
  every doubtful word), Left, Top, Right, Bottom (the union of the words' boxes, in px).
- "Fields" (Template): per page, the title first when there is one (Field "(title)"), then one
  row per template field. Columns: Page, Template ("name (id)" of `matchedTemplate`), Field,
  Value, Confidence, Left, Top, Right, Bottom.
- "Pages": one row per image of the response: Page, Name, Result (`inferResult`), Message,
  Width, Height. This is where a page that was not recognised says why; when no page was, it is
  the sheet the workbook opens on.
- "Table p<page>-<n>": one sheet per detected table (of either kind), cells at their
  (rowIndex, columnIndex) from A1, merged over rowSpan x columnSpan; a cell's text is its lines
  joined by newlines, each line its words joined by spaces. Page and index make these names
  unique, and they stay far below Excel's 31 characters.

Pages are numbered by position in `images` (1-based), which is `pageIndex + 1` for every response
the worker writes (`merge_responses` keeps it so) and stays defined for images without
`convertedImageInfo`. Text is always written as a string, never as a formula or link. Equal
responses give equal bytes: XlsxWriter dates the zip entries 1980-01-01 when in memory, and the
document's created/modified date is set to that same fixed moment.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from ocrbatch.clova.contract import (
    MAX_PDF_PAGES_PER_CALL,
    BoundingPoly,
    OcrField,
    OcrImage,
    OcrResponse,
    Table,
    Title,
)
from ocrbatch.clova.parts import pdf_parts
from ocrbatch.types import DomainKind

CONTENT_TYPES: dict[str, str] = {  # by result suffix
    ".json": "application/json",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".pdf": "application/pdf",
}
SUCCESS = "SUCCESS"
# XlsxWriter's own zip-entry date, reused for the document properties so the bytes never vary.
WORKBOOK_DATE = datetime(1980, 1, 1, tzinfo=UTC)
TEXT_HEADER = ("Page", "Line", "Text", "Confidence", "Left", "Top", "Right", "Bottom")
FIELDS_HEADER = ("Page", "Template", "Field", "Value", "Confidence", "Left", "Top", "Right", "Bottom")
PAGES_HEADER = ("Page", "Name", "Result", "Message", "Width", "Height")
TITLE_FIELD = "(title)"
# Column widths in characters by header; the box columns (Left, Top, Right, Bottom) get the default.
_WIDTHS = {"Page": 6, "Line": 6, "Confidence": 11, "Result": 10}
_WIDTHS |= {"Text": 60, "Value": 40, "Template": 28, "Field": 28, "Name": 40, "Message": 60}  # text columns
_DEFAULT_WIDTH = 8
_TABLE_COLUMN_WIDTH = 20

Box = tuple[float, float, float, float]  # left, top, right, bottom in px
Cell = str | float | None


# -- PDFs ---------------------------------------------------------------------------------------


def split_pdf(data: bytes, *, pages_per_part: int = MAX_PDF_PAGES_PER_CALL) -> list[bytes]:
    """Every part of `documents.pdf_parts` at once (a PDF within the limit is `[data]` itself):
    for documents known to be small. The worker takes the parts one at a time from `pdf_parts`."""
    return list(pdf_parts(data, pages_per_part=pages_per_part))


def merge_responses(parts: list[OcrResponse]) -> OcrResponse:
    """One response for a document recognised in parts: the parts' images in order, each image's
    `convertedImageInfo.pageIndex` set to its position in the whole (part 2's page 0 follows
    part 1's last page). An image without `convertedImageInfo` is kept and still counts as one
    page. The envelope (version, requestId, timestamp, unknown top-level fields) is the first
    part's; images keep their unknown fields. The parts are not modified: only what changes is
    copied (an image and its `convertedImageInfo`), its fields are shared, since a document of
    1,000 pages would otherwise be held twice."""
    if not parts:
        raise ValueError("no parts to merge")
    images: list[OcrImage] = []
    for image in (image for part in parts for image in part.images):
        info = image.converted_image_info
        if info is not None:
            info = info.model_copy(update={"page_index": len(images)})
        images.append(image.model_copy(update={"converted_image_info": info}))
    return parts[0].model_copy(update={"images": images})


# -- JSON ---------------------------------------------------------------------------------------


def render_json(response: OcrResponse) -> bytes:
    """The response as the service would send it: UTF-8 JSON in its field names, non-ASCII text
    as is, compact (no indentation: results are read by programs and can be large). Serialised by
    pydantic-core in one step, byte for byte what `json.dumps(response.to_wire(), ensure_ascii=False,
    separators=(",", ":"))` gives, in a third of the time."""
    return response.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")


# -- Excel --------------------------------------------------------------------------------------


def render_xlsx(response: OcrResponse, *, kind: DomainKind) -> bytes:
    """An Excel workbook of the response, laid out as the module docstring describes."""
    buffer = BytesIO()
    xlsxwriter = importlib.import_module("xlsxwriter")  # for xls batches only: loaded when first used
    workbook = xlsxwriter.Workbook(
        buffer,
        # Strings are OCR output: never let XlsxWriter turn "=..." into a formula or "http..." into a link.
        {"in_memory": True, "strings_to_formulas": False, "strings_to_urls": False},
    )
    workbook.set_properties({"created": WORKBOOK_DATE})
    styles = _Styles(workbook)
    if kind == "general":
        _write_list(workbook, styles, "Text", TEXT_HEADER, text_line_rows(response.images), wrap_column=2)
    else:
        _write_list(workbook, styles, "Fields", FIELDS_HEADER, _field_rows(response.images), wrap_column=3)
    pages = _write_list(workbook, styles, "Pages", PAGES_HEADER, _page_rows(response.images), wrap_column=3)
    if not any(image.infer_result == SUCCESS for image in response.images):
        pages.activate()  # nothing was recognised: open on the sheet that says why
    for page, image in enumerate(response.images, start=1):
        for index, table in enumerate(image.tables or [], start=1):
            _write_table(workbook.add_worksheet(f"Table p{page}-{index}"), styles, table)
    workbook.close()
    return buffer.getvalue()


class _Styles:
    """The few cell formats every sheet shares (XlsxWriter formats belong to one workbook)."""

    def __init__(self, workbook: Any) -> None:
        self.header = workbook.add_format({"bold": True, "bottom": 1})
        self.confidence = workbook.add_format({"num_format": "0.0000"})
        self.wrapped = workbook.add_format({"text_wrap": True, "valign": "top"})


def _write_list(
    workbook: Any,
    styles: _Styles,
    name: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    wrap_column: int,
) -> Any:
    """A sheet of records: a frozen header row with an autofilter, then one row per record."""
    sheet = workbook.add_worksheet(name)
    for column, title in enumerate(header):
        sheet.write_string(0, column, title, styles.header)
        width = _WIDTHS.get(title, _DEFAULT_WIDTH)
        sheet.set_column(column, column, width, styles.wrapped if column == wrap_column else None)
    last_row = 0
    for last_row, row in enumerate(rows, start=1):
        for column, value in enumerate(row):
            style = styles.confidence if header[column] == "Confidence" else None
            _write_cell(sheet, last_row, column, value, style)
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, last_row, len(header) - 1)
    return sheet


def _write_cell(sheet: Any, row: int, column: int, value: Cell, style: Any = None) -> None:
    if isinstance(value, str):
        if value:  # an empty string would make a cell that holds nothing but is not blank
            sheet.write_string(row, column, value, style)
    elif value is not None and math.isfinite(value):  # Excel has no NaN or infinity
        sheet.write_number(row, column, value, style)


def text_line_rows(images: list[OcrImage]) -> Iterable[tuple[Cell, ...]]:
    for page, image in enumerate(images, start=1):
        for line_number, words in enumerate(word_lines(image.fields or []), start=1):
            text = " ".join(word.infer_text for word in words if word.infer_text)
            confidences = [word.infer_confidence for word in words if word.infer_confidence is not None]
            box = union_box(word.bounding_poly for word in words)
            yield (page, line_number, text, min(confidences, default=None), *box_cells(box))


def word_lines(fields: list[OcrField]) -> Iterable[list[OcrField]]:
    """The words grouped into lines: a line ends at a word with `lineBreak` true or at the end."""
    line: list[OcrField] = []
    for field in fields:
        line.append(field)
        if field.line_break:
            yield line
            line = []
    if line:
        yield line


def _field_rows(images: list[OcrImage]) -> Iterable[tuple[Cell, ...]]:
    for page, image in enumerate(images, start=1):
        template = _template_label(image)
        if image.title is not None:
            title = image.title
            box = field_box(title)
            yield (page, template, TITLE_FIELD, title.infer_text, title.infer_confidence, *box_cells(box))
        for field in image.fields or []:
            box = field_box(field)
            name = field.name or ""
            yield (page, template, name, field.infer_text, field.infer_confidence, *box_cells(box))


def _template_label(image: OcrImage) -> str | None:
    matched = image.matched_template
    if matched is None:
        return None
    return f"{matched.name} ({matched.id})" if matched.name else str(matched.id)


def _page_rows(images: list[OcrImage]) -> Iterable[tuple[Cell, ...]]:
    for page, image in enumerate(images, start=1):
        info = image.converted_image_info
        width, height = (info.width, info.height) if info is not None else (None, None)
        yield (page, image.name, image.infer_result, image.message, width, height)


def union_box(polys: Iterable[BoundingPoly | None]) -> Box | None:
    """The smallest upright box holding every vertex of the polygons; None when there are none."""
    xs: list[float] = []
    ys: list[float] = []
    for poly in polys:
        if poly is not None:
            xs += [vertex.x for vertex in poly.vertices]
            ys += [vertex.y for vertex in poly.vertices]
    if not xs:
        return None
    return min(xs), min(ys), max(xs), max(ys)


def field_box(field: OcrField | Title) -> Box | None:
    """A field's box: its polygon's, else the union of its sub-fields' (Template fields may have only
    those)."""
    return union_box([field.bounding_poly]) or union_box(sub.bounding_poly for sub in field.sub_fields or [])


def box_cells(box: Box | None) -> tuple[Cell, Cell, Cell, Cell]:
    return box if box is not None else (None, None, None, None)


@dataclass
class _Placement:
    """Where one table cell lands on the sheet: its range (inclusive) and its text."""

    row: int
    column: int
    last_row: int
    last_column: int
    text: str


def _write_table(sheet: Any, styles: _Styles, table: Table) -> None:
    """The table's cells at their grid positions from A1, merged where they span. A cell whose
    span would overlap an earlier cell (malformed input, which Excel refuses) is not merged; one
    whose very position is taken adds its text to the cell that holds it, so no text is lost."""
    placements: list[_Placement] = []
    owner: dict[tuple[int, int], _Placement] = {}
    last_column = 0
    for cell in sorted(table.cells, key=lambda cell: (cell.row_index, cell.column_index)):
        row, column = max(0, cell.row_index), max(0, cell.column_index)
        text = "\n".join(
            " ".join(word.infer_text for word in line.cell_words if word.infer_text)
            for line in cell.cell_text_lines
        )
        spanned = _Placement(
            row, column, row + max(1, cell.row_span) - 1, column + max(1, cell.column_span) - 1, text
        )
        area = [
            (r, c) for r in range(row, spanned.last_row + 1) for c in range(column, spanned.last_column + 1)
        ]
        if any(position in owner for position in area):
            if (row, column) in owner:
                holder = owner[(row, column)]
                holder.text = "\n".join(part for part in (holder.text, text) if part)
                continue
            spanned.last_row, spanned.last_column = row, column
            area = [(row, column)]
        placements.append(spanned)
        owner.update(dict.fromkeys(area, spanned))
        last_column = max(last_column, spanned.last_column)
    sheet.set_column(0, last_column, _TABLE_COLUMN_WIDTH)
    for placement in placements:
        if (placement.last_row, placement.last_column) != (placement.row, placement.column):
            # merge_range writes its data with write(), which could read text as a formula; the
            # text goes in afterwards with write_string.
            sheet.merge_range(
                placement.row, placement.column, placement.last_row, placement.last_column, "", styles.wrapped
            )
        if placement.text:
            sheet.write_string(placement.row, placement.column, placement.text, styles.wrapped)
