"""The hostile corpus: `ocrbatch run --once` as a real process, on local directories and on moto,
over 50 normal inputs and the names and files real users have (long Korean and ASCII names, keys
that are not paths, control characters, a PDF over the page cap, a PDF whose pages share one
large image, a multi-frame TIFF, empty, corrupt and lying files, a symbolic link out of the root).
Every hostile input ends with exactly one clear outcome, every normal input has its result, no
batch is in error, and a second pass makes no API call."""

from __future__ import annotations

import io
import json
import os
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures.emulator import StartEmulator
from fixtures.process import start_ocrbatch
from fixtures.samples import pdf, png, tiff
from fixtures.worker import MakeSetup, create_batch, write_config
from PIL import Image
from pypdf import PdfReader, PdfWriter

from bench.common import write_config as write_toml
from ocrbatch.batches.layout import failure_record_key, result_key
from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import batch_store_in
from ocrbatch.locations import Location
from ocrbatch.settings import load_settings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.s3 import open_s3_client

NORMAL = {f"normal/scan-{index:02}.png": png(100 + index, 60) for index in range(50)}
KOREAN_83 = "계약서" * 27 + "문서.png"  # 83 Korean characters: 253 UTF-8 bytes, a file name still
KOREAN_120 = "스캔한계약서" * 19 + "문서들입니다.png"  # 120: 364 bytes, an S3 key only
ASCII_251 = "a" * 247 + ".png"  # 251 bytes
MAX_PAGES = 2000
PREFETCH_MB = 256  # the default


def shared_image_pdf(pages: int, side_px: int = 1400) -> bytes:
    """A PDF of `pages` pages that all show one large (noisy, so incompressible) image."""
    image = Image.effect_noise((side_px, side_px), 80).convert("L")
    single = io.BytesIO()
    image.save(single, format="PDF")
    page = PdfReader(io.BytesIO(single.getvalue())).pages[0]
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_page(page)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def hostile_files() -> dict[str, bytes]:
    """Hostile inputs that both backends can hold, by key."""
    return {
        KOREAN_83: png(210, 90),
        ASCII_251: png(230, 90),
        "ctl/bell\x07.png": png(240, 90),
        "pdf/over-the-cap.pdf": pdf(MAX_PAGES + 500),
        "pdf/shared-image.pdf": shared_image_pdf(1000),
        "tiff/thirty-frames.tiff": tiff([(120, 80)] * 30),
        "bad/empty.png": b"",
        "bad/corrupt.png": b"\x89PNG\r\n\x1a\n but not an image at all",
        "bad/really-a-pdf.jpg": pdf(1),
        "bad/text.png": b"just some text, not an image\n",
    }


S3_ONLY = {
    "contracts/" + KOREAN_120: png(220, 90),
    "keys/a//b.png": png(250, 90),
    "keys/./x.png": png(260, 90),
    "keys/x/../y.png": png(270, 90),
}


@dataclass
class Corpus:
    """Where the corpus is, how to run the worker on it, and the emulator that answers."""

    config: Path
    results: Storage
    hostile: set[str]
    emulator: Any


def _outcomes(keys: set[str], key: str, location: Location) -> list[str]:
    """The result and failure-record objects of input `key` among the result location's `keys`."""
    names = {result_key(key, ".json", location=location), failure_record_key(key, location=location)}
    return sorted(keys & names)


async def _listed(storage: Storage) -> set[str]:
    return {info.key async for info in storage.list()}


async def local_corpus(tmp_path: Path, start_emulator: StartEmulator) -> Corpus:
    emulator = await start_emulator(max_concurrent_calls=5)
    inputs, results, control = tmp_path / "in", tmp_path / "out", tmp_path / "control"
    files = {**NORMAL, **hostile_files()}
    for key, data in files.items():
        path = inputs / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    outside = tmp_path / "outside" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes(png(300, 90))
    os.symlink(outside, inputs / "link-out.png")
    results.mkdir()
    config = write_toml(
        tmp_path / "ocrbatch.toml",
        {
            "storage": {"control_path": str(control)},
            "domains.receipts": {
                "kind": "general",
                "invoke_url": emulator.url + "/general",
                "secret": emulator.settings.general_secret.get_secret_value(),
                "max_concurrent_calls": 5,
            },
            "worker": {"max_pages_per_document": MAX_PAGES, "prefetch_memory_mb": PREFETCH_MB},
            "logging": {"format": "json"},
        },
    )
    settings = load_settings(config)
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        spec = {
            "name": "corpus",
            "domain": "receipts",
            "input_path": str(inputs),
            "result_path": str(results),
        }
        await store.create(parse_spec(spec))
        result_storage = await storages.open(Location.parse(str(results)))
    hostile = set(hostile_files()) | {"link-out.png"}
    return Corpus(config, result_storage, hostile, emulator)


async def s3_corpus(tmp_path: Path, make_worker_setup: MakeSetup) -> Corpus:
    setup = await make_worker_setup(max_concurrent_calls=5)
    files = {**NORMAL, **hostile_files(), **S3_ONLY}
    async with AsyncExitStack() as stack:
        client = await open_s3_client(setup.storage_settings, stack)
        for key, data in files.items():
            await client.put_object(Bucket=setup.bucket, Key=f"in/{key}", Body=data)
    await create_batch(setup, setup.settings(), name="corpus")
    config = write_config(
        setup, tmp_path / "ocrbatch.toml", max_pages_per_document=MAX_PAGES, prefetch_memory_mb=PREFETCH_MB
    )
    return Corpus(config, setup.results, set(hostile_files()) | set(S3_ONLY), setup.emulator)


async def run_once(config: Path) -> tuple[int, int, list[str]]:
    """`ocrbatch run --once` under a small parent that reports the worker's peak RSS (its only
    child); returns the exit code, the peak RSS in KB and the output lines."""
    wrapper = (
        "import resource, subprocess, sys; "
        "args = [sys.executable, '-m', 'ocrbatch', '--config', sys.argv[1], 'run', '--once']; "
        "code = subprocess.call(args); "
        "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True); "
        "sys.exit(code)"
    )
    process = await start_ocrbatch(None, str(config), command=[sys.executable, "-c", wrapper])
    code = await process.wait(timeout_s=300)
    peak = [line for line in process.lines if line.startswith("peak-rss-kb ")]
    assert peak, process.explain("the wrapper printed no peak RSS")
    return code, int(peak[-1].split()[1]), process.lines


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_every_hostile_input_ends_with_one_clear_outcome(
    backend: str, tmp_path: Path, start_emulator: StartEmulator, make_worker_setup: MakeSetup
) -> None:
    """All 50 normal inputs get results; each hostile input gets exactly one result or failure
    record (the long and odd names under fallback names, the PDF over the cap and the broken files
    a final failure record saying why, the symbolic link refused); the 30-frame TIFF gives 30
    pages from 3 calls; the worker's peak RSS stays under `prefetch_memory_mb` + 100 MB while the
    shared-image PDF is split; `run --once` exits 0, no batch is in error, and a second pass calls
    nothing."""
    corpus = (
        await local_corpus(tmp_path, start_emulator)
        if backend == "local"
        else await s3_corpus(tmp_path, make_worker_setup)
    )
    code, peak_rss_kb, lines = await run_once(corpus.config)
    assert code == 0, "\n".join(lines[-30:])
    assert peak_rss_kb < (PREFETCH_MB + 100) * 1024, f"peak RSS {peak_rss_kb / 1024:.0f} MB"
    location = corpus.results.location
    listed = await _listed(corpus.results)
    for key in NORMAL:
        assert _outcomes(listed, key, location) == [result_key(key, ".json", location=location)], key
    for key in corpus.hostile:
        assert len(_outcomes(listed, key, location)) == 1, f"{key!r}: {_outcomes(listed, key, location)}"
    failures = {
        key: json.loads((await corpus.results.read(failure_record_key(key, location=location))).data)
        for key in corpus.hostile
        if failure_record_key(key, location=location) in listed
    }
    for key in ("pdf/over-the-cap.pdf", "bad/empty.png", "bad/corrupt.png", "bad/text.png"):
        assert failures[key]["retryable"] is False, failures[key]
    assert f"{MAX_PAGES:,}" in failures["pdf/over-the-cap.pdf"]["message"]
    if backend == "local":
        assert "symbolic link" in failures["link-out.png"]["message"]
    tiff_result = json.loads((await corpus.results.read(result_key("tiff/thirty-frames.tiff", ".json"))).data)
    assert [image["convertedImageInfo"]["pageIndex"] for image in tiff_result["images"]] == list(range(30))
    recognitions = corpus.emulator.recognitions
    tiff_calls = [name for name in recognitions if name.startswith("tiff/thirty-frames.tiff")]
    assert len(tiff_calls) == 3, tiff_calls
    assert not [name for name in recognitions if name.startswith(("pdf/over-the-cap.pdf", "link-out.png"))]
    assert max(recognitions.values()) == 1, "an image was recognised twice"

    settings = load_settings(corpus.config)
    async with StorageFactory(settings.storage) as storages:
        [stored] = await (await batch_store_in(settings, storages)).list_batches()
    assert stored.batch.status != "error", stored.batch.status_reason
    calls = corpus.emulator.stats()["calls"]
    code, _, lines = await run_once(corpus.config)
    assert code == 0, "\n".join(lines[-30:])
    assert corpus.emulator.stats()["calls"] == calls, "the second pass called the API"


async def test_with_cap_1_and_the_first_four_inputs_unstorable_by_name_the_pass_completes(
    tmp_path: Path, make_worker_setup: MakeSetup
) -> None:
    """Cap 1, so 4 item tasks; the first four inputs in listing order have names no result could
    have: the pass completes (exit 0) and all nine inputs have results."""
    setup = await make_worker_setup(max_concurrent_calls=1)
    hostile = [f"0{index}-" + "가" * 90 + ".png" for index in range(4)]
    normal = [f"{index}-scan.png" for index in range(5, 10)]
    for index, key in enumerate(hostile + normal):
        await setup.inputs.write(key, png(100 + index, 60))
    await create_batch(setup, setup.settings())
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    process = await start_ocrbatch(config, "run", "--once")
    assert await process.wait(timeout_s=120) == 0, process.explain("the pass did not complete")
    listed = await _listed(setup.results)
    location = setup.results.location
    for key in hostile + normal:
        assert _outcomes(listed, key, location) == [result_key(key, ".json", location=location)], key
