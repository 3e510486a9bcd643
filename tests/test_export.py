"""`ocrbatch export`: one table of a batch's results, read from the results it wrote (local
directories here; S3 and the real worker in test_export_worker.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import openpyxl
import pytest
from fixtures.cli import CREATE_RECEIPTS, Cli
from fixtures.exports import general_page, template_page, write_failure, write_result

FORMS = ("batch", "create", "--name", "forms", "--domain", "forms", "--input", "in/f", "--result", "out/f")


def read_csv(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8")
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))


@pytest.fixture
def forms(cli: Cli) -> Path:
    """A Template batch on templates 7 then 3, with four results and a failure record."""
    cli(*FORMS, "--template-id", "7", "--template-id", "3")
    out = cli.workdir / "out" / "f"
    write_result(
        out,
        "b/invoice.png",
        template_page((3, "Invoice"), {"Number": ("INV-1", 0.9), "Total": ("=1+2", 0.5)}),
    )
    write_result(
        out,
        "a/cert.png",
        template_page((7, "Certificate"), {"Company": ("한빛 주식회사", 0.99), "Number": ("123-45", 0.8)}),
    )
    write_result(
        out,
        "c/two-pages.pdf",
        template_page((3, "Invoice"), {"Number": ("INV-2", 0.7)}),
        template_page((3, "Invoice"), {"Number": ("INV-2b", 0.6), "Total": ("5,000", 0.95)}),
    )
    write_result(out, "d/unmatched.png", template_page(None, {}))
    write_failure(out, "a/broken.png", None, "the file is not a PNG image")
    (out / "_report.json").write_text("{}")
    return out


def test_template_export_golden(cli: Cli, forms: Path) -> None:
    """One row per document in key order; the batch's templates' fields in its order (7's, then
    3's new ones), a shared name one column; values of a field on two pages joined by a line
    break; a formula-like value neutralised; failed items only when asked."""
    cli("export", "forms", "-o", "forms.csv")

    assert read_csv(cli.workdir / "forms.csv") == [
        [
            "source_key",
            "result_key",
            "status",
            "pages",
            "template_id",
            "template_name",
            "Company",
            "Number",
            "Total",
        ],
        [
            "a/cert.png",
            "a/cert.png.json",
            "succeeded",
            "1",
            "7",
            "Certificate",
            "한빛 주식회사",
            "123-45",
            "",
        ],
        ["b/invoice.png", "b/invoice.png.json", "succeeded", "1", "3", "Invoice", "", "INV-1", "'=1+2"],
        [
            "c/two-pages.pdf",
            "c/two-pages.pdf.json",
            "succeeded",
            "2",
            "3",
            "Invoice",
            "",
            "INV-2\nINV-2b",
            "5,000",
        ],
        ["d/unmatched.png", "d/unmatched.png.json", "succeeded", "1", "", "", "", "", ""],
    ]


def test_template_export_with_confidence_and_failures(cli: Cli, forms: Path) -> None:
    """`--confidence` puts each field's confidence (the lowest of its values') beside it;
    `--include-failed` adds failed items with their reason, in key order."""
    cli("export", "forms", "-o", "forms.csv", "--confidence", "--include-failed")

    rows = read_csv(cli.workdir / "forms.csv")
    assert rows[0] == [
        "source_key", "result_key", "status", "reason", "pages", "template_id", "template_name",
        "Company", "Company confidence", "Number", "Number confidence", "Total", "Total confidence",
    ]  # fmt: skip
    assert (
        rows[1]
        == ["a/broken.png", "_failed/a/broken.png.json", "failed", "the file is not a PNG image"] + [""] * 9
    )
    assert rows[2][:3] == ["a/cert.png", "a/cert.png.json", "succeeded"]
    two_pages = rows[4]
    assert two_pages[0] == "c/two-pages.pdf"
    assert (two_pages[9], two_pages[10], two_pages[11], two_pages[12]) == (
        "INV-2\nINV-2b",
        "0.6",
        "5,000",
        "0.95",
    )


def test_xlsx_holds_the_same_cells_as_csv(cli: Cli, forms: Path) -> None:
    """The xlsx export opens in openpyxl with the CSV's cells: numbers as numbers, text as text
    (never a formula), a frozen header."""
    cli("export", "forms", "-o", "forms.csv", "--confidence", "--include-failed", "--no-bom")
    cli("export", "forms", "-o", "forms.xlsx", "--confidence", "--include-failed")

    with (cli.workdir / "forms.csv").open(encoding="utf-8", newline="") as file:
        csv_rows = list(csv.reader(file))
    workbook = openpyxl.load_workbook(cli.workdir / "forms.xlsx")
    sheet = workbook["Export"]
    assert sheet.freeze_panes == "A2"
    xlsx_rows = [
        ["" if cell is None else _csv_text(cell) for cell in row] for row in sheet.iter_rows(values_only=True)
    ]
    assert [_unneutralised(row) for row in csv_rows] == xlsx_rows
    assert sheet.cell(3, 11).value == 0.8  # a/cert.png's Number confidence, a number
    assert (sheet.cell(4, 12).value, sheet.cell(4, 12).data_type) == ("=1+2", "s")  # text, never a formula


def _csv_text(cell: object) -> str:
    return str(int(cell)) if isinstance(cell, float) and cell.is_integer() else str(cell)


def _unneutralised(row: list[str]) -> list[str]:
    return [cell.removeprefix("'") for cell in row]


def test_jsonl_rows_are_typed(cli: Cli, forms: Path) -> None:
    """JSON Lines: one object per document, the columns as keys, numbers as numbers, null for none."""
    cli("export", "forms", "-o", "forms.jsonl")

    rows = [
        json.loads(line) for line in (cli.workdir / "forms.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == 4
    assert rows[0] == {
        "source_key": "a/cert.png",
        "result_key": "a/cert.png.json",
        "status": "succeeded",
        "pages": 1,
        "template_id": 7,
        "template_name": "Certificate",
        "Company": "한빛 주식회사",
        "Number": "123-45",
        "Total": None,
    }
    assert rows[1]["Total"] == "=1+2"  # data, not a spreadsheet: as recognised


@pytest.fixture
def receipts(cli: Cli) -> Path:
    cli(*CREATE_RECEIPTS)
    out = cli.workdir / "out" / "r"
    write_result(out, "shop/1.png", general_page([[("안녕", 0.9), ("하세요", 0.7)], [("-5,000", 0.8)]]))
    write_result(out, "shop/2.png", general_page([[("一", 0.5)]]), general_page([[("二", 1.0)]]))
    (out / "shop" / "3.png.json").write_text("{not json")
    write_failure(out, "shop/0.png", "0011", "Image download failed")
    return out


def test_general_export_one_row_per_document(cli: Cli, receipts: Path) -> None:
    """A General row: pages, the text with a line break per `lineBreak` and an empty line between
    pages, the words' mean confidence (to 6 places); a result that cannot be read is shown, not skipped."""
    _, err = cli("export", "영수증", "-o", "r.csv")

    rows = read_csv(cli.workdir / "r.csv")
    assert rows[0] == ["source_key", "result_key", "status", "pages", "text", "confidence"]
    assert rows[1] == ["shop/1.png", "shop/1.png.json", "succeeded", "1", "안녕 하세요\n-5,000", "0.8"]
    assert rows[2] == ["shop/2.png", "shop/2.png.json", "succeeded", "2", "一\n\n二", "0.75"]
    assert rows[3] == ["shop/3.png", "shop/3.png.json", "unreadable", "", "", ""]
    assert "3 documents, 3 rows (csv) to r.csv" in err


def test_general_export_by_line(cli: Cli, receipts: Path) -> None:
    """`--lines`: one row per line with its page, number, text, lowest confidence and box (px);
    `--include-failed` gives the failure's code and message."""
    cli("export", "영수증", "-o", "r.csv", "--lines", "--include-failed")

    rows = read_csv(cli.workdir / "r.csv")
    assert rows[0] == [
        "source_key", "result_key", "status", "reason", "page", "line", "text", "confidence",
        "left", "top", "right", "bottom",
    ]  # fmt: skip
    assert (
        rows[1]
        == ["shop/0.png", "_failed/shop/0.png.json", "failed", "0011: Image download failed"] + [""] * 8
    )
    assert rows[2] == [
        "shop/1.png",
        "shop/1.png.json",
        "succeeded",
        "",
        "1",
        "1",
        "안녕 하세요",
        "0.7",
        "0.0",
        "0.0",
        "18.0",
        "12.0",
    ]
    assert rows[3][4:8] == ["1", "2", "'-5,000", "0.8"]
    assert [row[4:7] for row in rows[4:6]] == [["1", "1", "一"], ["2", "1", "二"]]
    assert rows[6][:4] == ["shop/3.png", "shop/3.png.json", "unreadable", "the result is not valid JSON"]


def test_no_bom_and_to_a_storage_location(cli: Cli, receipts: Path) -> None:
    """`--no-bom` leaves the byte-order mark out; `--to` writes `{batch name}.{format}` into a location."""
    cli("export", "영수증", "--no-bom", "--to", "exports/today")

    data = (cli.workdir / "exports" / "today" / "영수증.csv").read_bytes()
    assert data.startswith(b"source_key,")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("forms", "--lines"), "lines: one row per line is for General batches"),
        (("영수증", "--confidence"), "confidence: confidence columns per field are for Template batches"),
        (("forms", "-o", "x.csv", "--to", "out"), "give -o FILE or --to LOCATION, not both"),
        (("nobody",), "nobody"),
    ],
)
def test_refusals_are_clear(
    cli: Cli, forms: Path, receipts: Path, args: tuple[str, ...], message: str
) -> None:
    """An option the batch does not allow, or an unknown batch, is a one-line error, exit 2, and no file."""
    _, err = cli("export", *args, expect=2)
    assert message in err
    assert not (cli.workdir / "x.csv").exists()


def test_xls_batches_are_refused(cli: Cli) -> None:
    """An xls batch's results are workbooks: the export says it reads JSON results."""
    cli(
        "batch",
        "create",
        "--name",
        "sheets",
        "--domain",
        "receipts",
        "--file-format",
        "xls",
        "--input",
        "in/x",
        "--result",
        "out/x",
    )
    _, err = cli("export", "sheets", "-o", "x.csv", expect=2)
    assert "writes xls results; an export reads the JSON results of json and pdf batches" in err
    assert list(cli.workdir.glob("*.csv")) == []
    assert list(cli.workdir.glob(".x.csv*")) == []
