"""Any legal key has a result: keys whose natural result or failure-record name no storage could
hold get deterministic fallback names (`_keys/{readable}-{hash}`), with the key in `source-key`,
and discovery finds them again. The rule and the names first, then whole worker runs on local
directories and on moto."""

from __future__ import annotations

import hashlib
import json
import random
from asyncio.subprocess import DEVNULL
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from fixtures.emulator import StartEmulator
from fixtures.process import start_ocrbatch
from fixtures.receiver import Receiver
from fixtures.samples import png
from fixtures.worker import FAST_WORKER, MakeSetup, create_batch, keys, read_json, write_config
from structlog.testing import capture_logs

from ocrbatch.batches import layout
from ocrbatch.batches.layout import (
    FAILED_FALLBACK_PREFIX,
    FALLBACK_PREFIX,
    HASH_HEX_DIGITS,
    READABLE_MAX_BYTES,
    SOURCE_KEY,
    decode_source_key,
    encode_source_key,
    failed_input_key,
    failure_record_key,
    has_natural_names,
    is_own_object,
    is_reserved,
    result_key,
)
from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import batch_store_in
from ocrbatch.emulator.server import Emulator
from ocrbatch.locations import Location
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.settings import Settings, StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.s3 import open_s3_client
from ocrbatch.worker.cursors import DiscoveryStats
from ocrbatch.worker.discovery import REASON_RESERVED, discover, judge_item

KOREAN_83 = "계" * 79 + "약서.png"  # 83 characters, 253 UTF-8 bytes
KOREAN_120 = "가" * 116 + "나다.png"  # 120 characters, 360 bytes: a legal S3 key, no local file name
ASCII_251 = "a" * 247 + ".png"  # a legal local file name whose result name is 256 bytes
CONTROL = "scan\x01page.png"

# Keys no storage could hold results for under their natural names, and why.
UNSTORABLE = {
    "83 Korean characters": KOREAN_83,
    "120 Korean characters": "scans/" + KOREAN_120,
    "251-byte ASCII name": ASCII_251,
    "last segment of 246 bytes": "b" * 242 + ".png",
    "directory segment of 256 bytes": "d" * 256 + "/x.png",
    "key of 736 bytes": "/".join(["d" * 99] * 7) + "/" + "x" * 32 + ".png",
    "empty segment": "in/sub//double-slash.png",
    "dot segment": "./x.png",
    "dot-dot segment": "x/../y.png",
    "leading slash": "/root.png",
    "NUL": "nul\x00.png",
    "control character": CONTROL,
    "tab": "tab\t.png",
    "newline": "line\nbreak.png",
    "unit separator": "sep\x1f.png",
    "DEL": "del\x7f.png",
    "private directory": ".ocrbatch/x.png",
}
ORDINARY = [
    "a.png",
    "a/영수증 1.png",
    "가" * 80 + ".png",  # 244 bytes: its result's sidecar name is exactly 255 bytes
    "b" * 241 + ".png",
    "d" * 255 + "/x.png",
    "/".join(["d" * 99] * 7) + "/" + "x" * 27 + ".png",  # 731 bytes
    "..png",
    "x/..",  # its names (`x/...json`) have no dot segment
    "folder/",  # an S3 folder marker, never listed; its names are `folder/.json`
    "x/.hidden.png",
    "名前/ファイル.jpg",
]


def _source_of(metadata: dict[str, str] | Any) -> str | None:
    return decode_source_key(metadata.get(SOURCE_KEY))


# ---- the rule ----


@pytest.mark.parametrize("key", ORDINARY)
def test_ordinary_keys_keep_their_natural_names(key: str) -> None:
    """Keys every storage can hold keep `K + suffix` and `_failed/K.json`, up to the limits."""
    assert has_natural_names(key)
    assert result_key(key, ".json") == key + ".json"
    assert result_key(key, ".xlsx") == key + ".xlsx"
    assert failure_record_key(key) == f"_failed/{key}.json"


@pytest.mark.parametrize("key", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_unstorable_keys_get_fallback_names(key: str) -> None:
    """A key with a too-long segment or name, an empty or dot segment, a control character or the
    private directory gets `_keys/…{suffix}` and `_failed/_keys/….json`, sharing one stem."""
    assert not has_natural_names(key)
    result, record = result_key(key, ".json"), failure_record_key(key)
    assert result.startswith(FALLBACK_PREFIX)
    assert result.endswith(".json")
    assert result_key(key, ".xlsx") == result.removesuffix(".json") + ".xlsx"
    assert record == FAILED_FALLBACK_PREFIX + result.removeprefix(FALLBACK_PREFIX)
    assert result.count("/") == 1
    digest = hashlib.sha256(key.encode()).hexdigest()[:HASH_HEX_DIGITS]
    assert result.removesuffix(".json").endswith(digest)


def test_the_quick_answer_agrees_with_the_full_rules() -> None:
    """`has_natural_names` answers common keys without encoding them; over random keys made of
    separators, dots, controls, non-ASCII and long runs, at short and long result prefixes, it
    answers exactly what checking both derived names in full answers."""
    rng = random.Random(7)
    pieces = [
        "a",
        "scan",
        ".",
        "..",
        "/",
        "//",
        "\x00",
        "\x7f",
        "\t",
        "한",
        "é",
        " ",
        "-",
        ".ocrbatch",
        "_failed",
    ]
    for round_index in range(4000):
        key = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        if round_index % 50 == 0:
            key = "d/" + "x" * rng.randint(200, 1100)
        for location in (None, Location.parse("s3://bucket/" + "p" * rng.randint(0, 700))):
            budget = layout.KEY_MAX_BYTES - layout._S3_SIDECAR_BYTES
            budget -= max(layout._prefix_bytes(location), layout.PREFIX_MARGIN_BYTES)
            names = (key + layout._LONGEST_RESULT_SUFFIX, layout.FAILED_PREFIX + key + layout.FAILURE_SUFFIX)
            full = all(layout._storable(name, budget) for name in names)
            assert has_natural_names(key, location=location) == full, (key, location)


def test_the_result_prefix_counts_only_beyond_its_margin() -> None:
    """Up to 256 bytes of S3 result prefix, and on local directories, the names are those given
    without a location (so every caller agrees); a longer prefix leaves less room for the key."""
    near_limit = "/".join(["d" * 99] * 7) + "/" + "x" * 27 + ".png"  # 731 bytes: natural by a little
    for location in (None, Location.parse("s3://bucket/" + "p" * 250), Location.parse("/srv/ocr/results")):
        assert has_natural_names(near_limit, location=location)
        assert result_key(near_limit, ".json", location=location) == near_limit + ".json"
    long_prefix = Location.parse("s3://bucket/" + "p" * 300)
    assert not has_natural_names(near_limit, location=long_prefix)
    assert result_key(near_limit, ".json", location=long_prefix).startswith(FALLBACK_PREFIX)
    assert has_natural_names("a.png", location=long_prefix)


def test_fallback_names_are_deterministic_distinct_and_readable() -> None:
    """The same key always gets the same name; keys alike in their first 60 bytes, or differing
    only in what sanitising replaces, get different names; the readable part is the start of the
    last segment, cut on a character boundary."""
    assert result_key(KOREAN_83, ".json") == result_key(KOREAN_83, ".json")
    similar = [f"{'가' * 100}-{index}.png" for index in range(2000)]
    similar += ["x\x01.png", "x\x02.png", "x\t.png", "x_.png/" + "y" * 250 + ".png"]
    names = {result_key(key, ".json") for key in similar}
    assert len(names) == len(similar)
    records = {failure_record_key(key) for key in similar}
    assert len(records) == len(similar)

    name = result_key("scans/" + "a" + "가" * 100 + ".png", ".json")
    readable = name.removeprefix(FALLBACK_PREFIX).rsplit("-", 1)[0]
    assert readable == "a" + "가" * 19  # 58 bytes: a 20th character would end past byte 60
    assert len(readable.encode()) <= READABLE_MAX_BYTES
    assert result_key(CONTROL, ".json").startswith(FALLBACK_PREFIX + "scan_page.png-")
    assert result_key("x/../" + "." * 300, ".json") == (
        FALLBACK_PREFIX + hashlib.sha256(("x/../" + "." * 300).encode()).hexdigest()[:32] + ".json"
    )  # nothing readable is left: the hash alone
    assert result_key("./.hidden.png", ".json").startswith(FALLBACK_PREFIX + "hidden.png-")  # not hidden


def test_fallback_names_are_short_and_have_natural_names_themselves() -> None:
    """Every fallback name fits every storage: at most 104 bytes, no control characters, no empty
    or dot segments."""
    for key in UNSTORABLE.values():
        for name in (result_key(key, ".json"), failure_record_key(key)):
            assert len(name.encode()) <= len(FAILED_FALLBACK_PREFIX) + READABLE_MAX_BYTES + 1 + 32 + 5
            assert has_natural_names(name), name


def test_source_key_metadata_is_ascii_base64url_of_the_key() -> None:
    """`source-key` of a fallback object is unpadded base64url: ASCII, at most 4/3 of the key (a
    1,024-byte key stays under S3's 2 KB of metadata), and decodes back to the key."""
    for key in [*UNSTORABLE.values(), "가" * 341 + "a"]:
        encoded = encode_source_key(key)
        assert encoded.isascii()
        assert not set(encoded) & set("=+/")
        assert len(encoded) <= (len(key.encode()) * 4 + 2) // 3
        assert decode_source_key(encoded) == key
    assert decode_source_key("not base64!") is None
    assert decode_source_key(encode_source_key("x")[:-1] + "\xff") is None
    assert decode_source_key(None) is None


def test_fallback_objects_are_own_objects_and_their_input_is_not_in_the_name() -> None:
    """Fallback objects are ocrbatch's own (never taken for the result of an input named
    `_keys/…`), a fallback record names no input by itself, and inputs under `_keys/` are
    reserved; natural names read back as before."""
    result, record = result_key(KOREAN_83, ".json"), failure_record_key(KOREAN_83)
    assert is_own_object(result)
    assert is_own_object(record)
    assert failed_input_key(record) is None
    assert failed_input_key("_failed/a/b.png.json") == "a/b.png"
    assert not is_own_object("a/b.png.json")
    assert is_reserved("_keys/x.png")
    assert is_reserved("_failed/x.png")
    assert not is_reserved("_keys.png")
    assert not is_reserved("keys/_keys/x.png")


async def test_fallback_names_can_be_written_on_both_backends(storage: Storage) -> None:
    """Each fallback name, with the key in its metadata, is written and read back on a local
    directory and on S3."""
    for key in UNSTORABLE.values():
        for name in (result_key(key, ".json", location=storage.location), failure_record_key(key)):
            await storage.write(name, b"{}", metadata={SOURCE_KEY: encode_source_key(key)})
            assert _source_of((await storage.head(name)).metadata) == key
    assert len(await keys(storage)) == 2 * len(UNSTORABLE)


# ---- discovery ----


def _put_by_hand(inputs: Storage, key: str) -> None:
    """Put a file in a local input directory from outside ocrbatch, as a user does (the local
    backend's own writes keep a sidecar, whose name is 5 bytes longer)."""
    Path(inputs.location.prefix, key).write_bytes(b"scan")


@pytest.fixture
async def local_results(tmp_path: Path) -> AsyncIterator[tuple[Storage, Storage]]:
    """Input and result storages on two local directories."""
    async with StorageFactory(StorageSettings()) as factory:
        opened = []
        for name in ("inputs", "results"):
            (tmp_path / name).mkdir()
            opened.append(await factory.open(Location.parse(str(tmp_path / name))))
        yield opened[0], opened[1]


async def test_inputs_under_the_fallback_prefix_are_reserved(
    local_results: tuple[Storage, Storage],
) -> None:
    """An input named `_keys/…` is skipped as reserved, and a fallback result beside it is never
    taken for its result."""
    inputs, results = local_results
    await inputs.write("_keys/x.png", b"x")
    await results.write("_keys/x.png.json", b"{}")
    [item] = [item async for item in discover(inputs, results, result_suffix=".json")]
    assert (item.state, item.reason) == ("skipped", REASON_RESERVED)


async def test_many_fallback_objects_are_held_up_to_a_bound_then_headed(
    local_results: tuple[Storage, Storage],
) -> None:
    """Past `max_fallbacks` listed fallback objects discovery logs it and HEADs the rest: every
    input is still found done."""
    inputs, results = local_results
    names = [f"{index}-" + "n" * 245 + ".png" for index in range(5)]  # 251 bytes: fallback names
    for key in names:
        _put_by_hand(inputs, key)
        etag = (await inputs.head(key)).etag
        await results.write(
            result_key(key, ".json"),
            b"{}",
            metadata={SOURCE_KEY: encode_source_key(key), "source-etag": etag},
        )
    stats = DiscoveryStats()
    with capture_logs() as logs:
        items = [
            item
            async for item in discover(inputs, results, result_suffix=".json", max_fallbacks=2, stats=stats)
        ]
    assert [item.state for item in items] == ["done"] * 5
    assert stats.fallbacks == 2
    assert [entry["held"] for entry in logs if entry["event"] == "discovery.many_fallback_names"] == [2]


async def test_claim_check_finds_the_fallback_result(local_results: tuple[Storage, Storage]) -> None:
    """`judge_item` (the check once an item is claimed) HEADs the fallback name of such a key."""
    inputs, results = local_results
    _put_by_hand(inputs, ASCII_251)
    info = await inputs.head(ASCII_251)
    assert (await judge_item(results, info, result_suffix=".json")).state == "pending"
    await results.write(
        result_key(ASCII_251, ".json"),
        b"{}",
        metadata={SOURCE_KEY: encode_source_key(ASCII_251), "source-etag": info.etag},
    )
    assert (await judge_item(results, info, result_suffix=".json")).state == "done"


# ---- the worker ----


def _domains(emulator: Emulator) -> dict[str, Any]:
    return {
        "receipts": {
            "kind": "general",
            "invoke_url": emulator.url + "/general",
            "secret": emulator.settings.general_secret.get_secret_value(),
            "max_concurrent_calls": emulator.settings.max_concurrent_calls,
            "request_timeout_s": 30,
        }
    }


async def _create_local_batch(settings: Settings, inputs: Path, results: Path, **fields: Any) -> str:
    spec = {"name": "scans", "domain": "receipts", "input_path": str(inputs), "result_path": str(results)}
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        return (await store.create(parse_spec({**spec, **fields}))).batch.id


async def _status(settings: Settings, batch_id: str) -> str:
    async with StorageFactory(settings.storage) as storages:
        return (await (await batch_store_in(settings, storages)).get(batch_id)).batch.status


async def _source_keys(results: Storage, prefix: str) -> dict[str, str]:
    """Each object under `prefix`, by the input its `source-key` names."""
    found: dict[str, str] = {}
    for key in await keys(results, prefix):
        source = _source_of((await results.head(key)).metadata)
        assert source is not None, f"{key} has no source-key"
        found[source] = key
    return found


async def test_worker_on_local_directories_gives_every_long_name_a_result(
    start_emulator: StartEmulator, tmp_path: Path, receiver: Receiver
) -> None:
    """On local directories, inputs of 83 Korean characters, a 251-byte ASCII name and a control
    character get one result each under a fallback name, with the key in metadata and in the
    webhook; an empty one gets a fallback failure record; the batch is not in error; a second
    pass makes no API call."""
    emulator = await start_emulator()
    dirs = {name: tmp_path / name for name in ("control", "in", "out")}
    for directory in dirs.values():
        directory.mkdir()
    settings = Settings(
        storage={"control_path": str(dirs["control"])},
        domains=_domains(emulator),
        worker=FAST_WORKER,
        webhook={"allow_networks": ["127.0.0.0/8"]},
        logging={"format": "json", "level": "info"},
    )
    good = {
        KOREAN_83: png(210, 100),
        ASCII_251: png(220, 100),
        CONTROL: png(230, 100),
        "fine.png": png(240, 100),
    }
    for name, data in good.items():
        (dirs["in"] / name).write_bytes(data)
    empty = "e" * 246 + ".png"
    (dirs["in"] / empty).write_bytes(b"")
    batch_id = await _create_local_batch(settings, dirs["in"], dirs["out"], webhook={"url": receiver.url})

    assert await run_worker(settings, once=True) == 0

    async with StorageFactory(settings.storage) as storages:
        results = await storages.open(Location.parse(str(dirs["out"])))
        by_source = await _source_keys(results, FALLBACK_PREFIX)
        assert set(by_source) == {KOREAN_83, ASCII_251, CONTROL}
        for source, key in by_source.items():
            assert key == result_key(source, ".json")
            width = (await read_json(results, key))["images"][0]["convertedImageInfo"]["width"]
            assert width == png_width(good[source])
        records = await keys(results, FAILED_FALLBACK_PREFIX)
        assert records == [failure_record_key(empty)]
        record = await read_json(results, records[0])
        assert (record["key"], record["retryable"]) == (empty, False)
        assert _source_of((await results.head(records[0])).metadata) == empty
        assert await keys(results, "fine") == ["fine.png.json"]
    assert await _status(settings, batch_id) == "available"
    delivered = {item["key"]: item for request in receiver.received for item in request.payload["items"]}
    out = Location.parse(str(dirs["out"]))
    assert delivered[KOREAN_83]["resultLocation"] == out.join(result_key(KOREAN_83, ".json"))
    assert delivered[empty]["resultLocation"] == out.join(failure_record_key(empty))
    assert len(delivered) == 5

    calls = emulator.stats()["calls"]
    assert calls == 4
    assert await run_worker(settings, once=True) == 0
    assert emulator.stats()["calls"] == calls


def png_width(data: bytes) -> int:
    return int.from_bytes(data[16:20], "big")


S3_READABLE = {
    KOREAN_83: png(210, 100),
    "scans/" + KOREAN_120: png(220, 100),
    ASCII_251: png(230, 100),
    CONTROL: png(240, 100),
    "sub/del\x7f.png": png(250, 100),
    # Legal S3 keys that could not be paths: each is its own object on S3, read as such.
    "a//b.png": png(260, 100),
    "./x.png": png(270, 100),
    "x/../y.png": png(280, 100),
}


async def test_worker_on_s3_gives_every_legal_key_one_outcome(make_worker_setup: MakeSetup) -> None:
    """On moto, long Korean and ASCII names, control characters, `a//b.png`, `./x.png` and
    `x/../y.png` get results (each from its own object) under fallback names with the key in
    `source-key`; `run --once` exits 0, the batch is not in error, and a second pass makes no API
    call."""
    setup = await make_worker_setup()
    settings = setup.settings()
    async with AsyncExitStack() as stack:
        client = await open_s3_client(setup.storage_settings, stack)
        for key, data in S3_READABLE.items():
            await client.put_object(Bucket=setup.bucket, Key=f"in/{key}", Body=data)
    await setup.inputs.write("fine.png", png(300, 100))
    batch_id = await create_batch(setup, settings)

    assert await run_worker(settings, once=True) == 0

    results = await _source_keys(setup.results, FALLBACK_PREFIX)
    assert set(results) == set(S3_READABLE)
    for source, key in results.items():
        assert key == result_key(source, ".json", location=setup.results.location)
        width = (await read_json(setup.results, key))["images"][0]["convertedImageInfo"]["width"]
        assert width == png_width(S3_READABLE[source])
    assert await _source_keys(setup.results, FAILED_FALLBACK_PREFIX) == {}
    assert "fine.png.json" in await keys(setup.results)
    assert await _status(settings, batch_id) != "error"
    report = await read_json(setup.results, "_report.json")
    assert (report["succeeded"], report["failed"], report["pending"]) == (9, 0, 0)

    calls = setup.emulator.stats()["calls"]
    assert calls == 9
    assert await run_worker(settings, once=True) == 0
    assert setup.emulator.stats()["calls"] == calls
    report = await read_json(setup.results, "_report.json")
    assert (report["succeeded"], report["failed"], report["pending"]) == (9, 0, 0)


async def test_results_an_older_version_wrote_under_the_natural_name_still_count(
    make_worker_setup: MakeSetup,
) -> None:
    """On S3, where a long name was storable, a result written under it before fallback names
    existed keeps the input done: no second call."""
    setup = await make_worker_setup()
    settings = setup.settings()
    info = await setup.inputs.write(KOREAN_83, png(200, 100))
    await setup.results.write(KOREAN_83 + ".json", b'{"images": []}', metadata={"source-etag": info.etag})
    await create_batch(setup, settings)
    assert await run_worker(settings, once=True) == 0
    assert setup.emulator.stats()["calls"] == 0
    assert await keys(setup.results, FALLBACK_PREFIX) == []


async def test_retry_failed_names_the_input_of_a_fallback_record(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """`ocrbatch retry-failed` removes a fallback-named failure record and reports the input it was
    about (from its `source-key`), not the record's name; the next run records it again."""
    setup = await make_worker_setup()
    settings = setup.settings()
    await setup.inputs.write(CONTROL, b"")  # refused without a call: a final failure record
    await create_batch(setup, settings)
    assert await run_worker(settings, once=True) == 0
    assert await keys(setup.results, FAILED_FALLBACK_PREFIX) == [failure_record_key(CONTROL)]

    config = write_config(setup, tmp_path / "ocrbatch.toml")
    process = await start_ocrbatch(config, "retry-failed", "receipts", "--json", stderr=DEVNULL)
    assert await process.wait(timeout_s=120) == 0
    assert json.loads(process.output) == {"batch": "receipts", "retrying": [CONTROL]}
    assert await keys(setup.results, FAILED_FALLBACK_PREFIX) == []
    assert await run_worker(settings, once=True) == 0
    assert await keys(setup.results, FAILED_FALLBACK_PREFIX) == [failure_record_key(CONTROL)]
