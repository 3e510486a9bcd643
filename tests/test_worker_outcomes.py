"""How the worker handles each kind of outcome: retries, final and retryable failures, fatal
domain errors, the quota, inputs that change while recognised, and what it logs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fixtures.samples import png
from fixtures.worker import MakeSetup, create_batch, keys, open_worker, read_json
from structlog.testing import capture_logs

from ocrbatch.emulator.faults import ScriptedFault
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.settings import Settings
from ocrbatch.worker.worker import PassResult, Worker


async def one_pass(
    settings: Settings, *, before: Callable[[Worker], Awaitable[None]] | None = None
) -> PassResult:
    async with open_worker(settings) as (worker, _):
        return await worker.run_pass()


async def test_exhausted_retries_leave_a_retryable_record_retried_next_pass(
    make_worker_setup: MakeSetup,
) -> None:
    """An item that keeps getting 0500 gets a retryable failure record; the next pass retries it and a
    success removes the record."""
    setup = await make_worker_setup()
    settings = setup.settings(max_attempts=3)
    await setup.inputs.write("flaky.png", png(120, 100))
    await setup.inputs.write("fine.png", png(130, 100))
    await create_batch(setup, settings)
    setup.emulator.faults.script([ScriptedFault(code="0500", name="flaky.png", times=3)])
    assert await run_worker(settings, once=True) == 0
    record = await read_json(setup.results, "_failed/flaky.png.json")
    assert (record["code"], record["retryable"], record["attempts"]) == ("0500", True, 3)
    assert await keys(setup.results) == ["_failed/flaky.png.json", "_report.json", "fine.png.json"]
    assert (await read_json(setup.results, "_report.json"))["this_pass"]["retries_by_code"] == {"0500": 3}
    assert await run_worker(settings, once=True) == 0
    assert await keys(setup.results) == ["_report.json", "fine.png.json", "flaky.png.json"]


async def test_failure_result_is_final(make_worker_setup: MakeSetup) -> None:
    """An image the service answers FAILURE for gets a final record and is not sent again."""
    setup = await make_worker_setup()
    settings = setup.settings()
    await setup.inputs.write("blank.png", png(100, 100))
    await create_batch(setup, settings)
    setup.emulator.faults.script([ScriptedFault(infer_result="FAILURE", name="blank.png")])
    assert await run_worker(settings, once=True) == 0
    record = await read_json(setup.results, "_failed/blank.png.json")
    assert record["retryable"] is False
    assert record["message"].startswith("recognition FAILURE")
    calls = setup.emulator.stats()["calls"]
    assert await run_worker(settings, once=True) == 0
    assert setup.emulator.stats()["calls"] == calls
    report = await read_json(setup.results, "_report.json")
    assert (report["failed"], report["pending"]) == (1, 0)


async def test_tables_disabled_stops_only_that_batch(make_worker_setup: MakeSetup) -> None:
    """0028 (tables asked, switch off at the service) puts the batch in error without failure records."""
    setup = await make_worker_setup(table_extraction=False)
    settings = setup.settings()
    for index in range(4):
        await setup.inputs.write(f"{index}.png", png(100 + index, 100))
    batch_id = await create_batch(setup, settings, table_extraction=True)
    outcome = await one_pass(settings)
    assert outcome.errors[batch_id].startswith("0028")
    assert [key for key in await keys(setup.results) if key != "_report.json"] == []
    report = await read_json(setup.results, "_report.json")
    assert (report["failed"], report["pending"]) == (0, 4)  # left pending for when it is fixed


async def test_template_not_deployed_stops_the_template_batch(make_worker_setup: MakeSetup) -> None:
    """1021 (template not deployed) puts the Template batch in error, items pending."""
    setup = await make_worker_setup(template_ids=(101,))
    settings = setup.settings()
    await setup.inputs.write("form.png", png(100, 100))
    batch_id = await create_batch(setup, settings, name="forms", domain="forms", template_ids=[999])
    assert await run_worker(settings, once=True) == 1
    outcome = await one_pass(settings)
    assert outcome.errors[batch_id].startswith("1021")
    assert setup.emulator.stats()["calls"] == 1  # the batch in error is not called again


async def test_quota_pauses_the_domain_and_leaves_retryable_records(make_worker_setup: MakeSetup) -> None:
    """After 0023 the domain pauses; items that never got through keep retryable 0023 records."""
    setup = await make_worker_setup(quota=3)
    settings = setup.settings(max_attempts=2, quota_pause_s=0.01)
    for index in range(5):
        await setup.inputs.write(f"{index}.png", png(100 + index, 100))
    await create_batch(setup, settings)
    assert await run_worker(settings, once=True) == 0
    results = await keys(setup.results)
    assert len([key for key in results if key.endswith(".png.json") and not key.startswith("_failed/")]) == 3
    failures = [key for key in results if key.startswith("_failed/")]
    assert len(failures) == 2
    for key in failures:
        record = await read_json(setup.results, key)
        assert (record["code"], record["retryable"]) == ("0023", True)
    assert setup.emulator.stats()["domains"]["general"]["admitted"] == 3


async def test_input_replaced_while_recognised_is_recognised_again(make_worker_setup: MakeSetup) -> None:
    """An input re-uploaded while its old bytes are recognised gets a result of the new bytes."""
    setup = await make_worker_setup()
    settings = setup.settings()
    await setup.inputs.write("moving.png", png(100, 100))
    await create_batch(setup, settings)
    emulator = setup.emulator
    emulator.hold()
    pass_task = asyncio.create_task(one_pass(settings))
    await emulator.wait_for_in_flight(1)
    await setup.inputs.write("moving.png", png(222, 100))
    emulator.release()
    await pass_task
    result = await read_json(setup.results, "moving.png.json")
    assert result["images"][0]["convertedImageInfo"]["width"] == 222
    assert emulator.stats()["recognitions"] == {"moving.png": 2}
    head = await setup.results.head("moving.png.json")
    assert head.metadata["source-etag"] == (await setup.inputs.head("moving.png")).etag


async def test_every_item_ends_in_one_log_event_and_status_transitions_are_logged(
    make_worker_setup: MakeSetup,
) -> None:
    """Each processed item logs one item.done with its outcome; the batch logs running, then available."""
    setup = await make_worker_setup()
    settings = setup.settings()
    for index in range(5):
        await setup.inputs.write(f"{index}.png", png(100 + index, 100))
    await setup.inputs.write("empty.png", b"")
    batch_id = await create_batch(setup, settings)
    with capture_logs() as logs:
        await one_pass(settings)
    done = [entry for entry in logs if entry["event"] == "item.done"]
    assert sorted(entry["key"] for entry in done) == [
        "0.png",
        "1.png",
        "2.png",
        "3.png",
        "4.png",
        "empty.png",
    ]
    assert {entry["key"]: entry["outcome"] for entry in done}["empty.png"] == "failed"
    assert all(entry["batch_id"] == batch_id for entry in done)
    statuses = [entry["status"] for entry in logs if entry["event"] == "batch.status"]
    assert statuses == ["running", "available"]
