"""Getting one input ready to send: read it (unless the service will fetch it), refuse what the
API would refuse without calling it, and cut PDFs of more than 10 pages into parts.

Reads happen ahead of free OCR slots, within a memory budget, so a slot never waits on storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ocrbatch.clova.contract import MAX_IMAGE_BYTES, MAX_PDF_PAGES_PER_CALL
from ocrbatch.clova.documents import LONG_IMAGE_MAX_SIDE_PX, UnreadableDocument, is_long_image, page_sizes
from ocrbatch.storage.base import Storage
from ocrbatch.worker.discovery import DiscoveredItem
from ocrbatch.worker.result_files import split_pdf

PRESIGNED_URL_EXPIRES_S = 3600


@dataclass(frozen=True)
class Part:
    """One API call's worth of a document: its bytes, or a URL the service fetches."""

    data: bytes | None
    url: str | None
    first_page: int = 0
    page_count: int | None = None  # set for the parts of a split PDF

    def image_name(self, key: str) -> str:
        """The name sent to the service: the key, or for a part of a split PDF, which pages it holds
        (so each part is one recognition of its own, for the service's records and ours)."""
        if self.page_count is None:
            return key
        return f"{key}#pages={self.first_page + 1}-{self.first_page + self.page_count}"


@dataclass(frozen=True)
class PreparedItem:
    item: DiscoveredItem
    image_format: str
    etag: str  # of the bytes actually read (the object may have changed since discovery)
    parts: list[Part]


class ItemRefused(Exception):
    """The input cannot be recognised; the reason goes into its failure record."""


class MemoryBudget:
    """Bytes that may be held by prefetched inputs at once; a larger input waits until it is alone."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, size_bytes: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.held_bytes == 0 or self.held_bytes + size_bytes <= self.limit_bytes
            )
            self.held_bytes += size_bytes
        try:
            yield
        finally:
            async with self._changed:
                self.held_bytes -= size_bytes
                self._changed.notify_all()


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


def needs_bytes(image_format: str, transfer_mode: str) -> bool:
    """In url mode images go by URL unread; PDFs are read anyway, to count and cut their pages."""
    return transfer_mode != "url" or image_format == "pdf"


async def prepare_item(
    item: DiscoveredItem,
    *,
    image_format: str,
    inputs: Storage,
    transfer_mode: str,
    long_image: bool,
) -> PreparedItem:
    """The item's parts, or `ItemRefused` with a reason an operator can act on."""
    if (reason := size_refusal(item.size)) is not None:
        raise ItemRefused(reason)
    if not needs_bytes(image_format, transfer_mode):
        url = await inputs.presigned_get_url(item.key, expires_s=PRESIGNED_URL_EXPIRES_S)
        return PreparedItem(item, image_format, item.etag, [Part(None, url)])
    stored = await inputs.read(item.key)
    data = stored.data
    if not data:
        raise ItemRefused("the file is empty (0 bytes)")
    try:
        sizes = await asyncio.to_thread(page_sizes, data, image_format)
    except UnreadableDocument as exc:
        raise ItemRefused(f"the file cannot be read as {image_format.upper()}: {exc}") from None
    if (reason := page_refusal(sizes, long_image=long_image)) is not None:
        raise ItemRefused(reason)
    if image_format == "pdf" and len(sizes) > MAX_PDF_PAGES_PER_CALL:
        chunks = await asyncio.to_thread(split_pdf, data)
        parts = [
            Part(
                chunk,
                None,
                first_page=index * MAX_PDF_PAGES_PER_CALL,
                page_count=min(MAX_PDF_PAGES_PER_CALL, len(sizes) - index * MAX_PDF_PAGES_PER_CALL),
            )
            for index, chunk in enumerate(chunks)
        ]
    elif transfer_mode == "url":
        url = await inputs.presigned_get_url(item.key, expires_s=PRESIGNED_URL_EXPIRES_S)
        parts = [Part(None, url)]
    else:
        parts = [Part(data, None)]
    return PreparedItem(item, image_format, stored.info.etag, parts)
