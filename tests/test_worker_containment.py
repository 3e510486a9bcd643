"""Containment: whatever an item raises at any step of its life becomes that item's outcome (a
retryable failure record for a storage error, a final one otherwise, or its stored result when the
error came after it), the other items get their results, the pass ends, and the batch is not
stopped. Errors are injected by replacing one step with a function that raises for one input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, create_batch, keys, open_worker, read_json

from ocrbatch.batches.events import Upload
from ocrbatch.batches.store import batch_store_in
from ocrbatch.clova.client import OcrClient, open_ocr_session
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.errors import StorageError
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.s3 import S3Storage
from ocrbatch.webhooks.delivery import open_webhook_session
from ocrbatch.worker import batch_run, recognise
from ocrbatch.worker.outcomes import ItemOutcomes
from ocrbatch.worker.prepare import prepare_item
from ocrbatch.worker.worker import Worker

POISON = "poison.png"
OTHERS = [f"fine-{index}.png" for index in range(4)]


def _key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The input key a step is working on, from its arguments (an item, a prepared item, a call)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, str) and value.endswith(".png"):
            return value
        for attribute in ("key", "name"):
            if isinstance(getattr(value, attribute, None), str):
                return str(getattr(value, attribute))
        item = getattr(value, "item", None)
        if item is not None and isinstance(getattr(item, "key", None), str):
            return str(item.key)
    return None


def poisoned(step: Callable[..., Any], error: Exception) -> Callable[..., Any]:
    """`step`, raising `error` when it works on the poison input."""

    async def raising(*args: Any, **kwargs: Any) -> Any:
        if _key_of(args, kwargs) == POISON:
            raise error
        return await step(*args, **kwargs)

    return raising


# (where, attribute, what the poison input ends with: "record" or "result")
STEPS = [
    (ItemClaims, "take", "record"),
    (batch_run, "judge_item", "record"),
    (recognise, "prepare_item", "record"),
    (OcrClient, "recognize", "record"),
    (ItemOutcomes, "_write_result", "record"),
    (recognise.ItemRecognition, "_changed_since_read", "result"),
    (ItemOutcomes, "succeeded", "result"),
]
ERRORS = [
    StorageError("injected: the store said no", location="s3://bucket/in"),
    RuntimeError("injected bug"),
]


@pytest.mark.parametrize("step", STEPS, ids=[name for _, name, _ in STEPS])
@pytest.mark.parametrize("error", ERRORS, ids=["storage-error", "bug"])
async def test_an_error_at_any_step_is_that_item_s_outcome_only(
    make_worker_setup: MakeSetup,
    monkeypatch: pytest.MonkeyPatch,
    step: tuple[Any, str, str],
    error: Exception,
) -> None:
    """The poison input raises at one step; the 4 others get results, the pass ends with no batch
    error, and the poison input ends with a failure record (retryable for a storage error, final
    for a bug, the error's text as its reason), or with its result when the step came after the
    result was stored."""
    owner, name, ends_with = step
    setup = await make_worker_setup(max_concurrent_calls=1)
    settings = setup.settings()
    for index, key in enumerate([POISON, *OTHERS]):
        await setup.inputs.write(key, png(100 + index, 80))
    await create_batch(setup, settings)
    monkeypatch.setattr(owner, name, poisoned(getattr(owner, name), error))
    async with (
        StorageFactory(settings.storage) as storages,
        open_ocr_session() as session,
        open_webhook_session(settings.webhook) as outbound,
    ):
        store = await batch_store_in(settings, storages)
        claims = ItemClaims(store.coordination, ttl_s=60)
        worker = Worker(
            settings,
            store=store,
            storages=storages,
            session=session,
            outbound_session=outbound,
            claims=claims,
        )
        outcome = await within(worker.run_pass(), 60, f"the pass did not end with {name} raising")
        [stored] = await store.list_batches()
    assert outcome.errors == {}
    assert stored.batch.status != "error"
    found = await keys(setup.results)
    assert {f"{key}.json" for key in OTHERS} <= set(found)
    if ends_with == "result":
        assert f"{POISON}.json" in found
        assert f"_failed/{POISON}.json" not in found
        return
    assert f"{POISON}.json" not in found
    record = await read_json(setup.results, f"_failed/{POISON}.json")
    assert record["retryable"] is isinstance(error, StorageError)
    assert "injected" in record["message"]


async def test_an_item_whose_failure_cannot_be_recorded_stays_pending_and_the_pass_ends(
    make_worker_setup: MakeSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the poison input fails, and so does writing its failure record: it is left pending
    (the next pass tries again), the others get results, and the pass ends."""
    setup = await make_worker_setup(max_concurrent_calls=1)
    settings = setup.settings()
    for index, key in enumerate([POISON, *OTHERS]):
        await setup.inputs.write(key, png(100 + index, 80))
    await create_batch(setup, settings)
    monkeypatch.setattr(recognise, "prepare_item", poisoned(prepare_item, RuntimeError("injected")))
    monkeypatch.setattr(
        ItemOutcomes,
        "record_failure",
        poisoned(ItemOutcomes.record_failure, StorageError("injected: no writes", location="s3://b/out")),
    )
    async with open_worker(settings) as (worker, _):
        outcome = await within(worker.run_pass(), 60, "the pass did not end")
    assert outcome.errors == {}
    report = outcome.reports[next(iter(outcome.reports))]
    assert report.left_pending == 1
    assert set(await keys(setup.results)) == {"_report.json", *(f"{key}.json" for key in OTHERS)}


async def test_an_announced_input_that_cannot_be_read_gets_a_failure_record(
    make_worker_setup: MakeSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload announced by an event whose HEAD fails with a storage error that retrying cannot
    mend: the input gets a final failure record saying why, the other announced input its result,
    and the batch is not stopped."""
    setup = await make_worker_setup()
    settings = setup.settings()
    for key in (POISON, OTHERS[0]):
        await setup.inputs.write(key, png(120, 80))
    await create_batch(setup, settings)
    refused = StorageError("injected: never readable", location="s3://bucket/in")
    refused.transient = False
    monkeypatch.setattr(S3Storage, "head", poisoned(S3Storage.head, refused))
    async with open_worker(settings) as (worker, store):
        uploads = [Upload(setup.bucket, f"in/{key}") for key in (POISON, OTHERS[0])]
        await within(worker.process_uploads(uploads), 60, "the announced inputs were not processed")
        [stored] = await store.list_batches()
    assert stored.batch.status != "error"
    record = await read_json(setup.results, f"_failed/{POISON}.json")
    assert (record["retryable"], "never readable" in record["message"]) == (False, True)
    assert f"{OTHERS[0]}.json" in await keys(setup.results)
