"""Where discovery finds each input's result and failure record: cursors over sorted listings of
the result storage, read along with the input listing (see `discovery.py` for why derived keys
need a small stash), a map of the fallback-named objects, or a HEAD per input."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from ocrbatch.batches.layout import OWN_PREFIXES, REPORT_KEY
from ocrbatch.errors import ObjectNotFound
from ocrbatch.storage.base import ObjectInfo, Storage, closing

log = structlog.get_logger("ocrbatch.worker")
# Sorts after every other character: `start_after=subtree + MAX_CHAR` skips a reserved subtree.
MAX_CHAR: Final = "\U0010ffff"


@dataclass
class DiscoveryStats:
    """What one `discover` pass cost: for metrics, and for tests that check memory stays flat."""

    heads: int = 0  # HEAD requests made (results that timestamps could not decide, failure records)
    max_stash: int = 0  # most entries read ahead of their input and held at once (either listing)
    fallbacks: int = 0  # objects listed under the fallback prefixes (`_keys/`, `_failed/_keys/`)


@dataclass(frozen=True)
class Found:
    info: ObjectInfo
    headed: bool  # `info` has the object's metadata: from a HEAD, or a listing with metadata


async def head_or_none(storage: Storage, key: str, stats: DiscoveryStats) -> ObjectInfo | None:
    """The object's info from a HEAD, counted in `stats`; None when it is not there."""
    stats.heads += 1
    try:
        return await storage.head(key)
    except ObjectNotFound:
        return None  # deleted since it was listed: as if it had never been


async def results_in_order(results: Storage, page_size: int) -> AsyncIterator[ObjectInfo]:
    """The result storage's objects in key order, without `_failed/`, `_outbox/`, `_keys/` and
    `_report.json`.

    Reaching a reserved subtree restarts the listing after it (one LIST request) instead of
    paging through it: failure records and fallback names have their own listings, and outbox
    chunks may pile up while a webhook is down. Keys the restart cannot skip (starting with
    subtree + U+10FFFF) are dropped one by one.
    """
    start_after: str | None = None
    while True:
        async with closing(results.list(start_after=start_after, page_size=page_size)) as listing:
            async for info in listing:
                subtree = next((p for p in OWN_PREFIXES if info.key.startswith(p)), None)
                if subtree is None:
                    if info.key != REPORT_KEY:
                        yield info
                    continue
                bound = subtree + MAX_CHAR
                if start_after is None or bound.encode() > start_after.encode():
                    start_after = bound
                    break
            else:
                return


class Finder(Protocol):
    async def find(self, key: str) -> Found | None:
        """The result (or failure record) of input `key`, or None when it has none."""


class DerivedCursor:
    """Finds `prefix + K + suffix` for input keys K given in increasing order, in one sorted listing."""

    def __init__(
        self,
        storage: Storage,
        listing: AsyncIterator[ObjectInfo],
        *,
        prefix: str,
        suffix: str,
        max_stash: int,
        stats: DiscoveryStats,
    ) -> None:
        self._storage = storage
        self._listing = listing
        self._prefix = prefix
        self._suffix = suffix
        self._max_stash = max_stash
        self._stats = stats
        self._next: ObjectInfo | None = None
        self._exhausted = False
        # Entries read ahead of their input, by source key. Only keys extending the current input
        # with a tail that sorts before the suffix ("a.png" -> "a.png.jpg", "a.png-2.jpg") get here.
        self._stash: dict[str, ObjectInfo] = {}

    def derived_key(self, key: str) -> str:
        return self._prefix + key + self._suffix

    async def find(self, key: str) -> Found | None:
        """The derived object of `key`, from the listing (or a HEAD when the stash is full)."""
        return await self._find(key, may_head=True)

    async def find_listed(self, key: str) -> Found | None:
        """The derived object of `key` if the listing holds it; never a HEAD (for keys whose
        derived name the storage may refuse to be asked about)."""
        return await self._find(key, may_head=False)

    async def _find(self, key: str, *, may_head: bool) -> Found | None:
        key_bytes = key.encode()
        for orphan in [source for source in self._stash if source.encode() < key_bytes]:
            del self._stash[orphan]  # its input is gone: no later input can claim it
        if (stashed := self._stash.pop(key, None)) is not None:
            return Found(stashed, headed=self._storage.listed_metadata)
        target = self.derived_key(key).encode()
        while (info := await self._peek()) is not None and info.key.encode() <= target:
            source = self._source(info.key)
            if source == key:
                self._next = None
                return Found(info, headed=self._storage.listed_metadata)
            if source is not None and source.encode() > key_bytes:
                if len(self._stash) >= self._max_stash:
                    # Leave `info` unread for the inputs after this one; ask for this one directly.
                    if not may_head:
                        return None
                    found = await head_or_none(self._storage, self.derived_key(key), self._stats)
                    return Found(found, headed=True) if found else None
                self._stash[source] = info
                self._stats.max_stash = max(self._stats.max_stash, len(self._stash))
            self._next = None  # consumed: a stray key or an orphan is simply dropped
        return None

    async def _peek(self) -> ObjectInfo | None:
        if self._next is None and not self._exhausted:
            self._next = await anext(self._listing, None)
            self._exhausted = self._next is None
        return self._next

    def _source(self, derived_key: str) -> str | None:
        """The input key `derived_key` was made for, or None when it is not a derived key."""
        if len(derived_key) <= len(self._prefix) + len(self._suffix):
            return None
        if not derived_key.startswith(self._prefix) or not derived_key.endswith(self._suffix):
            return None  # e.g. a result of the other format (the batch switched json <-> xls)
        return derived_key[len(self._prefix) : len(derived_key) - len(self._suffix)]


class HeadCursor:
    """Finds the object `name(K)` with a HEAD: for one input, without listings."""

    def __init__(self, storage: Storage, name: Callable[[str], str], *, stats: DiscoveryStats) -> None:
        self._storage = storage
        self._name = name
        self._stats = stats

    async def find(self, key: str) -> Found | None:
        found = await head_or_none(self._storage, self._name(key), self._stats)
        return Found(found, headed=True) if found else None


class FallbackCursor:
    """Finds the fallback-named object `name(K)` of a key without natural names, in a map of the
    fallback prefix's objects listed the first time it is asked; then in `natural`'s listing.

    The map holds at most `max_entries` objects; past that, a name not in it is asked with a HEAD.
    """

    def __init__(
        self,
        storage: Storage,
        name: Callable[[str], str],
        *,
        prefix: str,
        natural: DerivedCursor,
        page_size: int,
        max_entries: int,
        stats: DiscoveryStats,
    ) -> None:
        self._storage = storage
        self._name = name
        self._prefix = prefix
        self._natural = natural
        self._page_size = page_size
        self._max_entries = max_entries
        self._stats = stats
        self._listed: dict[str, ObjectInfo] | None = None
        self._complete = True

    async def find(self, key: str) -> Found | None:
        name = self._name(key)
        if self._listed is None:
            self._listed = await self._list()
        if (info := self._listed.get(name)) is not None:
            return Found(info, headed=self._storage.listed_metadata)
        if (
            not self._complete
            and (headed := await head_or_none(self._storage, name, self._stats)) is not None
        ):
            return Found(headed, headed=True)
        # Older versions wrote some such names where the store took them (long segments on S3).
        return await self._natural.find_listed(key)

    async def _list(self) -> dict[str, ObjectInfo]:
        listed: dict[str, ObjectInfo] = {}
        async with closing(self._storage.list(self._prefix, page_size=self._page_size)) as listing:
            async for info in listing:
                if len(listed) >= self._max_entries:
                    self._complete = False
                    log.warning(
                        "discovery.many_fallback_names",
                        location=str(self._storage.location),
                        prefix=self._prefix,
                        held=len(listed),
                        hint="the rest are looked up one HEAD per input",
                    )
                    break
                self._stats.fallbacks += 1
                listed[info.key] = info
        return listed
