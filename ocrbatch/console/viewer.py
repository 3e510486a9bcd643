"""What the console's result viewer shows of a stored answer: a page's recognised fields as boxes
over the page's image, its tables as grids, and that image in a form any browser displays.

The answer comes from an outside API, so nothing in it is trusted: a field or cell that is not an
object, or a cell without valid indexes and spans, is skipped, never raised on. A field whose
polygon is unusable (fewer than 3 vertices, or a vertex without numeric `x` and `y`) stays in the
list with `points=""` and is not drawn. Template fields are listed once each, with their own text
and polygon; their `subFields` only lend their enclosing rectangle to a field that has no polygon.

Coordinates: boxes are in the pixels of the image CLOVA read. For an image file that is the image
itself (EXIF orientation applied), so `page_image` reports that size even when it sends a smaller
copy. For a PDF it is CLOVA's converted image, whose size is `convertedImageInfo`
(`PageView.width/height`): the SVG `viewBox` takes that size when the answer gives it, else the size
`page_image` reports, and the browser scales the picture to the `viewBox`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from PIL import Image, ImageOps

from ocrbatch.clova.documents import IMAGE_ERRORS, UnreadableDocument, render_pdf_page

# The largest page decoded for display; bigger ones are refused before any pixel is decoded.
MAX_PAGE_PIXELS: Final = 100_000_000
# The most rows or columns a table grid gets: a wild index would otherwise allocate without bound.
MAX_TABLE_SIDE: Final = 1_000
_AS_IS: Final = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg"}
# The formats Pillow may try: raster formats only, none that runs an outside program (EPS). JPEG
# covers MPO, the multi-picture JPEG of some cameras.
_RASTER_FORMATS: Final = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")
# PDFium may not be called from two threads at once, even for different documents.
_ORIENTATION_TAG: Final = 0x0112
Vertices = list[tuple[float, float]]


@dataclass(frozen=True)
class Box:
    """One recognised field; `points` is an SVG polygon in image pixels, "" when it has none."""

    index: int
    text: str
    name: str | None
    confidence: float | None
    points: str
    line_break: bool


@dataclass(frozen=True)
class TableCell:
    """A cell placed in the row and column where it starts; `text` has one line per text line."""

    text: str
    row_span: int
    column_span: int

    @property
    def lines(self) -> list[str]:
        """The cell's text lines, for a template that puts `<br>` between escaped lines."""
        return self.text.split("\n")


@dataclass(frozen=True)
class Table:
    """An HTML-ready grid: each row lists the cells that start in it, by column."""

    rows: list[list[TableCell]]


@dataclass(frozen=True)
class PageView:
    """What the viewer shows of one page. `title` is a Template answer's recognised title text;
    `width`/`height` are `convertedImageInfo`'s when it gives both, else None."""

    page_index: int
    page_count: int
    boxes: list[Box]
    tables: list[Table]
    template_name: str | None
    template_id: int | None
    title: str | None
    width: int | None
    height: int | None

    @property
    def field_count(self) -> int:
        """Every field listed, drawn or not."""
        return len(self.boxes)

    @property
    def drawn_count(self) -> int:
        """The fields that have a polygon to draw."""
        return sum(1 for box in self.boxes if box.points)


@dataclass(frozen=True)
class PageImage:
    """A page's displayable bytes, and the size of the coordinate space its boxes use."""

    data: bytes
    content_type: str
    width: int
    height: int


class PageNotFound(Exception):
    """The answer has no page at the index asked for."""

    def __init__(self, page_index: int, page_count: int) -> None:
        super().__init__(f"no page at index {page_index}: the result has {page_count} page(s)")
        self.page_index = page_index
        self.page_count = page_count


class ImageUnavailable(Exception):
    """The page's image cannot be shown; the message says why."""


def page_view(response: Mapping[str, Any], page_index: int = 0) -> PageView:
    """The view of `images[page_index]` (one image per page). An answer without images has one
    empty view at index 0; any other index out of range raises `PageNotFound`."""
    images = _list(response.get("images")) if isinstance(response, Mapping) else []
    if not (0 <= page_index < len(images) or (page_index == 0 and not images)):
        raise PageNotFound(page_index, len(images))
    image = _mapping(images[page_index]) if images else {}
    template = _mapping(image.get("matchedTemplate"))
    info = _mapping(image.get("convertedImageInfo"))
    width, height = _positive_int(info.get("width")), _positive_int(info.get("height"))
    fields = [field for field in _list(image.get("fields")) if isinstance(field, Mapping)]
    tables = (_table(_mapping(table)) for table in _list(image.get("tables")))
    return PageView(
        page_index=page_index,
        page_count=len(images),
        boxes=[_box(index, field) for index, field in enumerate(fields)],
        tables=[table for table in tables if table is not None],
        template_name=_str(template.get("name")),
        template_id=_int(template.get("id")),
        title=_str(_mapping(image.get("title")).get("inferText")),
        width=width if height is not None else None,
        height=height if width is not None else None,
    )


def page_image(data: bytes, key: str, page_index: int = 0, *, max_side_px: int = 2000) -> PageImage:
    """Page `page_index` of the input document `data` (stored under `key`) as browsers show it:
    PNG and JPEG pages as they are; other images as PNG, and PDF pages rendered to PNG, both with
    the longest side at most `max_side_px`. Raises `ImageUnavailable` for a missing page, bytes
    that cannot be decoded, or a page over `MAX_PAGE_PIXELS`; `ValueError` if `max_side_px` < 1.
    CPU-bound and blocking: run it in a worker thread."""
    if max_side_px < 1:
        raise ValueError(f"max_side_px must be at least 1, not {max_side_px}")
    if page_index < 0:
        raise ImageUnavailable(f"no page at index {page_index}")
    if data.startswith(b"%PDF") or key.lower().endswith(".pdf"):
        return _pdf_page(data, page_index, max_side_px)
    try:
        with Image.open(io.BytesIO(data), formats=_RASTER_FORMATS) as image:
            _seek(image, page_index)
            _check_pixels(*image.size)
            content_type = _AS_IS.get(image.format or "")
            width, height = _upright_size(image)
            if content_type is not None and page_index == 0:
                return PageImage(data, content_type, width, height)
            upright = _displayable(ImageOps.exif_transpose(image))
            return PageImage(_png(upright, max_side_px), "image/png", width, height)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageUnavailable(f"page {page_index + 1} is too large to display: {exc}") from exc
    except IMAGE_ERRORS as exc:
        raise ImageUnavailable(f"page {page_index + 1} of {key} cannot be decoded") from exc


def _pdf_page(data: bytes, page_index: int, max_side_px: int) -> PageImage:
    def scale_of(width_pt: float, height_pt: float) -> float:
        scale = max_side_px / max(width_pt, height_pt)
        _check_pixels(round(width_pt * scale), round(height_pt * scale))
        return scale

    try:
        picture, _ = render_pdf_page(data, page_index, scale_of=scale_of)
    except UnreadableDocument as exc:
        raise ImageUnavailable(str(exc)) from exc
    return PageImage(_png(picture, max_side_px), "image/png", picture.width, picture.height)


def _seek(image: Image.Image, page_index: int) -> None:
    try:
        image.seek(page_index)
    except EOFError as exc:
        raise ImageUnavailable(f"no page {page_index + 1}: the image has fewer pages") from exc


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """The size once the EXIF orientation is applied, as browsers and `exif_transpose` apply it."""
    width, height = image.size
    return (height, width) if image.getexif().get(_ORIENTATION_TAG) in (5, 6, 7, 8) else (width, height)


def _check_pixels(width_px: int, height_px: int) -> None:
    if width_px * height_px > MAX_PAGE_PIXELS:
        raise ImageUnavailable(
            f"the page is too large to display ({width_px} x {height_px} px; at most "
            f"{MAX_PAGE_PIXELS // 1_000_000} megapixels)"
        )


def _displayable(image: Image.Image) -> Image.Image:
    """A mode that PNG stores and browsers show as meant (no CMYK, palettes or 32-bit samples)."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode == "1":
        return image.convert("L")
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _png(image: Image.Image, max_side_px: int) -> bytes:
    image.thumbnail((max_side_px, max_side_px))  # shrinks only, keeping the aspect ratio
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _box(index: int, field: Mapping[str, Any]) -> Box:
    vertices = _vertices(field.get("boundingPoly"))
    if vertices is None:
        parts = (_vertices(_mapping(sub).get("boundingPoly")) for sub in _list(field.get("subFields")))
        vertices = _enclosing([vertex for part in parts if part for vertex in part])
    return Box(
        index=index,
        text=_str(field.get("inferText")) or "",
        name=_str(field.get("name")),
        confidence=_number(field.get("inferConfidence")),
        points=" ".join(f"{_coordinate(x)},{_coordinate(y)}" for x, y in vertices or []),
        line_break=field.get("lineBreak") is True,
    )


def _vertices(polygon: object) -> Vertices | None:
    """The polygon's vertices, or None unless there are at least 3 and all are numeric."""
    vertices: Vertices = []
    for raw in _list(_mapping(polygon).get("vertices")):
        vertex = _mapping(raw)
        x, y = _number(vertex.get("x")), _number(vertex.get("y"))
        if x is None or y is None:
            return None
        vertices.append((x, y))
    return vertices if len(vertices) >= 3 else None


def _enclosing(vertices: Vertices) -> Vertices | None:
    if not vertices:
        return None
    xs, ys = [x for x, _ in vertices], [y for _, y in vertices]
    left, top, right, bottom = min(xs), min(ys), max(xs), max(ys)
    return [(left, top), (right, top), (right, bottom), (left, bottom)]


def _coordinate(value: float) -> str:
    text = f"{round(value, 1) + 0.0:.1f}"  # + 0.0 turns -0.0 into 0.0
    return text.removesuffix(".0")


def _table(table: Mapping[str, Any]) -> Table | None:
    """The grid of the table's valid cells (the first of two starting at one place), or None."""
    starts: dict[tuple[int, int], TableCell] = {}
    row_count = 0
    for raw in _list(table.get("cells")):
        cell = _mapping(raw)
        row, column = _int(cell.get("rowIndex")), _int(cell.get("columnIndex"))
        row_span, column_span = _span(cell.get("rowSpan")), _span(cell.get("columnSpan"))
        if row is None or column is None or row_span is None or column_span is None:
            continue
        if min(row, column) < 0 or min(row_span, column_span) < 1 or (row, column) in starts:
            continue
        if max(row + row_span, column + column_span) > MAX_TABLE_SIDE:
            continue
        starts[row, column] = TableCell(_cell_text(cell), row_span, column_span)
        row_count = max(row_count, row + row_span)
    if not starts:
        return None
    rows: list[list[TableCell]] = [[] for _ in range(row_count)]
    for (row, _column), cell_view in sorted(starts.items()):
        rows[row].append(cell_view)
    return Table(rows=rows)


def _cell_text(cell: Mapping[str, Any]) -> str:
    lines = []
    for line in _list(cell.get("cellTextLines")):
        words = [_str(_mapping(word).get("inferText")) for word in _list(_mapping(line).get("cellWords"))]
        if text := " ".join(word for word in words if word):
            lines.append(text)
    return "\n".join(lines)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _span(value: object) -> int | None:
    """A span as given, 1 when absent; None when it is not a whole number."""
    return 1 if value is None else _int(value)


def _positive_int(value: object) -> int | None:
    number = _int(value)
    return number if number is not None and number >= 1 else None


def _number(value: object) -> float | None:
    """A finite JSON number as a float; None for anything else (booleans, strings, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
