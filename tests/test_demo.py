"""`ocrbatch demo` (what `make demo` runs) keeps working end to end, and can be rerun in its directory."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from ocrbatch.demo import run_demo


@pytest.mark.timeout(240)
def test_demo_runs_a_real_batch_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every step gets its expected exit code; the batches' results, failure records and reports are
    written; the second run makes no call; and the demo can run again in the same directory."""
    workdir = tmp_path / "demo"
    assert run_demo(workdir) == 0
    output = capsys.readouterr().out
    assert "steps behaved as expected" in output
    assert "only one batch per General domain" in output
    receipts = workdir / "results" / "receipts"
    report = json.loads((receipts / "_report.json").read_text(encoding="utf-8"))
    assert (report["succeeded"], report["failed"], report["skipped"], report["pending"]) == (10, 2, 1, 0)
    assert report["this_pass"]["calls"] == 0  # the second run found everything done
    pages = json.loads((receipts / "contract-12-pages.pdf.json").read_text(encoding="utf-8"))["images"]
    assert [page["convertedImageInfo"]["pageIndex"] for page in pages] == list(range(12))
    assert "long image" in (receipts / "_failed" / "long-receipt.png.json").read_text(encoding="utf-8")
    assert len(list((workdir / "results" / "forms").glob("*.xlsx"))) == 3
    assert "recognised twice: 0" in output
    assert run_demo(workdir) == 0
    assert len(list((workdir / "control" / "batches").iterdir())) == 2


def test_demo_refuses_a_foreign_directory(tmp_path: Path) -> None:
    """The demo never writes into a non-empty directory it did not make."""
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(click.UsageError, match="not empty"):
        run_demo(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["precious.txt"]
