"""Objects on both storage backends (local directory and S3 via moto): writing, reading, head and
delete, and which keys and metadata keys are accepted.

Each test takes the `storage` fixture and so runs once per backend.
"""

from __future__ import annotations

import pytest
from fixtures.storage import listed_keys, write_all

from ocrbatch.errors import ObjectNotFound, PreconditionFailed
from ocrbatch.storage.base import Storage

# ---- reading and writing ----


async def test_write_then_read_returns_bytes_type_and_metadata(storage: Storage) -> None:
    """Bytes, content type and metadata (any text, spaces and '%' included) read back exactly."""
    metadata = {"title": "영수증 2024 스캔", "note": "日本語のメモ 100% done", "plain": "a+b=c&d"}
    written = await storage.write("docs/r1.png", b"\x89PNG\r\n", metadata=metadata, content_type="image/png")

    stored = await storage.read("docs/r1.png")

    assert stored.data == b"\x89PNG\r\n"
    assert stored.info.metadata == metadata
    assert stored.info.content_type == "image/png"
    assert stored.info.size == 6
    assert stored.info.etag == written.etag
    assert stored.info.key == "docs/r1.png"


async def test_write_without_type_or_metadata_reads_back_defaults(storage: Storage) -> None:
    """An object written without a type reads back as application/octet-stream, with no metadata."""
    await storage.write("plain.bin", b"")

    stored = await storage.read("plain.bin")

    assert stored.data == b""
    assert stored.info.content_type == "application/octet-stream"
    assert stored.info.metadata == {}


async def test_head_agrees_with_write_and_listing(storage: Storage) -> None:
    """head reports the size, etag and metadata of the object; the etag equals write's and list's."""
    written = await storage.write(
        "a/b.txt", b"hello", metadata={"source": "스캐너 1"}, content_type="text/plain"
    )

    head = await storage.head("a/b.txt")
    [listed] = [info async for info in storage.list()]

    assert (head.size, head.etag, head.metadata, head.content_type) == (
        5,
        written.etag,
        {"source": "스캐너 1"},
        "text/plain",
    )
    assert (listed.key, listed.size, listed.etag) == ("a/b.txt", 5, written.etag)
    # S3 listings cannot carry metadata; the local backend's do (it reads each sidecar to list).
    assert listed.metadata == ({"source": "스캐너 1"} if storage.listed_metadata else {})
    assert written.size == 5
    assert head.last_modified.tzinfo is not None


async def test_missing_key_raises_object_not_found(storage: Storage) -> None:
    """read and head of a key with no object (also a key that is only a 'directory') raise ObjectNotFound."""
    await storage.write("present", b"x")
    await storage.write("dir/inside", b"x")

    with pytest.raises(ObjectNotFound, match="absent/key"):
        await storage.read("absent/key")
    with pytest.raises(ObjectNotFound):
        await storage.head("absent/key")
    with pytest.raises(ObjectNotFound):
        await storage.head("present/below")
    with pytest.raises(ObjectNotFound):
        await storage.read("dir")
    with pytest.raises(ObjectNotFound):
        await storage.head("dir")


@pytest.mark.parametrize(
    "key",
    ["with space/file name.png", "unicode/한국어 ファイル.pdf", "plus+sign", "percent%20sign", "tilde~(1)"],
)
async def test_unusual_keys_round_trip(storage: Storage, key: str) -> None:
    """Keys with spaces, non-ASCII text, '+' and '%' are stored, listed and read under that exact key."""
    written = await storage.write(key, b"payload")

    assert (await storage.read(key)).data == b"payload"
    assert (await storage.head(key)).etag == written.etag
    assert await listed_keys(storage) == [key]


@pytest.mark.parametrize("key", ["/a", "a/", "a//b", "./a", "a/../b", "a/."])
async def test_keys_that_are_not_paths_are_objects_on_s3_and_refused_locally(
    storage: Storage, key: str
) -> None:
    """On S3 any non-empty key is an object of its own (anyone able to upload can make `a//b` or
    `a/../b`), read and listed under that exact key (folder markers ending in "/" are not listed);
    a local directory, whose keys are paths,
    refuses them before any I/O. Results never use such names (`batches/layout.py` maps them)."""
    if storage.location.is_s3:
        await storage.write(key, b"its own")
        await storage.write("b", b"another")
        assert (await storage.read(key)).data == b"its own"
        assert (await storage.head(key)).size == len(b"its own")
        # A key ending in "/" is a console's folder marker, which listings leave out.
        assert (key in await listed_keys(storage)) is not key.endswith("/")
        await storage.delete(key)
        assert (await storage.read("b")).data == b"another"
        return
    await _refused(storage, key)


async def test_an_empty_key_is_refused(storage: Storage) -> None:
    """No backend has an object without a key: refused before any I/O."""
    await _refused(storage, "")


async def _refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError, match="object key"):
        await storage.write(key, b"x")
    with pytest.raises(ValueError, match="object key"):
        await storage.read(key)
    with pytest.raises(ValueError, match="object key"):
        await storage.head(key)
    with pytest.raises(ValueError, match="object key"):
        await storage.delete(key)


async def test_invalid_metadata_keys_are_refused(storage: Storage) -> None:
    """Metadata keys S3 would mangle (upper case, spaces) are refused and nothing is written."""
    with pytest.raises(ValueError, match="metadata key"):
        await storage.write("k", b"x", metadata={"Title": "x"})

    assert await listed_keys(storage) == []


# ---- delete ----


async def test_delete_removes_the_object(storage: Storage) -> None:
    """After delete the object is gone from head and from listings; its neighbours stay."""
    await write_all(storage, ["dir/a", "dir/b"])

    await storage.delete("dir/a")

    with pytest.raises(ObjectNotFound):
        await storage.head("dir/a")
    assert await listed_keys(storage) == ["dir/b"]


async def test_delete_of_a_missing_key_is_not_an_error(storage: Storage) -> None:
    """Deleting a key that does not exist succeeds and changes nothing."""
    await storage.write("keep", b"x")

    await storage.delete("never/written")

    assert await listed_keys(storage) == ["keep"]


async def test_delete_with_if_match(storage: Storage) -> None:
    """delete with a stale etag (or on a missing key) raises; with the current etag it deletes."""
    v1 = await storage.write("doc", b"v1")
    v2 = await storage.write("doc", b"v2")

    with pytest.raises(PreconditionFailed):
        await storage.delete("doc", if_match=v1.etag)
    assert (await storage.read("doc")).data == b"v2"

    await storage.delete("doc", if_match=v2.etag)
    assert await listed_keys(storage) == []
    with pytest.raises(PreconditionFailed):
        await storage.delete("doc", if_match=v2.etag)
