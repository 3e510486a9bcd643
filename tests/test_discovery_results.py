"""Discovery on both backends, an input against its result and failure record: done, changed since
its result, failed, or pending as a retry, and what decides (source etag or trusted timestamps).

Each test gets two storages on the same backend (`pair`): inputs, and a separate result location
holding results (`K + suffix`) and failure records (`_failed/K.json`), or their fallback names
(`_keys/…`, `_failed/_keys/…`) for keys the storage cannot hold as names.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fixtures.discovery import Pair, state_by_key

from ocrbatch.batches.layout import SOURCE_KEY, encode_source_key, failure_record_key, result_key
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.cursors import DiscoveryStats
from ocrbatch.worker.discovery import discover


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
    """With trusted timestamps and listings without metadata (as on S3) a result written strictly
    after its input is current without a HEAD; at equal times the result's source etag is read and
    decides."""
    local_pair.results.listed_metadata = False  # as S3 listings: no metadata without a HEAD
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


async def test_local_listings_carry_the_source_etag_so_no_result_is_headed(local_pair: Pair) -> None:
    """On local directories the listing holds each result's metadata: a current result, a stale one
    and a failure record are judged by their source etags with no HEAD at all."""
    etags = await local_pair.put_inputs("a.png", "b.png", "c.png")
    await local_pair.put_result("a.png", etags["a.png"])
    await local_pair.put_result("b.png", "an etag of another version")
    stats = DiscoveryStats()
    assert await local_pair.states(stats=stats) == {
        "a.png": "done",
        "b.png": "pending (changed since its result)",
        "c.png": "pending (new)",
    }
    assert stats.heads == 0


async def test_result_of_the_other_format_does_not_count(pair: Pair) -> None:
    """A `.xlsx` result does not make an input done for a `.json` batch, and the other way round."""
    etags = await pair.put_inputs("a.png", "b.png")
    await pair.put_result("a.png", etags["a.png"], suffix=".xlsx")
    await pair.put_result("b.png", etags["b.png"], suffix=".json")

    assert await pair.states(".json") == {"a.png": "pending (new)", "b.png": "done"}
    assert await pair.states(".xlsx") == {"a.png": "done", "b.png": "pending (new)"}


async def test_result_deleted_between_listing_and_head_counts_as_none(pair: Pair) -> None:
    """A result or failure record listed but gone by the time it is read is as if it never existed;
    where listings carry metadata (local) nothing is read after the listing, whose snapshot then
    decides, as it does on S3 for a result newer than its input."""
    await pair.put_result("b.png", "whatever")  # before the input: its time cannot make it current
    etags = await pair.put_inputs("a.png", "b.png")
    await pair.put_failure("b.png", etags["b.png"], retryable=False)

    items = discover(pair.inputs, pair.results, result_suffix=".json")
    first = await anext(items)  # both listings have now read their (only) page
    await pair.results.delete("b.png.json")
    await pair.results.delete("_failed/b.png.json")
    second = await anext(items)

    b_state = "failed" if pair.results.listed_metadata else "pending (new)"
    assert state_by_key([first, second]) == {"a.png": "pending (new)", "b.png": b_state}
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


# ---- fallback names (keys the result storage cannot hold as names) ----

LONG_NAME = "계" * 79 + "약서.png"  # 253 bytes: its result name would be over 255 with a sidecar
CONTROL = "scan\x01page.png"
DEEP = "/".join(["d" * 99] * 7) + "/" + "x" * 40 + ".png"  # 744 bytes: past S3's key limit as a result


async def _put_hostile_input(pair: Pair, key: str) -> str:
    """Put an input whatever its name; returns its etag. Local files too long for the backend's
    own sidecar are put by hand, as a user would."""
    if pair.inputs.location.is_s3 or len(key.rpartition("/")[2].encode()) <= 245:
        return (await pair.inputs.write(key, key.encode())).etag
    await asyncio.to_thread(Path(_local_path(pair.inputs, key)).write_bytes, key.encode())
    return (await pair.inputs.head(key)).etag


async def _put_fallback(pair: Pair, name: str, key: str, metadata: dict[str, str]) -> None:
    await pair.results.write(name, b"{}", metadata={SOURCE_KEY: encode_source_key(key), **metadata})


async def test_fallback_named_results_and_failure_records_are_found(pair: Pair) -> None:
    """Inputs without natural names are judged by their fallback-named result and failure record:
    done, failed, retrying or changed; the fallback prefixes are listed once for all of them."""
    etags = {
        key: await _put_hostile_input(pair, key) for key in (LONG_NAME, CONTROL, DEEP, "z/tab\tchanged.png")
    }
    location = pair.results.location
    await _put_fallback(
        pair, result_key(LONG_NAME, ".json", location=location), LONG_NAME, {"source-etag": etags[LONG_NAME]}
    )
    for key, retryable in ((CONTROL, "false"), (DEEP, "true")):
        record = {"source-etag": etags[key], "retryable": retryable}
        await _put_fallback(pair, failure_record_key(key, location=location), key, record)
    await _put_fallback(
        pair,
        result_key("z/tab\tchanged.png", ".json", location=location),
        "z/tab\tchanged.png",
        {"source-etag": "old"},
    )
    stats = DiscoveryStats()

    assert await pair.states(stats=stats, trust_timestamps=False) == {
        DEEP: "pending (retrying a failure) [retry]",
        LONG_NAME: "done",
        CONTROL: "failed",
        "z/tab\tchanged.png": "pending (changed since its result)",
    }
    assert stats.fallbacks == 4  # each listed once, not once per input
    assert stats.heads == (0 if pair.results.listed_metadata else 4)  # one per object found, for its metadata


async def test_fallback_object_made_for_another_key_does_not_count(pair: Pair) -> None:
    """A fallback-named object whose `source-key` names another input (a hash collision, or an
    object put there by hand) is not this input's result or failure record."""
    etag = await _put_hostile_input(pair, CONTROL)
    location = pair.results.location
    await _put_fallback(
        pair, result_key(CONTROL, ".json", location=location), "other.png", {"source-etag": etag}
    )
    record = {"source-etag": etag, "retryable": "false"}
    await _put_fallback(pair, failure_record_key(CONTROL, location=location), "other.png", record)

    assert await pair.states(trust_timestamps=False) == {CONTROL: "pending (new)"}


async def test_fallback_prefixes_are_not_listed_without_an_input_needing_them(pair: Pair) -> None:
    """A batch whose keys all have natural names never lists `_keys/` or `_failed/_keys/`, and a
    fallback object there is not taken for a result."""
    etags = await pair.put_inputs("a.png")
    await _put_fallback(pair, result_key(CONTROL, ".json"), CONTROL, {"source-etag": etags["a.png"]})
    stats = DiscoveryStats()

    assert await pair.states(stats=stats) == {"a.png": "pending (new)"}
    assert stats.fallbacks == 0
