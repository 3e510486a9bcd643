"""Discovery on both backends: every input's state from a streaming merge of sorted listings.

Each test gets two storages on the same backend (`pair`): inputs, and a separate result location
holding results (`K + suffix`) and failure records (`_failed/K.json`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.discovery import (
    REASON_RESERVED,
    DiscoveredItem,
    DiscoveryStats,
    _result_listing,
    discover,
    image_format,
)


@dataclass(frozen=True)
class PairLocations:
    settings: StorageSettings
    inputs: Location
    results: Location


@dataclass(frozen=True)
class Pair:
    """A batch's input and result storages, with helpers to lay out objects."""

    inputs: Storage
    results: Storage

    async def put_inputs(self, *keys: str) -> dict[str, str]:
        """Write inputs (their key as content); return their etags."""
        return {key: (await self.inputs.write(key, key.encode())).etag for key in keys}

    async def put_result(self, key: str, source_etag: str, *, suffix: str = ".json") -> None:
        await self.results.write(key + suffix, b"{}", metadata={"source-etag": source_etag})

    async def put_failure(self, key: str, source_etag: str, *, retryable: bool) -> None:
        metadata = {"source-etag": source_etag, "retryable": "true" if retryable else "false"}
        await self.results.write(f"_failed/{key}.json", b"{}", metadata=metadata)

    async def discover(self, suffix: str = ".json", **options: Any) -> list[DiscoveredItem]:
        items = [item async for item in discover(self.inputs, self.results, result_suffix=suffix, **options)]
        listed = [info.key async for info in self.inputs.list()]
        assert [item.key for item in items] == listed  # every input once, in key order
        return items

    async def states(self, suffix: str = ".json", **options: Any) -> dict[str, str]:
        return _summary(await self.discover(suffix, **options))


def _summary(items: list[DiscoveredItem]) -> dict[str, str]:
    """Each item as "state (reason) [retry]", the parts present."""
    return {
        item.key: item.state
        + (f" ({item.reason})" if item.reason else "")
        + (" [retry]" if item.retry_of_failure else "")
        for item in items
    }


def _utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: key.encode())


@pytest.fixture(params=["local", "s3"])
def pair_locations(request: pytest.FixtureRequest, tmp_path: Path) -> PairLocations:
    """Two sibling locations on one backend: two directories, or two prefixes of a fresh bucket."""
    if request.param == "local":
        dirs = [tmp_path / "inputs", tmp_path / "results"]
        for directory in dirs:
            directory.mkdir()
        return PairLocations(StorageSettings(), *(Location.parse(str(directory)) for directory in dirs))
    bucket = request.getfixturevalue("s3_bucket")
    return PairLocations(
        request.getfixturevalue("s3_settings"),
        Location.parse(f"s3://{bucket}/inputs/"),
        Location.parse(f"s3://{bucket}/results/"),
    )


@pytest.fixture
async def pair(pair_locations: PairLocations) -> AsyncIterator[Pair]:
    """Opened input and result storages on each backend."""
    async with StorageFactory(pair_locations.settings) as factory:
        yield Pair(await factory.open(pair_locations.inputs), await factory.open(pair_locations.results))


@pytest.fixture
async def local_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Opened input and result storages on two local directories."""
    dirs = [tmp_path / "inputs", tmp_path / "results"]
    async with StorageFactory(StorageSettings()) as factory:
        opened = []
        for directory in dirs:
            directory.mkdir()
            opened.append(await factory.open(Location.parse(str(directory))))
        yield Pair(*opened)


def _local_path(storage: Storage, key: str) -> str:
    return os.path.join(storage.location.prefix, *key.split("/"))


def _copy_in_keeping_mtime(path: str, data: bytes, *, mtime_s: float) -> None:
    """Replace a file from outside ocrbatch as `cp -p` would: new bytes, the source's old mtime."""
    with open(path, "wb") as file:
        file.write(data)
    os.utime(path, (mtime_s, mtime_s))


# ---- formats and names ----


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a.png", "png"),
        ("dir/scan.JPEG", "jpeg"),
        ("x.Tif", "tif"),
        ("x.tiff", "tiff"),
        ("doc.pdf", "pdf"),
        ("photo.jpg", "jpg"),
        ("anim.gif", None),
        ("README", None),
        ("dir.png/README", None),
        ("archive.png.zip", None),
        ("dir/.png", "png"),
    ],
)
def test_image_format_is_the_supported_lowercased_extension(key: str, expected: str | None) -> None:
    """The format is the last segment's extension, case-insensitively, when the OCR API reads it."""
    assert image_format(key) == expected


async def test_new_inputs_are_pending(pair: Pair) -> None:
    """Supported inputs without any result are pending "new", with the listing's size, etag and time."""
    await pair.put_inputs("a.png", "b/c.PDF", "d.tiff")

    items = await pair.discover()

    assert _summary(items) == dict.fromkeys(["a.png", "b/c.PDF", "d.tiff"], "pending (new)")
    listed = {info.key: info async for info in pair.inputs.list()}
    for item in items:
        info = listed[item.key]
        assert (item.size, item.etag, item.last_modified) == (info.size, info.etag, info.last_modified)
        assert not item.retry_of_failure


async def test_unsupported_and_reserved_inputs_are_skipped_with_reasons(pair: Pair) -> None:
    """Other formats are skipped naming the extension; inputs whose result would land on a reserved
    name (first segment `_failed`/`_outbox`, or `_report.json`) are skipped as reserved."""
    await pair.put_inputs(
        "notes.txt",
        "README",
        "anim.GIF",
        "_failed/x.png",
        "_outbox/y.jpg",
        "_report.json",
        "_failed.png",
        "sub/_failed/z.png",
    )

    assert await pair.states() == {
        "README": "skipped (unsupported format (no extension))",
        "_failed.png": "pending (new)",
        "_failed/x.png": f"skipped ({REASON_RESERVED})",
        "_outbox/y.jpg": f"skipped ({REASON_RESERVED})",
        "_report.json": f"skipped ({REASON_RESERVED})",
        "anim.GIF": "skipped (unsupported format .gif)",
        "notes.txt": "skipped (unsupported format .txt)",
        "sub/_failed/z.png": "pending (new)",
    }


# ---- results ----


async def test_current_result_is_done(pair: Pair) -> None:
    """An input whose result carries its etag is done."""
    etags = await pair.put_inputs("a.png", "dir/b.pdf")
    for key, etag in etags.items():
        await pair.put_result(key, etag)

    assert await pair.states() == {"a.png": "done", "dir/b.pdf": "done"}


async def test_input_changed_since_its_result_is_pending(pair: Pair) -> None:
    """An input re-uploaded after its result was made is pending "changed since its result".

    The new upload is not older than the result, so the result's source etag decides.
    """
    etags = await pair.put_inputs("a.png")
    await pair.put_result("a.png", etags["a.png"])
    await pair.inputs.write("a.png", b"new scan")

    assert await pair.states() == {"a.png": "pending (changed since its result)"}


async def test_local_input_replaced_with_an_older_mtime_is_pending(local_pair: Pair) -> None:
    """A local file replaced by one carrying an old mtime (`cp -p`, `rsync -a`) is still pending:
    on local storage the source etag decides, never the file times."""
    etags = await local_pair.put_inputs("a.png")
    await local_pair.put_result("a.png", etags["a.png"])
    path = _local_path(local_pair.inputs, "a.png")
    _copy_in_keeping_mtime(path, b"replaced from outside", mtime_s=os.stat(path).st_mtime - 3600)

    assert await local_pair.states() == {"a.png": "pending (changed since its result)"}


async def test_trusted_timestamps_decide_without_a_head(local_pair: Pair) -> None:
    """With trusted timestamps a result written strictly after its input is current without a HEAD;
    at equal times the result's source etag is read and decides."""
    await local_pair.put_inputs("a.png")
    await local_pair.put_result("a.png", "an etag of another version")
    input_path = _local_path(local_pair.inputs, "a.png")
    result_path = _local_path(local_pair.results, "a.png.json")
    input_mtime_s = os.stat(input_path).st_mtime
    os.utime(result_path, (input_mtime_s + 10, input_mtime_s + 10))

    newer = DiscoveryStats()
    assert await local_pair.states(trust_timestamps=True, stats=newer) == {"a.png": "done"}
    assert newer.heads == 0

    await local_pair.put_result("a.png", "an etag of another version")
    os.utime(input_path, ns=(os.stat(result_path).st_mtime_ns,) * 2)
    same_time = DiscoveryStats()
    assert await local_pair.states(trust_timestamps=True, stats=same_time) == {
        "a.png": "pending (changed since its result)"
    }
    assert same_time.heads == 1


async def test_result_of_the_other_format_does_not_count(pair: Pair) -> None:
    """A `.xlsx` result does not make an input done for a `.json` batch, and the other way round."""
    etags = await pair.put_inputs("a.png", "b.png")
    await pair.put_result("a.png", etags["a.png"], suffix=".xlsx")
    await pair.put_result("b.png", etags["b.png"], suffix=".json")

    assert await pair.states(".json") == {"a.png": "pending (new)", "b.png": "done"}
    assert await pair.states(".xlsx") == {"a.png": "done", "b.png": "pending (new)"}


async def test_result_deleted_between_listing_and_head_counts_as_none(pair: Pair) -> None:
    """A result or failure record listed but gone by the time it is read is as if it never existed."""
    await pair.put_result("b.png", "whatever")  # before the input: its time cannot make it current
    etags = await pair.put_inputs("a.png", "b.png")
    await pair.put_failure("b.png", etags["b.png"], retryable=False)

    items = discover(pair.inputs, pair.results, result_suffix=".json")
    first = await anext(items)  # both listings have now read their (only) page
    await pair.results.delete("b.png.json")
    await pair.results.delete("_failed/b.png.json")
    second = await anext(items)

    assert _summary([first, second]) == {"a.png": "pending (new)", "b.png": "pending (new)"}
    assert await anext(items, None) is None


# ---- failure records ----


async def test_final_failure_of_this_version_is_failed(pair: Pair) -> None:
    """A non-retryable failure record for the input's current etag makes it failed, even next to a
    result of an older version; a current result wins over any failure record."""
    await pair.put_result("b.png", "an older version")  # made before the input was last uploaded
    etags = await pair.put_inputs("a.png", "b.png", "c.png")
    await pair.put_failure("a.png", etags["a.png"], retryable=False)
    await pair.put_failure("b.png", etags["b.png"], retryable=False)
    await pair.put_result("c.png", etags["c.png"])
    await pair.put_failure("c.png", etags["c.png"], retryable=False)

    assert await pair.states() == {"a.png": "failed", "b.png": "failed", "c.png": "done"}


async def test_retryable_failure_is_pending_as_a_retry(pair: Pair) -> None:
    """A retryable failure record makes the input pending, flagged so success removes the record."""
    etags = await pair.put_inputs("a.png")
    await pair.put_failure("a.png", etags["a.png"], retryable=True)

    assert await pair.states() == {"a.png": "pending (retrying a failure) [retry]"}


async def test_failure_of_an_older_version_is_pending_as_a_retry(pair: Pair) -> None:
    """A failure record made from another version (final or not) is stale: the input is pending."""
    await pair.put_inputs("a.png", "b.png")
    await pair.put_failure("a.png", "an older version", retryable=False)
    await pair.put_failure("b.png", "an older version", retryable=True)

    assert await pair.states() == {
        "a.png": "pending (changed since its failure) [retry]",
        "b.png": "pending (changed since its failure) [retry]",
    }


# ---- the merge ----


async def test_keys_that_extend_other_keys_get_every_state_right(pair: Pair) -> None:
    """K -> K + ".json" does not keep key order ("a.png.jpg.json" < "a.png.json"): every input
    still gets its own result and failure record, whatever the inversions between them."""
    keys = [
        "a.pn.png",
        "a.png",
        "a.png-2.jpg",
        "a.png.jpg",
        "a.png.jpeg",
        "a.png.jpg.png",
        "a.png.gif",
        "a.pn/b.png",
        "a.png0.png",
        "a.pngz.png",
    ]
    await pair.put_result("a.pn/b.png", "an older version")  # made before the input was last uploaded
    etags = await pair.put_inputs(*keys)
    for key in ("a.pn.png", "a.png", "a.png-2.jpg", "a.png0.png", "a.png.jpg.png"):
        await pair.put_result(key, etags[key])
    await pair.put_failure("a.png.jpeg", etags["a.png.jpeg"], retryable=False)
    await pair.put_failure("a.pngz.png", etags["a.pngz.png"], retryable=True)
    await pair.put_failure("a.png-2.jpg", etags["a.png-2.jpg"], retryable=False)  # its result wins

    assert await pair.states() == {
        "a.pn.png": "done",
        "a.png": "done",
        "a.png-2.jpg": "done",
        "a.png.gif": "skipped (unsupported format .gif)",
        "a.png.jpeg": "failed",
        "a.png.jpg": "pending (new)",
        "a.png.jpg.png": "done",
        "a.pn/b.png": "pending (changed since its result)",
        "a.png0.png": "done",
        "a.pngz.png": "pending (retrying a failure) [retry]",
    }


async def test_orphan_results_and_records_are_ignored(pair: Pair) -> None:
    """Results and failure records whose input is gone, before, between and after the inputs,
    neither show up nor disturb the merge, and are not held in memory."""
    etags = await pair.put_inputs("b.png", "d.png", "f.png")
    for orphan in ("a.png", "c.png", "c.png.jpg", "d.png-1.jpg", "e/x.png", "z.png"):
        await pair.put_result(orphan, "gone")
        await pair.put_failure(orphan, "gone", retryable=False)
    await pair.put_result("b.png", etags["b.png"])
    await pair.put_failure("d.png", etags["d.png"], retryable=False)

    stats = DiscoveryStats()
    assert await pair.states(stats=stats) == {"b.png": "done", "d.png": "failed", "f.png": "pending (new)"}
    # Only "d.png-1.jpg" is read ahead (at "d.png"), and dropped at the next input.
    assert stats.max_stash == 1


async def test_non_ascii_keys_merge_in_utf8_byte_order(pair: Pair) -> None:
    """Korean, emoji and other non-ASCII keys come out in UTF-8 byte order with their own results."""
    keys = [
        "영수증/2024/01.png",
        "영수증.png",
        "영수증.png-사본.jpg",  # extends "영수증.png": its result sorts before that one's
        "😀.png",
        "\ue000.png",  # before the emoji by code point (and UTF-8), after it in UTF-16
        "ｚ.png",
        "z.png",
    ]
    etags = await pair.put_inputs(*keys)
    for key in keys:
        if key != "ｚ.png":
            await pair.put_result(key, etags[key])
    await pair.put_failure("ｚ.png", etags["ｚ.png"], retryable=True)

    items = await pair.discover()

    assert [item.key for item in items] == _utf8_sorted(keys)
    retrying = {"ｚ.png": "pending (retrying a failure) [retry]"}
    assert _summary(items) == dict.fromkeys(keys, "done") | retrying


async def test_reserved_names_in_the_result_location_are_never_results(pair: Pair) -> None:
    """`_failed/`, `_outbox/` and `_report.json` in the result location are skipped over, and
    results sorting before, between and after them are all found."""
    keys = ["Z.png", "_a.png", "_g.png", "_p.png", "a.png"]
    etags = await pair.put_inputs(*keys)
    for key in keys:
        await pair.put_result(key, etags[key])
    for i in range(5):
        await pair.results.write(f"_outbox/chunk-{i}.json", b"{}")
        await pair.put_failure(f"gone-{i}.png", "gone", retryable=True)
    await pair.results.write("_failed/\U0010ffff-edge.json", b"{}")
    await pair.results.write("_report.json", b"{}")

    assert await pair.states(page_size=2) == dict.fromkeys(keys, "done")
    listed = [info.key async for info in _result_listing(pair.results, 2)]
    assert listed == _utf8_sorted([key + ".json" for key in keys])


# ---- streaming ----


async def test_small_pages_give_the_same_states(pair: Pair) -> None:
    """With two objects per LIST page and fifty inputs every state is right, and as no key extends
    another, no result or record is ever held in memory ahead of its input."""
    expected: dict[str, str] = {}
    layout: list[tuple[str, str]] = []
    for i in range(50):
        ext = ("png", "jpg", "pdf", "tiff", "gif")[i % 5]
        key = f"d{i % 7}/f{i:02d}.{ext}"
        kind = "skipped" if ext == "gif" else ("done", "new", "failed", "retry")[i % 4]
        layout.append((key, kind))
        expected[key] = {
            "skipped": "skipped (unsupported format .gif)",
            "done": "done",
            "new": "pending (new)",
            "failed": "failed",
            "retry": "pending (retrying a failure) [retry]",
        }[kind]
    etags = await pair.put_inputs(*(key for key, _ in layout))
    for key, kind in layout:
        if kind == "done":
            await pair.put_result(key, etags[key])
        elif kind in ("failed", "retry"):
            await pair.put_failure(key, etags[key], retryable=kind == "retry")
    for i in range(10):
        await pair.put_result(f"d3/gone-{i}.png", "gone")

    stats = DiscoveryStats()
    assert await pair.states(page_size=2, stats=stats) == expected
    assert stats.max_stash == 0


async def test_stash_is_capped_and_falls_back_to_a_head(pair: Pair) -> None:
    """Results read ahead of their input (keys extending an earlier key) are held up to the cap;
    past it the earlier key's result is looked up directly, and every state is still right."""
    keys = ["p.pdf", *(f"p.pdf-{i:02d}.png" for i in range(20))]
    etags = await pair.put_inputs(*keys)
    for key in keys:
        await pair.put_result(key, etags[key])
        await pair.put_failure(key, etags[key], retryable=False)  # read ahead too, but never needed

    uncapped = DiscoveryStats()
    assert await pair.states(page_size=3, stats=uncapped) == dict.fromkeys(keys, "done")
    assert uncapped.max_stash == 20

    capped = DiscoveryStats()
    assert await pair.states(page_size=3, max_stash=3, stats=capped) == dict.fromkeys(keys, "done")
    assert capped.max_stash == 3
