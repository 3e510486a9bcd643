"""The API's routes about a batch's work, over the same operations as the CLI and the console:
the dry run's estimate, failure records paged and filtered, retrying failed items (all of them or
some), and the webhook's outbox with its dead letters."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fixtures.api import DOMAINS, Api, StartApi
from fixtures.samples import png

from ocrbatch.batches.layout import failure_record_key
from ocrbatch.batches.store import BatchStore
from ocrbatch.settings import Settings, StorageSettings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.webhooks.outbox import DEAD_PREFIX
from ocrbatch.worker.operations import BatchOperations


@pytest.fixture
async def work_api(
    start_api: StartApi, store: BatchStore, tmp_path: Path
) -> AsyncIterator[tuple[Api, Path, list[str]]]:
    """The API with the work routes, batches under `data/`; yields it, that directory and the
    nudges the worker would have heard."""
    data = tmp_path / "data"
    data.mkdir()
    nudges: list[str] = []
    async with StorageFactory(StorageSettings()) as storages:
        operations = BatchOperations(Settings(domains=DOMAINS), store, storages, nudge=nudges.append)
        yield await start_api(store, allowed_locations=[str(data)], operations=operations), data, nudges


async def test_estimate_failures_retry_and_outbox(work_api: tuple[Api, Path, list[str]]) -> None:
    """Estimate counts what a run would send; failures are paged in key order and filtered by
    reason; retry-failed removes the named records (or all) and nudges the worker; the outbox
    lists waiting chunks and dead letters with their reasons."""
    api, data, nudges = work_api
    inputs, results = data / "in", data / "out"
    _, batch = await api.call(
        "POST",
        "/api/v1/batches",
        json={"name": "receipts", "domain": "gen", "input_path": str(inputs), "result_path": str(results)},
    )
    (inputs / "docs").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        (inputs / "docs" / name).write_bytes(png(300, 200))
    records = {"docs/a.png": ("0501", "OCR failed"), "docs/b.png": (None, "cannot be read as PNG")}
    for key, (code, message) in records.items():
        record = results / failure_record_key(key, location=None)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"key": key, "code": code, "message": message, "attempts": 2}))

    response, estimate = await api.call("GET", "/api/v1/batches/receipts/estimate?call_latency_s=2")
    assert response.status == 200
    # The records carry no source etag, so they are stale: every input would be sent.
    assert (estimate["inputs"], estimate["items"], estimate["calls"]) == (3, 3, 3)
    assert estimate["expected_duration_s"] == math.ceil(3 / DOMAINS["gen"].max_concurrent_calls) * 2
    response, body = await api.call("GET", "/api/v1/batches/receipts/estimate?call_latency_s=soon")
    assert response.status == 400, body

    _, page = await api.call("GET", "/api/v1/batches/receipts/failures?limit=1")
    assert [record["key"] for record in page["failures"]] == ["docs/a.png"]
    _, rest = await api.call("GET", f"/api/v1/batches/receipts/failures?limit=1&after={page['after']}")
    assert [record["key"] for record in rest["failures"]] == ["docs/b.png"]
    _, filtered = await api.call("GET", "/api/v1/batches/receipts/failures?reason=read+as")
    assert [(r["key"], r["attempts"]) for r in filtered["failures"]] == [("docs/b.png", 2)]

    _, retried = await api.call(
        "POST", "/api/v1/batches/receipts/retry-failed", json={"keys": ["docs/b.png", "../x"]}
    )
    assert retried == {"batch": "receipts", "retrying": ["docs/b.png"]}
    assert len(nudges) == 1
    response, refused = await api.call(
        "POST", "/api/v1/batches/receipts/retry-failed", json={"keys": "docs/a.png"}
    )
    assert response.status == 422
    assert refused["error"]["violations"] == [{"field": "keys", "rule": "must be a list of input keys"}]
    _, retried = await api.call("POST", "/api/v1/batches/receipts/retry-failed")
    assert retried["retrying"] == ["docs/a.png"]
    _, empty = await api.call("GET", "/api/v1/batches/receipts/failures")
    assert empty["failures"] == []

    dead = results / DEAD_PREFIX / "chunk-1.json"
    dead.parent.mkdir(parents=True, exist_ok=True)
    dead.write_text("{}")
    _, outbox = await api.call("GET", f"/api/v1/batches/{batch['id']}/outbox")
    assert [entry["key"] for entry in outbox["dead"]] == [f"{DEAD_PREFIX}chunk-1.json"]
    assert outbox["waiting"] == []
    response, _ = await api.call("GET", "/api/v1/batches/nope/outbox")
    assert response.status == 404
