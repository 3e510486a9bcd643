"""The worker end to end, on moto's S3 server and the emulator.

Where the store matters (discovery, results, the batch's status, a second run resuming), a test
runs on both worker profiles (`worker_profile`): moto with documents in the control location, and
the NAVER profile (V1 listings, no conditional writes) with coordination in Redis."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import pytest
from fixtures.clock import FakeClock
from fixtures.samples import jpeg, pdf, png, tiff
from fixtures.waits import within
from fixtures.worker import (
    MakeSetup,
    WorkerProfile,
    WorkerSetup,
    create_batch,
    keys,
    open_worker,
    read_json,
    with_domain,
)
from openpyxl import load_workbook
from structlog.testing import capture_logs

from ocrbatch.batches.store import batch_store_in
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.settings import Settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.worker import PassResult, Worker

PROGRESS_INTERVAL_S = 3600.0  # only the progress ticker waits this long: the test ends its waits


async def batch_status(settings: Settings, batch_id: str) -> tuple[str, str | None]:
    async with StorageFactory(settings.storage) as storages:
        batch = (await (await batch_store_in(settings, storages)).get(batch_id)).batch
    return batch.status, batch.status_reason


def good_inputs(count: int) -> dict[str, bytes]:
    """`count` valid inputs cycling through every supported format, each with distinct content."""
    makers: list[tuple[str, Callable[[int], bytes]]] = [
        ("png", lambda n: png(200 + n, 100, colour=n % 250)),
        ("jpg", lambda n: jpeg(120 + n, 90)),
        ("jpeg", lambda n: jpeg(90, 120 + n)),
        ("tif", lambda n: tiff([(100 + n, 80)])),
        ("tiff", lambda n: tiff([(80, 100 + n), (60, 60)])),
        ("pdf", lambda n: pdf(1 + n % 3, width_pt=300 + n)),
    ]
    return {
        f"docs/{index:03}.{ext}": make(index)
        for index, (ext, make) in ((index, makers[index % len(makers)]) for index in range(count))
    }


BAD_INPUTS = {
    "bad/empty.png": (b"", "the file is empty"),
    "bad/corrupt.jpg": (b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10, "cannot be read as JPG"),
    "bad/huge.png": (b"\x89PNG" + b"\0" * (50 * 1024 * 1024 + 10), "at most 50 MB"),
    "bad/long.png": (png(200, 30000, mode="1"), "long image (200 x 30000 px)"),
    "bad/locked.pdf": (pdf(2, password="secret"), "encrypted PDF"),
}


async def test_mixed_inputs_under_faults(make_worker_setup: MakeSetup, worker_profile: WorkerProfile) -> None:
    """300 good inputs of every format and bad ones, under 0500/0025 faults: every good input gets one
    result, every bad one a failure record with its reason, the .gif is skipped, the cap is never
    exceeded and nothing is recognised twice."""
    setup = await make_worker_setup(
        store=worker_profile.store,
        max_concurrent_calls=5,
        faults={
            "error_rate": 0.10,
            "rate_limit_rate": 0.05,
            "latency_ms": 8,
            "latency_jitter_ms": 6,
            "seed": 3,
        },
    )
    settings = setup.settings(
        coordination=worker_profile.coordination, progress_interval_s=PROGRESS_INTERVAL_S
    )
    good = good_inputs(300)
    for key, data in good.items():
        await setup.inputs.write(key, data)
    for key, (data, _) in BAD_INPUTS.items():
        await setup.inputs.write(key, data)
    await setup.inputs.write("bad/animation.gif", b"GIF89a....")
    batch_id = await create_batch(setup, settings)
    clock = FakeClock(now_s=0.0)
    # the progress ticker's waits end at these numbers of results, the last with work still left
    recognised = [100, 200, 290]

    async def sleep(delay_s: float) -> None:
        """Backoffs pass at once; each wait of the ticker ends at the next number of results."""
        if delay_s == PROGRESS_INTERVAL_S:
            if not recognised:
                await asyncio.Event().wait()  # no more progress lines: the pass cancels the ticker
            wanted = recognised.pop(0)
            await setup.emulator.wait_until(lambda: sum(setup.emulator.recognitions.values()) >= wanted)
        await clock.sleep(delay_s)

    with capture_logs() as logs:
        async with open_worker(settings, sleep=sleep, clock=clock) as (worker, _):
            outcome = await within(worker.run_pass(), 50, "the pass did not end")
    assert outcome.errors == {}

    result_keys = set(await keys(setup.results))
    assert {key + ".json" for key in good} <= result_keys
    for key, (_, reason) in BAD_INPUTS.items():
        record = await read_json(setup.results, f"_failed/{key}.json")
        assert reason in record["message"], (key, record)
        assert record["retryable"] is False
        assert key + ".json" not in result_keys
    assert "bad/animation.gif.json" not in result_keys
    assert not any(key.startswith("_failed/docs/") for key in result_keys)
    report = await read_json(setup.results, "_report.json")
    assert (report["succeeded"], report["failed"], report["skipped"], report["pending"]) == (300, 5, 1, 0)
    stats = setup.emulator.stats()
    assert stats["domains"]["general"]["peak_in_flight"] <= 5
    assert stats["recognised_more_than_once"] == {}
    assert await batch_status(settings, batch_id) == ("available", None)
    progress = [entry for entry in logs if entry["event"] == "batch.progress"]
    assert progress, "no progress line while 300 items were processed"
    assert len(progress) == 3  # one line per wait of the ticker that ended
    done = [entry["done"] for entry in progress]
    assert done == sorted(done), done  # the lines show the batch advancing
    assert done[0] < done[-1], done
    assert {"done", "total", "rate_per_s", "eta_s", "batch_id"} <= set(progress[-1])
    assert progress[-1]["total"] == 305
    done = [entry for entry in logs if entry["event"] == "item.done"]
    assert len(done) == 305  # every processed item ends in exactly one event


async def test_long_pdf_is_split_and_merged_and_xls_results_open(
    make_worker_setup: MakeSetup, worker_profile: WorkerProfile
) -> None:
    """A 23-page PDF takes 3 calls and gives one result with pageIndex 0-22; an xls batch's workbook
    opens with openpyxl and holds the text sheet and a table sheet with merged cells."""
    setup = await make_worker_setup(store=worker_profile.store)
    settings = setup.settings(coordination=worker_profile.coordination)
    await setup.inputs.write("contract.pdf", pdf(23))
    await create_batch(setup, settings)
    assert await run_worker(settings, once=True) == 0
    result = await read_json(setup.results, "contract.pdf.json")
    assert [image["convertedImageInfo"]["pageIndex"] for image in result["images"]] == list(range(23))
    assert setup.emulator.stats()["calls"] == 3
    assert setup.emulator.stats()["recognitions"] == {
        "contract.pdf#pages=1-10": 1,
        "contract.pdf#pages=11-20": 1,
        "contract.pdf#pages=21-23": 1,
    }

    # One batch per General domain: the json batch makes way for an xls batch with tables.
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        await store.delete("receipts")
    await setup.inputs.write("tables/receipt.png", png(800, 600))
    await create_batch(
        setup,
        settings,
        name="tables",
        table_extraction=True,
        file_format="xls",
        input_path=f"s3://{setup.bucket}/in/tables",
        result_path=f"s3://{setup.bucket}/tables-out",
    )
    assert await run_worker(settings, once=True) == 0
    async with StorageFactory(settings.storage) as storages:
        out = await storages.open(setup.location("tables-out"))
        stored = await out.read("receipt.png.xlsx")
    workbook = load_workbook(io.BytesIO(stored.data))
    assert "Text" in workbook.sheetnames
    table_sheets = [name for name in workbook.sheetnames if name.startswith("Table")]
    assert table_sheets
    assert workbook[table_sheets[0]].merged_cells.ranges
    assert stored.info.metadata["source-key"] == "receipt.png"


async def test_wrong_secret_stops_only_its_domain(
    make_worker_setup: MakeSetup, worker_profile: WorkerProfile
) -> None:
    """A wrong secret puts the batch on that domain in error with 0002 and writes no failure records,
    while a batch on another domain completes; run --once exits 1."""
    setup = await make_worker_setup(store=worker_profile.store)
    settings = setup.settings(coordination=worker_profile.coordination)
    broken = with_domain(settings, "receipts", secret="not-the-secret")
    for index in range(6):
        await setup.inputs.write(f"{index}.png", png(100 + index, 100))
        await setup.inputs.write(f"forms/{index}.png", png(100, 100 + index))
    general_id = await create_batch(setup, broken, input_path=f"s3://{setup.bucket}/in/general")
    for index in range(6):
        await setup.inputs.write(f"general/{index}.png", png(120 + index, 100))
    forms_id = await create_batch(
        setup,
        broken,
        name="forms",
        domain="forms",
        template_ids=[101],
        input_path=f"s3://{setup.bucket}/in/forms",
        result_path=f"s3://{setup.bucket}/forms-out",
    )
    assert await run_worker(broken, once=True) == 1
    status, reason = await batch_status(broken, general_id)
    assert status == "error"
    assert reason is not None
    assert reason.startswith("0002")
    assert not [key for key in await keys(setup.results) if key.startswith("_failed/")]
    assert await batch_status(broken, forms_id) == ("available", None)
    async with StorageFactory(settings.storage) as storages:
        forms_out = await storages.open(setup.location("forms-out"))
        assert len([key for key in await keys(forms_out) if key.endswith(".png.json")]) == 6


async def test_cap_configured_too_high_settles_at_the_real_limit(make_worker_setup: MakeSetup) -> None:
    """Configured for 10 against a service capped at 3: under 5 % of calls get 0025 and the limiter's
    cap settles at or below 3."""
    # Calls must dominate the time, as real OCR calls do, or 5 "in flight" never overlap at the service.
    faults = {"latency_ms": 40, "latency_jitter_ms": 10}
    setup = await make_worker_setup(max_concurrent_calls=3, faults=faults)
    base = setup.settings()
    settings = with_domain(base, "receipts", max_concurrent_calls=10)
    for index in range(300):
        await setup.inputs.write(f"{index:03}.png", png(100 + index, 80))
    await create_batch(setup, settings)
    async with open_worker(settings) as (worker, _):
        outcome = await worker.run_pass()
        limiter = worker.limiters["receipts"]
        cap, settled_cap = limiter.cap, limiter.settled_cap
    assert outcome.errors == {}
    stats = setup.emulator.stats()
    assert stats["calls"] >= 300
    assert stats["rejections"].get("0025", 0) < 0.05 * stats["calls"], stats
    assert settled_cap <= 3  # a probe one above may be in progress: cap <= settled + 1
    assert cap <= settled_cap + 1
    assert len([key for key in await keys(setup.results) if key.endswith(".png.json")]) == 300


async def test_results_layout_metadata_and_a_second_run_calls_nothing(
    make_worker_setup: MakeSetup, worker_profile: WorkerProfile
) -> None:
    """Results sit at {result}/{key}.json with their metadata; a second run --once on a finished batch
    makes zero API calls; a changed input is recognised again."""
    setup = await make_worker_setup(store=worker_profile.store)
    settings = setup.settings(coordination=worker_profile.coordination)
    await setup.inputs.write("a/영수증 1.png", png(300, 200))
    await setup.inputs.write("b.jpg", jpeg(100, 100))
    batch_id = await create_batch(setup, settings)
    assert await run_worker(settings, once=True) == 0
    assert await keys(setup.results) == ["_report.json", "a/영수증 1.png.json", "b.jpg.json"]
    head = await setup.results.head("a/영수증 1.png.json")
    source = await setup.inputs.head("a/영수증 1.png")
    assert head.metadata == {
        "source-key": "a/영수증 1.png",
        "source-etag": source.etag,
        "batch-id": batch_id,
        "domain": "receipts",
        "attempts": "1",
    }
    assert head.content_type == "application/json"
    result = await read_json(setup.results, "a/영수증 1.png.json")
    assert result["images"][0]["convertedImageInfo"]["width"] == 300
    calls = setup.emulator.stats()["calls"]
    assert await run_worker(settings, once=True) == 0
    assert setup.emulator.stats()["calls"] == calls
    report = await read_json(setup.results, "_report.json")
    assert (report["succeeded"], report["pending"], report["this_pass"]["calls"]) == (2, 0, 0)
    await asyncio.sleep(0)
    await setup.inputs.write("b.jpg", jpeg(140, 100))
    assert await run_worker(settings, once=True) == 0
    assert setup.emulator.stats()["calls"] == calls + 1
    assert (await read_json(setup.results, "b.jpg.json"))["images"][0]["convertedImageInfo"]["width"] == 140


@pytest.mark.parametrize("mode", ["multipart", "url"])
async def test_transfer_modes(make_worker_setup: MakeSetup, worker_profile: WorkerProfile, mode: str) -> None:
    """Multipart and url (presigned S3 URL, here of the store the worker reaches) domains produce the
    same results as data."""
    setup = await make_worker_setup(store=worker_profile.store)
    base = setup.settings(coordination=worker_profile.coordination)
    settings = with_domain(base, "receipts", transfer_mode=mode)
    await setup.inputs.write("x.png", png(321, 123))
    await setup.inputs.write("long.pdf", pdf(12))
    await create_batch(setup, settings)
    assert await run_worker(settings, once=True) == 0
    assert (await read_json(setup.results, "x.png.json"))["images"][0]["convertedImageInfo"]["width"] == 321
    assert len((await read_json(setup.results, "long.pdf.json"))["images"]) == 12


async def docs_batch(setup: WorkerSetup, settings: Settings, count: int) -> str:
    """The setup's batch over `count` PNGs under `docs/`; returns its id."""
    for index in range(count):
        await setup.inputs.write(f"docs/{index:02}.png", png(200 + index, 100))
    return await create_batch(setup, settings)


async def pass_with_two_calls_held(setup: WorkerSetup, worker: Worker) -> asyncio.Task[PassResult]:
    """A pass of `worker` started with the emulator holding calls, once two of them are in flight."""
    setup.emulator.hold()
    running = asyncio.create_task(worker.run_pass())
    await within(setup.emulator.wait_for_in_flight(2), 30, "two calls never reached the emulator")
    return running


async def test_pausing_mid_pass_finishes_what_is_in_flight_and_starts_nothing_more(
    make_worker_setup: MakeSetup,
) -> None:
    """A batch paused while its pass runs (the API or the console telling the worker) lets the
    calls in flight finish and starts no other item; its status stays "paused", the report counts
    the rest as pending, and the live report showed the pass while it ran."""
    setup = await make_worker_setup(max_concurrent_calls=2)
    settings = setup.settings()
    batch_id = await docs_batch(setup, settings, 12)
    async with open_worker(settings) as (worker, store):
        with capture_logs() as logs:
            running = await pass_with_two_calls_held(setup, worker)
            live = worker.live_report(batch_id)
            assert live is not None
            assert live["pending"] > 0
            paused = await store.update(batch_id, {}, status="paused")
            worker.batch_changed(paused.batch)
            setup.emulator.release()
            outcome = await within(running, 30, "the paused pass did not end")
    assert outcome.errors == {}
    assert worker.live_report(batch_id) is None
    report = await read_json(setup.results, "_report.json")
    assert report["succeeded"] == setup.emulator.stats()["calls"] == 2
    assert report["pending"] == 10
    assert await batch_status(settings, batch_id) == ("paused", None)
    assert [entry["event"] for entry in logs if entry["event"].startswith("batch.paus")] == [
        "batch.pausing",
        "batch.paused_mid_pass",
    ]


async def test_a_pause_from_elsewhere_is_never_overwritten_by_the_end_of_the_pass(
    make_worker_setup: MakeSetup,
) -> None:
    """A batch paused by another process (the CLI, another replica's API) before this worker has
    read the catalog again stays paused: the status the pass ends with does not replace it, and
    the worker's log says it kept the pause."""
    setup = await make_worker_setup(max_concurrent_calls=2)
    settings = setup.settings(poll_interval_s=3600)  # the catalog is not read again in this pass
    batch_id = await docs_batch(setup, settings, 4)
    async with open_worker(settings) as (worker, store):
        with capture_logs() as logs:
            running = await pass_with_two_calls_held(setup, worker)
            await store.update(batch_id, {}, status="paused")  # elsewhere: this worker is not told
            setup.emulator.release()
            outcome = await within(running, 30, "the pass did not end")
    assert outcome.errors == {}
    assert outcome.reports[batch_id].succeeded == 4
    assert await batch_status(settings, batch_id) == ("paused", None)
    kept = [entry for entry in logs if entry["event"] == "batch.status_kept"]
    assert [(entry["status"], entry["wanted"]) for entry in kept] == [("paused", "available")]
