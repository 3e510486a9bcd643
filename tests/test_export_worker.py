"""The export of what the real worker wrote: 300 documents of a Template batch over two templates,
recognised by the emulator on S3 (moto), exported as CSV and xlsx; and the export's memory, flat
in the number of results."""

from __future__ import annotations

import asyncio
import collections
import csv
import io
import os
import sys
from pathlib import Path

import openpyxl
from fixtures.exports import template_page, write_result
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, create_batch, open_worker

from ocrbatch.batches.store import batch_store_in
from ocrbatch.emulator.results import DEFAULT_FIELD_NAMES, INVOICE_FIELD_NAMES
from ocrbatch.exports.export import ExportOptions, open_export
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.operations import BatchOperations

DOCUMENTS = 300


async def test_template_batch_of_300_documents_over_two_templates(make_worker_setup: MakeSetup) -> None:
    """300 rows in key order, each naming its result; the fixed columns, then template 102's
    fields (the batch lists it first), then 101's not already there; each row fills its own
    template's columns only; the xlsx holds the same cells."""
    setup = await make_worker_setup(max_concurrent_calls=8)
    await asyncio.gather(
        *(setup.inputs.write(f"forms/{index:03}.png", png(200 + index, 300)) for index in range(DOCUMENTS))
    )
    settings = setup.settings()
    await create_batch(setup, settings, name="forms", domain="forms", template_ids=[102, 101])
    async with open_worker(settings) as (worker, _):
        outcome = await within(worker.run_pass(), 120, "the pass did not end")
    assert outcome.errors == {}

    async with StorageFactory(settings.storage) as storages:
        operations = BatchOperations(settings, await batch_store_in(settings, storages), storages)
        exported = {}
        for export_format in ("csv", "xlsx"):
            export = await open_export(operations, "forms", ExportOptions(export_format=export_format))
            exported[export_format] = b"".join([chunk async for chunk in export.chunks()])

    rows = list(csv.reader(io.StringIO(exported["csv"].decode("utf-8").removeprefix("\ufeff"))))
    header, body = rows[0], rows[1:]
    shared = [name for name in DEFAULT_FIELD_NAMES if name not in INVOICE_FIELD_NAMES]
    fields = ["(title)", *INVOICE_FIELD_NAMES, *shared]
    assert header == ["source_key", "result_key", "status", "pages", "template_id", "template_name", *fields]
    assert len(body) == DOCUMENTS
    assert [row[0] for row in body] == [f"forms/{index:03}.png" for index in range(DOCUMENTS)]
    assert all(row[1] == row[0] + ".json" and row[2] == "succeeded" for row in body)
    by_template = collections.Counter(row[4] for row in body)
    assert set(by_template) == {"101", "102"}
    assert min(by_template.values()) > DOCUMENTS // 4  # both templates really matched
    for row in body:
        own = DEFAULT_FIELD_NAMES if row[4] == "101" else INVOICE_FIELD_NAMES
        filled = {name for name, value in zip(header[6:], row[6:], strict=True) if value}
        assert filled == {"(title)", *own}, row

    sheet = openpyxl.load_workbook(io.BytesIO(exported["xlsx"]))["Export"]
    cells = [["" if cell is None else str(cell) for cell in row] for row in sheet.iter_rows(values_only=True)]
    assert cells == [[cell.removeprefix("'") for cell in row] for row in rows]


# The child reports its own peak (bench/measure.py: VmHWM, not ru_maxrss, which would carry the
# forked test process's size across exec).
RSS_SCRIPT = """
import atexit, sys
from bench.measure import peak_rss_kb
atexit.register(lambda: print("maxrss_kb", peak_rss_kb(), file=sys.stderr))
from ocrbatch.cli.root import main
main(sys.argv[1:])
"""
REPOSITORY = Path(__file__).resolve().parent.parent
CONFIG = """
[storage]
control_path = "control"
[domains.forms]
kind = "template"
invoke_url = "http://127.0.0.1:9/infer"
secret = "template-secret-value"
[logging]
format = "json"
"""


def _write_config(workdir: Path) -> str:
    workdir.mkdir()
    (workdir / "ocrbatch.toml").write_text(CONFIG)
    return str(workdir / "ocrbatch.toml")


def _write_results(out: Path, documents: int) -> None:
    for index in range(documents):
        fields = {f"field {n}": (f"value {index}-{n} " * 4, 0.9) for n in range(8)}
        write_result(out, f"docs/{index:06}.png", template_page((1, "Form"), fields))


async def _export_peak_rss_mb(workdir: Path, documents: int) -> float:
    """Peak RSS of `ocrbatch export` (xlsx, the format that holds most) over `documents` results."""
    config = ("--config", _write_config(workdir))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocrbatch", *config, "batch", "create", "--name", "forms", "--domain", "forms",
        "--template-id", "1", "--input", "in", "--result", "out", cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await within(process.communicate(), 60, "batch create did not end")
    assert process.returncode == 0, err
    _write_results(workdir / "out", documents)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RSS_SCRIPT, *config, "export", "forms", "-o", "forms.xlsx", "--confidence",
        cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )  # fmt: skip
    _, err = await within(process.communicate(), 120, f"the export of {documents} results did not end")
    assert process.returncode == 0, err
    text = err.decode()
    assert f"{documents} documents, {documents} rows (xlsx)" in text
    return int(text.split("maxrss_kb")[1].split()[0]) / 1024


async def test_export_memory_is_flat_in_the_number_of_results(tmp_path: Path) -> None:
    """Exporting 20,000 results peaks within 50 MB of exporting 1,000 (and under 300 MB in all):
    results are read a few at a time and rows leave as they are made."""
    small = await _export_peak_rss_mb(tmp_path / "small", 1_000)
    large = await _export_peak_rss_mb(tmp_path / "large", 20_000)
    print(f"peak RSS: {small:.0f} MB for 1,000 results, {large:.0f} MB for 20,000")
    assert large - small <= 50, (small, large)
    assert large < 300, large
