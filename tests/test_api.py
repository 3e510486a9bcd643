"""The HTTP API as a real server on loopback, backed by a real batch store (local and S3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from ocrbatch.batches.spec import Batch
from ocrbatch.batches.store import BatchStore
from ocrbatch.errors import ConfigError, StorageError
from ocrbatch.locations import Location
from ocrbatch.service.api import check_bind, create_app
from ocrbatch.settings import DomainSettings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.local import LocalStorage

TOKEN = "api-token-0123456789abcdef"
ALL_INTERFACES = "0.0.0.0"
DOMAINS = {
    "gen": DomainSettings(kind="general", invoke_url="http://ocr/general", secret="s1"),
    "tpl": DomainSettings(kind="template", invoke_url="http://ocr/infer", secret="s2"),
}


def spec(name: str = "forms", **overrides: Any) -> dict[str, Any]:
    """A valid template-domain batch as an API client sends it."""
    return {
        "name": name,
        "domain": "tpl",
        "template_ids": [1],
        "input_path": f"s3://data/{name}/in",
        "result_path": f"s3://data/{name}/out",
        **overrides,
    }


class Api:
    """A client of the running API that sends the token and records every response body."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.bodies: list[str] = []

    async def call(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> tuple[ClientResponse, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(method, path, headers=headers, **kwargs)
        text = await response.text()
        self.bodies.append(text)
        assert response.content_type == "application/json", text
        return response, await response.json()


StartApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_api() -> AsyncIterator[StartApi]:
    """`await start_api(store, **create_app_options)`: the API on 127.0.0.1, port 0; stopped after.

    On teardown, checks that no response body ever carried the token.
    """
    started: list[Api] = []

    async def start(store: BatchStore, **options: Any) -> Api:
        options.setdefault("token", SecretStr(TOKEN))
        client: TestClient[Any, Any] = TestClient(
            TestServer(create_app(store, **options), host="127.0.0.1", port=0)
        )
        await client.start_server()
        started.append(Api(client))
        return started[-1]

    yield start
    for api in started:
        await api.client.close()
        assert not any(TOKEN in body for body in api.bodies)


@pytest.fixture
def store(tmp_path: Path) -> BatchStore:
    """A batch store on a local control directory, with a General and a Template domain."""
    control = tmp_path / "control"
    control.mkdir()
    return BatchStore(LocalStorage(Location.parse(str(control))), domains=DOMAINS)


@pytest.fixture
async def api(start_api: StartApi, store: BatchStore) -> Api:
    """The API over the local store, with the token required."""
    return await start_api(store)


async def test_health_and_readiness_need_no_token(start_api: StartApi, store: BatchStore) -> None:
    """/healthz and /readyz answer without a token; readyz awaits the readiness check."""
    checks: list[bool] = []

    async def ready() -> None:
        checks.append(True)

    api = await start_api(store, ready=ready)
    response, body = await api.call("GET", "/healthz", token=None)
    assert (response.status, body) == (200, {"status": "ok"})
    response, body = await api.call("GET", "/readyz", token=None)
    assert (response.status, body) == (200, {"status": "ready"})
    assert checks == [True]


async def test_readyz_is_503_when_storage_fails(start_api: StartApi, store: BatchStore) -> None:
    """A readiness check that raises StorageError makes /readyz 503 not_ready with its message."""

    async def ready() -> None:
        raise StorageError("bucket unreachable", location="s3://data/control")

    api = await start_api(store, ready=ready)
    response, body = await api.call("GET", "/readyz", token=None)
    assert response.status == 503
    assert body["error"]["code"] == "not_ready"
    assert "bucket unreachable" in body["error"]["message"]


async def test_missing_or_wrong_token_is_401(api: Api) -> None:
    """Without a token, with a wrong one or another scheme, /api/v1 answers 401 with WWW-Authenticate."""
    wrong = "guess-9f8e7d6c"
    for headers, token in (
        ({}, None),
        ({}, wrong),
        ({"Authorization": f"Basic {TOKEN}"}, None),
        ({}, ""),
    ):
        for method, path in (("GET", "/api/v1/batches"), ("POST", "/api/v1/batches"), ("GET", "/nope")):
            response, body = await api.call(method, path, token=token, headers=headers)
            assert response.status == 401, (method, path, headers, token)
            assert body["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not any(wrong in body for body in api.bodies)


async def test_auth_is_off_without_a_token(start_api: StartApi, store: BatchStore) -> None:
    """With token=None (loopback only), requests need no Authorization header."""
    api = await start_api(store, token=None)
    response, body = await api.call("GET", "/api/v1/batches", token=None)
    assert (response.status, body) == (200, {"batches": []})


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


async def test_delete_removes_the_definition_only(api: Api, tmp_path: Path) -> None:
    """DELETE returns the deleted batch; it is gone afterwards and its results stay on disk."""
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
    """GET .../status returns the batch, its status and reason, and what read_report gives for it."""
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
        "report": {"done": 3, "failed": 1},
    }
    assert seen == [created["id"]]

    plain = await start_api(store)
    _, body = await plain.call("GET", "/api/v1/batches/forms/status")
    assert body["report"] is None


async def test_malformed_bodies_are_400(api: Api) -> None:
    """Invalid JSON, bad UTF-8, a non-object body and an empty edit are 400 bad_request."""
    _, created = await api.call("POST", "/api/v1/batches", json=spec())
    cases = [
        ("POST", "/api/v1/batches", b"{not json"),
        ("POST", "/api/v1/batches", b"\xff\xfe"),
        ("POST", "/api/v1/batches", b"[1, 2]"),
        ("POST", "/api/v1/batches", b"[" * 100_000),
        ("PATCH", f"/api/v1/batches/{created['id']}", b"null"),
        ("PATCH", f"/api/v1/batches/{created['id']}", b"{}"),
    ]
    for method, path, data in cases:
        response, body = await api.call(method, path, data=data)
        assert response.status == 400, data[:20]
        assert body["error"]["code"] == "bad_request"


async def test_rule_violations_are_422_naming_the_field(api: Api) -> None:
    """Refused batches are 422 invalid_batch, each violation naming the field and its rule."""
    response, _ = await api.call(
        "POST", "/api/v1/batches", json=spec("general-1", domain="gen", template_ids=None)
    )
    assert response.status == 201
    cases: list[tuple[dict[str, Any], str]] = [
        (spec("general-2", domain="gen", template_ids=None), "domain"),
        (spec("bad name!"), "name"),
        (spec("forms", colour="red"), "colour"),
        (spec("forms", domain="nope"), "domain"),
        ({k: v for k, v in spec().items() if k != "input_path"}, "input_path"),
        (spec("forms", webhook={"url": "https://h.example", "secret_file": "/etc/passwd"}), "webhook"),
    ]
    for data, field in cases:
        response, body = await api.call("POST", "/api/v1/batches", json=data)
        assert response.status == 422, data
        assert body["error"]["code"] == "invalid_batch"
        fields = [item["field"] for item in body["error"]["violations"]]
        assert any(name.startswith(field) for name in fields), (field, fields)
    response, body = await api.call("PATCH", "/api/v1/batches/general-1", json={"name": "a/b"})
    assert response.status == 422
    assert body["error"]["violations"][0]["field"] == "name"


async def test_unknown_batches_routes_and_methods(api: Api) -> None:
    """Unknown batches and routes are 404 not_found; a wrong method is 405 with Allow."""
    for method in ("GET", "PATCH", "DELETE"):
        response, body = await api.call(method, "/api/v1/batches/no-such-batch", json={"status": "paused"})
        assert response.status == 404, method
        assert body["error"]["code"] == "not_found"
    response, body = await api.call("GET", "/api/v1/batches/no-such-batch/status")
    assert (response.status, body["error"]["code"]) == (404, "not_found")
    response, body = await api.call("GET", "/api/v2/things")
    assert (response.status, body["error"]["code"]) == (404, "not_found")
    response, body = await api.call("PUT", "/api/v1/batches")
    assert (response.status, body["error"]["code"]) == (405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


async def test_if_match_mismatch_is_412(api: Api) -> None:
    """PATCH and DELETE with a stale If-Match are refused with 412; the current ETag is accepted."""
    response, created = await api.call("POST", "/api/v1/batches", json=spec())
    first_etag = response.headers["ETag"]
    path = f"/api/v1/batches/{created['id']}"
    response, _ = await api.call("PATCH", path, json={"template_ids": [7]}, headers={"If-Match": first_etag})
    assert response.status == 200
    second_etag = response.headers["ETag"]
    assert second_etag != first_etag
    for method, payload in (("PATCH", {"template_ids": [8]}), ("DELETE", None)):
        response, body = await api.call(method, path, json=payload, headers={"If-Match": first_etag})
        assert response.status == 412, method
        assert body["error"]["code"] == "precondition_failed"
    _, current = await api.call("GET", path)
    assert current["template_ids"] == [7]
    response, _ = await api.call("DELETE", path, headers={"If-Match": second_etag})
    assert response.status == 200


async def test_concurrent_patches_from_one_etag_one_wins(api: Api) -> None:
    """Two PATCHes sent at once with the same If-Match: exactly one succeeds, the other gets 412/409."""
    response, created = await api.call("POST", "/api/v1/batches", json=spec())
    etag = response.headers["ETag"]
    path = f"/api/v1/batches/{created['id']}"
    results = await asyncio.gather(
        api.call("PATCH", path, json={"template_ids": [2]}, headers={"If-Match": etag}),
        api.call("PATCH", path, json={"template_ids": [3]}, headers={"If-Match": etag}),
    )
    statuses = sorted(response.status for response, _ in results)
    assert statuses[0] == 200
    assert statuses[1] in (409, 412)
    winner = next(body for response, body in results if response.status == 200)
    _, current = await api.call("GET", path)
    assert current["template_ids"] == winner["template_ids"]


async def test_unexpected_errors_are_a_bare_500_and_logged(start_api: StartApi, store: BatchStore) -> None:
    """An unexpected exception becomes 500 internal with no detail in the body, and is logged."""

    async def read_report(batch: Batch) -> dict[str, Any] | None:
        raise RuntimeError("report parser exploded")

    api = await start_api(store, read_report=read_report)
    await api.call("POST", "/api/v1/batches", json=spec())
    with capture_logs() as logs:
        response, body = await api.call("GET", "/api/v1/batches/forms/status")
    assert response.status == 500
    assert body == {"error": {"code": "internal", "message": "internal error"}}
    assert [entry["event"] for entry in logs] == ["api.internal_error"]
    assert "exploded" not in api.bodies[-1]


async def test_crud_on_s3_and_storage_errors_are_503(
    start_api: StartApi, storage_factory: StorageFactory, make_bucket: Callable[[], Awaitable[str]]
) -> None:
    """On an S3 control location the API creates, edits, lists and deletes; a missing bucket is 503."""
    bucket = await make_bucket()
    store = BatchStore(await storage_factory.open(Location.parse(f"s3://{bucket}/control")), domains=DOMAINS)
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

    missing = BatchStore(
        await storage_factory.open(Location.parse(f"s3://{bucket}-gone/control")), domains=DOMAINS
    )
    broken = await start_api(missing)
    response, body = await broken.call("GET", "/api/v1/batches")
    assert response.status == 503
    assert body["error"]["code"] == "storage_unavailable"


@pytest.mark.parametrize("host", [ALL_INTERFACES, "::", "192.168.1.10", "example.com", ""])
def test_check_bind_refuses_public_hosts_without_a_token(host: str) -> None:
    """Binding beyond loopback without a token is a ConfigError that says what to set."""
    with pytest.raises(ConfigError, match=r"api\.token"):
        check_bind(host, None)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_check_bind_accepts_loopback_without_a_token(host: str) -> None:
    """Loopback addresses may serve without a token."""
    check_bind(host, None)


def test_check_bind_accepts_any_host_with_a_token() -> None:
    """With a token set, any host is allowed."""
    check_bind(ALL_INTERFACES, SecretStr(TOKEN))
