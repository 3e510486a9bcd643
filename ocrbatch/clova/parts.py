"""A long document cut into parts of at most 10 pages for the API, one part at a time, each holding
only what its own pages use: PDFs (`pdf_parts`, resources pruned and links to other pages cut) and
multi-frame TIFFs (`tiff_parts`, each frame's compression kept). What a document is, read from its
bytes, is `documents.py`'s."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from io import BytesIO

from PIL import ExifTags, Image, TiffImagePlugin
from pypdf import PageObject, PdfReader, PdfWriter
from pypdf.filters import decode_stream_data
from pypdf.generic import (
    ArrayObject,
    DictionaryObject,
    EncodedStreamObject,
    NameObject,
    PdfObject,
    StreamObject,
)

from ocrbatch.clova.contract import MAX_PDF_PAGES_PER_CALL
from ocrbatch.clova.documents import (
    IMAGE_ERRORS,
    PDF_ERRORS,
    UnreadableDocument,
    check_decodable,
    page_sizes,
    quiet_pypdf,
)

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
    except IMAGE_ERRORS as exc:
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
    except IMAGE_ERRORS as exc:
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
