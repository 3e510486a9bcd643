"""Result files as Excel workbooks: General lines and tables, Template fields, the Pages sheet of
failed pages, and bytes that depend on the answer only."""

from __future__ import annotations

import io
import zipfile
from typing import Literal

import pytest
from fixtures.result_files import example_response, general_parts
from fixtures.samples import pdf
from openpyxl import load_workbook
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet

from ocrbatch.clova.contract import (
    BoundingPoly,
    CellTextLine,
    CellWord,
    OcrField,
    OcrImage,
    OcrResponse,
    Table,
    TableCell,
    Vertex,
)
from ocrbatch.emulator.results import default_template, template_images
from ocrbatch.worker.result_files import merge_responses, render_xlsx


def _workbook(data: bytes) -> Workbook:
    return load_workbook(io.BytesIO(data))


def _rows(sheet: Worksheet) -> list[tuple[object, ...]]:
    return list(sheet.iter_rows(values_only=True))


def _box(left: float, top: float, right: float, bottom: float) -> BoundingPoly:
    corners = [(left, top), (right, top), (right, bottom), (left, bottom)]
    return BoundingPoly(vertices=[Vertex(x=x, y=y) for x, y in corners])


def _word(text: str, confidence: float, box: BoundingPoly, *, line_break: bool | None) -> OcrField:
    return OcrField(infer_text=text, infer_confidence=confidence, bounding_poly=box, line_break=line_break)


def _cell(row: int, column: int, *lines: str, row_span: int = 1, column_span: int = 1) -> TableCell:
    return TableCell(
        row_index=row,
        column_index=column,
        row_span=row_span,
        column_span=column_span,
        cell_text_lines=[
            CellTextLine(cell_words=[CellWord(infer_text=word) for word in line.split()]) for line in lines
        ],
    )


# -- Excel: General ------------------------------------------------------------------------------


def test_general_workbook_lists_lines_and_tables() -> None:
    """The General example gives a Text sheet of its two lines (words joined, lowest confidence,
    union box) with a frozen, filtered header, and a table sheet merged exactly where cells span."""
    workbook = _workbook(render_xlsx(example_response("general-ocr-response.json"), kind="general"))
    assert workbook.sheetnames == ["Text", "Pages", "Table p1-1"]
    assert workbook.active is not None
    assert workbook.active.title == "Text"

    text = workbook["Text"]
    assert _rows(text) == [
        ("Page", "Line", "Text", "Confidence", "Left", "Top", "Right", "Bottom"),
        (1, 1, "영수증", 0.9991, 120, 88, 236, 121),
        (1, 2, "합계 35,000원", 0.9954, 120, 140, 318, 170),
    ]
    assert text.freeze_panes == "A2"
    assert text.auto_filter.ref == "A1:H3"

    table = workbook["Table p1-1"]
    assert table["A1"].value == "품목"
    assert table["A2"].value == "커피"
    assert table["C1"].value is None  # a present cell without text stays empty
    assert {str(merged) for merged in table.merged_cells.ranges} == {"A1:B1", "A2:A3"}


def test_lines_end_at_a_line_break_or_at_the_end_of_the_page() -> None:
    """Words without a line break run on to the next word of the same page, never into the next
    page; lines are numbered per page, and words without a box or confidence leave those cells out."""
    box = _box(10, 10, 20, 20)
    page_one = [
        _word("a", 0.9, box, line_break=False),
        _word("b", 0.8, _box(30, 5, 40, 25), line_break=None),
        _word("c", 0.7, box, line_break=True),
        _word("d", 0.6, box, line_break=False),
    ]
    page_two = [OcrField(infer_text="e"), OcrField(infer_text="f", line_break=True)]
    response = OcrResponse(
        images=[
            OcrImage(infer_result="SUCCESS", fields=page_one),
            OcrImage(infer_result="SUCCESS", fields=page_two),
        ]
    )
    rows = _rows(_workbook(render_xlsx(response, kind="general"))["Text"])
    assert rows[1:] == [
        (1, 1, "a b c", 0.7, 10, 5, 40, 25),
        (1, 2, "d", 0.6, 10, 10, 20, 20),
        (2, 1, "e f", None, None, None, None, None),
    ]


def test_a_merged_emulator_answer_gives_every_page_and_table() -> None:
    """A 23-page PDF recognised in three parts gives lines for all 23 pages, the first holding the
    emulator's ID word, and one table sheet per page with the emulator's spans merged."""
    data = pdf(23)
    merged = merge_responses(general_parts(data))
    workbook = _workbook(render_xlsx(merged, kind="general"))
    assert workbook.sheetnames == ["Text", "Pages", *(f"Table p{page}-1" for page in range(1, 24))]
    lines = _rows(workbook["Text"])[1:]
    assert {row[0] for row in lines} == set(range(1, 24))
    first_lines = [row[2] for row in lines if row[1] == 1]
    assert len(first_lines) == 23
    assert all(isinstance(text, str) and text.startswith("ID-") for text in first_lines)
    for page in (1, 23):
        merged_ranges = {str(cells) for cells in workbook[f"Table p{page}-1"].merged_cells.ranges}
        assert merged_ranges == {"A1:B1", "A2:A3"}


def test_table_cells_keep_their_lines_and_survive_overlapping_spans() -> None:
    """A cell's lines are joined by newlines; a cell placed on a taken position adds its text to
    the cell there, and one whose span overlaps an earlier cell is written unmerged at its own
    position (Excel refuses overlapping merges), so malformed tables lose no text."""
    table = Table(
        cells=[
            _cell(0, 0, "first line", "second line", row_span=2),
            _cell(1, 0, "on the same spot"),
            _cell(0, 1, "wide", column_span=2),
            _cell(0, 2, "under wide"),
            _cell(0, 3, "tall", row_span=3),
            _cell(2, 2, "reaches into tall", column_span=2),
        ]
    )
    response = OcrResponse(images=[OcrImage(infer_result="SUCCESS", fields=[], tables=[table])])
    sheet = _workbook(render_xlsx(response, kind="general"))["Table p1-1"]
    assert {str(merged) for merged in sheet.merged_cells.ranges} == {"A1:A2", "B1:C1", "D1:D3"}
    assert sheet["A1"].value == "first line\nsecond line\non the same spot"
    assert sheet["B1"].value == "wide\nunder wide"
    assert sheet["D1"].value == "tall"
    assert sheet["C3"].value == "reaches into tall"
    assert sheet["B2"].value is None


def test_table_sheet_names_stay_unique_and_short_with_many_tables() -> None:
    """Twelve pages of eleven tables give 132 distinct table sheets named by page and index,
    each within Excel's 31 characters."""
    tables = [Table(cells=[_cell(0, 0, f"t{index}")]) for index in range(11)]
    response = OcrResponse(images=[OcrImage(infer_result="SUCCESS", tables=tables) for _ in range(12)])
    names = _workbook(render_xlsx(response, kind="general")).sheetnames[2:]
    expected = [f"Table p{page}-{index}" for page in range(1, 13) for index in range(1, 12)]
    assert names == expected
    assert len({name.lower() for name in names}) == 132
    assert max(len(name) for name in names) <= 31


def test_text_that_looks_like_a_formula_or_link_stays_text() -> None:
    """OCR output such as "=SUM(A1)" or a URL is stored as a plain string, never evaluated."""
    words = [
        _word("=SUM(A1)", 0.9, _box(0, 0, 1, 1), line_break=True),
        _word("https://example.com", 0.9, _box(0, 0, 1, 1), line_break=True),
    ]
    response = OcrResponse(images=[OcrImage(infer_result="SUCCESS", fields=words)])
    sheet = _workbook(render_xlsx(response, kind="general"))["Text"]
    assert [(cell.value, cell.data_type, cell.hyperlink) for cell in sheet["C"][1:]] == [
        ("=SUM(A1)", "s", None),
        ("https://example.com", "s", None),
    ]


# -- Excel: Template and failures ----------------------------------------------------------------


def test_template_workbook_lists_each_field_with_its_value() -> None:
    """The Template example gives its title first, then every field name with its value, under
    the matched template's name and id."""
    response = example_response("template-ocr-response.json")
    workbook = _workbook(render_xlsx(response, kind="template"))
    assert workbook.sheetnames == ["Fields", "Pages"]
    rows = _rows(workbook["Fields"])
    assert rows[0] == ("Page", "Template", "Field", "Value", "Confidence", "Left", "Top", "Right", "Bottom")
    assert rows[1][:5] == (
        1,
        "Business registration certificate (31677)",
        "(title)",
        "Business registration certificate",
        0.9998,
    )
    assert {row[2]: row[3] or "" for row in rows[2:]} == {
        "Registration number": "***-**-*****",
        "Corporate name_organization name": "***** Inc.",
        "Business start date": "June 01, 1975",
        "Business place location": "Gyeonggi-do ******",
        "CEO": "",
    }
    assert rows[2][5:] == (551, 310, 775, 350)


def test_template_workbook_from_the_emulator_has_every_field_of_every_page() -> None:
    """Each page of a 3-page Template answer lists the template's five fields after its title."""
    images = template_images(
        name="forms.pdf", data=pdf(3), image_format="pdf", candidates=[default_template(101)]
    )
    rows = _rows(_workbook(render_xlsx(OcrResponse(images=images), kind="template"))["Fields"])[1:]
    assert [(row[0], row[2]) for row in rows] == [
        (page, field)
        for page in (1, 2, 3)
        for field in (
            "(title)",
            "Registration number",
            "Company name",
            "Representative",
            "Business start date",
            "Address",
        )
    ]
    assert {row[1] for row in rows} == {"Template 101 (101)"}


@pytest.mark.parametrize("kind", ["general", "template"])
def test_a_workbook_without_any_recognised_page_opens_on_the_reason(
    kind: Literal["general", "template"],
) -> None:
    """A FAILURE-only answer still gives a workbook; it opens on the Pages sheet, which holds the
    result and the service's message."""
    workbook = _workbook(render_xlsx(example_response("template-ocr-failure.json"), kind=kind))
    assert workbook.active is not None
    assert workbook.active.title == "Pages"
    assert _rows(workbook["Pages"]) == [
        ("Page", "Name", "Result", "Message", "Width", "Height"),
        (1, "hello", "FAILURE", "NOT_FOUND: not found matched template", None, None),
    ]


def test_pages_sheet_tells_failed_pages_from_recognised_ones() -> None:
    """Every image has a Pages row with its result, message and size, recognised or not."""
    merged = merge_responses(
        [example_response("general-ocr-response.json"), example_response("template-ocr-failure.json")]
    )
    rows = _rows(_workbook(render_xlsx(merged, kind="general"))["Pages"])[1:]
    assert [(row[0], row[2], row[3], row[4], row[5]) for row in rows] == [
        (1, "SUCCESS", "SUCCESS", 1190, 1682),
        (2, "FAILURE", "NOT_FOUND: not found matched template", None, None),
    ]


def test_equal_responses_give_equal_bytes() -> None:
    """Rendering is deterministic: the document date is fixed, not the time of rendering."""
    response = merge_responses(general_parts(pdf(12)))
    first = render_xlsx(response, kind="general")
    assert render_xlsx(response.model_copy(deep=True), kind="general") == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        core = archive.read("docProps/core.xml").decode()
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert '<dcterms:created xsi:type="dcterms:W3CDTF">1980-01-01T00:00:00Z</dcterms:created>' in core
    assert '<dcterms:modified xsi:type="dcterms:W3CDTF">1980-01-01T00:00:00Z</dcterms:modified>' in core
