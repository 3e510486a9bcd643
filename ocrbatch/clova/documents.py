"""What a document is, read from its bytes: its pages and their sizes in pixels.

Counting and sizing parse only headers, page trees and page boxes, never pixels, so this is cheap
enough to run on every input before it is sent anywhere. Used by the emulator to shape its answers,
and by the worker to refuse corrupt, encrypted or over-long documents without calling the API and
to cut long ones into parts (`parts.py`).
"""

from __future__ import annotations

import logging
import numbers
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO

import pypdfium2  # type: ignore[import-untyped]  # ships no type hints; used through a few calls below
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, TiffImagePlugin
from pypdf import PageObject, PdfReader
from pypdf.errors import PyPdfError
from pypdf.generic import (
    ArrayObject,
    DictionaryObject,
    IndirectObject,
    PdfObject,
)

PDF_PIXELS_PER_POINT = 2  # 144 dpi: an A4 page (595 x 842 pt) becomes 1190 x 1684 px
# Long images (the Batch option): long side 8,000-25,000 px and an aspect ratio of at least 5.
LONG_IMAGE_MIN_SIDE_PX = 8000
LONG_IMAGE_MAX_SIDE_PX = 25000
LONG_IMAGE_MIN_RATIO = 5

# What Pillow and pypdf raise on malformed input: Pillow turns its parsers' errors into SyntaxError
# while opening, but seeking to a later TIFF frame can raise them as they are; pypdf's own errors
# derive from PyPdfError, and a mangled object tree surfaces as the others.
IMAGE_ERRORS = (SyntaxError, OSError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)
PDF_ERRORS = (PyPdfError, *IMAGE_ERRORS, AttributeError, RecursionError)
# Each image extension's Pillow plugin class: opened directly, it reads only the declared format.
IMAGE_READERS: dict[str, type[ImageFile.ImageFile]] = {
    "jpg": JpegImagePlugin.JpegImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "png": PngImagePlugin.PngImageFile,
    "tif": TiffImagePlugin.TiffImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
}
# The largest page whose pixels are decoded (by the local engine, or for a searchable PDF): a long
# image at the service's limit (25,000 x 5,000 px); bigger pages would take gigabytes.
MAX_DECODED_PAGE_PIXELS = LONG_IMAGE_MAX_SIDE_PX * (LONG_IMAGE_MAX_SIDE_PX // LONG_IMAGE_MIN_RATIO)
# A declared resolution outside this range is a wrong header, not a scan.
MIN_DPI, MAX_DPI = 50, 2400
_PNG_TAIL_BYTES = 4096  # IEND must appear this close to the end, or the file was cut short
_PDF_HEADER_WINDOW_BYTES = 1024  # readers accept junk before "%PDF-" up to this offset


class UnreadableDocument(Exception):
    """The bytes cannot be read as the declared format (corrupt, truncated, encrypted PDF, wrong format)."""


def is_long_image(width_px: int, height_px: int) -> bool:
    """True for what the service calls a long image: long side >= 8,000 px and ratio >= 5."""
    long_side, short_side = max(width_px, height_px), min(width_px, height_px)
    return long_side >= LONG_IMAGE_MIN_SIDE_PX and long_side >= LONG_IMAGE_MIN_RATIO * short_side


def declared_dpi(value: object) -> int | None:
    """The resolution an image's header declares (Pillow's `info["dpi"]`), when it is sane."""
    if isinstance(value, tuple) and value and isinstance(value[0], numbers.Real):  # TIFF: a rational
        dpi = round(float(value[0]))
        if MIN_DPI <= dpi <= MAX_DPI:
            return dpi
    return None


def page_sizes(data: bytes, image_format: str, *, max_pages: int | None = None) -> list[tuple[int, int]]:
    """(width, height) in pixels of each page, read from the content: one for jpg/jpeg/png, each
    page of a PDF (at 144 dpi) or frame of a TIFF, the first `max_pages` of them if given.
    Raises `UnreadableDocument` with a short reason."""
    image_format = image_format.lower()
    if image_format == "pdf":
        return _pdf_page_sizes(data, max_pages)
    reader = IMAGE_READERS.get(image_format)
    if reader is None:
        raise UnreadableDocument(f"unsupported format {image_format!r}")
    label = reader.format  # JPEG, PNG or TIFF
    try:
        # The plugin class itself, not Image.open: it reads only the declared format, and skips the
        # decompression-bomb check, which is about decoding pixels (long images exceed its limit).
        with reader(BytesIO(data)) as image:
            sizes = _tiff_frame_sizes(image, max_pages) if label == "TIFF" else [image.size]
    except IMAGE_ERRORS as exc:
        raise UnreadableDocument(f"not a valid {label} image") from exc
    if label == "PNG" and b"IEND" not in data[-_PNG_TAIL_BYTES:]:
        raise UnreadableDocument("truncated PNG image")
    return sizes


def count_pages(data: bytes, image_format: str, *, limit: int) -> int:
    """Pages of a PDF or frames of a TIFF (1 for any other image), counted without decoding any:
    a PDF's page tree is walked up to `limit + 1` pages, a TIFF's frame directories are followed.
    Above `limit` a PDF's count is the one it declares (`/Count`), or `limit + 1` when its tree
    holds more pages than it declares. Raises `UnreadableDocument` like `page_sizes`."""
    image_format = image_format.lower()
    if image_format == "pdf":
        return _pdf_page_count(data, limit)
    if image_format not in ("tif", "tiff"):
        return 1
    try:
        with TiffImagePlugin.TiffImageFile(BytesIO(data)) as image:
            return int(image.n_frames)
    except IMAGE_ERRORS as exc:
        raise UnreadableDocument("not a valid TIFF image") from exc


def check_decodable(width_px: int, height_px: int, *, page_index: int = 0) -> None:
    """`UnreadableDocument` for a page whose pixels Pillow would take for a decompression bomb:
    more than `Image.MAX_IMAGE_PIXELS` (read at each call; the worker never disables it)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width_px * height_px > limit:
        raise UnreadableDocument(
            f"page {page_index + 1} is {width_px} x {height_px} px ({width_px * height_px / 1e6:.0f} "
            f"megapixels), over the decompression-bomb limit of {limit / 1e6:.0f} megapixels"
        )


def _tiff_frame_sizes(image: ImageFile.ImageFile, max_pages: int | None) -> list[tuple[int, int]]:
    sizes = [image.size]
    frame = 1
    while max_pages is None or frame < max_pages:
        try:
            image.seek(frame)
        except EOFError:
            break
        sizes.append(image.size)
        frame += 1
    return sizes


def _pdf_page_sizes(data: bytes, max_pages: int | None) -> list[tuple[int, int]]:
    with _pdf_reader(data) as reader:
        pages = reader.pages
        count = len(pages) if max_pages is None else min(len(pages), max_pages)
        sizes = [_pdf_page_size(pages[index]) for index in range(count)]
    if not sizes:
        raise UnreadableDocument("PDF has no pages")
    return sizes


def _pdf_page_count(data: bytes, limit: int) -> int:
    with _pdf_reader(data) as reader:
        root = reader.root_object.get("/Pages")
        root = root.get_object() if root is not None else None
        if not isinstance(root, DictionaryObject):
            raise UnreadableDocument("not a valid PDF document")
        declared = root.get("/Count")
        counted = _count_tree_pages(root, limit)
    if counted > limit and isinstance(declared, int) and declared > counted:
        return int(declared)
    return counted


@contextmanager
def _pdf_reader(data: bytes) -> Iterator[PdfReader]:
    """A reader of an unencrypted PDF, pypdf kept quiet; what it raises meanwhile (the block's
    work included) as `UnreadableDocument`."""
    if b"%PDF-" not in data[:_PDF_HEADER_WINDOW_BYTES]:
        raise UnreadableDocument("not a PDF document")
    with quiet_pypdf():
        try:
            reader = PdfReader(BytesIO(data), strict=False)
            if reader.is_encrypted:
                raise UnreadableDocument("encrypted PDF")
            yield reader
        except PDF_ERRORS as exc:
            raise UnreadableDocument("not a valid PDF document") from exc


def _count_tree_pages(root: DictionaryObject, limit: int) -> int:
    """Leaves of the page tree, as pypdf tells pages from nodes, stopping past `limit`; a node
    reached twice (a cycle, or a shared subtree) counts once."""
    count = 0
    stack: list[PdfObject] = [root]
    seen: set[int] = set()
    while stack and count <= limit:
        reference = stack.pop()
        node = reference.get_object()
        if not isinstance(node, DictionaryObject):
            continue
        identity = reference.idnum if isinstance(reference, IndirectObject) else id(node)
        if identity in seen:
            continue
        seen.add(identity)
        kind = node.get("/Type", "/Pages" if "/Kids" in node else "/Page")
        if kind == "/Page":
            count += 1
        elif kind == "/Pages":
            kids = node.get("/Kids")
            if isinstance(kids, ArrayObject):
                stack.extend(reversed(kids))
    return count


def _pdf_page_size(page: PageObject) -> tuple[int, int]:
    box = page.cropbox
    width_pt, height_pt = abs(float(box.width)), abs(float(box.height))
    if page.rotation % 180 == 90:
        width_pt, height_pt = height_pt, width_pt
    return max(1, int(width_pt * PDF_PIXELS_PER_POINT)), max(1, int(height_pt * PDF_PIXELS_PER_POINT))


# -- parts ---------------------------------------------------------------------------------------

_PYPDF_LOGGER = logging.getLogger("pypdf")
_PYPDF_LOCK = threading.Lock()


@contextmanager
def quiet_pypdf() -> Iterator[None]:
    """pypdf logs each repair it makes to a broken file as a warning (to stderr when logging is
    unconfigured): noise for an emulator that answers such files with an error anyway. The lock
    keeps concurrent readers from restoring each other's level."""
    with _PYPDF_LOCK:
        level = _PYPDF_LOGGER.level
        _PYPDF_LOGGER.setLevel(logging.ERROR)
        try:
            yield
        finally:
            _PYPDF_LOGGER.setLevel(level)


# PDFium is not thread-safe: renders in this process (the engine's, the console's) take turns.
_PDFIUM_LOCK = threading.Lock()


def render_pdf_page(
    data: bytes, page_index: int, *, scale_of: Callable[[float, float], float], grayscale: bool = False
) -> tuple[Image.Image, float]:
    """Page `page_index` of a PDF rendered by PDFium at `scale_of(width_pt, height_pt)` pixels per
    point: the image (a copy, so no pixel refers to PDFium's buffers once the lock is released;
    the bitmap is left to the garbage collector, as pypdfium2 advises) and the scale.
    `UnreadableDocument` when the document cannot be opened, has no such page, the page has no
    area or cannot be rendered; what `scale_of` raises passes through."""
    with _PDFIUM_LOCK:
        try:
            document = pypdfium2.PdfDocument(data)
        except pypdfium2.PdfiumError as exc:
            raise UnreadableDocument("the PDF document cannot be opened (PDFium)") from exc
        try:
            if not 0 <= page_index < len(document):
                raise UnreadableDocument(f"no page {page_index + 1}: the PDF has {len(document)} page(s)")
            page = document[page_index]
            try:
                width_pt, height_pt = page.get_size()
                if not min(width_pt, height_pt) > 0:
                    raise UnreadableDocument(f"page {page_index + 1} of the PDF has no area")
                scale = scale_of(width_pt, height_pt)
                image = page.render(scale=scale, grayscale=grayscale).to_pil().copy()
            finally:
                page.close()
        except pypdfium2.PdfiumError as exc:
            raise UnreadableDocument(f"page {page_index + 1} of the PDF cannot be rendered (PDFium)") from exc
        finally:
            document.close()
    return image, scale
