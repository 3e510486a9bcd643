"""`ocrbatch demo` (what `make demo` runs) works end to end on the local engine, reads the text of
its samples, delivers signed webhooks, and can be rerun in its directory."""

from __future__ import annotations

import csv
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
import openpyxl
import pypdf
import pytest
from fixtures.engine import character_error_rate, require_tesseract_and_fonts

from ocrbatch.clova.contract import OcrResponse
from ocrbatch.demo.runner import run_demo
from ocrbatch.demo.samples import SAMPLE_TEXT, contract_page_lines
from ocrbatch.demo.script import ADMIN_TOKEN, SECRET
from ocrbatch.demo.webhooks import WebhookReceiver
from ocrbatch.webhooks.signing import signed_headers

MAX_CER = 0.05


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _page_text(page: dict[str, Any]) -> str:
    return "".join(field["inferText"] for field in page.get("fields", []))


# What the operator hands the demo's processes: the configuration (with the OCR secret) and the
# files the secrets are read from. Everything else the demo leaves behind must hold no secret.
OPERATOR_FILES = {"ocrbatch.toml", "webhook-secret.txt", "secret-key.txt", "batches.yaml"}


def assert_no_secret_left(workdir: Path, output: str) -> None:
    """No file the demo wrote (batch documents, outbox, results, reports, receiver's copies, logs)
    and not its output holds the webhook secret, the OCR secret or the admin token."""
    secrets = {
        "webhook secret": (workdir / "webhook-secret.txt").read_text(encoding="utf-8").strip(),
        "OCR secret": SECRET,
        "admin token": ADMIN_TOKEN,
    }
    files = [path for path in workdir.rglob("*") if path.is_file() and path.name not in OPERATOR_FILES]
    assert len(files) > 20, "the demo left its documents, results and logs"
    for path in files:
        data = path.read_bytes()
        for what, secret in secrets.items():
            assert secret.encode() not in data, f"{path.relative_to(workdir)} holds the {what}"
    for what, secret in secrets.items():
        assert secret not in output, f"the demo's output shows the {what}"


@pytest.mark.timeout(300)
def test_demo_runs_end_to_end_on_the_local_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every step gets its expected exit code; the results hold the rendered text in all four
    languages (JSON, Excel and a searchable PDF); the Korean batch's export has its lines; the
    12-page PDF and the long receipt are read whole; the corrupt
    file has a failure record; every finished item reaches the webhook, signed; the second run
    makes no call; it ends by logging in to the console and opening its pages; and the demo
    runs again in the same directory (there on the emulator)."""
    require_tesseract_and_fonts()
    workdir = tmp_path / "demo"
    assert run_demo(workdir, engine="tesseract") == 0
    output = capsys.readouterr().out
    assert "local OCR engine (Tesseract) listening on" in output
    assert "steps behaved as expected" in output
    assert "only one batch per General domain" in output
    assert "recognised twice: 0" in output
    assert_no_secret_left(workdir, output)
    # The demo ends on the console: logged in, every batch's page and a result viewer opened.
    console = output.split("console pages on the demo's data", 1)[1]
    assert console.count("batch page ") == 3
    assert "result viewer" in console
    assert re.search(r"^console: http://127\.0\.0\.1:\d+/console/$", console, re.MULTILINE)
    assert "log in with the API token in " in console

    results = workdir / "results"
    outcomes = {
        name: tuple(
            _read(results / name / "_report.json")[key]
            for key in ("succeeded", "failed", "skipped", "pending")
        )
        for name in ("ko", "ja", "zh-TW")
    }
    assert outcomes == {"ko": (5, 1, 1, 0), "ja": (1, 0, 0, 0), "zh-TW": (1, 0, 0, 0)}
    assert _read(results / "ko" / "_report.json")["this_pass"]["calls"] == 0  # the rerun found all done

    for lang, result in (
        ("ko", "ko/invoice-ko.png"),
        ("en", "ko/invoice-en.jpg"),
        ("zh-TW", "zh-TW/fapiao.png"),
    ):
        (page,) = _read(results / f"{result}.json")["images"]
        assert character_error_rate("".join(SAMPLE_TEXT[lang]), _page_text(page)) <= MAX_CER, lang
    (fapiao,) = pypdf.PdfReader(results / "zh-TW" / "fapiao.png.pdf").pages  # the searchable PDF
    pdf_text = "".join(fapiao.extract_text().split())
    assert character_error_rate("".join(SAMPLE_TEXT["zh-TW"]), pdf_text) <= MAX_CER
    with (results / "영수증-2026.csv").open(encoding="utf-8-sig", newline="") as exported:
        rows = list(csv.DictReader(exported))  # the export step: a row per line, failures too
    assert {row["source_key"] for row in rows} == {
        "broken.jpg", "contract-12-pages.pdf", "invoice-en.jpg", "invoice-ko.png",
        "long-receipt.png", "price-table.png",
    }  # fmt: skip
    assert {row["page"] for row in rows if row["source_key"] == "contract-12-pages.pdf"} == {
        str(page) for page in range(1, 13)
    }
    assert next(row for row in rows if row["source_key"] == "broken.jpg")["status"] == "failed"
    sheet = openpyxl.load_workbook(results / "ja" / "seikyusho.png.xlsx")["Text"]
    excel_text = "".join(str(row[2]) for row in sheet.iter_rows(min_row=2, values_only=True) if row[2])
    assert character_error_rate("".join(SAMPLE_TEXT["ja"]), excel_text) <= MAX_CER

    pages = _read(results / "ko" / "contract-12-pages.pdf.json")["images"]
    assert [page["convertedImageInfo"]["pageIndex"] for page in pages] == list(range(12))
    for number, page in enumerate(pages, start=1):
        expected = "".join(contract_page_lines(number, 12))
        assert character_error_rate(expected, _page_text(page)) <= MAX_CER, number
    (receipt,) = _read(results / "ko" / "long-receipt.png.json")["images"]
    assert receipt["convertedImageInfo"]["longImage"] is True
    assert "합계" in _page_text(receipt)
    assert "not a valid JPEG" in (results / "ko" / "_failed" / "broken.jpg.json").read_text(encoding="utf-8")

    chunks = [_read(path) for path in sorted((workdir / "webhooks").glob("*/*.json"))]
    delivered = {item["key"]: item for chunk in chunks for item in chunk["items"]}
    assert sorted(delivered) == [
        "broken.jpg",
        "contract-12-pages.pdf",
        "fapiao.png",
        "invoice-en.jpg",
        "invoice-ko.png",
        "long-receipt.png",
        "price-table.png",
        "seikyusho.png",
    ]
    assert delivered["broken.jpg"]["status"] == "failed"
    japanese = OcrResponse.model_validate(delivered["seikyusho.png"]["result"]).images[0]
    assert character_error_rate("".join(SAMPLE_TEXT["ja"]), _page_text(japanese.to_wire())) <= MAX_CER
    assert "3 signed chunks with 8 items" in output

    assert run_demo(workdir, engine="emulator") == 0
    assert "CLOVA emulator listening on" in capsys.readouterr().out
    assert len(list((workdir / "control" / "batches").iterdir())) == 3


def test_demo_refuses_a_foreign_directory(tmp_path: Path) -> None:
    """The demo never writes into a non-empty directory it did not make."""
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(click.UsageError, match="not empty"):
        run_demo(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["precious.txt"]


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310  (loopback)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (loopback)
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_webhook_receiver_saves_signed_chunks_and_refuses_others(tmp_path: Path) -> None:
    """A chunk with a valid signature is saved under its batch folder by sequence and chunk id
    (a resend overwrites it); a wrong signature gets 401 and nothing is saved."""
    body = json.dumps({"batchName": "b", "chunkId": "msg_1", "sequence": 3, "items": [{"key": "a"}]}).encode()
    good = signed_headers("s3cret", message_id="msg_1", timestamp_s=int(time.time()), body=body)
    bad = {**good, "webhook-signature": "v1,AAAA"}
    with WebhookReceiver(tmp_path, "s3cret") as receiver:
        assert _post(receiver.url + "/ko", body, bad) == 401
        assert _post(receiver.url + "/ko", body, good) == 200
        assert _post(receiver.url + "/ko", body, good) == 200
        assert _post(receiver.url + "/a/b", body, good) == 404
        chunks = receiver.chunks
    assert [chunk.path for chunk in chunks] == [tmp_path / "ko" / "0003-msg_1.json"]
    assert chunks[0].items == [{"key": "a"}]
    assert receiver.refused == 1
    assert _read(chunks[0].path)["batchName"] == "b"
