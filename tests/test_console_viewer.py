"""The console's result viewer: the page views built from stored answers (boxes, template names,
table grids, malformed parts skipped), the page images browsers are sent, and the viewer macro."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jinja2
import pytest
from fixtures.result_files import DATA
from fixtures.samples import jpeg, pdf, png, tiff
from PIL import Image

from ocrbatch.console import viewer
from ocrbatch.console.viewer import (
    ImageUnavailable,
    PageNotFound,
    PageView,
    TableCell,
    page_image,
    page_view,
)

TEMPLATES = Path(viewer.__file__).parent / "templates"


def example(name: str) -> dict[str, Any]:
    """One of the documented example answers, as the raw JSON the worker stores."""
    answer: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return answer


def square(left: float, top: float, side: float) -> dict[str, Any]:
    """A `boundingPoly` for a square."""
    corners = [(left, top), (left + side, top), (left + side, top + side), (left, top + side)]
    return {"vertices": [{"x": x, "y": y} for x, y in corners]}


def cell(row: int, column: int, lines: list[list[str]], **spans: int) -> dict[str, Any]:
    """A General table cell whose text lines hold the given words."""
    text_lines = [{"cellWords": [{"inferText": word} for word in words]} for words in lines]
    return {"rowIndex": row, "columnIndex": column, **spans, "cellTextLines": text_lines}


def one_page(**image: Any) -> dict[str, Any]:
    """An answer with a single image made of `image`'s parts."""
    return {"version": "V2", "images": [image]}


# -- page views -------------------------------------------------------------------------------


def test_general_answer_gives_a_box_per_field_in_image_pixels() -> None:
    """Each General field becomes a box with its text, confidence, line break and SVG points; the
    page's coordinate space is the answer's `convertedImageInfo`."""
    view = page_view(example("general-ocr-response.json"))

    assert (view.page_index, view.page_count, view.field_count, view.drawn_count) == (0, 1, 3, 3)
    first = view.boxes[0]
    assert (first.index, first.text, first.name, first.line_break) == (0, "영수증", None, True)
    assert first.confidence == pytest.approx(0.9991)
    assert first.points == "120,88 236,88 236,121 120,121"
    assert [box.index for box in view.boxes] == [0, 1, 2]
    assert (view.width, view.height) == (1190, 1682)
    assert (view.template_name, view.template_id, view.title) == (None, None, None)


def test_template_answer_names_its_template_title_and_fields() -> None:
    """A Template answer gives the matched template, the recognised title and each field's name."""
    view = page_view(example("template-ocr-response.json"))

    assert view.template_name == "Business registration certificate"
    assert view.template_id == 31677
    assert view.title == "Business registration certificate"
    assert view.boxes[0].name == "Registration number"
    assert view.boxes[0].text == "***-**-*****"
    assert view.boxes[1].points == "317,369 511,369 511,402 317,402"  # its own polygon, not its subFields'


def test_field_without_polygon_takes_the_rectangle_around_its_sub_fields() -> None:
    """A template field with no polygon of its own is drawn as the rectangle enclosing its subFields."""
    sub_fields = [{"boundingPoly": square(10, 20, 5)}, {"boundingPoly": square(30, 15, 10)}]
    field = {"name": "Total", "inferText": "1 2", "subFields": sub_fields}

    (box,) = page_view(one_page(fields=[field])).boxes

    assert box.points == "10,15 40,15 40,25 10,25"


def test_coordinates_are_written_with_at_most_one_decimal() -> None:
    """Points keep one decimal at most, drop a trailing `.0`, and never write `-0`."""
    vertices = [{"x": 10.04, "y": 10.06}, {"x": -0.01, "y": 7}, {"x": 3.5, "y": 0}]
    field = {"boundingPoly": {"vertices": vertices}}

    (box,) = page_view(one_page(fields=[field])).boxes

    assert box.points == "10,10.1 0,7 3.5,0"


def test_table_spans_make_an_html_ready_grid() -> None:
    """Each grid row lists the cells starting in it, by column, with their spans; a row covered only
    by a span above stays as an empty row, and a cell's lines are joined by newlines."""
    table = {
        "cells": [
            cell(1, 1, [["d"]]),
            cell(0, 0, [["a", "b"], [], ["c"]], columnSpan=2),
            cell(1, 0, [["e"]], rowSpan=2, columnSpan=1),
        ]
    }

    (grid,) = page_view(one_page(tables=[table])).tables

    assert grid.rows == [
        [TableCell("a b\nc", row_span=1, column_span=2)],
        [TableCell("e", row_span=2, column_span=1), TableCell("d", row_span=1, column_span=1)],
        [],
    ]
    assert grid.rows[0][0].lines == ["a b", "c"]


def test_example_table_grid() -> None:
    """The example General answer's table: a two-column header, an empty cell, a two-row cell."""
    (grid,) = page_view(example("general-ocr-response.json")).tables

    assert grid.rows == [
        [TableCell("품목", 1, 2), TableCell("", 1, 1)],
        [TableCell("커피", 2, 1)],
        [],
    ]


def test_malformed_fields_and_cells_are_skipped() -> None:
    """Fields that are not objects are left out; fields with unusable polygons are listed without
    points; cells without valid indexes or spans, and tables without valid cells, are dropped."""
    fields: list[Any] = [
        None,
        "text",
        {"inferText": "no polygon"},
        {"inferText": "two vertices", "boundingPoly": {"vertices": [{"x": 1, "y": 1}, {"x": 2, "y": 2}]}},
        {"inferText": "string x", "boundingPoly": {"vertices": [{"x": "1", "y": 2}] * 4}},
        {"inferText": "infinite", "boundingPoly": {"vertices": [{"x": float("inf"), "y": 2}] * 4}},
        {"inferText": "huge", "boundingPoly": {"vertices": [{"x": 10**400, "y": 2}] * 4}},
        {"inferText": 5, "inferConfidence": True, "name": 3, "lineBreak": "yes", "boundingPoly": []},
        {"inferText": "kept", "inferConfidence": 0.5, "boundingPoly": square(0, 0, 1)},
    ]
    cells: list[Any] = [
        None,
        cell(-1, 0, [["negative"]]),
        {"rowIndex": True, "columnIndex": 0},
        cell(0, 0, [["zero span"]], rowSpan=0),
        cell(0, 0, [["float span"]], columnSpan=1.5),  # type: ignore[arg-type]  # malformed on purpose
        cell(10**9, 0, [["far away"]]),
        cell(0, 0, [["kept"]]),
        cell(0, 0, [["second at the same place"]]),
        {"rowIndex": 0, "columnIndex": 1, "cellTextLines": [None, {"cellWords": [None, {"inferText": 1}]}]},
    ]
    tables: list[Any] = [None, {"cells": "none"}, {"cells": [None]}, {"cells": cells}]
    answer = one_page(fields=fields, tables=tables, convertedImageInfo={"width": "1190", "height": 10})

    view = page_view(answer)

    assert [box.text for box in view.boxes] == [
        "no polygon",
        "two vertices",
        "string x",
        "infinite",
        "huge",
        "",
        "kept",
    ]
    assert [box.points for box in view.boxes][:-1] == [""] * 6
    assert (view.field_count, view.drawn_count) == (7, 1)
    odd = view.boxes[5]
    assert (odd.name, odd.confidence, odd.line_break) == (None, None, False)
    assert [table.rows for table in view.tables] == [[[TableCell("kept", 1, 1), TableCell("", 1, 1)]]]
    assert (view.width, view.height) == (None, None)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({}, id="no-images"),
        pytest.param({"images": "none"}, id="images-not-a-list"),
        pytest.param({"images": []}, id="empty-images"),
    ],
)
def test_answer_without_images_has_one_empty_view(answer: Mapping[str, Any]) -> None:
    """An answer without images views as an empty page 0 of 0 pages, and has no page 1."""
    view = page_view(answer)

    assert (view.page_count, view.boxes, view.tables, view.width) == (0, [], [], None)
    with pytest.raises(PageNotFound, match="no page at index 1: the result has 0 page"):
        page_view(answer, 1)


def test_page_that_is_not_an_object_is_empty() -> None:
    """A page that is not an object views as a page without fields or tables."""
    view = page_view({"images": [None, {"fields": [{"inferText": "x"}]}]}, 0)

    assert (view.page_count, view.boxes, view.tables) == (2, [], [])


@pytest.mark.parametrize("page_index", [-1, 1, 7])
def test_page_out_of_range_is_not_found(page_index: int) -> None:
    """An index below 0 or past the last image raises PageNotFound naming the index and the count."""
    message = rf"no page at index {page_index}: the result has 1 page"
    with pytest.raises(PageNotFound, match=message) as caught:
        page_view(example("general-ocr-response.json"), page_index)

    assert (caught.value.page_index, caught.value.page_count) == (page_index, 1)


# -- page images ------------------------------------------------------------------------------


def decoded(data: bytes) -> tuple[str | None, tuple[int, int]]:
    """The format and size Pillow reads in bytes sent to the browser."""
    with Image.open(io.BytesIO(data)) as image:
        return image.format, image.size


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with almost no pixel data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "key", "content_type"),
    [
        pytest.param(png(640, 480), "scan.png", "image/png", id="png"),
        pytest.param(jpeg(640, 480), "photo.JPG", "image/jpeg", id="jpeg"),
        pytest.param(png(640, 480), "no-suffix", "image/png", id="png-without-suffix"),
    ],
)
def test_png_and_jpeg_are_sent_as_they_are(data: bytes, key: str, content_type: str) -> None:
    """PNG and JPEG files are sent unchanged, with their content type and their own size."""
    image = page_image(data, key)

    assert (image.data, image.content_type, image.width, image.height) == (data, content_type, 640, 480)


def test_jpeg_size_follows_its_exif_orientation() -> None:
    """A JPEG turned by its EXIF orientation reports the size it is displayed at."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    buffer = io.BytesIO()
    Image.new("RGB", (300, 100)).save(buffer, format="JPEG", exif=exif)

    image = page_image(buffer.getvalue(), "turned.jpg")

    assert (image.width, image.height) == (100, 300)


def test_tiff_frame_is_converted_to_png() -> None:
    """Page 1 of a multi-page TIFF is its second frame, sent as a PNG of that frame's size."""
    image = page_image(tiff([(100, 50), (300, 200), (40, 40)]), "scan.tiff", 1)

    assert (image.content_type, image.width, image.height) == ("image/png", 300, 200)
    assert decoded(image.data) == ("PNG", (300, 200))


def test_large_image_is_scaled_down_but_keeps_its_coordinate_space() -> None:
    """A converted image larger than `max_side_px` is sent smaller, with the original size reported,
    since the boxes are in the original's pixels."""
    image = page_image(tiff([(3000, 1500)]), "big.tif", max_side_px=1000)

    assert (image.width, image.height) == (3000, 1500)
    assert decoded(image.data) == ("PNG", (1000, 500))


@pytest.mark.parametrize("key", ["scan.pdf", "scan"])
def test_pdf_page_is_rendered_to_fit_max_side(key: str) -> None:
    """A PDF (known by its magic bytes or its suffix) has its page rendered to PNG with the longest
    side at `max_side_px`, and reports the rendered size."""
    image = page_image(pdf(2), key, 1, max_side_px=1000)

    assert image.content_type == "image/png"
    assert image.height == 1000
    assert image.width == pytest.approx(1000 * 595 / 842, abs=1)
    assert decoded(image.data) == ("PNG", (image.width, image.height))


@pytest.mark.parametrize(
    ("data", "key", "page_index"),
    [
        pytest.param(png(), "scan.png", 1, id="png-page-1"),
        pytest.param(tiff([(10, 10), (20, 20)]), "scan.tiff", 2, id="tiff-past-last-frame"),
        pytest.param(pdf(2), "scan.pdf", 2, id="pdf-past-last-page"),
        pytest.param(pdf(2), "scan.pdf", -1, id="negative"),
    ],
)
def test_page_out_of_range_is_unavailable(data: bytes, key: str, page_index: int) -> None:
    """A page the document does not have raises ImageUnavailable saying so."""
    with pytest.raises(ImageUnavailable, match="no page"):
        page_image(data, key, page_index)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        pytest.param(b"garbage", "scan.png", id="garbage-image"),
        pytest.param(b"", "scan.tiff", id="empty"),
        pytest.param(b"garbage", "scan.pdf", id="garbage-pdf-by-suffix"),
        pytest.param(b"%PDF-1.7 garbage", "scan", id="garbage-pdf-by-magic"),
        pytest.param(pdf(1, password="secret"), "locked.pdf", id="encrypted-pdf"),
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "art.eps", id="eps"),
    ],
)
def test_undecodable_data_is_unavailable(data: bytes, key: str) -> None:
    """Bytes that are no readable image or PDF (or a format never decoded, like EPS) raise
    ImageUnavailable."""
    with pytest.raises(ImageUnavailable, match="cannot be"):
        page_image(data, key)


@pytest.mark.parametrize("pillow_limit", [Image.MAX_IMAGE_PIXELS, None], ids=["pillow-guard", "own-guard"])
def test_image_over_the_pixel_budget_is_unavailable(
    pillow_limit: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image whose header claims more than `MAX_PAGE_PIXELS` is refused before its pixels are
    decoded, whether or not Pillow's own decompression-bomb guard is on."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)

    with pytest.raises(ImageUnavailable, match="too large"):
        page_image(png_header(12_000, 10_000), "bomb.png")


def test_max_side_below_one_is_a_programming_error() -> None:
    """`max_side_px` below 1 raises ValueError."""
    with pytest.raises(ValueError, match="max_side_px"):
        page_image(png(), "scan.png", max_side_px=0)


# -- the viewer macro -------------------------------------------------------------------------


class Elements(HTMLParser):
    """The start tags of an HTML fragment with their attributes, in order."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def render(view: PageView, width: int, height: int) -> str:
    """The macro rendered as the console renders it: autoescaped, undefined names are errors."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    page = environment.from_string(
        '{% from "_viewer.html" import result_viewer %}{{ result_viewer(view, "/img", w, h, t) }}'
    )
    return page.render(view=view, w=width, h=height, t=lambda key, **values: key)


def test_viewer_draws_each_box_with_points_and_lists_every_field() -> None:
    """The macro draws one polygon per box with points (as many as `data-box-count`), lists every
    field (as many as `data-field-count`), escapes the text, and emits the table spans."""
    answer = example("general-ocr-response.json")
    image = answer["images"][0]
    image["fields"].append({"inferText": "<script>alert(1)</script>", "boundingPoly": square(1, 2, 3)})
    image["fields"].append({"inferText": "undrawn", "inferConfidence": 0.5})
    image["tables"][0]["cells"].append(cell(1, 1, [["a"], ["b<i>"]]))
    view = page_view(answer)

    markup = render(view, 1190, 1682)
    elements = Elements(markup)

    (section,) = elements.all("section")
    assert section["id"] == "result-viewer"
    assert section["data-box-count"] == str(view.drawn_count) == "4"
    assert section["data-field-count"] == str(view.field_count) == "5"
    polygons = elements.all("polygon")
    assert [polygon["points"] for polygon in polygons] == [box.points for box in view.boxes if box.points]
    assert [polygon["data-index"] for polygon in polygons] == ["0", "1", "2", "3"]
    fields = elements.all("li")
    assert [field["id"] for field in fields] == ["field-0", "field-1", "field-2", "field-3", "field-4"]
    assert all(field["tabindex"] == "0" for field in fields)
    (svg,) = elements.all("svg")
    assert svg["viewbox"] == "0 0 1190 1682"
    assert elements.all("image") == [{"href": "/img", "x": "0", "y": "0", "width": "1190", "height": "1682"}]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert elements.all("script") == []
    assert "a<br>b&lt;i&gt;" in markup
    assert elements.all("i") == []
    cells = elements.all("td")
    assert [(td.get("rowspan"), td.get("colspan")) for td in cells] == [
        (None, "2"),
        (None, None),
        ("2", None),
        (None, None),
    ]
    assert "viewer.confidence 50.0%" in markup
    assert not [attrs for _, attrs in elements.tags if "style" in attrs]


def test_viewer_names_template_fields() -> None:
    """A Template answer's field names appear in the list, and the template's name in the caption."""
    view = page_view(example("template-ocr-response.json"))

    markup = render(view, 1190, 1682)

    assert '<span class="field-name" title="viewer.field_name">Registration number</span>' in markup
    assert '<span class="viewer-template">Business registration certificate</span>' in markup


def test_viewer_of_an_empty_page_says_nothing_was_recognised() -> None:
    """A page without fields shows the no-fields message, no list, no polygon and no table."""
    markup = render(page_view({}), 100, 100)
    elements = Elements(markup)

    assert "viewer.no_fields" in markup
    assert elements.all("ol") == elements.all("polygon") == elements.all("table") == []
