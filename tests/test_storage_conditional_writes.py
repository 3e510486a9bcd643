"""Conditional writes on both storage backends (local directory and S3 via moto): create-only and
if_match writes, etags, and races between writers of one key."""

from __future__ import annotations

import asyncio

import pytest
from fixtures.storage import listed_keys

from ocrbatch.errors import PreconditionFailed
from ocrbatch.storage.base import ObjectInfo, Storage

# ---- conditional writes ----


async def test_create_only_write_succeeds_once(storage: Storage) -> None:
    """if_none_match writes when the key is free, then raises PreconditionFailed and changes nothing."""
    first = await storage.write("lock", b"first", if_none_match=True, metadata={"owner": "a"})

    with pytest.raises(PreconditionFailed, match="lock"):
        await storage.write("lock", b"second", if_none_match=True, metadata={"owner": "b"})

    stored = await storage.read("lock")
    assert (stored.data, stored.info.etag, stored.info.metadata) == (b"first", first.etag, {"owner": "a"})


async def test_if_match_writes_only_over_the_expected_etag(storage: Storage) -> None:
    """if_match with the current etag replaces the object; a stale etag raises and changes nothing."""
    v1 = await storage.write("doc", b"v1")
    v2 = await storage.write("doc", b"v2", if_match=v1.etag)

    with pytest.raises(PreconditionFailed):
        await storage.write("doc", b"v3", if_match=v1.etag)

    stored = await storage.read("doc")
    assert (stored.data, stored.info.etag) == (b"v2", v2.etag)
    assert v2.etag != v1.etag


async def test_if_match_on_a_missing_object_fails(storage: Storage) -> None:
    """if_match on a key with no object raises PreconditionFailed and creates nothing."""
    other = await storage.write("other", b"x")

    with pytest.raises(PreconditionFailed):
        await storage.write("missing", b"x", if_match=other.etag)

    assert await listed_keys(storage) == ["other"]


async def test_etag_changes_when_the_content_changes(storage: Storage) -> None:
    """Each new content gets a new etag, and head follows it."""
    first = await storage.write("doc", b"one")
    second = await storage.write("doc", b"two, longer")

    assert first.etag != second.etag
    assert (await storage.head("doc")).etag == second.etag


async def test_concurrent_create_only_writes_have_exactly_one_winner(storage: Storage) -> None:
    """Ten create-only writes of one key race: exactly one wins and its bytes are stored."""

    async def attempt(n: int) -> ObjectInfo | None:
        try:
            return await storage.write("claim", f"writer {n}".encode(), if_none_match=True)
        except PreconditionFailed:
            return None

    results = await asyncio.gather(*(attempt(n) for n in range(10)))

    winners = [(n, info) for n, info in enumerate(results) if info is not None]
    assert len(winners) == 1
    [(n, info)] = winners
    stored = await storage.read("claim")
    assert (stored.data, stored.info.etag) == (f"writer {n}".encode(), info.etag)


async def test_concurrent_if_match_writes_from_one_etag_have_exactly_one_winner(storage: Storage) -> None:
    """Ten writers holding the same etag race: exactly one replaces the object, the rest lose."""
    base = await storage.write("counter", b"0")

    async def attempt(n: int) -> ObjectInfo | None:
        try:
            return await storage.write("counter", f"{n + 1}".encode(), if_match=base.etag)
        except PreconditionFailed:
            return None

    results = await asyncio.gather(*(attempt(n) for n in range(10)))

    winners = [(n, info) for n, info in enumerate(results) if info is not None]
    assert len(winners) == 1
    [(n, info)] = winners
    stored = await storage.read("counter")
    assert (stored.data, stored.info.etag) == (f"{n + 1}".encode(), info.etag)
