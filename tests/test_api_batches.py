"""The HTTP API's batch routes as a real server on loopback, backed by a real batch store (local
and S3): create, get by id or name, list and search, edit, pause and resume, delete, and status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fixtures.api import DOMAINS, Api, StartApi, spec

from ocrbatch.batches.spec import Batch
from ocrbatch.batches.store import BatchStore
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.locations import Location
from ocrbatch.storage.factory import StorageFactory


async def test_create_then_get_by_id_and_name(api: Api) -> None:
    """POST creates a batch (201 + ETag, webhook secret masked); GET finds it by id or URL-encoded name."""
    webhook = {"url": "https://hooks.example/ocr", "secret": "hook-secret-42"}
    response, created = await api.call("POST", "/api/v1/batches", json=spec("영수증-2026", webhook=webhook))
    assert response.status == 201
    etag = response.headers["ETag"]
    assert etag.startswith('"')
    assert created["name"] == "영수증-2026"
    assert created["status"] == "available"
    assert created["webhook"]["secret"] == "**********"
    for ref in (created["id"], quote("영수증-2026")):
        response, found = await api.call("GET", f"/api/v1/batches/{ref}")
        assert response.status == 200
        assert found == created
        assert response.headers["ETag"] == etag
    assert not any("hook-secret-42" in body for body in api.bodies)


async def test_list_and_search(api: Api) -> None:
    """GET /batches lists every batch sorted by name; ?search= keeps names containing the text."""
    for name in ("invoices", "receipts", "receipts-old"):
        response, _ = await api.call("POST", "/api/v1/batches", json=spec(name))
        assert response.status == 201
    _, body = await api.call("GET", "/api/v1/batches")
    assert [batch["name"] for batch in body["batches"]] == ["invoices", "receipts", "receipts-old"]
    _, body = await api.call("GET", "/api/v1/batches", params={"search": "RECEIPT"})
    assert [batch["name"] for batch in body["batches"]] == ["receipts", "receipts-old"]


async def test_patch_changes_fields_and_merges_a_partial_webhook(api: Api, store: BatchStore) -> None:
    """PATCH applies the given fields only; a webhook with only a URL keeps the current secret."""
    webhook = {"url": "https://hooks.example/a", "secret": "hook-secret"}
    _, created = await api.call("POST", "/api/v1/batches", json=spec(webhook=webhook))
    response, edited = await api.call(
        "PATCH",
        f"/api/v1/batches/{created['id']}",
        json={"template_ids": [2, 3], "webhook": {"url": "https://hooks.example/b"}},
    )
    assert response.status == 200
    assert edited["template_ids"] == [2, 3]
    assert edited["webhook"]["url"] == "https://hooks.example/b"
    assert edited["input_path"] == created["input_path"]
    stored = (await store.get(created["id"])).batch
    assert stored.webhook is not None
    assert stored.webhook.secret is not None
    assert stored.webhook.secret.get_secret_value() == "hook-secret"
    assert response.headers["ETag"] == (await store.get(created["id"])).etag


async def test_patch_status_pauses_and_resumes(api: Api) -> None:
    """`"status": "paused"` pauses and `"available"` resumes; other statuses are a 422 on `status`."""
    _, created = await api.call("POST", "/api/v1/batches", json=spec())
    path = f"/api/v1/batches/{created['id']}"
    _, paused = await api.call("PATCH", path, json={"status": "paused"})
    assert paused["status"] == "paused"
    _, resumed = await api.call("PATCH", path, json={"status": "available"})
    assert resumed["status"] == "available"
    response, body = await api.call("PATCH", path, json={"status": "running"})
    assert response.status == 422
    assert body["error"]["violations"] == [
        {"field": "status", "rule": "can only be set to 'paused' or 'available'"}
    ]


async def test_delete_removes_the_definition_only(
    start_api: StartApi, store: BatchStore, tmp_path: Path
) -> None:
    """DELETE returns the deleted batch; it is gone afterwards and its results stay on disk."""
    api = await start_api(store, allowed_locations=[str(tmp_path)])
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text("{}")
    _, created = await api.call(
        "POST", "/api/v1/batches", json=spec(result_path=str(results), input_path=str(tmp_path / "in"))
    )
    response, body = await api.call("DELETE", f"/api/v1/batches/{created['id']}")
    assert response.status == 200
    assert body == {"deleted": created}
    response, _ = await api.call("GET", f"/api/v1/batches/{created['id']}")
    assert response.status == 404
    assert (results / "a.json").read_text() == "{}"


async def test_status_includes_the_report(start_api: StartApi, store: BatchStore) -> None:
    """GET .../status returns the batch, its status and reason, what read_report gives for it, and
    the progress derived from that report (not live: no worker runs it here)."""
    seen: list[str] = []

    async def read_report(batch: Batch) -> dict[str, Any] | None:
        seen.append(batch.id)
        return {"done": 3, "failed": 1}

    api = await start_api(store, read_report=read_report)
    _, created = await api.call("POST", "/api/v1/batches", json=spec())
    response, body = await api.call("GET", "/api/v1/batches/forms/status")
    assert response.status == 200
    assert body == {
        "batch": created,
        "status": "available",
        "status_reason": None,
        "live": False,
        "progress": {
            "done": 1,
            "total": 1,
            "pending": 0,
            "percent": 100.0,
            "rate_per_s": None,
            "eta_s": None,
        },
        "report": {"done": 3, "failed": 1},
    }
    assert seen == [created["id"]]

    plain = await start_api(store)
    _, body = await plain.call("GET", "/api/v1/batches/forms/status")
    assert body["report"] is None


async def test_crud_on_s3_and_storage_errors_are_503(
    start_api: StartApi, storage_factory: StorageFactory, make_bucket: Callable[[], Awaitable[str]]
) -> None:
    """On an S3 control location the API creates, edits, lists and deletes; a missing bucket is 503."""
    bucket = await make_bucket()
    control = await storage_factory.open(Location.parse(f"s3://{bucket}/control"))
    store = BatchStore(StorageCoordination(control), control=control.location, domains=DOMAINS)
    api = await start_api(store)
    response, created = await api.call("POST", "/api/v1/batches", json=spec())
    assert response.status == 201
    response, edited = await api.call(
        "PATCH",
        "/api/v1/batches/forms",
        json={"status": "paused"},
        headers={"If-Match": response.headers["ETag"]},
    )
    assert (response.status, edited["status"]) == (200, "paused")
    _, listed = await api.call("GET", "/api/v1/batches")
    assert [batch["id"] for batch in listed["batches"]] == [created["id"]]
    response, _ = await api.call("DELETE", "/api/v1/batches/forms")
    assert response.status == 200

    gone = await storage_factory.open(Location.parse(f"s3://{bucket}-gone/control"))
    missing = BatchStore(StorageCoordination(gone), control=gone.location, domains=DOMAINS)
    broken = await start_api(missing)
    response, body = await broken.call("GET", "/api/v1/batches")
    assert response.status == 503
    assert body["error"]["code"] == "storage_unavailable"
