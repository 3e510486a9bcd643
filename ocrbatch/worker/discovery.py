"""Discovery: every input object of a batch with its state, found by a streaming merge of listings.

For input key K the result is `K + suffix` and the failure record `_failed/K.json`, both in the
result storage. All listings come sorted by UTF-8 bytes, but K -> K + suffix does not keep that
order: "a.png" < "a.png.jpg" while "a.png.jpg.json" < "a.png.json". So each derived listing is
read up to K's own derived key, and entries read ahead of their input wait in a small stash.
Only keys that extend K can be read ahead, so the stash stays small (and has a hard cap) and
memory stays flat whatever the bucket size.

A key without natural names (`layout.has_natural_names`: too long, empty or dot segments, control
characters) has its result and failure record under fallback names, which sort nowhere near it.
The first such input of a pass lists `_keys/` and `_failed/_keys/` once into a map by name (only
such keys live there: few; past `max_fallbacks` entries the rest are HEADed one by one), and such
inputs are looked up there, then in the merge (a result an older version wrote under the natural
name, where the store took it, still counts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal, Protocol

import structlog

from ocrbatch.batches.layout import (
    FAILED_FALLBACK_PREFIX,
    FAILED_PREFIX,
    FAILURE_SUFFIX,
    FALLBACK_PREFIX,
    OWN_PREFIXES,
    REPORT_KEY,
    SOURCE_KEY,
    decode_source_key,
    failure_record_key,
    has_natural_names,
    is_fallback_name,
    is_reserved,
    result_key,
)
from ocrbatch.clova.contract import IMAGE_FORMATS
from ocrbatch.errors import ObjectNotFound
from ocrbatch.locations import Location
from ocrbatch.storage.base import DEFAULT_PAGE_SIZE, ObjectInfo, Storage, closing

log = structlog.get_logger("ocrbatch.worker")
SUPPORTED_FORMATS = frozenset(IMAGE_FORMATS)
ItemState = Literal["pending", "done", "failed", "skipped"]

DEFAULT_MAX_STASH = 1000
DEFAULT_MAX_FALLBACKS = 50_000  # fallback-named objects held per listing; beyond, HEADs

REASON_NEW = "new"
REASON_CHANGED = "changed since its result"
REASON_RETRY = "retrying a failure"
REASON_FAILURE_STALE = "changed since its failure"
REASON_RESERVED = "reserved name (its result would collide with _failed/, _outbox/, _keys/ or _report.json)"

# Sorts after every other character: `start_after=subtree + _MAX_CHAR` skips a reserved subtree.
_MAX_CHAR = "\U0010ffff"


def _extension(key: str) -> str:
    """The lowercased extension of the key's last segment; "" when it has none."""
    _, dot, ext = key.rpartition("/")[2].rpartition(".")
    return ext.lower() if dot else ""


def image_format(key: str) -> str | None:
    """The key's extension, lowercased, when it is a format the OCR API reads; else None."""
    ext = _extension(key)
    return ext if ext in SUPPORTED_FORMATS else None


@dataclass(frozen=True)
class DiscoveredItem:
    """One input object and what the worker has to do about it."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    state: ItemState
    # Why skipped ("unsupported format .gif", REASON_RESERVED) or pending (REASON_*); else None.
    reason: str | None = None
    # Pending because of a retryable or stale failure record: the worker deletes it on success.
    retry_of_failure: bool = False


@dataclass
class DiscoveryStats:
    """What one `discover` pass cost: for metrics, and for tests that check memory stays flat."""

    heads: int = 0  # HEAD requests made (results that timestamps could not decide, failure records)
    max_stash: int = 0  # most entries read ahead of their input and held at once (either listing)
    fallbacks: int = 0  # objects listed under the fallback prefixes (`_keys/`, `_failed/_keys/`)


@dataclass(frozen=True)
class _Found:
    info: ObjectInfo
    headed: bool  # `info` comes from a HEAD (it has metadata), not from a listing


async def _head(storage: Storage, key: str, stats: DiscoveryStats) -> ObjectInfo | None:
    stats.heads += 1
    try:
        return await storage.head(key)
    except ObjectNotFound:
        return None  # deleted since it was listed: as if it had never been


async def _result_listing(results: Storage, page_size: int) -> AsyncIterator[ObjectInfo]:
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
                bound = subtree + _MAX_CHAR
                if start_after is None or bound.encode() > start_after.encode():
                    start_after = bound
                    break
            else:
                return


class _Finder(Protocol):
    async def find(self, key: str) -> _Found | None:
        """The result (or failure record) of input `key`, or None when it has none."""


class _DerivedCursor:
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

    async def find(self, key: str) -> _Found | None:
        """The derived object of `key`, from the listing (or a HEAD when the stash is full)."""
        return await self._find(key, may_head=True)

    async def find_listed(self, key: str) -> _Found | None:
        """The derived object of `key` if the listing holds it; never a HEAD (for keys whose
        derived name the storage may refuse to be asked about)."""
        return await self._find(key, may_head=False)

    async def _find(self, key: str, *, may_head: bool) -> _Found | None:
        key_bytes = key.encode()
        for orphan in [source for source in self._stash if source.encode() < key_bytes]:
            del self._stash[orphan]  # its input is gone: no later input can claim it
        if (stashed := self._stash.pop(key, None)) is not None:
            return _Found(stashed, headed=False)
        target = self.derived_key(key).encode()
        while (info := await self._peek()) is not None and info.key.encode() <= target:
            source = self._source(info.key)
            if source == key:
                self._next = None
                return _Found(info, headed=False)
            if source is not None and source.encode() > key_bytes:
                if len(self._stash) >= self._max_stash:
                    # Leave `info` unread for the inputs after this one; ask for this one directly.
                    if not may_head:
                        return None
                    found = await _head(self._storage, self.derived_key(key), self._stats)
                    return _Found(found, headed=True) if found else None
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


class _HeadCursor:
    """Finds the object `name(K)` with a HEAD: for one input, without listings."""

    def __init__(self, storage: Storage, name: Callable[[str], str], *, stats: DiscoveryStats) -> None:
        self._storage = storage
        self._name = name
        self._stats = stats

    async def find(self, key: str) -> _Found | None:
        found = await _head(self._storage, self._name(key), self._stats)
        return _Found(found, headed=True) if found else None


class _FallbackCursor:
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
        natural: _DerivedCursor,
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

    async def find(self, key: str) -> _Found | None:
        name = self._name(key)
        if self._listed is None:
            self._listed = await self._list()
        if (info := self._listed.get(name)) is not None:
            return _Found(info, headed=False)
        if not self._complete and (headed := await _head(self._storage, name, self._stats)) is not None:
            return _Found(headed, headed=True)
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


class _Judge:
    """Decides each input's state from its result and failure record."""

    def __init__(
        self,
        results: Storage,
        natural: tuple[_Finder, _Finder],
        fallback: tuple[_Finder, _Finder],
        *,
        trust_timestamps: bool,
        stats: DiscoveryStats,
    ) -> None:
        self._storage = results
        self._location = results.location
        self._natural = natural  # (results, failure records) of keys with natural names
        self._fallback = fallback  # the same, of keys without
        self._trust_timestamps = trust_timestamps
        self._stats = stats

    async def item(self, info: ObjectInfo) -> DiscoveredItem:
        if reason := skip_reason(info.key):
            return _item(info, "skipped", reason)
        results, failures = (
            self._natural if has_natural_names(info.key, location=self._location) else self._fallback
        )
        result_current = await self._result_current(info, results)
        if result_current:
            return _item(info, "done")
        if from_failure := await self._from_failure(info, failures):
            return from_failure
        return _item(info, "pending", REASON_NEW if result_current is None else REASON_CHANGED)

    async def _result_current(self, info: ObjectInfo, results: _Finder) -> bool | None:
        """Whether the result was made from this version of the input; None when there is none."""
        result = await results.find(info.key)
        if result is None:
            return None
        # Written strictly after the input last changed (S3 times have 1 s resolution): current.
        if self._trust_timestamps and not result.headed and info.last_modified < result.info.last_modified:
            return True
        metadata = await self._metadata(info.key, result)
        return None if metadata is None else metadata.get("source-etag") == info.etag

    async def _from_failure(self, info: ObjectInfo, failures: _Finder) -> DiscoveredItem | None:
        """The item as its failure record says: failed, retrying or stale; None without a record."""
        failure = await failures.find(info.key)
        if failure is None:
            return None
        record = await self._metadata(info.key, failure)
        if record is None:
            return None
        if record.get("source-etag") != info.etag:
            return _item(info, "pending", REASON_FAILURE_STALE, retry_of_failure=True)
        if record.get("retryable") == "false":  # a record of unknown kind is retried, never final
            return _item(info, "failed")
        return _item(info, "pending", REASON_RETRY, retry_of_failure=True)

    async def _metadata(self, key: str, found: _Found) -> Mapping[str, str] | None:
        """The metadata of input `key`'s object; None when it was deleted since it was listed, or
        is a fallback name made for another key (its hash is all the name says)."""
        if found.headed:
            metadata = found.info.metadata
        elif (headed := await _head(self._storage, found.info.key, self._stats)) is not None:
            metadata = headed.metadata
        else:
            return None
        if is_fallback_name(found.info.key) and decode_source_key(metadata.get(SOURCE_KEY)) != key:
            return None
        return metadata


def skip_reason(key: str) -> str | None:
    if is_reserved(key):
        return REASON_RESERVED
    if image_format(key) is None:
        ext = _extension(key)
        return f"unsupported format .{ext}" if ext else "unsupported format (no extension)"
    return None


def _item(info: ObjectInfo, state: ItemState, reason: str | None = None, **flags: bool) -> DiscoveredItem:
    return DiscoveredItem(info.key, info.size, info.etag, info.last_modified, state, reason, **flags)


def _names(location: Location, suffix: str) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """How the result location names an input's result and failure record (`layout.py`)."""
    result_name = partial(result_key, suffix=suffix, location=location)
    return result_name, partial(failure_record_key, location=location)


async def discover(
    inputs: Storage,
    results: Storage,
    *,
    result_suffix: str,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_stash: int = DEFAULT_MAX_STASH,
    max_fallbacks: int = DEFAULT_MAX_FALLBACKS,
    trust_timestamps: bool | None = None,
    stats: DiscoveryStats | None = None,
) -> AsyncIterator[DiscoveredItem]:
    """Every input object, in key order, with its state.

    A result listed as written strictly after its input last changed is current without a HEAD
    when `trust_timestamps` (default: both locations are S3, whose server sets LastModified on
    upload; a local file's mtime is whatever `cp -p` or `rsync -a` copied, so there results are
    always checked by their source etag). Failure records are always read with a HEAD.
    By time, a result made from the old version while the input was being re-uploaded looks
    current: the worker must guard that race (it knows the etag it read).
    """
    if not result_suffix:
        raise ValueError("result_suffix must not be empty")
    if max_stash < 1:
        raise ValueError("max_stash must be at least 1")
    if max_fallbacks < 1:
        raise ValueError("max_fallbacks must be at least 1")
    if trust_timestamps is None:
        trust_timestamps = inputs.location.is_s3 and results.location.is_s3
    stats = DiscoveryStats() if stats is None else stats
    result_name, failure_name = _names(results.location, result_suffix)
    async with (
        closing(inputs.list(page_size=page_size)) as input_listing,
        closing(_result_listing(results, page_size)) as result_listing,
        closing(results.list(FAILED_PREFIX, page_size=page_size)) as failure_listing,
    ):
        cursors = (
            _DerivedCursor(
                results, result_listing, prefix="", suffix=result_suffix, max_stash=max_stash, stats=stats
            ),
            _DerivedCursor(
                results,
                failure_listing,
                prefix=FAILED_PREFIX,
                suffix=FAILURE_SUFFIX,
                max_stash=max_stash,
                stats=stats,
            ),
        )
        fallbacks = tuple(
            _FallbackCursor(
                results,
                name,
                prefix=prefix,
                natural=natural,
                page_size=page_size,
                max_entries=max_fallbacks,
                stats=stats,
            )
            for name, prefix, natural in (
                (result_name, FALLBACK_PREFIX, cursors[0]),
                (failure_name, FAILED_FALLBACK_PREFIX, cursors[1]),
            )
        )
        judge = _Judge(
            results, cursors, (fallbacks[0], fallbacks[1]), trust_timestamps=trust_timestamps, stats=stats
        )
        async for info in input_listing:
            yield await judge.item(info)


async def judge_item(
    results: Storage, info: ObjectInfo, *, result_suffix: str, stats: DiscoveryStats | None = None
) -> DiscoveredItem:
    """The state of one input object, from its result and failure record as they are now (HEADs).

    Used for an item announced by an event, and to check an item again once it is claimed: another
    worker may have finished it since the listing was read.
    """
    stats = DiscoveryStats() if stats is None else stats
    result_name, failure_name = _names(results.location, result_suffix)
    cursors = (
        _HeadCursor(results, result_name, stats=stats),
        _HeadCursor(results, failure_name, stats=stats),
    )
    judge = _Judge(results, cursors, cursors, trust_timestamps=False, stats=stats)
    return await judge.item(info)
