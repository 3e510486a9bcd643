"""Coordination documents in Redis (and in memory, the single writer's claims, which must keep the
same contract): create, read, replace and delete guarded by versions, keys listed by prefix in
UTF-8 order a page at a time, and Redis failures as `StorageError` that name the server without
its password."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.memory import MemoryCoordination
from ocrbatch.coordination.redis import RedisCoordination, open_redis_coordination, redacted_redis_url
from ocrbatch.errors import PreconditionFailed, StorageError

PREFIX = "ocrbatch-test:"


@pytest.fixture(params=["redis", "memory"])
async def coordination(request: pytest.FixtureRequest) -> AsyncIterator[Coordination]:
    """Versioned documents in Redis (on the session's server), or in this process's memory."""
    if request.param == "memory":
        yield MemoryCoordination()
        return
    opened = open_redis_coordination(request.getfixturevalue("redis_url"), PREFIX)
    yield opened
    await opened.aclose()


async def _keys(coordination: Coordination, prefix: str) -> list[str]:
    return [key async for key in coordination.keys(prefix)]


async def test_create_then_read_gives_the_data_at_the_version_created(
    coordination: Coordination,
) -> None:
    """A created document reads back with its bytes and the version `create` returned."""
    version = await coordination.create("batches/a.json", b'{"n": 1}')
    read = await coordination.read("batches/a.json")
    assert read is not None
    assert (read.data, read.version) == (b'{"n": 1}', version)


async def test_reading_a_missing_document_gives_none(coordination: Coordination) -> None:
    """No document, no error: `read` answers None."""
    assert await coordination.read("batches/none.json") is None


async def test_create_refuses_an_existing_document(coordination: Coordination) -> None:
    """A second create of the same key fails with PreconditionFailed and leaves the first intact."""
    await coordination.create("catalog.lease", b"first")
    with pytest.raises(PreconditionFailed) as raised:
        await coordination.create("catalog.lease", b"second")
    assert raised.value.key == "catalog.lease"
    assert raised.value.location == coordination.where
    read = await coordination.read("catalog.lease")
    assert read is not None
    assert read.data == b"first"


async def test_replace_at_the_current_version_writes_a_new_version(coordination: Coordination) -> None:
    """Replace succeeds at the version read and returns a different one; the old one is now stale."""
    first = await coordination.create("k", b"1")
    second = await coordination.replace("k", b"2", version=first)
    assert second != first
    read = await coordination.read("k")
    assert read is not None
    assert (read.data, read.version) == (b"2", second)
    with pytest.raises(PreconditionFailed):
        await coordination.replace("k", b"3", version=first)


async def test_replace_of_a_missing_document_fails(coordination: Coordination) -> None:
    """A document that is gone cannot be replaced, whatever version is given."""
    with pytest.raises(PreconditionFailed):
        await coordination.replace("gone", b"x", version="anything")
    assert await coordination.read("gone") is None


async def test_a_recreated_document_does_not_match_an_old_version(coordination: Coordination) -> None:
    """Deleted and created again, a document gets a new version: a reader of the old one loses."""
    old = await coordination.create("k", b"old")
    await coordination.delete("k", version=old)
    await coordination.create("k", b"new")
    with pytest.raises(PreconditionFailed):
        await coordination.replace("k", b"stale writer", version=old)


async def test_delete_with_a_version_only_at_that_version(coordination: Coordination) -> None:
    """Delete with a stale version or of a missing document fails; at the current version it removes
    the document and its key from the listing."""
    first = await coordination.create("k", b"1")
    current = await coordination.replace("k", b"2", version=first)
    with pytest.raises(PreconditionFailed):
        await coordination.delete("k", version=first)
    await coordination.delete("k", version=current)
    assert await coordination.read("k") is None
    assert await _keys(coordination, "") == []
    with pytest.raises(PreconditionFailed):
        await coordination.delete("k", version=current)


async def test_delete_without_a_version_accepts_a_missing_document(coordination: Coordination) -> None:
    """Delete without a version removes what is there and is fine when nothing is."""
    await coordination.create("k", b"1")
    await coordination.delete("k")
    await coordination.delete("k")
    assert await coordination.read("k") is None


async def test_keys_lists_a_prefix_in_utf8_order(coordination: Coordination) -> None:
    """Only keys starting with the prefix, in ascending UTF-8 byte order, Korean keys included."""
    for key in ["claims/나", "claims/b", "claims/가", "claims/가나", "claimsX", "batches/a", "claims/ﾟ"]:
        await coordination.create(key, b"")
    expected = sorted(["claims/나", "claims/b", "claims/가", "claims/가나", "claims/ﾟ"], key=str.encode)
    assert await _keys(coordination, "claims/") == expected
    assert await _keys(coordination, "claims/가") == ["claims/가", "claims/가나"]
    assert await _keys(coordination, "nothing/") == []
    assert len(await _keys(coordination, "")) == 7


async def test_keys_pages_through_more_than_one_page(redis_url: str) -> None:
    """With 3 keys per page, 10 matching keys come in order over 4 pages, and none of the others."""
    client = redis.asyncio.from_url(redis_url)
    coordination = RedisCoordination(client, key_prefix=PREFIX, keys_page=3)
    try:
        keys = [f"문서/{index:02d}" for index in range(10)]
        for key in [*reversed(keys), "문서", "문서0", "문섯/1"]:
            await coordination.create(key, b"")
        assert await _keys(coordination, "문서/") == keys
    finally:
        await coordination.aclose()


async def test_the_prefix_keeps_deployments_apart(redis_url: str) -> None:
    """Two key prefixes on one database see only their own documents."""
    coordination, other = (
        open_redis_coordination(redis_url, PREFIX),
        open_redis_coordination(redis_url, "other:"),
    )
    try:
        await other.create("k", b"other")
        assert await coordination.read("k") is None
        assert await _keys(coordination, "") == []
        await coordination.create("k", b"mine")
        assert await _keys(other, "") == ["k"]
    finally:
        await other.aclose()
        await coordination.aclose()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port  # closed again on return: nothing listens there


async def test_an_unreachable_server_is_a_storage_error_without_the_password() -> None:
    """No server at the URL: StorageError naming host, port and database but not the password."""
    port = _closed_port()
    coordination = open_redis_coordination(f"redis://ocr:s3cret-pass@127.0.0.1:{port}/2", PREFIX, timeout_s=2)
    try:
        with pytest.raises(StorageError) as raised:
            await coordination.read("batches/a.json")
        with pytest.raises(StorageError):
            await coordination.create("batches/a.json", b"")
    finally:
        await coordination.aclose()
    message = str(raised.value)
    assert f"redis://127.0.0.1:{port}/2" in message
    assert "batches/a.json" in message
    assert "s3cret" not in message
    assert not isinstance(raised.value, PreconditionFailed)


async def test_wrong_credentials_are_a_storage_error_without_the_password(redis_url: str) -> None:
    """A password the server refuses: StorageError saying so, without the password."""
    url = redis_url.replace("redis://", "redis://someone:wr0ng-pass@")
    coordination = open_redis_coordination(url, PREFIX, timeout_s=2)
    try:
        with pytest.raises(StorageError) as raised:
            await coordination.read("k")
    finally:
        await coordination.aclose()
    assert "wr0ng" not in str(raised.value)
    assert "credentials" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@redis.internal:6380/3", "redis://redis.internal:6380/3"),
        ("rediss://:pw@cache.example.com", "rediss://cache.example.com:6379/0"),
        ("redis://[::1]:7000?db=4", "redis://[::1]:7000/4"),
        ("unix://:pw@/run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ],
)
def test_redacted_url_keeps_the_server_and_drops_credentials(url: str, shown: str) -> None:
    """What operators are shown of a Redis URL: scheme, host, port and database, never user or password."""
    assert redacted_redis_url(url) == shown
