"""The result file as a searchable PDF (`render_searchable_pdf`): the input's own pages with the
recognised text laid over them in invisible ink, so that a PDF viewer selects, searches and
copies what was read. No I/O but one temporary file (fpdf2 reads fonts from a path only);
CPU-bound, so callers run it in a thread.

Layout:

- Pages: the input's, in order. An image is one page and a TIFF one page per frame, its EXIF
  orientation applied as the local engine applies it (so that the boxes line up), at the
  resolution the file declares (50-2400 dpi, as the engine reads it), else at 72 dpi: a pixel per
  point. A page longer than PDF's implementation limit of 14,400 pt (200 in) is scaled down to
  it. PNG and TIFF pixels are embedded losslessly (Flate, or CCITT for bilevel frames),
  JPEGs as they are (their EXIF orientation becomes the image's matrix). A PDF keeps its own
  pages, content, boxes and rotation, and gets the text merged on top of each page.
- Coordinates: page i is `images[i]` (pages without an image, and images without a page, get no
  text). A box is the upright bounding box of its polygon, in px of `convertedImageInfo` (else of
  the page's own pixels: the image's, or a PDF page's at the 144 dpi the service counts), scaled
  onto the page: the whole image, or the PDF page as a viewer shows it (its CropBox, which is its
  MediaBox unless set, wherever its origin lies, turned by its /Rotate).
- Text: render mode 3 (invisible), in the response's order, which is reading order. General
  words make lines ending at a `lineBreak` (and where a word misses the previous one's height, for
  answers without line breaks); a Template page puts its title, then each field, on lines of
  their own, at the field's box or else the union of its sub-fields' boxes. The words of a line
  share one font size and baseline: the median height and bottom of their boxes, so that the
  glyphs' cell (descent to ascent) covers the line's band; pdftotext builds lines from words of
  one baseline and size, and splits a line whose words are each sized to their own box. Each word
  starts at its box's left and is stretched (`Tz`) to its box's width.
- Spaces: each word but a line's last is followed by a space character, drawn past its box.
  pdftotext ignores space characters and finds words by the gaps between glyphs, so the glyphs
  must end where the box ends (a space squeezed into the box would widen every gap until
  pdftotext reads neighbouring words as columns); pypdf and PDFium read the space character, and
  without it pypdf joins words whose boxes touch. A line needs no newline character: it starts
  lower on the page, which every extractor reads as a new line.
- Font: the glyphs are never seen, so the text needs only their Unicode values and widths, as
  in Tesseract's and OCRmyPDF's GlyphLessFont. Each document gets a TrueType font built for it
  with one empty glyph per character its text uses, each of one fixed width: every script is
  covered, astral characters included, and there is no font file to ship. fpdf2 embeds the
  subset it uses with a ToUnicode map, which distinct glyphs keep unambiguous.

Equal input gives equal bytes: fpdf2's creation date and the font's timestamps are `PDF_DATE`
(`result_files.WORKBOOK_DATE`), and pypdf keeps a PDF's own identifier and dates.
"""

from __future__ import annotations

import statistics
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from fontTools.fontBuilder import FontBuilder
from fontTools.misc.timeTools import timestampSinceEpoch
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fpdf import FPDF, TextMode
from fpdf.drawing_primitives import Transform
from fpdf.fonts import TTFFont
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, TiffImagePlugin
from pypdf import PageObject, PdfReader, PdfWriter

from ocrbatch.clova.contract import OcrField, OcrImage, OcrResponse, Title
from ocrbatch.clova.documents import (
    IMAGE_ERRORS,
    IMAGE_READERS,
    MAX_DECODED_PAGE_PIXELS,
    PDF_ERRORS,
    PDF_PIXELS_PER_POINT,
    UnreadableDocument,
    declared_dpi,
    quiet_pypdf,
)
from ocrbatch.worker.result_files import WORKBOOK_DATE, Box, field_box, union_box, word_lines

PDF_DATE = WORKBOOK_DATE
FONT_FAMILY = "GlyphLessFont"
# The font's metrics, in units of its em: every glyph as wide as half an em, and a cell that
# reaches from the descent, a fifth of the em below the baseline, to the ascent above it.
UNITS_PER_EM = 1000
GLYPH_ADVANCE = 500
ASCENT, DESCENT = 800, -200
MAX_PAGE_PT = 14_400  # PDF's implementation limit on a page's side (200 in)
POINTS_PER_INCH = 72
_MIN_BOX_PX = 1.0  # a box without height or width still places its text
_ORIENTATIONS = range(1, 9)  # EXIF's: 1 is upright, 2-8 the mirrorings and turns

Matrix = tuple[float, float, float, float, float, float]  # a, b, c, d, e, f of a PDF transformation


@dataclass(frozen=True)
class _Word:
    text: str
    box: Box  # left, top, right, bottom in px


@dataclass(frozen=True)
class _Line:
    """Words drawn on one baseline at one font size (px, from the top of the page)."""

    words: list[_Word]
    size_px: float
    baseline_px: float


@dataclass(frozen=True)
class _PageText:
    """What is written on one page: its lines, and the size in px its boxes are measured in."""

    lines: list[_Line]
    size_px: tuple[int, int] | None


@dataclass(frozen=True)
class _Raster:
    """One page of an image: what is embedded (upright pixels, or a JPEG's own bytes with the EXIF
    orientation still to apply), its upright size in px, and its scale."""

    pixels: Image.Image | bytes
    width_px: int
    height_px: int
    pt_per_px: float
    orientation: int = 1


@dataclass(frozen=True)
class _View:
    """A PDF page as a viewer shows it: its size in pt, and the matrix from there to its own space."""

    width_pt: float
    height_pt: float
    matrix: Matrix


def render_searchable_pdf(response: OcrResponse, source: bytes, *, image_format: str) -> bytes:
    """The input (`source`, of `image_format`: jpg, jpeg, png, tif, tiff or pdf) as a PDF with
    the response's text on its pages, laid out as the module docstring describes. Raises
    `UnreadableDocument` when the input cannot be decoded."""
    image_format = image_format.lower()
    if image_format != "pdf" and image_format not in IMAGE_READERS:
        raise UnreadableDocument(f"unsupported format {image_format!r}")
    pages = [_page_text(image) for image in response.images]
    characters = {char for page in pages for line in page.lines for word in line.words for char in word.text}
    with _document(_glyphless_font(characters)) as pdf:
        if image_format == "pdf":
            return _merged_pdf(pdf, source, pages)
        for index, raster in enumerate(_rasters(source, image_format)):
            _add_raster_page(pdf, raster, pages[index] if index < len(pages) else None)
        return bytes(pdf.output())


# -- text ---------------------------------------------------------------------------------------


def _page_text(image: OcrImage) -> _PageText:
    info = image.converted_image_info
    size_px = (info.width, info.height) if info is not None and min(info.width, info.height) > 0 else None
    return _PageText([_line(words) for words in _word_lines(image)], size_px)


def _word_lines(image: OcrImage) -> Iterator[list[_Word]]:
    """The page's words in reading order, a list per line: a Template page's title and fields each
    on lines of their own; General words up to each `lineBreak`, split where a word misses the
    previous one's height."""
    fields = image.fields or []
    if image.title is not None or any(field.name is not None for field in fields):
        named: list[OcrField | Title] = [image.title] if image.title is not None else []
        for field in [*named, *fields]:
            yield from _field_lines(field.infer_text, field_box(field))
        return
    for line in word_lines(fields):
        words = [(union_box([word.bounding_poly]), _drawable(word.infer_text)) for word in line]
        yield from _same_height([_Word(text, box) for box, text in words if box is not None and text])


def _field_lines(text: str, box: Box | None) -> Iterator[list[_Word]]:
    """A field's text, a line per line of it, each in its own band of the box."""
    lines = [line for line in map(_drawable, text.splitlines()) if line]
    if box is None or not lines:
        return
    left, top, right, bottom = box
    band = (bottom - top) / len(lines)
    for index, line in enumerate(lines):
        yield [_Word(line, (left, top + index * band, right, top + (index + 1) * band))]


def _same_height(words: list[_Word]) -> Iterator[list[_Word]]:
    """The words split where one does not overlap the previous one vertically: a new line, even
    when the answer did not mark it."""
    line: list[_Word] = []
    for word in words:
        if line and (word.box[1] >= line[-1].box[3] or word.box[3] <= line[-1].box[1]):
            yield line
            line = []
        line.append(word)
    if line:
        yield line


def _line(words: list[_Word]) -> _Line:
    """The words on one baseline at one size, the medians of their boxes' so that one odd box (a
    comma, a word that fused with the next) moves none of the others."""
    size_px = statistics.median(max(_MIN_BOX_PX, word.box[3] - word.box[1]) for word in words)
    bottom_px = statistics.median(word.box[3] for word in words)
    return _Line(words, size_px, bottom_px + size_px * DESCENT / UNITS_PER_EM)


def _drawable(text: str) -> str:
    """The text as one line (runs of whitespace as one space), without what no font can map:
    control characters, lone surrogates and noncharacters."""
    return "".join(
        character
        for character in " ".join(text.split())
        if unicodedata.category(character) not in ("Cc", "Cs")
        and not (ord(character) & 0xFFFE == 0xFFFE or 0xFDD0 <= ord(character) <= 0xFDEF)
    )


def _draw_lines(pdf: FPDF, lines: Sequence[_Line], *, scale_x: float, scale_y: float) -> None:
    """The lines on the current page, px scaled to pt (`scale_x`, `scale_y`), y down from its top."""
    for line in lines:
        size_pt = line.size_px * scale_y
        pdf.set_font(FONT_FAMILY, size=size_pt)
        for index, word in enumerate(line.words):
            left, _, right, _ = word.box
            natural_width_pt = len(word.text) * size_pt * GLYPH_ADVANCE / UNITS_PER_EM
            pdf.set_stretching(100 * max(_MIN_BOX_PX, right - left) * scale_x / natural_width_pt)
            text = word.text if index == len(line.words) - 1 else word.text + " "
            pdf.text(left * scale_x, line.baseline_px * scale_y, text)


# -- font ---------------------------------------------------------------------------------------


def _glyphless_font(characters: Iterable[str]) -> bytes:
    """A TrueType font with an empty glyph of its own for each character (and the space), each
    `GLYPH_ADVANCE` wide, named as the Adobe Glyph List names unknown glyphs."""
    names = {ord(character): _glyph_name(ord(character)) for character in sorted({*characters, " "})}
    order = [".notdef", *names.values()]
    timestamp = timestampSinceEpoch(int(PDF_DATE.timestamp()))
    builder = FontBuilder(UNITS_PER_EM, isTTF=True)
    builder.updateHead(created=timestamp, modified=timestamp)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap(names)
    builder.setupGlyf({name: TTGlyphPen(None).glyph() for name in order})
    builder.setupHorizontalMetrics(dict.fromkeys(order, (GLYPH_ADVANCE, 0)))
    builder.setupHorizontalHeader(ascent=ASCENT, descent=DESCENT)
    builder.setupNameTable({"familyName": FONT_FAMILY, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=ASCENT, sTypoDescender=DESCENT, usWinAscent=ASCENT, usWinDescent=-DESCENT)
    builder.setupPost()
    buffer = BytesIO()
    builder.save(buffer)
    return buffer.getvalue()


def _glyph_name(code: int) -> str:
    return f"uni{code:04X}" if code <= 0xFFFF else f"u{code:X}"


@contextmanager
def _document(font: bytes) -> Iterator[FPDF]:
    """An empty fpdf2 document in points, dated `PDF_DATE`, writing invisibly in `font`. The font
    file lives as long as the document, which reads it until its output is made."""
    with tempfile.TemporaryDirectory(prefix="ocrbatch-pdf-") as folder:
        path = Path(folder) / f"{FONT_FAMILY}.ttf"
        path.write_bytes(font)
        pdf = FPDF(unit="pt")
        pdf.set_creation_date(PDF_DATE)
        pdf.set_auto_page_break(False)
        pdf.add_font(FONT_FAMILY, fname=path)
        pdf.text_mode = TextMode.INVISIBLE
        try:
            yield pdf
        finally:
            for added in pdf.fonts.values():
                if isinstance(added, TTFFont):
                    added.close()  # output() closes it too; an error before would leave it open


# -- images -------------------------------------------------------------------------------------


def _rasters(source: bytes, image_format: str) -> Iterator[_Raster]:
    """The pages of an image, one at a time: a TIFF's frames are decoded as they are drawn."""
    try:
        image = IMAGE_READERS[image_format](BytesIO(source))
    except IMAGE_ERRORS as exc:
        raise UnreadableDocument(f"not a valid {image_format.upper()} image") from exc
    with image:
        if isinstance(image, JpegImagePlugin.JpegImageFile):
            yield _jpeg_raster(image, source)
            return
        frames = image.n_frames if isinstance(image, TiffImagePlugin.TiffImageFile) else 1
        for index in range(frames):
            try:
                image.seek(index)
                width, height = image.size
                if width * height > MAX_DECODED_PAGE_PIXELS:
                    raise UnreadableDocument(
                        f"page {index + 1} is too large to draw ({width} x {height} px; at most "
                        f"{MAX_DECODED_PAGE_PIXELS // 1_000_000} megapixels)"
                    )
                dpi = declared_dpi(image.info.get("dpi"))
                upright = ImageOps.exif_transpose(image)
            except IMAGE_ERRORS as exc:
                raise UnreadableDocument(f"the pixels of page {index + 1} cannot be decoded") from exc
            yield _Raster(upright, upright.width, upright.height, _pt_per_px(upright.size, dpi))


def _jpeg_raster(image: JpegImagePlugin.JpegImageFile, source: bytes) -> _Raster:
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        width, height = image.size
    except IMAGE_ERRORS as exc:
        raise UnreadableDocument("not a valid JPEG image") from exc
    orientation = orientation if orientation in _ORIENTATIONS else 1
    if orientation >= 5:  # a quarter turn or a transposition: the upright page is the other way
        width, height = height, width
    return _Raster(
        source, width, height, _pt_per_px((width, height), declared_dpi(image.info.get("dpi"))), orientation
    )


def _upright(orientation: int, width: float, height: float) -> Matrix:
    """What draws a JPEG's stored pixels (at 0,0, `width` x `height`, y down) upright: the
    transpositions of `ImageOps.exif_transpose`, by EXIF orientation."""
    matrices: dict[int, Matrix] = {
        2: (-1, 0, 0, 1, width, 0),  # mirrored left to right
        3: (-1, 0, 0, -1, width, height),  # turned 180°
        4: (1, 0, 0, -1, 0, height),  # mirrored top to bottom
        5: (0, 1, 1, 0, 0, 0),  # transposed
        6: (0, 1, -1, 0, height, 0),  # turned 90° clockwise
        7: (0, -1, -1, 0, height, width),  # transversed
        8: (0, -1, 1, 0, 0, width),  # turned 90° counter-clockwise
    }
    return matrices.get(orientation, (1, 0, 0, 1, 0, 0))


def _pt_per_px(size_px: tuple[int, int], dpi: int | None) -> float:
    return min(POINTS_PER_INCH / (dpi or POINTS_PER_INCH), MAX_PAGE_PT / max(1, *size_px))


def _add_raster_page(pdf: FPDF, raster: _Raster, text: _PageText | None) -> None:
    scale = raster.pt_per_px
    width_pt, height_pt = raster.width_px * scale, raster.height_px * scale
    pdf.add_page(format=(width_pt, height_pt))
    try:
        if isinstance(raster.pixels, bytes):
            stored_pt = (height_pt, width_pt) if raster.orientation >= 5 else (width_pt, height_pt)
            with pdf.transform(Transform(*_upright(raster.orientation, *stored_pt))):
                pdf.image(BytesIO(raster.pixels), x=0, y=0, w=stored_pt[0], h=stored_pt[1])
        else:
            pdf.image(raster.pixels, x=0, y=0, w=width_pt, h=height_pt)
    except IMAGE_ERRORS as exc:
        raise UnreadableDocument(f"page {pdf.page} cannot be embedded") from exc
    if text is not None:
        size_px = text.size_px or (raster.width_px, raster.height_px)
        _draw_lines(pdf, text.lines, scale_x=width_pt / size_px[0], scale_y=height_pt / size_px[1])


# -- PDFs ---------------------------------------------------------------------------------------


def _merged_pdf(pdf: FPDF, source: bytes, pages: list[_PageText]) -> bytes:
    """The PDF with each page's text drawn in `pdf` on a page of its shown size, then merged on top
    of it. pypdf is held (`quiet_pypdf` is a lock) only while it reads and while it writes."""
    with _pdf_errors():
        reader = PdfReader(BytesIO(source), strict=False)
        if reader.is_encrypted:
            raise UnreadableDocument("encrypted PDF")
        writer = PdfWriter(clone_from=reader)
        views = [_view(page) for page, _ in zip(writer.pages, pages, strict=False)]
    written: list[tuple[int, _View]] = []
    for index, (view, text) in enumerate(zip(views, pages, strict=False)):
        if text.lines and min(view.width_pt, view.height_pt) > 0:
            pdf.add_page(format=(view.width_pt, view.height_pt))
            width_px, height_px = text.size_px or _pdf_pixels(view)
            _draw_lines(pdf, text.lines, scale_x=view.width_pt / width_px, scale_y=view.height_pt / height_px)
            written.append((index, view))
    with _pdf_errors():
        if written:
            overlay = PdfReader(BytesIO(pdf.output()))
            for (index, view), layer in zip(written, overlay.pages, strict=True):
                writer.pages[index].merge_transformed_page(layer, view.matrix)
        buffer = BytesIO()
        writer.write(buffer)
    return buffer.getvalue()


@contextmanager
def _pdf_errors() -> Iterator[None]:
    """pypdf kept quiet, and what it raises on a malformed document as `UnreadableDocument`."""
    with quiet_pypdf():
        try:
            yield
        except PDF_ERRORS as exc:
            raise UnreadableDocument("not a valid PDF document") from exc


def _view(page: PageObject) -> _View:
    box = page.cropbox
    left, right = sorted((float(box.left), float(box.right)))
    bottom, top = sorted((float(box.bottom), float(box.top)))
    width, height = right - left, top - bottom
    # From the page as shown (origin at its lower left) to its own space, by /Rotate (clockwise).
    matrices: dict[int, Matrix] = {
        0: (1, 0, 0, 1, left, bottom),
        90: (0, 1, -1, 0, left + width, bottom),
        180: (-1, 0, 0, -1, left + width, bottom + height),
        270: (0, -1, 1, 0, left, bottom + height),
    }
    rotation = page.rotation % 360 if page.rotation % 90 == 0 else 0
    if rotation in (90, 270):
        return _View(height, width, matrices[rotation])
    return _View(width, height, matrices[rotation])


def _pdf_pixels(view: _View) -> tuple[int, int]:
    """A page's size in px as the service measures it (`documents.page_sizes`)."""
    return (
        max(1, int(view.width_pt * PDF_PIXELS_PER_POINT)),
        max(1, int(view.height_pt * PDF_PIXELS_PER_POINT)),
    )
