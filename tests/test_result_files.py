"""Result files: PDFs split for the API and their answers merged back, JSON and Excel renderings."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Literal

import pytest
from openpyxl import load_workbook
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet
from pypdf import PdfReader, PdfWriter
from samples import pdf, png

from ocrbatch.clova.contract import (
    BoundingPoly,
    CellTextLine,
    CellWord,
    ConvertedImageInfo,
    OcrField,
    OcrImage,
    OcrResponse,
    Table,
    TableCell,
    Vertex,
)
from ocrbatch.clova.documents import UnreadableDocument
from ocrbatch.emulator.results import default_template, general_images, template_images
from ocrbatch.worker.result_files import (
    CONTENT_TYPES,
    RESULT_SUFFIX,
    merge_responses,
    render_json,
    render_xlsx,
    split_pdf,
)

DATA = Path(__file__).parent / "data"


def _example(name: str) -> OcrResponse:
    return OcrResponse.model_validate_json((DATA / name).read_bytes())


def _pdf_of_widths(widths_pt: list[int]) -> bytes:
    """A PDF whose pages tell themselves apart by their widths."""
    writer = PdfWriter()
    for width in widths_pt:
        writer.add_blank_page(width=width, height=800)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _widths(data: bytes) -> list[int]:
    return [round(float(page.mediabox.width)) for page in PdfReader(io.BytesIO(data)).pages]


def _workbook(data: bytes) -> Workbook:
    return load_workbook(io.BytesIO(data))


def _rows(sheet: Worksheet) -> list[tuple[object, ...]]:
    return list(sheet.iter_rows(values_only=True))


def _general_parts(data: bytes) -> list[OcrResponse]:
    """The emulator's General answers for each part of a split PDF, as the worker would get them."""
    return [
        OcrResponse(
            version="V2",
            request_id=f"request-{number}",
            timestamp=1_700_000_000_000 + number,
            images=general_images(
                name="scan.pdf", data=part, image_format="pdf", lang="ko", table_detection=True
            ),
        )
        for number, part in enumerate(split_pdf(data))
    ]


def _page_indexes(images: list[OcrImage]) -> list[int | None]:
    return [image.converted_image_info.page_index if image.converted_image_info else None for image in images]


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


# -- names ---------------------------------------------------------------------------------------


def test_result_suffixes_and_content_types_match() -> None:
    """Each file format has a suffix, and each suffix the content type its object is stored with."""
    assert RESULT_SUFFIX == {"json": ".json", "xls": ".xlsx"}
    assert CONTENT_TYPES[RESULT_SUFFIX["json"]] == "application/json"
    assert CONTENT_TYPES[RESULT_SUFFIX["xls"]] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )


# -- split ---------------------------------------------------------------------------------------


def test_a_23_page_pdf_is_split_into_10_10_3_pages_in_order() -> None:
    """Each part is a readable PDF of at most 10 pages, and the parts hold the pages in their order."""
    widths = [300 + 10 * page for page in range(23)]
    parts = split_pdf(_pdf_of_widths(widths))
    assert [len(PdfReader(io.BytesIO(part)).pages) for part in parts] == [10, 10, 3]
    assert [width for part in parts for width in _widths(part)] == widths


def test_the_part_size_can_be_chosen() -> None:
    """`pages_per_part` sets the cut: 5 pages by 2 give 2, 2 and 1 pages, still in order."""
    widths = [400, 410, 420, 430, 440]
    parts = split_pdf(_pdf_of_widths(widths), pages_per_part=2)
    assert [_widths(part) for part in parts] == [[400, 410], [420, 430], [440]]


@pytest.mark.parametrize("pages", [1, 10])
def test_a_pdf_within_the_limit_is_returned_as_is(pages: int) -> None:
    """A PDF of at most 10 pages is one part: the very bytes given, not a re-written copy."""
    data = pdf(pages)
    parts = split_pdf(data)
    assert parts == [data]
    assert parts[0] is data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(pdf(3, password="pw"), "encrypted PDF", id="encrypted-within-limit"),
        pytest.param(pdf(23, password="pw"), "encrypted PDF", id="encrypted-over-limit"),
        pytest.param(pdf(23)[:-200], "not a valid PDF document", id="truncated"),
        pytest.param(png(), "not a PDF document", id="png-bytes"),
        pytest.param(b"", "not a PDF document", id="zero-bytes"),
        pytest.param(pdf(0), "PDF has no pages", id="no-pages"),
    ],
)
def test_unreadable_pdfs_are_refused(data: bytes, reason: str) -> None:
    """Encrypted, corrupt or empty PDFs raise UnreadableDocument with a reason, before any split."""
    with pytest.raises(UnreadableDocument, match=reason):
        split_pdf(data)


# -- merge ---------------------------------------------------------------------------------------


def test_merged_parts_number_their_pages_continuously() -> None:
    """Three parts of a 23-page PDF merge into 23 images in part order with pageIndex 0..22, the
    first part's envelope and every unknown field kept; the parts themselves are untouched."""
    parts = _general_parts(pdf(23))
    parts = [
        OcrResponse.model_validate(
            part.to_wire()
            | {"partExtra": number}
            | {
                "images": [
                    image.to_wire() | {"vendorNote": f"{number}/{index}"}
                    for index, image in enumerate(part.images)
                ]
            }
        )
        for number, part in enumerate(parts)
    ]
    before = [part.to_wire() for part in parts]
    assert [_page_indexes(part.images) for part in parts] == [
        list(range(10)),
        list(range(10)),
        list(range(3)),
    ]

    merged = merge_responses(parts)

    assert _page_indexes(merged.images) == list(range(23))
    assert [image.uid for image in merged.images] == [image.uid for part in parts for image in part.images]
    wire = merged.to_wire()
    assert [image["vendorNote"] for image in wire["images"]] == [
        f"{number}/{index}" for number, size in enumerate([10, 10, 3]) for index in range(size)
    ]
    assert (wire["version"], wire["requestId"], wire["timestamp"], wire["partExtra"]) == (
        "V2",
        "request-0",
        1_700_000_000_000,
        0,
    )
    assert [part.to_wire() for part in parts] == before


def test_images_without_page_info_still_count_as_a_page() -> None:
    """A page that failed (no convertedImageInfo) stays in place and the next page's index skips it."""
    info = ConvertedImageInfo(width=100, height=100, page_index=0)
    success = OcrImage(infer_result="SUCCESS", converted_image_info=info)
    failure = OcrImage(infer_result="FAILURE", message="broken page")
    merged = merge_responses(
        [OcrResponse(images=[success]), OcrResponse(images=[failure]), OcrResponse(images=[success])]
    )
    assert [image.infer_result for image in merged.images] == ["SUCCESS", "FAILURE", "SUCCESS"]
    assert _page_indexes(merged.images) == [0, None, 2]


def test_merging_nothing_is_an_error() -> None:
    """An empty list of parts is a caller's bug, not an empty document."""
    with pytest.raises(ValueError, match="no parts"):
        merge_responses([])


# -- JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(_example("general-ocr-response.json"), id="general"),
        pytest.param(_example("template-ocr-response.json"), id="template"),
        pytest.param(_example("template-ocr-failure.json"), id="failure"),
        pytest.param(merge_responses(_general_parts(pdf(12))), id="merged"),
    ],
)
def test_json_round_trips_to_the_same_response(response: OcrResponse) -> None:
    """The JSON file parses back to the same wire form: nothing is lost or renamed."""
    assert OcrResponse.model_validate_json(render_json(response)).to_wire() == response.to_wire()


def test_json_is_compact_utf8_with_text_as_is() -> None:
    """Korean text is written as UTF-8, not \\u escapes, and without indentation."""
    data = render_json(_example("general-ocr-response.json"))
    assert "합계".encode() in data
    assert b"\\u" not in data
    assert b"\n" not in data


# -- Excel: General ------------------------------------------------------------------------------


def test_general_workbook_lists_lines_and_tables() -> None:
    """The General example gives a Text sheet of its two lines (words joined, lowest confidence,
    union box) with a frozen, filtered header, and a table sheet merged exactly where cells span."""
    workbook = _workbook(render_xlsx(_example("general-ocr-response.json"), kind="general"))
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
    merged = merge_responses(_general_parts(data))
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
    response = _example("template-ocr-response.json")
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
    workbook = _workbook(render_xlsx(_example("template-ocr-failure.json"), kind=kind))
    assert workbook.active is not None
    assert workbook.active.title == "Pages"
    assert _rows(workbook["Pages"]) == [
        ("Page", "Name", "Result", "Message", "Width", "Height"),
        (1, "hello", "FAILURE", "NOT_FOUND: not found matched template", None, None),
    ]


def test_pages_sheet_tells_failed_pages_from_recognised_ones() -> None:
    """Every image has a Pages row with its result, message and size, recognised or not."""
    merged = merge_responses([_example("general-ocr-response.json"), _example("template-ocr-failure.json")])
    rows = _rows(_workbook(render_xlsx(merged, kind="general"))["Pages"])[1:]
    assert [(row[0], row[2], row[3], row[4], row[5]) for row in rows] == [
        (1, "SUCCESS", "SUCCESS", 1190, 1682),
        (2, "FAILURE", "NOT_FOUND: not found matched template", None, None),
    ]


def test_equal_responses_give_equal_bytes() -> None:
    """Rendering is deterministic: the document date is fixed, not the time of rendering."""
    response = merge_responses(_general_parts(pdf(12)))
    first = render_xlsx(response, kind="general")
    assert render_xlsx(response.model_copy(deep=True), kind="general") == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        core = archive.read("docProps/core.xml").decode()
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert '<dcterms:created xsi:type="dcterms:W3CDTF">1980-01-01T00:00:00Z</dcterms:created>' in core
    assert '<dcterms:modified xsi:type="dcterms:W3CDTF">1980-01-01T00:00:00Z</dcterms:modified>' in core
