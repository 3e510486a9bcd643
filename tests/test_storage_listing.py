"""Listings on both storage backends (local directory and S3 via moto): S3's byte order, prefixes,
start_after, pages, and keys written while a listing is under way."""

from __future__ import annotations

from pathlib import Path

from fixtures.storage import listed_keys, write_all

from ocrbatch.locations import Location
from ocrbatch.storage.base import Storage
from ocrbatch.storage.local import LocalStorage


def _s3_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: key.encode("utf-8"))


# ---- listing ----


async def test_listing_is_sorted_by_utf8_bytes_across_directories(storage: Storage) -> None:
    """Listings follow S3's byte order even where a directory walk would not ('a-c' < 'a/b' < 'a0')."""
    keys = ["b", "가/1", "a0", "a/b", "a-c", "a/c/d", "Z", "a.png", "a/b0", "a/b-"]
    await write_all(storage, keys)

    assert await listed_keys(storage) == _s3_order(keys)
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

    assert await listed_keys(storage) == expected
    assert await listed_keys(storage, "scan-01") == [key for key in expected if key.startswith("scan-01")]
    after = [info.key async for info in storage.list(start_after="scan-020.png")]
    assert after == [key for key in expected if key.encode() > b"scan-020.png"]


async def test_prefix_is_a_plain_string_prefix(storage: Storage) -> None:
    """A prefix matches by string: 'in/a' matches 'in/a.png', 'in/a/deep' and 'in/ab/x', not 'in/b'."""
    await write_all(storage, ["in/a.png", "in/ab/x", "in/b", "in/a/deep", "ina", "out/a"])

    assert await listed_keys(storage, "in/a") == ["in/a.png", "in/a/deep", "in/ab/x"]
    assert await listed_keys(storage, "in/") == ["in/a.png", "in/a/deep", "in/ab/x", "in/b"]
    assert await listed_keys(storage, "in/ab/") == ["in/ab/x"]
    assert await listed_keys(storage, "in") == ["in/a.png", "in/a/deep", "in/ab/x", "in/b", "ina"]
    assert await listed_keys(storage, "nothing/") == []
    assert await listed_keys(storage, "in/a.png/") == []
    assert await listed_keys(storage, "../") == []
    assert await listed_keys(storage, "in//") == []


async def test_start_after_skips_up_to_and_including_it(storage: Storage) -> None:
    """start_after skips every key up to and including it, whether or not it exists."""
    keys = ["a/1", "a/2", "b/1", "b/2/x", "c"]
    await write_all(storage, keys)

    assert await listed_keys(storage, start_after="a/2") == ["b/1", "b/2/x", "c"]
    assert await listed_keys(storage, start_after="b/") == ["b/1", "b/2/x", "c"]
    assert await listed_keys(storage, start_after="b/1z") == ["b/2/x", "c"]
    assert await listed_keys(storage, start_after="a") == keys
    assert await listed_keys(storage, "b/", start_after="b/1") == ["b/2/x"]
    assert await listed_keys(storage, start_after="c") == []


async def test_listing_pages_hold_at_most_page_size_objects(storage: Storage) -> None:
    """page_size=2 over five keys yields pages of 2, 2 and 1 with every key once, in order."""
    keys = ["k1", "k2", "d/k3", "d/k4", "k5"]
    await write_all(storage, keys)

    pages = [page async for page in storage.list_pages(page_size=2)]

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [info.key for page in pages for info in page] == _s3_order(keys)


async def test_listing_reads_later_keys_only_when_later_pages_are_requested(storage: Storage) -> None:
    """The first page is correct on its own, and keys created after it was returned appear later."""
    await write_all(storage, ["a/1", "a/2", "b/1", "c/1"])
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
