"""What a document is, read from its bytes: its pages and their sizes in pixels.

Only headers and page boxes are parsed, never pixels, so this is cheap enough to run on every
input before it is sent anywhere. Used by the emulator to shape its answers, and by the worker to
refuse corrupt or encrypted files and over-long images without calling the API.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

from PIL import ImageFile, JpegImagePlugin, PngImagePlugin, TiffImagePlugin
from pypdf import PageObject, PdfReader
from pypdf.errors import PyPdfError

PDF_PIXELS_PER_POINT = 2  # 144 dpi: an A4 page (595 x 842 pt) becomes 1190 x 1684 px
# Long images (the Batch option): long side 8,000-25,000 px and an aspect ratio of at least 5.
LONG_IMAGE_MIN_SIDE_PX = 8000
LONG_IMAGE_MAX_SIDE_PX = 25000
LONG_IMAGE_MIN_RATIO = 5

# What Pillow and pypdf raise on malformed input: Pillow turns its parsers' errors into SyntaxError
# while opening, but seeking to a later TIFF frame can raise them as they are; pypdf's own errors
# derive from PyPdfError, and a mangled object tree surfaces as the others.
_IMAGE_ERRORS = (SyntaxError, OSError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)
PDF_ERRORS = (PyPdfError, *_IMAGE_ERRORS, AttributeError, RecursionError)
_RASTER_READERS: dict[str, tuple[type[ImageFile.ImageFile], str]] = {
    "jpg": (JpegImagePlugin.JpegImageFile, "JPEG"),
    "jpeg": (JpegImagePlugin.JpegImageFile, "JPEG"),
    "png": (PngImagePlugin.PngImageFile, "PNG"),
    "tif": (TiffImagePlugin.TiffImageFile, "TIFF"),
    "tiff": (TiffImagePlugin.TiffImageFile, "TIFF"),
}
_PNG_TAIL_BYTES = 4096  # IEND must appear this close to the end, or the file was cut short
_PDF_HEADER_WINDOW_BYTES = 1024  # readers accept junk before "%PDF-" up to this offset


class UnreadableDocument(Exception):
    """The bytes cannot be read as the declared format (corrupt, truncated, encrypted PDF, wrong format)."""


def is_long_image(width_px: int, height_px: int) -> bool:
    """True for what the service calls a long image: long side >= 8,000 px and ratio >= 5."""
    long_side, short_side = max(width_px, height_px), min(width_px, height_px)
    return long_side >= LONG_IMAGE_MIN_SIDE_PX and long_side >= LONG_IMAGE_MIN_RATIO * short_side


def page_sizes(data: bytes, image_format: str, *, max_pages: int | None = None) -> list[tuple[int, int]]:
    """(width, height) in pixels of each page, read from the content: one for jpg/jpeg/png, each
    page of a PDF (at 144 dpi) or frame of a TIFF, the first `max_pages` of them if given.
    Raises `UnreadableDocument` with a short reason."""
    image_format = image_format.lower()
    if image_format == "pdf":
        return _pdf_page_sizes(data, max_pages)
    if image_format not in _RASTER_READERS:
        raise UnreadableDocument(f"unsupported format {image_format!r}")
    reader, label = _RASTER_READERS[image_format]
    try:
        # The plugin class itself, not Image.open: it reads only the declared format, and skips the
        # decompression-bomb check, which is about decoding pixels (long images exceed its limit).
        with reader(BytesIO(data)) as image:
            sizes = _tiff_frame_sizes(image, max_pages) if label == "TIFF" else [image.size]
    except _IMAGE_ERRORS as exc:
        raise UnreadableDocument(f"not a valid {label} image") from exc
    if label == "PNG" and b"IEND" not in data[-_PNG_TAIL_BYTES:]:
        raise UnreadableDocument("truncated PNG image")
    return sizes


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
    if b"%PDF-" not in data[:_PDF_HEADER_WINDOW_BYTES]:
        raise UnreadableDocument("not a PDF document")
    with quiet_pypdf():
        try:
            reader = PdfReader(BytesIO(data), strict=False)
            if reader.is_encrypted:
                raise UnreadableDocument("encrypted PDF")
            pages = reader.pages
            count = len(pages) if max_pages is None else min(len(pages), max_pages)
            sizes = [_pdf_page_size(pages[index]) for index in range(count)]
        except PDF_ERRORS as exc:
            raise UnreadableDocument("not a valid PDF document") from exc
    if not sizes:
        raise UnreadableDocument("PDF has no pages")
    return sizes


def _pdf_page_size(page: PageObject) -> tuple[int, int]:
    box = page.cropbox
    width_pt, height_pt = abs(float(box.width)), abs(float(box.height))
    if page.rotation % 180 == 90:
        width_pt, height_pt = height_pt, width_pt
    return max(1, int(width_pt * PDF_PIXELS_PER_POINT)), max(1, int(height_pt * PDF_PIXELS_PER_POINT))


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
