"""What a document is, read from its bytes: its pages and their sizes in pixels, and its parts of
at most 10 pages for the API.

Counting and sizing parse only headers, page trees and page boxes, never pixels, so this is cheap
enough to run on every input before it is sent anywhere. Used by the emulator to shape its answers,
and by the worker to refuse corrupt, encrypted or over-long documents without calling the API and
to cut long ones into parts (`pdf_parts`, `tiff_parts`): one part at a time, each holding only what
its own pages use.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO

from PIL import ExifTags, Image, ImageFile, JpegImagePlugin, PngImagePlugin, TiffImagePlugin
from pypdf import PageObject, PdfReader, PdfWriter
from pypdf.errors import PyPdfError
from pypdf.filters import decode_stream_data
from pypdf.generic import (
    ArrayObject,
    DictionaryObject,
    EncodedStreamObject,
    IndirectObject,
    NameObject,
    PdfObject,
    StreamObject,
)

from ocrbatch.clova.contract import MAX_PDF_PAGES_PER_CALL

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
    except _IMAGE_ERRORS as exc:
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


def _pdf_page_count(data: bytes, limit: int) -> int:
    if b"%PDF-" not in data[:_PDF_HEADER_WINDOW_BYTES]:
        raise UnreadableDocument("not a PDF document")
    with quiet_pypdf():
        try:
            reader = PdfReader(BytesIO(data), strict=False)
            if reader.is_encrypted:
                raise UnreadableDocument("encrypted PDF")
            root = reader.root_object.get("/Pages")
            root = root.get_object() if root is not None else None
            if not isinstance(root, DictionaryObject):
                raise UnreadableDocument("not a valid PDF document")
            declared = root.get("/Count")
            counted = _count_tree_pages(root, limit)
        except PDF_ERRORS as exc:
            raise UnreadableDocument("not a valid PDF document") from exc
    if counted > limit and isinstance(declared, int) and declared > counted:
        return int(declared)
    return counted


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

# Resource kinds that content streams name; an entry no content of the part names is left out.
_NAMED_RESOURCES = ("/XObject", "/Font", "/ExtGState", "/ColorSpace", "/Pattern", "/Shading", "/Properties")
_NAME_TOKEN = re.compile(rb"/([^\x00\t\n\x0c\r /\[\]()<>{}%]*)")  # a name ends at whitespace or a delimiter
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_MAX_FORM_DEPTH = 8  # forms nested deeper keep all their resources
# Entries that lead from a page, or from one of its annotations, to other pages of the document.
_PAGE_LINKS = ("/B", "/AA")
_ANNOTATION_LINKS = frozenset({"/P", "/Parent", "/Dest", "/A", "/AA", "/IRT", "/Popup", "/StructParent"})
# TIFF compressions Pillow writes for any mode, and those it writes for some modes only; a frame
# compressed otherwise is written as LZW (lossless, like most of those).
_TIFF_ANY_MODE_COMPRESSIONS = frozenset({"raw", "packbits", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate"})
_TIFF_MODE_COMPRESSIONS = {
    "group3": frozenset({"1"}),
    "group4": frozenset({"1"}),
    "jpeg": frozenset({"L", "RGB", "CMYK", "YCbCr"}),
    "tiff_jpeg": frozenset({"L", "RGB", "CMYK", "YCbCr"}),
}
_TIFF_JPEG_QUALITY = 90


def pdf_parts(data: bytes, *, pages_per_part: int = MAX_PDF_PAGES_PER_CALL) -> Iterator[bytes]:
    """The PDF cut into consecutive parts of at most `pages_per_part` pages, in order, each made
    only when asked for. A part holds its pages and only the resources their content names (a
    resource dictionary shared by every page is not copied whole into every part), so its size
    tracks its pages. A PDF within the limit comes back as `data` itself, not re-written.
    `UnreadableDocument` when pypdf cannot read it, it is encrypted or it has no pages."""
    if pages_per_part < 1:
        raise ValueError("pages_per_part must be at least 1")
    page_count = len(page_sizes(data, "pdf"))  # validates: header, encryption, readable pages
    if page_count <= pages_per_part:
        yield data
        return
    with quiet_pypdf():
        try:
            reader = PdfReader(BytesIO(data), strict=False)
            pages = reader.pages
        except PDF_ERRORS as exc:
            raise UnreadableDocument("not a valid PDF document") from exc
    for start in range(0, page_count, pages_per_part):
        # The lock of quiet_pypdf is held while a part is made, never while it is handed out.
        with quiet_pypdf():
            try:
                part = _pdf_part(pages, range(start, min(start + pages_per_part, page_count)))
            except PDF_ERRORS as exc:
                raise UnreadableDocument("not a valid PDF document") from exc
        yield part


def _pdf_part(pages: Sequence[PageObject], indexes: range) -> bytes:
    """A PDF of the given pages. While they are cloned into the part, each page and form XObject
    gets resources reduced to what its content names, and the page's links to other pages are
    cut (`_cut_links`); the reader's own objects are restored afterwards, so the next part starts
    from the document as it is."""
    writer = PdfWriter()
    swaps = _Swaps()
    pruned: set[int] = set()
    try:
        for index in indexes:
            page = pages[index]
            _prune_resources(page, _content_bytes(page.get("/Contents")), swaps, pruned, 0)
            _cut_links(page, swaps)
            writer.add_page(page)
    finally:
        swaps.restore()
    buffer = BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


class _Swaps:
    """Entries of the reader's objects replaced while one part is cloned, and their originals."""

    def __init__(self) -> None:
        self._originals: list[tuple[DictionaryObject, str, PdfObject | None]] = []

    def replace(self, owner: DictionaryObject, key: str, value: PdfObject | None) -> None:
        """Set `owner[key]` to `value`, or remove it for None, until `restore`."""
        self._originals.append((owner, key, owner.raw_get(key) if key in owner else None))
        if value is None:
            del owner[key]
        else:
            owner[NameObject(key)] = value

    def restore(self) -> None:
        for owner, key, original in reversed(self._originals):
            if original is None:
                owner.pop(key, None)
            else:
                owner[NameObject(key)] = original
        self._originals.clear()


def _prune_resources(
    owner: DictionaryObject, content: bytes | None, swaps: _Swaps, pruned: set[int], depth: int
) -> None:
    """Give `owner` (a page or a form XObject) resources holding only the entries `content`
    names. Kept as they are: resources of content that cannot be decoded, of forms nested too
    deeply, or used by a form without resources of its own (it draws with its page's); entries
    whose name is not plain ASCII."""
    if id(owner) in pruned or content is None or depth > _MAX_FORM_DEPTH or "/Resources" not in owner:
        return
    pruned.add(id(owner))
    resources = owner["/Resources"]
    if not isinstance(resources, DictionaryObject):
        return
    names = _content_names(content)
    kept_resources = DictionaryObject()
    for key, value in resources.items():
        entries = value.get_object() if key in _NAMED_RESOURCES else None
        if not isinstance(entries, DictionaryObject):
            kept_resources[NameObject(key)] = value
            continue
        kept = DictionaryObject(
            {
                NameObject(name): entry
                for name, entry in entries.items()
                if name[1:] in names or not name.isascii()
            }
        )
        if key == "/XObject":
            for entry in kept.values():
                form = entry.get_object()
                if isinstance(form, StreamObject) and form.get("/Subtype") == "/Form":
                    if "/Resources" not in form:
                        return  # the form draws with these resources: keep them all
                    _prune_resources(form, _content_bytes(form), swaps, pruned, depth + 1)
        kept_resources[NameObject(key)] = kept
    swaps.replace(owner, "/Resources", kept_resources)


def _cut_links(page: PageObject, swaps: _Swaps) -> None:
    """Remove what leads from the page to other pages, which pypdf would clone into the part with
    their content and their own links (a chain of "next page" links is the whole document): its
    article beads and actions, and the links of its annotations (destinations, actions, parent
    fields and pages). Annotations keep their appearance."""
    for key in _PAGE_LINKS:
        if key in page:
            swaps.replace(page, key, None)
    annotations = page.get("/Annots")
    annotations = annotations.get_object() if annotations is not None else None
    if isinstance(annotations, ArrayObject):
        kept = ArrayObject()
        for entry in annotations:
            annotation = entry.get_object()
            if isinstance(annotation, DictionaryObject):
                kept.append(
                    DictionaryObject(
                        {NameObject(k): v for k, v in annotation.items() if k not in _ANNOTATION_LINKS}
                    )
                )
        swaps.replace(page, "/Annots", kept)


def _content_bytes(contents: PdfObject | None) -> bytes | None:
    """The decoded bytes of a content stream or array of them; None when they cannot be decoded.
    Decoded without pypdf's cache, so the reader does not keep every page's content."""
    if contents is None:
        return b""
    resolved = contents.get_object()
    items = list(resolved) if isinstance(resolved, ArrayObject) else [resolved]
    chunks = []
    for item in items:
        stream = item.get_object() if isinstance(item, PdfObject) else None
        if not isinstance(stream, StreamObject):
            return None
        try:
            encoded = isinstance(stream, EncodedStreamObject)
            chunks.append(decode_stream_data(stream) if encoded else stream.get_data())
        except (*PDF_ERRORS, NotImplementedError):
            return None
    return b"\n".join(chunks)


def _content_names(content: bytes) -> set[str]:
    """Every name token of a content stream (without its slash, #xx escapes undone)."""
    return {
        _NAME_ESCAPE.sub(lambda escape: bytes([int(escape[1], 16)]), token).decode("latin-1")
        for token in _NAME_TOKEN.findall(content)
    }


def tiff_parts(data: bytes, *, frames_per_part: int = MAX_PDF_PAGES_PER_CALL) -> Iterator[bytes]:
    """The TIFF cut into TIFFs of at most `frames_per_part` frames (the service reads at most as
    many per call as PDF pages), in order, each made only when asked for. Frames are decoded one
    at a time, after the decompression-bomb check (`check_decodable`), and written with their own
    compression (LZW where Pillow cannot write it), resolution and orientation. A TIFF within the
    limit comes back as `data` itself. `UnreadableDocument` when a frame cannot be read."""
    if frames_per_part < 1:
        raise ValueError("frames_per_part must be at least 1")
    try:
        image = TiffImagePlugin.TiffImageFile(BytesIO(data))
        frame_count = image.n_frames
    except _IMAGE_ERRORS as exc:
        raise UnreadableDocument("not a valid TIFF image") from exc
    with image:
        if frame_count <= frames_per_part:
            yield data
            return
        for start in range(0, frame_count, frames_per_part):
            yield _tiff_part(image, range(start, min(start + frames_per_part, frame_count)))


def _tiff_part(image: TiffImagePlugin.TiffImageFile, indexes: range) -> bytes:
    buffer = BytesIO()
    try:
        with TiffImagePlugin.AppendingTiffWriter(buffer) as part:
            for index in indexes:
                image.seek(index)
                check_decodable(*image.size, page_index=index)
                image.save(part, format="TIFF", **_tiff_frame_options(image))
                part.newFrame()
    except Image.DecompressionBombError as exc:
        raise UnreadableDocument(f"page {indexes.start + 1}-{indexes.stop}: {exc}") from exc
    except _IMAGE_ERRORS as exc:
        raise UnreadableDocument(f"the frames {indexes.start + 1}-{indexes.stop} cannot be decoded") from exc
    return buffer.getvalue()


def _tiff_frame_options(image: TiffImagePlugin.TiffImageFile) -> dict[str, object]:
    """Pillow's save options that keep the current frame as it was: its compression where Pillow
    writes it for the frame's mode, and its orientation (Pillow keeps the resolution itself)."""
    compression = str(image.info.get("compression"))
    if compression not in _TIFF_ANY_MODE_COMPRESSIONS and image.mode not in _TIFF_MODE_COMPRESSIONS.get(
        compression, ()
    ):
        compression = "tiff_lzw"
    options: dict[str, object] = {"compression": compression}
    if compression in ("jpeg", "tiff_jpeg"):
        options["quality"] = _TIFF_JPEG_QUALITY
    orientation = image.tag_v2.get(ExifTags.Base.Orientation)
    if orientation is not None:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        options["exif"] = exif
    return options


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
