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

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal

import structlog

from ocrbatch.batches.layout import (
    FAILED_FALLBACK_PREFIX,
    FAILED_PREFIX,
    FAILURE_SUFFIX,
    FALLBACK_PREFIX,
    SOURCE_KEY,
    decode_source_key,
    failure_record_key,
    has_natural_names,
    is_fallback_name,
    is_reserved,
    result_key,
)
from ocrbatch.clova.contract import IMAGE_FORMATS
from ocrbatch.locations import Location
from ocrbatch.storage.base import DEFAULT_PAGE_SIZE, ObjectInfo, Storage, closing
from ocrbatch.worker.cursors import (
    DerivedCursor,
    DiscoveryStats,
    FallbackCursor,
    Finder,
    Found,
    HeadCursor,
    head_or_none,
    results_in_order,
)

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


class _Judge:
    """Decides each input's state from its result and failure record."""

    def __init__(
        self,
        results: Storage,
        natural: tuple[Finder, Finder],
        fallback: tuple[Finder, Finder],
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

    async def _result_current(self, info: ObjectInfo, results: Finder) -> bool | None:
        """Whether the result was made from this version of the input; None when there is none."""
        result = await results.find(info.key)
        if result is None:
            return None
        # Written strictly after the input last changed (S3 times have 1 s resolution): current.
        if self._trust_timestamps and not result.headed and info.last_modified < result.info.last_modified:
            return True
        metadata = await self._metadata(info.key, result)
        return None if metadata is None else metadata.get("source-etag") == info.etag

    async def _from_failure(self, info: ObjectInfo, failures: Finder) -> DiscoveredItem | None:
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

    async def _metadata(self, key: str, found: Found) -> Mapping[str, str] | None:
        """The metadata of input `key`'s object; None when it was deleted since it was listed, or
        is a fallback name made for another key (its hash is all the name says)."""
        if found.headed:
            metadata = found.info.metadata
        elif (headed := await head_or_none(self._storage, found.info.key, self._stats)) is not None:
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
        closing(inputs.list(page_size=page_size)) as opened_inputs,
        closing(results_in_order(results, page_size)) as opened_results,
        closing(results.list(FAILED_PREFIX, page_size=page_size)) as opened_failures,
    ):
        # The three first pages at once: on S3 each is a round trip before the first item.
        input_listing, result_listing, failure_listing = await _started(
            (opened_inputs, opened_results, opened_failures)
        )
        cursors = (
            DerivedCursor(
                results, result_listing, prefix="", suffix=result_suffix, max_stash=max_stash, stats=stats
            ),
            DerivedCursor(
                results,
                failure_listing,
                prefix=FAILED_PREFIX,
                suffix=FAILURE_SUFFIX,
                max_stash=max_stash,
                stats=stats,
            ),
        )
        fallbacks = tuple(
            FallbackCursor(
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


class _Started:
    """A listing whose first entry was read already: that entry, then the rest of the listing
    (closed by whoever opened the listing, as before)."""

    def __init__(self, first: ObjectInfo | None, rest: AsyncIterator[ObjectInfo]) -> None:
        self._first = first
        self._rest = rest if first is not None else None

    def __aiter__(self) -> _Started:
        return self

    async def __anext__(self) -> ObjectInfo:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._rest is None:
            raise StopAsyncIteration
        return await anext(self._rest)


async def _started(listings: tuple[AsyncIterator[ObjectInfo], ...]) -> tuple[_Started, ...]:
    """The listings with their first entries read concurrently."""
    firsts = await asyncio.gather(*(anext(listing, None) for listing in listings))
    return tuple(_Started(first, listing) for first, listing in zip(firsts, listings, strict=True))


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
        HeadCursor(results, result_name, stats=stats),
        HeadCursor(results, failure_name, stats=stats),
    )
    judge = _Judge(results, cursors, cursors, trust_timestamps=False, stats=stats)
    return await judge.item(info)
