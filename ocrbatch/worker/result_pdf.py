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
- Text and font: `pdf_text`, the text layer drawn in invisible ink (render mode 3) in a
  "glyphless" font made for the document.

Equal input gives equal bytes: fpdf2's creation date and the font's timestamps are `PDF_DATE`
(`result_files.WORKBOOK_DATE`), and pypdf keeps a PDF's own identifier and dates.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from fpdf import FPDF, TextMode
from fpdf.drawing_primitives import Transform
from fpdf.fonts import TTFFont
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, TiffImagePlugin
from pypdf import PageObject, PdfReader, PdfWriter

from ocrbatch.clova.contract import OcrResponse
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
from ocrbatch.worker.pdf_text import FONT_FAMILY, PageText, draw_lines, glyphless_font, page_text
from ocrbatch.worker.result_files import WORKBOOK_DATE

PDF_DATE = WORKBOOK_DATE
MAX_PAGE_PT = 14_400  # PDF's implementation limit on a page's side (200 in)
POINTS_PER_INCH = 72
_ORIENTATIONS = range(1, 9)  # EXIF's: 1 is upright, 2-8 the mirrorings and turns

Matrix = tuple[float, float, float, float, float, float]  # a, b, c, d, e, f of a PDF transformation


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
    pages = [page_text(image) for image in response.images]
    characters = {char for page in pages for line in page.lines for word in line.words for char in word.text}
    with _document(glyphless_font(characters, created=PDF_DATE)) as pdf:
        if image_format == "pdf":
            return _merged_pdf(pdf, source, pages)
        for index, raster in enumerate(_rasters(source, image_format)):
            _add_raster_page(pdf, raster, pages[index] if index < len(pages) else None)
        return bytes(pdf.output())


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


def _add_raster_page(pdf: FPDF, raster: _Raster, text: PageText | None) -> None:
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
        draw_lines(pdf, text.lines, scale_x=width_pt / size_px[0], scale_y=height_pt / size_px[1])


# -- PDFs ---------------------------------------------------------------------------------------


def _merged_pdf(pdf: FPDF, source: bytes, pages: list[PageText]) -> bytes:
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
            draw_lines(pdf, text.lines, scale_x=view.width_pt / width_px, scale_y=view.height_pt / height_px)
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
