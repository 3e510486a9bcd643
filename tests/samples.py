"""Sample documents built in memory for tests: images of given sizes, multi-frame TIFFs, PDFs."""

from __future__ import annotations

import io

from PIL import Image
from pypdf import PdfWriter


def png(width: int = 640, height: int = 480, *, mode: str = "L", colour: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def tiff(sizes: list[tuple[int, int]]) -> bytes:
    frames = [Image.new("L", size, 50) for size in sizes]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def pdf(pages: int, *, width_pt: float = 595, height_pt: float = 842, password: str | None = None) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=width_pt, height=height_pt)
    if password is not None:
        writer.encrypt(password)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
