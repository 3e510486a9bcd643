"""`ocrbatch demo` (what `make demo` runs) keeps working, and can be rerun in its own directory."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from ocrbatch.demo import run_demo


@pytest.mark.timeout(180)
def test_demo_runs_every_step_and_can_be_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every demo step gets its expected exit code, twice in the same directory."""
    workdir = tmp_path / "demo"
    assert run_demo(workdir) == 0
    first = capsys.readouterr().out
    assert "all 16 steps behaved as expected" in first
    assert "only one batch per General domain" in first
    assert run_demo(workdir) == 0
    assert len(list((workdir / "control" / "batches").iterdir())) == 1


def test_demo_refuses_a_foreign_directory(tmp_path: Path) -> None:
    """The demo never writes into a non-empty directory it did not make."""
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(click.UsageError, match="not empty"):
        run_demo(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["precious.txt"]
