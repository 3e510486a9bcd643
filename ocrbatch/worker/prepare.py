"""Getting one input ready to send: read it (unless the service will fetch it), refuse what the
API would refuse, or what would cost more than a document may, without calling it, and cut PDFs
and TIFFs of more than 10 pages into parts.

Reads happen ahead of free OCR slots, within a memory budget, so a slot never waits on storage.
An item's reservation in the budget follows what it holds: its input while it waits, then also
the part being sent and the client's encoding of it. Parts are made one at a time, in a thread,
as the calls ask for them.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ocrbatch.clova.client import TransferMode, sending_overhead_bytes
from ocrbatch.clova.contract import MAX_IMAGE_BYTES, MAX_PDF_PAGES_PER_CALL
from ocrbatch.clova.documents import (
    LONG_IMAGE_MAX_SIDE_PX,
    UnreadableDocument,
    check_decodable,
    count_pages,
    is_long_image,
    page_sizes,
)
from ocrbatch.clova.parts import pdf_parts, tiff_parts
from ocrbatch.settings import DEFAULT_MAX_PAGES_PER_DOCUMENT
from ocrbatch.storage.base import Storage
from ocrbatch.worker.discovery import DiscoveredItem

PRESIGNED_URL_EXPIRES_S = 3600
# Formats the service reads at most 10 pages of per call, which the worker cuts into parts.
MULTI_PAGE_FORMATS = frozenset({"pdf", "tif", "tiff"})
INLINE_CHECK_BYTES = 1024 * 1024  # single images up to this size are checked on the event loop


@dataclass(frozen=True)
class Part:
    """One API call's worth of a document: its bytes, or a URL the service fetches."""

    data: bytes | None
    url: str | None
    first_page: int = 0
    page_count: int | None = None  # set for the parts of a split document

    def image_name(self, key: str) -> str:
        """The name sent to the service: the key, or for a part of a split document, which pages it
        holds (so each part is one recognition of its own, for the service's records and ours)."""
        if self.page_count is None:
            return key
        return f"{key}#pages={self.first_page + 1}-{self.first_page + self.page_count}"


class ItemRefused(Exception):
    """The input cannot be recognised; the reason goes into its failure record."""


class Reservation:
    """The bytes one item holds in a `MemoryBudget`, from `MemoryBudget.reserve`; `resize` follows
    what the item holds as it goes."""

    def __init__(self, budget: MemoryBudget, size_bytes: int) -> None:
        self._budget = budget
        self.size_bytes = size_bytes

    async def resize(self, size_bytes: int) -> None:
        """Hold `size_bytes` from now on: less at once; more once the budget has room for it."""
        await self._budget._resize(self, size_bytes)


class MemoryBudget:
    """Bytes that may be held by prefetched inputs and the parts being sent at once.

    A reservation that does not fit waits, unless nothing else is held (a larger input waits until
    it is alone). A reservation that grows waits the same way, before any new reservation is let
    in; when every held byte belongs to reservations waiting to grow, none could ever be freed, so
    the first of them grows anyway.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self._growing: deque[Reservation] = deque()
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, size_bytes: int) -> AsyncIterator[Reservation]:
        """Hold `size_bytes` (waiting for room) until the block ends, whatever it resized them to."""
        reservation = Reservation(self, 0)
        async with self._changed:
            await self._changed.wait_for(lambda: not self._growing and self._fits(size_bytes, 0))
            reservation.size_bytes = size_bytes
            self.held_bytes += size_bytes
        try:
            yield reservation
        finally:
            async with self._changed:
                self.held_bytes -= reservation.size_bytes
                reservation.size_bytes = 0
                self._changed.notify_all()

    def _fits(self, more_bytes: int, own_bytes: int) -> bool:
        return self.held_bytes == own_bytes or self.held_bytes + more_bytes <= self.limit_bytes

    def _may_grow(self, reservation: Reservation, more_bytes: int) -> bool:
        if self._growing[0] is not reservation:
            return False
        stuck = self.held_bytes == sum(waiting.size_bytes for waiting in self._growing)
        return stuck or self._fits(more_bytes, reservation.size_bytes)

    async def _resize(self, reservation: Reservation, size_bytes: int) -> None:
        async with self._changed:
            more_bytes = size_bytes - reservation.size_bytes
            if more_bytes > 0:
                self._growing.append(reservation)
                self._changed.notify_all()  # every held byte may now be waiting to grow
                try:
                    await self._changed.wait_for(lambda: self._may_grow(reservation, more_bytes))
                finally:
                    self._growing.remove(reservation)
                    self._changed.notify_all()  # the next grower, or new reservations, may go
            self.held_bytes += more_bytes
            reservation.size_bytes = size_bytes
            self._changed.notify_all()


class Parts:
    """The parts of one item, in order. Iterated with `async for`, each part is made when it is
    asked for, the previous one being done (in a worker thread when `cut`: a document being cut),
    and the item's reservation is resized to what it then holds: the input while a document is
    still being cut (`retained_bytes`), plus the part and the client's encoding of it
    (`sending_overhead_bytes`)."""

    def __init__(
        self,
        parts: Iterator[Part],
        *,
        count: int,
        retained_bytes: int,
        transfer_mode: TransferMode,
        reservation: Reservation | None,
        cut: bool = False,
    ) -> None:
        self.count = count
        self._parts = parts
        self._cut = cut
        self._retained_bytes = retained_bytes
        self._transfer_mode = transfer_mode
        self._reservation = reservation

    def __aiter__(self) -> AsyncIterator[Part]:
        return self._each()

    async def _each(self) -> AsyncIterator[Part]:
        while True:
            await self._hold(self._retained_bytes)
            part = await asyncio.to_thread(next, self._parts, None) if self._cut else next(self._parts, None)
            if part is None:
                return
            await self._hold(self.held_bytes(part))
            yield part

    def held_bytes(self, part: Part) -> int:
        """What the item holds while `part` is sent."""
        if part.data is None:
            return self._retained_bytes
        size = len(part.data)
        extra = size if part.page_count is not None else 0  # a whole input is already retained
        return self._retained_bytes + extra + sending_overhead_bytes(size, self._transfer_mode)

    async def _hold(self, size_bytes: int) -> None:
        if self._reservation is not None:
            await self._reservation.resize(size_bytes)


@dataclass(frozen=True)
class PreparedItem:
    item: DiscoveredItem
    image_format: str
    etag: str  # of the bytes actually read (the object may have changed since discovery)
    parts: Parts


def size_refusal(size_bytes: int) -> str | None:
    """Why an input of this size cannot be sent, or None (decided from the listing, unread)."""
    if size_bytes == 0:
        return "the file is empty (0 bytes)"
    if size_bytes > MAX_IMAGE_BYTES:
        return f"the file is {size_bytes / 1024 / 1024:.1f} MB; the API accepts at most 50 MB"
    return None


def page_refusal(sizes: list[tuple[int, int]], *, long_image: bool) -> str | None:
    """Why pages of these sizes cannot be sent (a long image without the option, over 25,000 px)."""
    for width, height in sizes:
        if is_long_image(width, height) and not long_image:
            return f"long image ({width} x {height} px): enable the batch's long image option to recognise it"
        if max(width, height) > LONG_IMAGE_MAX_SIDE_PX:
            return f"the image is {width} x {height} px; the API accepts at most 25,000 px"
    return None


def page_count_refusal(pages: int, *, max_pages: int) -> str | None:
    """Why a document of this many pages is not sent (`[worker] max_pages_per_document`)."""
    if pages <= max_pages:
        return None
    return (
        f"the document has {pages:,} pages; at most {max_pages:,} are recognised per document "
        "([worker] max_pages_per_document)"
    )


def needs_bytes(image_format: str, transfer_mode: str) -> bool:
    """In url mode images go by URL unread; PDFs and TIFFs are read anyway, to count and cut their
    pages."""
    return transfer_mode != "url" or image_format in MULTI_PAGE_FORMATS


async def prepare_item(
    item: DiscoveredItem,
    *,
    image_format: str,
    inputs: Storage,
    transfer_mode: TransferMode,
    long_image: bool,
    max_pages: int = DEFAULT_MAX_PAGES_PER_DOCUMENT,
    reservation: Reservation | None = None,
) -> PreparedItem:
    """The item's parts, or `ItemRefused` with a reason an operator can act on, before any call.
    `reservation`, if given, holds the input's size in the budget while it is read (the caller
    reserves it); the parts resize it as they are sent."""
    if (reason := size_refusal(item.size)) is not None:
        raise ItemRefused(reason)
    if not needs_bytes(image_format, transfer_mode):
        url = await inputs.presigned_get_url(item.key, expires_s=PRESIGNED_URL_EXPIRES_S)
        return PreparedItem(
            item, image_format, item.etag, _one(Part(None, url), 0, transfer_mode, reservation)
        )
    stored = await inputs.read(item.key)
    data = stored.data
    if not data:
        raise ItemRefused("the file is empty (0 bytes)")
    if image_format in MULTI_PAGE_FORMATS or len(data) > INLINE_CHECK_BYTES:
        sizes = await asyncio.to_thread(_checked_page_sizes, data, image_format, max_pages)
    else:  # a small single image: its header is read in microseconds, no thread needed
        sizes = _checked_page_sizes(data, image_format, max_pages)
    if (reason := page_refusal(sizes, long_image=long_image)) is not None:
        raise ItemRefused(reason)
    etag = stored.info.etag
    if image_format in MULTI_PAGE_FORMATS and len(sizes) > MAX_PDF_PAGES_PER_CALL:
        return PreparedItem(
            item, image_format, etag, _split(data, image_format, sizes, transfer_mode, reservation)
        )
    if transfer_mode == "url":
        url = await inputs.presigned_get_url(item.key, expires_s=PRESIGNED_URL_EXPIRES_S)
        return PreparedItem(item, image_format, etag, _one(Part(None, url), 0, transfer_mode, reservation))
    return PreparedItem(
        item, image_format, etag, _one(Part(data, None), len(data), transfer_mode, reservation)
    )


def _checked_page_sizes(data: bytes, image_format: str, max_pages: int) -> list[tuple[int, int]]:
    """The pages' sizes, once their count is known to be within `max_pages` (counting reads no
    more of a document than its page tree or frame directories)."""
    try:
        pages = count_pages(data, image_format, limit=max_pages)
        if (reason := page_count_refusal(pages, max_pages=max_pages)) is not None:
            raise ItemRefused(reason)
        sizes = page_sizes(data, image_format)
    except UnreadableDocument as exc:
        raise ItemRefused(f"the file cannot be read as {image_format.upper()}: {exc}") from None
    if image_format in ("tif", "tiff") and len(sizes) > MAX_PDF_PAGES_PER_CALL:
        try:  # cutting a TIFF decodes its frames: none may be a decompression bomb
            for index, (width, height) in enumerate(sizes):
                check_decodable(width, height, page_index=index)
        except UnreadableDocument as exc:
            raise ItemRefused(
                f"{exc} (a TIFF of more than 10 frames is cut into parts, which decodes them)"
            ) from None
    return sizes


def _one(
    part: Part, retained_bytes: int, transfer_mode: TransferMode, reservation: Reservation | None
) -> Parts:
    return Parts(
        iter([part]),
        count=1,
        retained_bytes=retained_bytes,
        transfer_mode=transfer_mode,
        reservation=reservation,
    )


def _split(
    data: bytes,
    image_format: str,
    sizes: list[tuple[int, int]],
    transfer_mode: TransferMode,
    reservation: Reservation | None,
) -> Parts:
    chunks = pdf_parts(data) if image_format == "pdf" else tiff_parts(data)
    return Parts(
        _parts_of(chunks, image_format, len(sizes)),
        count=math.ceil(len(sizes) / MAX_PDF_PAGES_PER_CALL),
        retained_bytes=len(data),  # the reader cutting the parts keeps the input
        transfer_mode=transfer_mode,
        reservation=reservation,
        cut=True,
    )


def _parts_of(chunks: Iterator[bytes], image_format: str, page_count: int) -> Iterator[Part]:
    """The chunks of a split document as parts; `ItemRefused` for one that cannot be made (a
    frame that does not decode) or is over the API's size limit."""
    first_page = 0
    try:
        for chunk in chunks:
            pages = min(MAX_PDF_PAGES_PER_CALL, page_count - first_page)
            last_page = first_page + pages
            if len(chunk) > MAX_IMAGE_BYTES:
                raise ItemRefused(
                    f"pages {first_page + 1}-{last_page} make a part of {len(chunk) / 1024 / 1024:.1f} MB; "
                    "the API accepts at most 50 MB"
                )
            yield Part(chunk, None, first_page=first_page, page_count=pages)
            first_page = last_page
    except UnreadableDocument as exc:
        raise ItemRefused(f"the file cannot be read as {image_format.upper()}: {exc}") from None
