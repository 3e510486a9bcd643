"""The HTTP API's refusals as a real server on loopback: malformed bodies (400), rule violations
(422), requests a web page could make (415, 403) or aim through a rebound name (421), paths outside
the allowed locations (422), unknown batches, routes and methods (404, 405), stale If-Match (412),
and unexpected errors (a bare 500)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fixtures.api import DOMAINS, Api, StartApi, spec
from structlog.testing import capture_logs

from ocrbatch.batches.spec import Batch
from ocrbatch.batches.store import BatchStore
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.locations import Location
from ocrbatch.outbound import OutboundPolicy
from ocrbatch.storage.local import LocalStorage


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
        response, body = await api.call(method, path, data=data, headers={"Content-Type": "application/json"})
        assert response.status == 400, data[:20]
        assert body["error"]["code"] == "bad_request"


async def test_a_web_page_cannot_drive_the_api(api: Api) -> None:
    """What a page in a browser could send cross-site is refused and makes no batch: a body that
    is not `application/json` (a "simple" form or text/plain POST) gets 415, and a foreign
    `Origin` gets 403, also on PATCH and DELETE."""
    _, created = await api.call("POST", "/api/v1/batches", json=spec())
    body = json.dumps(spec("from-a-page")).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response, answer = await api.call(
            "POST", "/api/v1/batches", data=body, headers={"Content-Type": content_type}
        )
        assert (response.status, answer["error"]["code"]) == (415, "unsupported_media_type"), content_type
    evil = {"Origin": "https://evil.example"}
    for method, path in [
        ("POST", "/api/v1/batches"),
        ("PATCH", f"/api/v1/batches/{created['id']}"),
        ("DELETE", f"/api/v1/batches/{created['id']}"),
    ]:
        response, answer = await api.call(method, path, json=spec("from-a-page"), headers=evil)
        assert (response.status, answer["error"]["code"]) == (403, "forbidden"), method
    _, listed = await api.call("GET", "/api/v1/batches")
    assert [batch["name"] for batch in listed["batches"]] == [created["name"]]
    own = {"Origin": str(api.client.make_url("/")).rstrip("/")}
    response, _ = await api.call("GET", f"/api/v1/batches/{created['id']}", headers=evil)
    assert response.status == 200  # reading is not a change; the token still guards it
    response, _ = await api.call(
        "PATCH", f"/api/v1/batches/{created['id']}", json={"name": "renamed"}, headers=own
    )
    assert response.status == 200


async def test_a_rebinding_page_is_misdirected(start_api: StartApi, store: BatchStore) -> None:
    """The API answers only to the names it serves: loopback names, IP addresses and
    `public_hosts` (with their port when given). A request naming another host, as a page served
    from an attacker's name re-pointed at loopback does, gets 421 and makes no batch, whatever its
    method; health still answers probes under any name."""
    api = await start_api(store, public_hosts=["ocrbatch", "console.example.com:8443"])
    port = api.client.port
    refused = [f"evil.example:{port}", "ocrbatch.evil.example", "console.example.com:9999", "localhost.evil"]
    for host in refused:
        for method in ("GET", "POST"):
            response, answer = await api.call(
                method, "/api/v1/batches", json=spec("rebound"), headers={"Host": host}
            )
            assert (response.status, answer["error"]["code"]) == (421, "misdirected_request"), host
            assert "api.public_hosts" in answer["error"]["message"]
    for host in [
        "localhost",
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        "ocrbatch:8080",
        "console.example.com:8443",
    ]:
        response, _ = await api.call("GET", "/api/v1/batches", headers={"Host": host})
        assert response.status == 200, host
    response, _ = await api.call("GET", "/healthz", headers={"Host": "evil.example"})
    assert response.status == 200
    _, listed = await api.call("GET", "/api/v1/batches")
    assert listed["batches"] == []


async def test_paths_outside_the_allowed_locations_are_422(
    start_api: StartApi, store: BatchStore, tmp_path: Path
) -> None:
    """Batches made or edited over the API read and write only inside `allowed_locations`: a path
    outside them, a neighbour sharing a name prefix, or a symlink leading out is 422 naming the
    field; with none configured, nothing is open."""
    shared = tmp_path / "shared"
    (shared / "in").mkdir(parents=True)
    (tmp_path / "private").mkdir()
    (shared / "escape").symlink_to(tmp_path / "private")
    api = await start_api(store, allowed_locations=["s3://data/", str(shared)])
    response, created = await api.call("POST", "/api/v1/batches", json=spec())
    assert response.status == 201
    response, _ = await api.call(
        "POST",
        "/api/v1/batches",
        json=spec("local", input_path=str(shared / "in"), result_path=str(shared / "out")),
    )
    assert response.status == 201
    for fields, refused in [
        ({"input_path": str(tmp_path / "private")}, ["input_path"]),
        (
            {"input_path": str(shared / "escape"), "result_path": "s3://other/out"},
            ["input_path", "result_path"],
        ),
        ({"result_path": str(tmp_path / "shared-not")}, ["result_path"]),
        ({"input_path": "s3://data2/in"}, ["input_path"]),
    ]:
        response, answer = await api.call("POST", "/api/v1/batches", json=spec("outside", **fields))
        assert (response.status, answer["error"]["code"]) == (422, "invalid_batch"), fields
        assert [violation["field"] for violation in answer["error"]["violations"]] == refused
        assert "api.allowed_locations" in answer["error"]["violations"][0]["rule"]
    response, answer = await api.call(
        "PATCH", f"/api/v1/batches/{created['id']}", json={"result_path": "/etc/ocrbatch"}
    )
    assert response.status == 422
    assert answer["error"]["violations"][0]["field"] == "result_path"
    closed = await start_api(store, allowed_locations=[])
    response, answer = await closed.call("POST", "/api/v1/batches", json=spec("closed"))
    assert response.status == 422
    assert "until api.allowed_locations lists some" in answer["error"]["violations"][0]["rule"]


async def test_webhooks_to_internal_addresses_are_422(start_api: StartApi, tmp_path: Path) -> None:
    """A webhook URL at the metadata address, a private or loopback address, or a name resolving
    to loopback is refused at creation and at edit, 422 naming `webhook.url` and why; a public
    one is kept, and an allowed network opens its addresses."""
    control = tmp_path / "control"
    control.mkdir()
    location = Location.parse(str(control))

    async def resolve(host: str) -> list[str]:
        return {"hooks.corp.com": ["127.0.0.1"], "public.com": ["93.184.215.14"]}.get(host, [])

    store = BatchStore(
        StorageCoordination(LocalStorage(location)),
        control=location,
        domains=DOMAINS,
        outbound=OutboundPolicy(["10.9.0.0/16"], resolve=resolve),
    )
    api = await start_api(store)
    for url, why in [
        ("http://169.254.169.254/latest/meta-data/iam", "a cloud metadata address"),
        ("https://10.0.0.5/hook", "a private address"),
        ("http://[::1]:8080/hook", "a loopback address"),
        ("https://hooks.corp.com/in", "hooks.corp.com (127.0.0.1) is a loopback address"),
    ]:
        response, answer = await api.call(
            "POST", "/api/v1/batches", json=spec("hooked", webhook={"url": url})
        )
        assert response.status == 422, url
        [violation] = answer["error"]["violations"]
        assert violation["field"] == "webhook.url"
        assert why in violation["rule"]
    response, created = await api.call(
        "POST", "/api/v1/batches", json=spec("hooked", webhook={"url": "https://public.com/in"})
    )
    assert response.status == 201
    response, answer = await api.call(
        "PATCH", f"/api/v1/batches/{created['id']}", json={"webhook": {"url": "http://169.254.169.254/"}}
    )
    assert response.status == 422
    assert answer["error"]["violations"][0]["field"] == "webhook.url"
    response, _ = await api.call(
        "PATCH", f"/api/v1/batches/{created['id']}", json={"webhook": {"url": "http://10.9.3.4/in"}}
    )
    assert response.status == 200


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
