"""One behaviour suite for both storage backends (local directory and S3 via moto).

Most tests take the `storage` fixture and so run once per backend; the few that are about one
backend's own mechanics (local sidecars, S3 error mapping) say so in their name.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from pydantic import SecretStr

from ocrbatch.errors import ObjectNotFound, PreconditionFailed, StorageError, UnsupportedOperation
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import ObjectInfo, Storage
from ocrbatch.storage.local import LocalStorage
from ocrbatch.storage.s3 import open_s3_client

if TYPE_CHECKING:
    from conftest import BucketMaker, StorageOpener


async def _keys(storage: Storage, prefix: str = "", *, start_after: str | None = None) -> list[str]:
    return [info.key async for info in storage.list(prefix, start_after=start_after)]


async def _write_all(storage: Storage, keys: list[str]) -> None:
    await asyncio.gather(*(storage.write(key, key.encode()) for key in keys))


def _s3_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: key.encode("utf-8"))


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
    assert listed.metadata == {}, "listings do not carry metadata (S3 cannot)"
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
    assert await _keys(storage) == [key]


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "./a", "a/../b", "a/."])
async def test_invalid_keys_are_refused(storage: Storage, key: str) -> None:
    """Keys that could not mean the same object on both backends are refused before any I/O."""
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

    assert await _keys(storage) == []


# ---- listing ----


async def test_listing_is_sorted_by_utf8_bytes_across_directories(storage: Storage) -> None:
    """Listings follow S3's byte order even where a directory walk would not ('a-c' < 'a/b' < 'a0')."""
    keys = ["b", "가/1", "a0", "a/b", "a-c", "a/c/d", "Z", "a.png", "a/b0", "a/b-"]
    await _write_all(storage, keys)

    assert await _keys(storage) == _s3_order(keys)
    assert _s3_order(keys)[:5] == ["Z", "a-c", "a.png", "a/b", "a/b-"]


async def test_a_directory_larger_than_a_sort_run_lists_in_order(local_root: Path) -> None:
    """A directory with more names than one in-memory sort run (merged from spilled runs) lists in
    the same byte order, directories in their place, with prefixes and start_after honoured."""
    names = [f"scan-{index:03}.png" for index in range(40)] + ["가.png", "a", "Z.pdf", "scan-0.png"]
    for name in names:
        (local_root / name).write_bytes(b"x")
    (local_root / "scan-01").mkdir()
    (local_root / "scan-01" / "inner.png").write_bytes(b"x")
    storage = LocalStorage(Location.parse(str(local_root)), sort_run_entries=7)
    expected = _s3_order([*names, "scan-01/inner.png"])

    assert await _keys(storage) == expected
    assert await _keys(storage, "scan-01") == [key for key in expected if key.startswith("scan-01")]
    after = [info.key async for info in storage.list(start_after="scan-020.png")]
    assert after == [key for key in expected if key.encode() > b"scan-020.png"]


async def test_prefix_is_a_plain_string_prefix(storage: Storage) -> None:
    """A prefix matches by string: 'in/a' matches 'in/a.png', 'in/a/deep' and 'in/ab/x', not 'in/b'."""
    await _write_all(storage, ["in/a.png", "in/ab/x", "in/b", "in/a/deep", "ina", "out/a"])

    assert await _keys(storage, "in/a") == ["in/a.png", "in/a/deep", "in/ab/x"]
    assert await _keys(storage, "in/") == ["in/a.png", "in/a/deep", "in/ab/x", "in/b"]
    assert await _keys(storage, "in/ab/") == ["in/ab/x"]
    assert await _keys(storage, "in") == ["in/a.png", "in/a/deep", "in/ab/x", "in/b", "ina"]
    assert await _keys(storage, "nothing/") == []
    assert await _keys(storage, "in/a.png/") == []
    assert await _keys(storage, "../") == []
    assert await _keys(storage, "in//") == []


async def test_start_after_skips_up_to_and_including_it(storage: Storage) -> None:
    """start_after skips every key up to and including it, whether or not it exists."""
    keys = ["a/1", "a/2", "b/1", "b/2/x", "c"]
    await _write_all(storage, keys)

    assert await _keys(storage, start_after="a/2") == ["b/1", "b/2/x", "c"]
    assert await _keys(storage, start_after="b/") == ["b/1", "b/2/x", "c"]
    assert await _keys(storage, start_after="b/1z") == ["b/2/x", "c"]
    assert await _keys(storage, start_after="a") == keys
    assert await _keys(storage, "b/", start_after="b/1") == ["b/2/x"]
    assert await _keys(storage, start_after="c") == []


async def test_listing_pages_hold_at_most_page_size_objects(storage: Storage) -> None:
    """page_size=2 over five keys yields pages of 2, 2 and 1 with every key once, in order."""
    keys = ["k1", "k2", "d/k3", "d/k4", "k5"]
    await _write_all(storage, keys)

    pages = [page async for page in storage.list_pages(page_size=2)]

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [info.key for page in pages for info in page] == _s3_order(keys)


async def test_listing_reads_later_keys_only_when_later_pages_are_requested(storage: Storage) -> None:
    """The first page is correct on its own, and keys created after it was returned appear later."""
    await _write_all(storage, ["a/1", "a/2", "b/1", "c/1"])
    pages = storage.list_pages(page_size=2)

    first = await anext(pages)
    await storage.write("b/0", b"late")
    await storage.delete("c/1")
    rest = [info.key async for page in pages for info in page]

    assert [info.key for info in first] == ["a/1", "a/2"]
    assert rest == ["b/0", "b/1"]


async def test_empty_listing_yields_no_pages(storage: Storage) -> None:
    """An empty location lists as no pages at all (not one empty page)."""
    assert [page async for page in storage.list_pages()] == []


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

    assert await _keys(storage) == ["other"]


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


# ---- delete ----


async def test_delete_removes_the_object(storage: Storage) -> None:
    """After delete the object is gone from head and from listings; its neighbours stay."""
    await _write_all(storage, ["dir/a", "dir/b"])

    await storage.delete("dir/a")

    with pytest.raises(ObjectNotFound):
        await storage.head("dir/a")
    assert await _keys(storage) == ["dir/b"]


async def test_delete_of_a_missing_key_is_not_an_error(storage: Storage) -> None:
    """Deleting a key that does not exist succeeds and changes nothing."""
    await storage.write("keep", b"x")

    await storage.delete("never/written")

    assert await _keys(storage) == ["keep"]


async def test_delete_with_if_match(storage: Storage) -> None:
    """delete with a stale etag (or on a missing key) raises; with the current etag it deletes."""
    v1 = await storage.write("doc", b"v1")
    v2 = await storage.write("doc", b"v2")

    with pytest.raises(PreconditionFailed):
        await storage.delete("doc", if_match=v1.etag)
    assert (await storage.read("doc")).data == b"v2"

    await storage.delete("doc", if_match=v2.etag)
    assert await _keys(storage) == []
    with pytest.raises(PreconditionFailed):
        await storage.delete("doc", if_match=v2.etag)


# ---- presigned URLs ----


async def test_s3_presigned_url_serves_the_object(s3_storage: Storage) -> None:
    """A presigned GET URL returns the object's bytes to a plain HTTP client."""
    await s3_storage.write("scans/영수증 1.png", b"image bytes")

    url = await s3_storage.presigned_get_url("scans/영수증 1.png", expires_s=300)

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert await response.read() == b"image bytes"


async def test_local_presigned_url_is_unsupported(local_storage: Storage) -> None:
    """A local directory cannot presign: UnsupportedOperation says which transfer modes to use."""
    await local_storage.write("a.png", b"x")

    with pytest.raises(UnsupportedOperation, match="presigned URLs need S3 storage"):
        await local_storage.presigned_get_url("a.png", expires_s=300)


# ---- a missing bucket or directory is an error, never an empty result ----


async def test_s3_missing_bucket_is_an_error_naming_it(
    s3_settings: StorageSettings, open_storage: StorageOpener
) -> None:
    """Listing, reading and writing in a missing bucket raise StorageError naming the bucket."""
    location = Location.parse("s3://no-such-bucket-here/in/")
    async with open_storage(s3_settings, location) as storage:
        with pytest.raises(StorageError) as listing:
            await _keys(storage)
        with pytest.raises(StorageError) as reading:
            await storage.read("x")
        with pytest.raises(StorageError):
            await storage.write("x", b"x")

    message = str(listing.value)
    assert message == "s3://no-such-bucket-here/in/: bucket 'no-such-bucket-here' does not exist"
    assert not isinstance(reading.value, ObjectNotFound)


async def test_local_missing_directory_is_an_error(tmp_path: Path, open_storage: StorageOpener) -> None:
    """Listing, reading and writing in a missing directory raise StorageError; nothing is created."""
    root = tmp_path / "not-created"
    async with open_storage(StorageSettings(), Location.parse(str(root))) as storage:
        with pytest.raises(StorageError, match="directory does not exist"):
            await _keys(storage)
        with pytest.raises(StorageError, match="directory does not exist") as reading:
            await storage.read("x")
        with pytest.raises(StorageError, match="directory does not exist"):
            await storage.write("x", b"x")

    assert not isinstance(reading.value, ObjectNotFound)
    assert not root.exists()


# ---- S3 error messages ----


async def test_s3_errors_never_carry_credentials(
    s3_settings: StorageSettings, open_storage: StorageOpener
) -> None:
    """A failing request's message is one line with the code's meaning and no secret."""
    secret = "S3CR3T-do-not-log"
    settings = s3_settings.model_copy(update={"secret_access_key": SecretStr(secret)})
    async with open_storage(settings, Location.parse("s3://missing-bucket-for-secrets/")) as storage:
        with pytest.raises(StorageError) as raised:
            await storage.write("k", b"x", metadata={"note": secret})

    message = str(raised.value)
    assert secret not in message
    assert "\n" not in message
    assert "missing-bucket-for-secrets" in message


async def test_s3_unreachable_endpoint_names_the_endpoint(
    s3_settings: StorageSettings, open_storage: StorageOpener
) -> None:
    """When nothing listens at the endpoint, the error says which endpoint cannot be reached."""
    with socket.socket() as probe:  # a port that was free a moment ago: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = s3_settings.model_copy(update={"endpoint_url": f"http://127.0.0.1:{port}"})
    async with open_storage(settings, Location.parse("s3://any-bucket/")) as storage:
        with pytest.raises(StorageError, match=rf"cannot reach http://127\.0\.0\.1:{port}$"):
            await storage.head("k")


async def test_s3_folder_markers_are_not_listed(
    s3_settings: StorageSettings, make_bucket: BucketMaker, open_storage: StorageOpener
) -> None:
    """Zero-byte 'folder/' markers that consoles create are not objects, so listings skip them."""
    bucket = await make_bucket()
    async with AsyncExitStack() as stack:
        client = await open_s3_client(s3_settings, stack)
        await client.put_object(Bucket=bucket, Key="in/", Body=b"")
        await client.put_object(Bucket=bucket, Key="in/a.png", Body=b"x")

    async with open_storage(s3_settings, Location.parse(f"s3://{bucket}/")) as storage:
        assert await _keys(storage) == ["in/a.png"]


# ---- local directories: files from outside, the private directory ----


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
    assert await _keys(local_storage) == ["a"]
    assert await _keys(local_storage, ".ocrbatch/") == []
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

    assert await _keys(local_storage) == ["a", "d/b"]
    assert (await local_storage.head("d/b")).metadata == {}
    with pytest.raises(ObjectNotFound):
        await local_storage.head("d")


async def test_local_special_files_are_not_objects(local_storage: Storage, local_root: Path) -> None:
    """FIFOs, dangling symlinks and names that are not UTF-8 are neither listed nor readable."""
    os.mkfifo(local_root / "pipe")
    os.symlink(local_root / "nowhere", local_root / "dangling")
    (local_root / os.fsdecode(b"latin1-\xe9.png")).write_bytes(b"x")
    await local_storage.write("real", b"x")

    assert await _keys(local_storage) == ["real"]
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
