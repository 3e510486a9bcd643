"""One async storage interface over S3-compatible buckets and local directories.

A `Storage` is a view onto one `Location`: keys are relative to it ("scans/a.png"), so the same
key space works for inputs, results and control documents on either backend. Listings are
sorted by the UTF-8 bytes of the key (S3's order) and stream page by page. Every failure is a
`StorageError` naming the location and the reason: a missing bucket or directory is an error,
never an empty listing.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from ocrbatch.locations import Location

DEFAULT_PAGE_SIZE = 1000
_METADATA_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a head returns about one object.

    `etag` is opaque: compare it for equality and pass it back to `if_match`. `metadata` and
    `content_type` are filled by `head` and `read`, and by listings of a storage with
    `listed_metadata` (S3 listings cannot see them, so they leave them empty); `content_type`
    is None when unknown (a file put in a directory by hand).
    """

    key: str
    size: int
    etag: str
    last_modified: datetime
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True)
class StoredObject:
    """An object's bytes together with its info (etag and metadata of exactly these bytes)."""

    info: ObjectInfo
    data: bytes


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Refuse metadata keys S3 would mangle; values may be any text (backends encode them)."""
    for key in metadata:
        if not _METADATA_KEY_RE.fullmatch(key):
            raise ValueError(f"metadata key {key!r} must be lowercase letters, digits and '-'")


def check_key(key: str) -> None:
    """Refuse keys that are not relative paths: a local directory's keys are paths (S3 takes any
    non-empty key, `storage/s3.py`)."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"object key {key!r} must be non-empty and not start or end with '/'")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"object key {key!r} must not contain empty, '.' or '..' segments")


class Storage(ABC):
    """Operations on the objects under one location."""

    location: Location
    # Whether listings carry each object's metadata and content type, as a HEAD does (the local
    # backend reads its sidecars to list anyway); S3 listings cannot see them.
    listed_metadata: bool = False

    @abstractmethod
    def list_pages(
        self, prefix: str = "", *, start_after: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[list[ObjectInfo]]:
        """Yield the objects whose key starts with `prefix`, sorted, at most `page_size` at a time.

        `prefix` is a plain string prefix ("in/a" matches "in/a.png" and "in/ab/c.pdf");
        `start_after` skips every key up to and including it.
        """

    async def list(
        self, prefix: str = "", *, start_after: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[ObjectInfo]:
        """The objects of `list_pages`, one at a time."""
        async for page in self.list_pages(prefix, start_after=start_after, page_size=page_size):
            for info in page:
                yield info

    @abstractmethod
    async def read(self, key: str) -> StoredObject:
        """The object's bytes and info; `ObjectNotFound` when it does not exist."""

    @abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """The object's info with its metadata; `ObjectNotFound` when it does not exist."""

    @abstractmethod
    async def write(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Write the whole object atomically: readers see the old or the new bytes, never a mix.

        `if_none_match=True` writes only when no object exists (create-only); `if_match=etag`
        only when the current object has that etag. Either losing raises `PreconditionFailed`.
        Returns the info of the new object (its etag is what a later `if_match` needs).
        """

    @abstractmethod
    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete the object; deleting a missing object is not an error unless `if_match` is set."""

    @abstractmethod
    async def presigned_get_url(self, key: str, *, expires_s: int) -> str:
        """A URL that lets anyone GET the object until it expires (S3 only)."""


@asynccontextmanager
async def closing(iterator: AsyncIterator[_T]) -> AsyncIterator[AsyncIterator[_T]]:
    """Close a listing its reader stops early (a listing holds a page request open until then)."""
    try:
        yield iterator
    finally:
        if isinstance(iterator, AsyncGenerator):
            await iterator.aclose()
