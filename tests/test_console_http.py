"""The console over HTTP, in process: its login and session cookie, CSRF on every form, the API's
Host and Origin checks, the forms going through the same rules as the API, deletion that keeps
results, the batch's work pages (progress, failures, results, the viewer's image and download),
and the language switch. The browser suite (test_console_browser.py) drives the same pages in
Chromium against a real `serve`."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from fixtures.api import DOMAINS, TOKEN
from fixtures.clock import FakeClock
from fixtures.exports import general_page, write_result
from fixtures.result_files import DATA
from fixtures.samples import png
from fixtures.sealing import SEALER
from pydantic import SecretStr
from yarl import URL

from ocrbatch.batches.layout import failure_record_key, result_key, source_key_metadata
from ocrbatch.batches.remote import LocationGate, RemoteEdits
from ocrbatch.batches.spec import Batch
from ocrbatch.batches.store import BatchStore
from ocrbatch.console.app import create_console
from ocrbatch.console.sessions import LOGIN_COOKIE, SESSION_COOKIE
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.locations import Location
from ocrbatch.service.api import create_app
from ocrbatch.settings import Settings, StorageSettings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.local import LocalStorage
from ocrbatch.worker.operations import BatchOperations

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SESSION_TTL_S = 3600


@dataclass
class Console:
    """A browser-like client of the console: keeps cookies, and sends the page's CSRF token."""

    client: TestClient[Any, Any]
    data: Path
    store: BatchStore
    clock: FakeClock
    changed: list[Batch] = field(default_factory=list)
    csrf: str = ""

    async def get(self, path: str, **kwargs: Any) -> tuple[ClientResponse, str]:
        response = await self.client.get(path, allow_redirects=False, **kwargs)
        text = await response.text()
        found = CSRF.search(text)
        if found and "/console/login" not in path:
            self.csrf = found.group(1)
        return response, text

    async def post(
        self, path: str, form: dict[str, Any] | list[tuple[str, str]], *, csrf: bool = True, **kwargs: Any
    ) -> tuple[ClientResponse, str]:
        fields = list(form.items()) if isinstance(form, dict) else list(form)
        if csrf:
            fields.append(("csrf", self.csrf))
        response = await self.client.post(path, data=fields, allow_redirects=False, **kwargs)
        return response, await response.text()

    async def login(self, token: str = TOKEN) -> ClientResponse:
        _, page = await self.get("/console/login")
        login_csrf = CSRF.search(page)
        assert login_csrf is not None, page
        response, _ = await self.post(
            "/console/login",
            {"token": token, "next": "/console/batches", "csrf": login_csrf.group(1)},
            csrf=False,
        )
        if response.status == 303:
            await self.get("/console/batches")  # the session's CSRF token
        return response

    def path(self, *parts: str) -> str:
        return str(self.data.joinpath(*parts))

    def general_form(self, name: str, **overrides: str) -> dict[str, str]:
        return {
            "name": name,
            "domain": "gen",
            "language": "ja",
            "file_format": "json",
            "input_path": self.path(name, "in"),
            "result_path": self.path(name, "out"),
            **overrides,
        }


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    """The API with the console mounted, over a local control directory; batches may use the
    directory `data/` only. The session clock is fake."""
    control = tmp_path / "control"
    data = tmp_path / "data"
    control.mkdir()
    data.mkdir()
    location = Location.parse(str(control))
    store = BatchStore(
        StorageCoordination(LocalStorage(location)), control=location, domains=DOMAINS, sealer=SEALER
    )
    settings = Settings(storage={"control_path": str(control)}, domains=DOMAINS)
    clock = FakeClock()
    async with StorageFactory(StorageSettings()) as storages:
        changed: list[Batch] = []
        operations = BatchOperations(settings, store, storages)
        edits = RemoteEdits(store, LocationGate([str(data)]), on_batch_changed=changed.append)
        console_app = create_console(
            operations=operations,
            edits=edits,
            token=SecretStr(TOKEN),
            domains=DOMAINS,
            session_ttl_s=SESSION_TTL_S,
            clock=clock,
        )
        app = create_app(
            store,
            token=SecretStr(TOKEN),
            allowed_locations=[str(data)],
            operations=operations,
            console=console_app,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        try:
            yield Console(client, data, store, clock, changed)
        finally:
            await client.close()


async def created(console: Console, name: str, **overrides: str) -> Batch:
    response, page = await console.post("/console/batches", console.general_form(name, **overrides))
    assert response.status == 303, page
    return (await console.store.get(name)).batch


async def test_pages_need_a_login(console: Console) -> None:
    """Without a session, a page redirects to the login form (remembering where it was going),
    and a POST is refused with 401 without doing anything."""
    response, _ = await console.get("/console/batches?search=x")
    assert response.status == 303
    login = URL(response.headers["Location"])
    assert (login.path, login.query["next"]) == ("/console/login", "/console/batches?search=x")
    response, page = await console.post("/console/batches", console.general_form("nope"), csrf=False)
    assert response.status == 401
    assert "log in again" in page
    assert (await console.store.catalog()).batches == []


async def test_login_gives_a_strict_http_only_session_that_expires(console: Console) -> None:
    """A wrong token is refused (401, no session); the right one sets an HttpOnly, SameSite=Strict
    cookie for /console and goes to the list; the session ends after its TTL and at logout."""
    response = await console.login("not-the-token")
    assert response.status == 401
    assert SESSION_COOKIE not in response.cookies

    response = await console.login()
    assert response.status == 303
    assert response.headers["Location"] == "/console/batches"
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console"
    assert TOKEN not in cookie.value
    listed, page = await console.get("/console/batches")
    assert listed.status == 200
    assert 'id="batch-table"' in page

    console.clock.now_s += SESSION_TTL_S + 1
    expired, _ = await console.get("/console/batches")
    assert expired.status == 303
    assert expired.headers["Location"].endswith("&expired=1")

    console.clock.now_s -= SESSION_TTL_S + 1
    assert (await console.get("/console/batches"))[0].status == 200
    logged_out, _ = await console.post("/console/logout", {})
    assert logged_out.status == 303
    console.client.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie.value})
    assert (await console.get("/console/batches"))[0].status == 303


async def test_the_login_form_needs_its_own_token(console: Console) -> None:
    """A login posted from elsewhere (no login cookie, or a form token that does not match it)
    is refused with 403, even with the right API token."""
    response, _ = await console.post(
        "/console/login", {"token": TOKEN, "csrf": "forged", "next": "/console/batches"}, csrf=False
    )
    assert response.status == 403
    await console.get("/console/login")
    assert console.client.session.cookie_jar.filter_cookies(console.client.make_url("/console/login")).get(
        LOGIN_COOKIE
    )
    response, _ = await console.post(
        "/console/login", {"token": TOKEN, "csrf": "forged", "next": "/console/batches"}, csrf=False
    )
    assert response.status == 403
    assert SESSION_COOKIE not in response.cookies


async def test_every_form_needs_the_session_csrf_token(console: Console) -> None:
    """A POST with a session but without its CSRF token (or with a made-up one) is 403 and
    changes nothing."""
    await console.login()
    response, page = await console.post("/console/batches", console.general_form("forms"), csrf=False)
    assert response.status == 403
    assert "did not come from this console" in page
    response, _ = await console.post(
        "/console/batches", [*console.general_form("forms").items(), ("csrf", "x" * 43)], csrf=False
    )
    assert response.status == 403
    assert (await console.store.catalog()).batches == []


async def test_the_api_host_and_origin_checks_apply(console: Console) -> None:
    """A Host the API does not answer to is 421, and a cross-site POST is 403, for the console too."""
    await console.login()
    response, _ = await console.get("/console/batches", headers={"Host": "evil.example"})
    assert response.status == 421
    response, _ = await console.post(
        "/console/batches", console.general_form("forms"), headers={"Origin": "http://evil.example"}
    )
    assert response.status == 403
    assert (await console.store.catalog()).batches == []


async def test_refusals_are_the_apis_and_shown_beside_their_fields(console: Console) -> None:
    """A form the batch rules refuse is shown again (422) with each of the API's violations next
    to its input, and what was typed kept."""
    await console.login()
    form = console.general_form("bad/name", input_path="/etc/outside")
    response, page = await console.post("/console/batches", form)
    assert response.status == 422

    api = await console.client.post(
        "/api/v1/batches",
        json=form,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    violations = (await api.json())["error"]["violations"]
    assert {violation["field"] for violation in violations} == {"name", "input_path"}
    for violation in violations:
        beside = re.search(rf'<p class="field-error" id="{violation["field"]}-error"[^>]*>([^<]*)</p>', page)
        assert beside is not None, violation
        assert unescape(beside.group(1)) == violation["rule"]
    assert 'value="bad/name"' in page
    assert 'aria-invalid="true"' in page
    assert (await console.store.catalog()).batches == []


async def test_unreadable_template_ids_are_refused_beside_the_field(console: Console) -> None:
    """Template ids that are not numbers are refused next to their input before the store is asked."""
    await console.login()
    form = {**console.general_form("forms", domain="tpl"), "template_ids": "1, two"}
    response, page = await console.post("/console/batches", form)
    assert response.status == 422
    assert 'id="template_ids-error"' in page
    assert "must be whole numbers" in page


async def test_create_and_edit_general_and_template_batches(console: Console) -> None:
    """Both kinds are created from the form with their own options and listed with their domain
    information; an edit keeps the webhook secret when its field is left empty, and an edit on a
    stale version is refused with the batch shown as it is now."""
    await console.login()
    general = await created(
        console,
        "receipts",
        webhook_enabled="on",
        webhook_url="https://hooks.example/x",
        webhook_secret="s3cr3t-value",
    )
    assert (general.language, general.table_extraction, general.template_ids) == ("ja", False, None)
    assert general.webhook is not None
    assert general.webhook.secret is not None
    template = await created(console, "forms", domain="tpl", template_ids="7, 8")
    assert template.template_ids == [7, 8]
    assert template.language is None
    assert [batch.name for batch in console.changed] == ["receipts", "forms"]

    _, page = await console.get("/console/batches")
    assert page.count('class="batch-row"') == 2
    assert "Templates: 7, 8" in page
    assert "Language: ja" in page
    _, page = await console.get("/console/batches?search=rece")
    assert page.count('class="batch-row"') == 1

    _, settings_page = await console.get(f"/console/batches/{general.id}/settings")
    etag = re.search(r'name="etag" value="([^"]+)"', settings_page)
    assert etag is not None
    assert "s3cr3t-value" not in settings_page
    edit = {**console.general_form("receipts", language="ko"), "webhook_enabled": "on"}
    edit["webhook_url"] = "https://hooks.example/x"
    response, page = await console.post(
        f"/console/batches/{general.id}/settings", {**edit, "etag": unescape(etag.group(1))}
    )
    assert response.status == 303, page
    assert response.headers["Location"] == f"/console/batches/{general.id}?msg=saved"
    edited = (await console.store.get(general.id)).batch
    assert edited.language == "ko"
    assert edited.webhook is not None
    assert edited.webhook.secret == general.webhook.secret

    response, page = await console.post(
        f"/console/batches/{general.id}/settings",
        {**edit, "language": "zh-TW", "etag": unescape(etag.group(1))},
    )
    assert response.status == 409
    assert "changed by someone else" in page
    assert (await console.store.get(general.id)).batch.language == "ko"


async def test_delete_asks_first_and_keeps_the_results(console: Console) -> None:
    """Deleting asks for confirmation (a page, when the pop-up did not confirm); confirmed, the
    batches' definitions go and their result files stay."""
    await console.login()
    batch = await created(console, "receipts")
    results = console.data / "receipts" / "out"
    results.mkdir(parents=True)
    (results / "a.png.json").write_text("{}")

    response, page = await console.post("/console/batches/delete", [("ids", batch.id)])
    assert response.status == 200
    assert "receipts" in page
    assert "kept" in page
    assert (await console.store.catalog()).batches != []

    response, _ = await console.post("/console/batches/delete", [("ids", batch.id), ("confirmed", "1")])
    assert response.status == 303
    assert response.headers["Location"] == "/console/batches?deleted=1"
    assert (await console.store.catalog()).batches == []
    assert (results / "a.png.json").read_text() == "{}"
    _, page = await console.get("/console/batches?deleted=1")
    assert "1 batch(es) deleted. Their results are kept." in page


async def test_batch_page_shows_the_report_and_pauses_and_resumes(console: Console) -> None:
    """The batch page and its progress fragment show the last report's figures; [Pause] and
    [Resume] change the status and tell the worker."""
    await console.login()
    batch = await created(console, "receipts")
    results = console.data / "receipts" / "out"
    results.mkdir(parents=True)
    report = {
        "succeeded": 6,
        "failed": 2,
        "skipped": 1,
        "pending": 2,
        "inputs": 11,
        "this_pass": {
            "calls": 9,
            "retries_by_code": {"0501": 3},
            "billable_units": 8,
            "rate_per_s": 1.5,
            "eta_s": 1.3,
        },
        "updated_at": "2026-12-03T10:00:00+00:00",
    }
    (results / "_report.json").write_text(json.dumps(report))
    _, page = await console.get(f"/console/batches/{batch.id}")
    assert 'data-done="8"' in page
    assert 'data-total="10"' in page
    assert '<progress id="progress-bar" max="10" value="8"' in page
    assert "0501: 3" in page
    _, fragment = await console.get(f"/console/batches/{batch.id}/progress")
    assert fragment.startswith('\n<section id="progress"') or fragment.lstrip().startswith(
        '<section id="progress"'
    )
    assert "<html" not in fragment

    response, _ = await console.post(f"/console/batches/{batch.id}/pause", {})
    assert response.headers["Location"] == f"/console/batches/{batch.id}?msg=paused"
    assert (await console.store.get(batch.id)).batch.status == "paused"
    assert console.changed[-1].status == "paused"
    _, page = await console.get(f"/console/batches/{batch.id}?msg=paused")
    assert 'id="resume"' in page
    assert "Paused" in page
    await console.post(f"/console/batches/{batch.id}/resume", {})
    assert (await console.store.get(batch.id)).batch.status == "available"
    _, page = await console.get(f"/console/batches/{batch.id}?msg=<script>")
    assert "<script>" not in page.split("</head>")[1]


async def test_failures_filter_and_retry_one(console: Console) -> None:
    """The failures page lists the records with their fields, filtered by reason; a record opens
    on its own page, and retrying it removes that record only."""
    await console.login()
    batch = await created(console, "receipts")
    results = console.data / "receipts" / "out"
    for key, code, message in [("a.png", "0501", "OCR failed"), ("b.jpg", None, "image is not decodable")]:
        record = results / failure_record_key(key, location=batch.result_location)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps(
                {"key": key, "code": code, "message": message, "attempts": 3, "retryable": code is not None}
            )
        )
    _, page = await console.get(f"/console/batches/{batch.id}/failures")
    assert page.count('class="failure-row"') == 2
    _, page = await console.get(f"/console/batches/{batch.id}/failures?reason=DECODABLE")
    assert re.findall(r'data-key="([^"]+)"', page) == ["b.jpg"]

    _, page = await console.get(f"/console/batches/{batch.id}/failure?key=a.png")
    assert 'id="failure-code">0501<' in page
    assert 'id="failure-attempts">3<' in page
    response, _ = await console.post(f"/console/batches/{batch.id}/retry", {"key": "a.png"})
    assert response.headers["Location"] == f"/console/batches/{batch.id}/failures?retried=1"
    _, page = await console.get(f"/console/batches/{batch.id}/failures?retried=1")
    assert re.findall(r'data-key="([^"]+)"', page) == ["b.jpg"]
    assert "1 failed item(s) will be sent again." in page
    missing, _ = await console.get(f"/console/batches/{batch.id}/failure?key=a.png")
    assert missing.status == 404


async def test_result_viewer_image_and_download(console: Console) -> None:
    """A JSON result opens in the viewer with one polygon per field that has a box; its image is
    the input read through the console; the download is the result file; keys outside the
    input location are not served."""
    await console.login()
    batch = await created(console, "receipts")
    inputs, results = console.data / "receipts" / "in", console.data / "receipts" / "out"
    inputs.mkdir(parents=True)
    results.mkdir(parents=True)
    image = png(400, 300)
    (inputs / "scan one.png").write_bytes(image)
    response_json = json.loads((DATA / "general-ocr-response.json").read_text())
    (results / "scan one.png.json").write_text(json.dumps(response_json))
    (console.data / "secret.png").write_bytes(image)

    _, page = await console.get(f"/console/batches/{batch.id}/results")
    assert re.findall(r'data-key="([^"]+)"', page) == ["scan one.png"]
    response, page = await console.get(f"/console/batches/{batch.id}/result?key=scan+one.png")
    assert response.status == 200, page
    fields = response_json["images"][0]["fields"]
    assert page.count('<polygon class="box"') == len(fields)
    assert f'data-field-count="{len(fields)}"' in page
    assert fields[0]["inferText"] in page

    picture = await console.client.get(f"/console/batches/{batch.id}/image?key=scan%20one.png")
    assert picture.status == 200
    assert picture.content_type == "image/png"
    assert await picture.read() == image
    download = await console.client.get(f"/console/batches/{batch.id}/download?key=scan%20one.png")
    assert download.headers["Content-Disposition"] == "attachment; filename*=UTF-8''scan%20one.png.json"
    assert json.loads(await download.read()) == response_json

    for key in ("../../secret.png", "../in/../../secret.png", "/etc/passwd"):
        outside = await console.client.get(f"/console/batches/{batch.id}/image", params={"key": key})
        assert outside.status in (400, 404), key
        assert await outside.read() != image
    gone, page = await console.get(f"/console/batches/{batch.id}/result?key=missing.png")
    assert gone.status == 404
    assert "has no result yet" in page


async def test_language_follows_the_browser_and_the_switch(console: Console) -> None:
    """Korean when the browser ranks it first, English otherwise; the switch sets a cookie and
    goes back, never to another site."""
    await console.login()
    _, page = await console.get("/console/batches", headers={"Accept-Language": "ko-KR,ko;q=0.9,en;q=0.8"})
    assert '<html lang="ko">' in page
    assert "배치 생성" in page
    _, page = await console.get("/console/batches", headers={"Accept-Language": "en-US,ko;q=0.5"})
    assert '<html lang="en">' in page
    response, _ = await console.get("/console/lang?set=ko&next=/console/batches/new")
    assert response.headers["Location"] == "/console/batches/new"
    _, page = await console.get("/console/batches/new", headers={"Accept-Language": "en"})
    assert '<html lang="ko">' in page
    for elsewhere in ("//evil.example/x", "https://evil.example/", "/console/..//evil.example"):
        response, _ = await console.get("/console/lang", params={"set": "en", "next": elsewhere})
        assert response.headers["Location"] == "/console/batches", elsewhere


async def test_pages_carry_the_security_headers_and_server_timing(console: Console) -> None:
    """Every page has a strict Content-Security-Policy (no inline scripts or styles), is not
    cached, and says how long the server took; static files are served from the package."""
    await console.login()
    response, page = await console.get("/console/batches")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["Cache-Control"] == "no-store"
    assert re.fullmatch(r"app;dur=\d+\.\d", response.headers["Server-Timing"])
    assert " style=" not in page
    assert "<script>" not in page
    script = re.search(r'src="(/console/static/htmx.min.js\?v=[0-9a-f]{12})"', page)
    assert script is not None
    served = await console.client.get(script.group(1))
    assert served.status == 200
    assert (await served.text()).startswith("var htmx=")


async def test_hostile_keys_are_refused_and_long_names_are_listed(console: Console) -> None:
    """Keys the storage refuses (a NUL, the local backend's own directory) are a 404 page, never an
    error; an input whose result has a fallback name (a long Korean file name) is listed under its
    own key and opens in the viewer."""
    await console.login()
    batch = await created(console, "receipts")
    inputs, results = console.data / "receipts" / "in", console.data / "receipts" / "out"
    inputs.mkdir(parents=True)
    results.mkdir(parents=True)
    long_key = "영수증_" * 25 + ".png"  # 254 bytes: its result name would not fit in a directory
    (inputs / long_key).write_bytes(png(300, 200))
    result_location = Location.parse(str(results))
    where = result_key(long_key, ".json", location=result_location)
    assert where.startswith("_keys/")
    await LocalStorage(result_location).write(
        where,
        (DATA / "general-ocr-response.json").read_bytes(),
        metadata=source_key_metadata(where, long_key),
    )

    _, page = await console.get(f"/console/batches/{batch.id}/results")
    assert [unescape(key) for key in re.findall(r'class="result-row" data-key="([^"]+)"', page)] == [long_key]
    response, page = await console.get(f"/console/batches/{batch.id}/result", params={"key": long_key})
    assert response.status == 200
    assert 'id="result-viewer"' in page

    for key in ("a\x00b.png", ".ocrbatch/meta/x.png", "../in/x.png"):
        for route in ("image", "result", "failure", "download"):
            refused, page = await console.get(f"/console/batches/{batch.id}/{route}", params={"key": key})
            assert refused.status == 404, (route, key, page[:200])


async def test_batch_page_downloads_the_export(console: Console) -> None:
    """The batch page offers the export (formats, General's per-line switch, failed items); its
    form downloads the table the CLI makes; an option the batch does not allow is a 422 page."""
    await console.login()
    batch = await created(console, "receipts")
    write_result(console.data / "receipts" / "out", "a.png", general_page([[("안녕", 0.9)]]))

    _, page = await console.get(f"/console/batches/{batch.id}")
    assert f'action="/console/batches/{batch.id}/export"' in page
    assert '<option value="xlsx">xlsx</option>' in page
    assert 'name="lines"' in page
    assert 'name="confidence"' not in page  # per-field confidence is a Template batch's

    download = await console.client.get(f"/console/batches/{batch.id}/export?format=csv&lines=true")
    assert download.status == 200
    assert download.headers["Content-Disposition"].endswith("filename*=UTF-8''receipts.csv")
    lines = (await download.read()).decode("utf-8").splitlines()
    assert lines[0] == "\ufeffsource_key,result_key,status,page,line,text,confidence,left,top,right,bottom"
    assert lines[1].startswith("a.png,a.png.json,succeeded,1,1,안녕,0.9,")

    refused, page = await console.get(f"/console/batches/{batch.id}/export?confidence=true")
    assert refused.status == 422
    assert "confidence columns per field are for Template batches" in page
