"""The export over HTTP: `GET /api/v1/batches/{ref}/export` streams the same file as the CLI,
with its name in `Content-Disposition`, and refuses bad options with a JSON 422 before sending."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import openpyxl
import pytest
from fixtures.api import DOMAINS, TOKEN, Api, StartApi
from fixtures.exports import general_page, template_page, write_failure, write_result

from ocrbatch.batches.store import BatchStore
from ocrbatch.settings import Settings, StorageSettings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.operations import BatchOperations

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def export_api(
    start_api: StartApi, store: BatchStore, tmp_path: Path
) -> AsyncIterator[tuple[Api, Path]]:
    data = tmp_path / "data"
    data.mkdir()
    async with StorageFactory(StorageSettings()) as storages:
        operations = BatchOperations(Settings(domains=DOMAINS), store, storages)
        yield await start_api(store, allowed_locations=[str(data)], operations=operations), data


async def _create(api: Api, data: Path, name: str, domain: str, **fields: object) -> None:
    spec = {
        "name": name,
        "domain": domain,
        "input_path": str(data / name / "in"),
        "result_path": str(data / name / "out"),
    }
    response, body = await api.call("POST", "/api/v1/batches", json={**spec, **fields})
    assert response.status == 201, body


async def test_export_is_streamed_as_a_download(export_api: tuple[Api, Path]) -> None:
    """CSV with a BOM, chunked, named after the batch (an ASCII fallback beside the UTF-8 name);
    xlsx and JSON Lines with their own content types; a template batch's fields as columns."""
    api, data = export_api
    await _create(api, data, "양식", "tpl", template_ids=[1])
    out = data / "양식" / "out"
    write_result(out, "a.png", template_page((1, "Form"), {"Name": ("김", 0.9)}))
    write_result(out, "b.png", template_page((1, "Form"), {"Name": ("이", 0.8), "Age": ("30", 0.7)}))
    write_failure(out, "c.png", None, "not an image")

    response = await api.client.get("/api/v1/batches/양식/export?include_failed=true", headers=AUTH)
    body = await response.read()
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Transfer-Encoding"] == "chunked"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="batch-')
    assert disposition.endswith(f"filename*=UTF-8''{quote('양식.csv')}")
    rows = list(csv.reader(io.StringIO(body.decode("utf-8").removeprefix("\ufeff"))))
    assert [row[:3] + row[-2:] for row in rows] == [
        ["source_key", "result_key", "status", "Name", "Age"],
        ["a.png", "a.png.json", "succeeded", "김", ""],
        ["b.png", "b.png.json", "succeeded", "이", "30"],
        ["c.png", "_failed/c.png.json", "failed", "", ""],
    ]

    response = await api.client.get("/api/v1/batches/양식/export?format=xlsx&confidence=1", headers=AUTH)
    assert response.headers["Content-Type"].startswith("application/vnd.openxmlformats")
    sheet = openpyxl.load_workbook(io.BytesIO(await response.read()))["Export"]
    assert [cell.value for cell in sheet[1]][-4:] == ["Name", "Name confidence", "Age", "Age confidence"]
    assert sheet.max_row == 3

    response = await api.client.get("/api/v1/batches/양식/export?format=jsonl&bom=false", headers=AUTH)
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert len((await response.read()).splitlines()) == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("format=pdf", "format"),
        ("lines=maybe", "lines"),
        ("lines=true", "lines"),
        ("confidence=1&bom=x", "bom"),
    ],
)
async def test_bad_options_are_a_json_422(export_api: tuple[Api, Path], query: str, field: str) -> None:
    """An unknown format, a flag that is not a boolean, or an option the batch does not allow: 422
    with each option named, before any byte of the export."""
    api, data = export_api
    await _create(api, data, "forms", "tpl", template_ids=[1])
    response, body = await api.call("GET", f"/api/v1/batches/forms/export?{query}")
    assert response.status == 422
    assert body["error"]["code"] == "invalid_export"
    assert field in [violation["field"] for violation in body["error"]["violations"]]


async def test_unknown_batch_and_no_token(export_api: tuple[Api, Path]) -> None:
    """An unknown batch is a 404; no token, a 401: the export is behind the API's auth."""
    api, data = export_api
    await _create(api, data, "receipts", "gen")
    write_result(data / "receipts" / "out", "x.png", general_page([[("hello", 0.9)]]))
    response, body = await api.call("GET", "/api/v1/batches/nobody/export")
    assert (response.status, body["error"]["code"]) == (404, "not_found")
    response, body = await api.call("GET", "/api/v1/batches/receipts/export", token=None)
    assert response.status == 401
