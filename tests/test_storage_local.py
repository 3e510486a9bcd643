"""The local directory backend's own mechanics: no presigned URLs, a missing directory, files put
there from outside, the private `.ocrbatch/` directory with its sidecars and temp files."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fixtures.storage import listed_keys

from ocrbatch.errors import ObjectNotFound, PreconditionFailed, StorageError, UnsupportedOperation
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.local import LocalStorage

if TYPE_CHECKING:
    from conftest import StorageOpener


# ---- presigned URLs ----


async def test_local_presigned_url_is_unsupported(local_storage: Storage) -> None:
    """A local directory cannot presign: UnsupportedOperation says which transfer modes to use."""
    await local_storage.write("a.png", b"x")

    with pytest.raises(UnsupportedOperation, match="presigned URLs need S3 storage"):
        await local_storage.presigned_get_url("a.png", expires_s=300)


# ---- a missing directory is an error, never an empty result ----


async def test_local_missing_directory_is_an_error(tmp_path: Path, open_storage: StorageOpener) -> None:
    """Listing, reading and writing in a missing directory raise StorageError; nothing is created."""
    root = tmp_path / "not-created"
    async with open_storage(StorageSettings(), Location.parse(str(root))) as storage:
        with pytest.raises(StorageError, match="directory does not exist"):
            await listed_keys(storage)
        with pytest.raises(StorageError, match="directory does not exist") as reading:
            await storage.read("x")
        with pytest.raises(StorageError, match="directory does not exist"):
            await storage.write("x", b"x")

    assert not isinstance(reading.value, ObjectNotFound)
    assert not root.exists()


# ---- files from outside, the private directory ----


async def test_local_file_put_by_hand_is_an_object(local_storage: Storage, local_root: Path) -> None:
    """A file copied in from outside is listed and readable with a stat etag and no metadata."""
    (local_root / "inbox").mkdir()
    path = local_root / "inbox" / "scan.pdf"
    path.write_bytes(b"%PDF-1.7")

    [listed] = [info async for info in local_storage.list()]
    head = await local_storage.head("inbox/scan.pdf")
    stored = await local_storage.read("inbox/scan.pdf")

    assert listed.key == "inbox/scan.pdf"
    assert listed.etag == head.etag == stored.info.etag
    assert (head.size, head.metadata, head.content_type) == (8, {}, None)
    assert stored.data == b"%PDF-1.7"

    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    assert (await local_storage.head("inbox/scan.pdf")).etag != head.etag


async def test_local_file_replaced_from_outside_loses_its_sidecar(
    local_storage: Storage, local_root: Path
) -> None:
    """A written file later replaced by another program gets a fresh etag and no stale metadata."""
    written = await local_storage.write("doc.txt", b"ours", metadata={"owner": "ocrbatch"})
    replacement = local_root / "replacement.tmp"
    replacement.write_bytes(b"theirs")
    os.replace(replacement, local_root / "doc.txt")

    stored = await local_storage.read("doc.txt")

    assert stored.data == b"theirs"
    assert stored.info.etag != written.etag
    assert stored.info.metadata == {}
    with pytest.raises(PreconditionFailed):
        await local_storage.write("doc.txt", b"again", if_match=written.etag)


async def test_local_private_directory_is_hidden_and_reserved(
    local_storage: Storage, local_root: Path
) -> None:
    """`.ocrbatch/` never shows up in listings and keys inside it are refused."""
    await local_storage.write("a", b"x", metadata={"k": "v"})

    assert (local_root / ".ocrbatch").is_dir()
    assert await listed_keys(local_storage) == ["a"]
    assert await listed_keys(local_storage, ".ocrbatch/") == []
    with pytest.raises(ValueError, match="reserves"):
        await local_storage.write(".ocrbatch/meta/a.json", b"{}")


async def test_local_delete_removes_empty_directories(local_storage: Storage, local_root: Path) -> None:
    """Deleting the last object under a directory removes the now-empty directories up to the root."""
    await local_storage.write("deep/er/x", b"x")
    await local_storage.write("deep/y", b"y")

    await local_storage.delete("deep/er/x")
    assert sorted(os.listdir(local_root)) == [".ocrbatch", "deep"]
    assert not (local_root / "deep" / "er").exists()

    await local_storage.delete("deep/y")
    assert sorted(os.listdir(local_root)) == [".ocrbatch"]


async def test_local_write_leaves_no_temp_files(local_storage: Storage, local_root: Path) -> None:
    """Neither a successful nor a losing write leaves anything behind in the temp directory."""
    await local_storage.write("k", b"x", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await local_storage.write("k", b"y", if_none_match=True)

    assert list((local_root / ".ocrbatch" / "tmp").iterdir()) == []


async def test_temp_files_left_by_cut_writes_are_removed_once_stale(local_root: Path) -> None:
    """Temp files a crash left behind are removed by the next writer once they are an hour old;
    a fresh one (a write under way in another process) is left alone."""
    tmp = local_root / ".ocrbatch" / "tmp"
    tmp.mkdir(parents=True)
    (stale := tmp / "cut-short.tmp").write_bytes(b"partial")
    two_hours_ago_s = time.time() - 7200
    os.utime(stale, (two_hours_ago_s, two_hours_ago_s))
    (tmp / "under-way.tmp").write_bytes(b"partial")
    await LocalStorage(Location.parse(str(local_root))).write("k", b"x")

    assert sorted(path.name for path in tmp.iterdir()) == ["under-way.tmp"]


async def test_local_file_and_directory_cannot_share_a_name(local_storage: Storage) -> None:
    """Unlike S3, 'a' and 'a/b' cannot both exist: the second write is refused, the first stays."""
    await local_storage.write("a", b"x")
    await local_storage.write("d/b", b"y")

    with pytest.raises(StorageError, match="a file has the name"):
        await local_storage.write("a/b", b"y")
    with pytest.raises(StorageError, match="a directory has this key's name"):
        await local_storage.write("d", b"x")

    assert await listed_keys(local_storage) == ["a", "d/b"]
    assert (await local_storage.head("d/b")).metadata == {}
    with pytest.raises(ObjectNotFound):
        await local_storage.head("d")


async def test_local_special_files_are_not_objects(local_storage: Storage, local_root: Path) -> None:
    """FIFOs, dangling symlinks and names that are not UTF-8 are neither listed nor readable."""
    os.mkfifo(local_root / "pipe")
    os.symlink(local_root / "nowhere", local_root / "dangling")
    (local_root / os.fsdecode(b"latin1-\xe9.png")).write_bytes(b"x")
    await local_storage.write("real", b"x")

    assert await listed_keys(local_storage) == ["real"]
    with pytest.raises(ObjectNotFound):
        await local_storage.read("pipe")  # must not block waiting for a writer
    with pytest.raises(ObjectNotFound):
        await local_storage.head("dangling")


async def test_local_corrupt_sidecar_is_ignored(local_storage: Storage, local_root: Path) -> None:
    """A sidecar that cannot be parsed counts as absent: the file gets a stat etag and no metadata."""
    written = await local_storage.write("doc", b"x", metadata={"k": "v"})
    (local_root / ".ocrbatch" / "meta" / "doc.json").write_text("{not json")

    head = await local_storage.head("doc")

    assert head.etag != written.etag
    assert head.metadata == {}
    assert [info.etag async for info in local_storage.list()] == [head.etag]


async def test_a_removed_private_directory_is_made_again(local_storage: Storage, local_root: Path) -> None:
    """`.ocrbatch/` is made once per storage, not looked for at every write; removed from outside
    meanwhile, the next write makes it again and keeps its metadata."""
    await local_storage.write("a.json", b"{}", metadata={"source-etag": "one"})
    shutil.rmtree(local_root / ".ocrbatch")

    await local_storage.write("b/c.json", b"{}", metadata={"source-etag": "two"})

    assert (await local_storage.head("b/c.json")).metadata == {"source-etag": "two"}
    assert (local_root / ".ocrbatch" / "tmp").is_dir()
    assert await listed_keys(local_storage) == ["a.json", "b/c.json"]


async def test_a_delete_after_the_private_directory_went_still_deletes(
    local_storage: Storage, local_root: Path
) -> None:
    """A delete takes the write lock in `.ocrbatch/`, made again when it was removed from outside."""
    await local_storage.write("a.json", b"{}")
    shutil.rmtree(local_root / ".ocrbatch")

    await local_storage.delete("a.json")

    assert await listed_keys(local_storage) == []
