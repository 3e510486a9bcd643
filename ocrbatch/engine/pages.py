"""The pixels of one page of an upload, ready for the local OCR engine: grayscale, as a PGM file.

Images are decoded with Pillow (a TIFF frame per page, EXIF orientation applied), PDF pages are
rendered with PDFium (`pypdfium2`) at the scale `documents.page_sizes` reports (2 px per point,
144 dpi), so `convertedImageInfo` matches what the emulator says for the same file. Grayscale is
what Tesseract binarises anyway, and uncompressed PGM costs nothing to write or read. Blocking
work: call these functions in a worker thread.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps

from ocrbatch.clova.documents import (
    IMAGE_READERS,
    MAX_DECODED_PAGE_PIXELS,
    PDF_PIXELS_PER_POINT,
    UnreadableDocument,
    declared_dpi,
    render_pdf_page,
)


@dataclass(frozen=True)
class PageImage:
    """One page as Tesseract reads it: PGM bytes, the size in pixels, and the resolution if known."""

    pgm: bytes
    width: int
    height: int
    dpi: int | None


def page_image(data: bytes, image_format: str, page_index: int) -> PageImage:
    """Decode page `page_index` (0-based) of an upload already checked by `documents.page_sizes`.
    Raises `UnreadableDocument` with a short reason when the pixels cannot be read."""
    image_format = image_format.lower()
    if image_format == "pdf":
        return _pdf_page(data, page_index)
    reader = IMAGE_READERS.get(image_format)
    if reader is None:
        raise UnreadableDocument(f"unsupported format {image_format!r}")
    try:
        # The plugin class itself, not Image.open: Image.open's decompression-bomb warning would
        # refuse long images; the size is checked below before any pixel is decoded.
        with reader(BytesIO(data)) as image:
            if page_index:
                image.seek(page_index)
            _check_size(*image.size, page_index=page_index)
            dpi = declared_dpi(image.info.get("dpi"))
            gray = _grayscale(ImageOps.exif_transpose(image))
    except (SyntaxError, OSError, ValueError, EOFError, IndexError, KeyError, TypeError) as exc:
        raise UnreadableDocument(f"the pixels of page {page_index + 1} cannot be decoded") from exc
    return _pgm(gray, dpi)


def _pdf_page(data: bytes, page_index: int) -> PageImage:
    def scale_of(width_pt: float, height_pt: float) -> float:
        # Pages beyond the pixel budget are rendered smaller rather than refused.
        return min(
            float(PDF_PIXELS_PER_POINT), math.sqrt(MAX_DECODED_PAGE_PIXELS / max(1.0, width_pt * height_pt))
        )

    rendered, scale = render_pdf_page(data, page_index, scale_of=scale_of, grayscale=True)
    return _pgm(_grayscale(rendered), round(72 * scale))


def _check_size(width: int, height: int, *, page_index: int) -> None:
    """The engine's own pixel bound, checked from the header before any pixel is decoded (Pillow's
    decompression-bomb check is bypassed here, as it would refuse long images)."""
    if width * height > MAX_DECODED_PAGE_PIXELS:
        raise UnreadableDocument(
            f"page {page_index + 1} is too large to recognise ({width} x {height} px; at most "
            f"{MAX_DECODED_PAGE_PIXELS // 1_000_000} megapixels)"
        )


def _grayscale(image: Image.Image) -> Image.Image:
    """8-bit grayscale; transparent parts become white paper, not black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("L")
    return image if image.mode == "L" else image.convert("L")


def _pgm(image: Image.Image, dpi: int | None) -> PageImage:
    buffer = io.BytesIO()
    image.save(buffer, format="PPM")  # mode L is written as PGM (P5)
    return PageImage(pgm=buffer.getvalue(), width=image.width, height=image.height, dpi=dpi)
