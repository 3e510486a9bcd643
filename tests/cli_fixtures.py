"""Helpers for the command line's tests: a settings file, `ocrbatch` run in-process through its real
entry point with its output captured, and the arguments that create the two usual batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ocrbatch.cli.root import main

CONFIG = """
[storage]
control_path = "control"

[domains.receipts]
kind = "general"
invoke_url = "http://127.0.0.1:9/general"
secret = "{ocr_secret}"
table_extraction = true

[domains.forms]
kind = "template"
invoke_url = "http://127.0.0.1:9/infer"
secret = "template-secret-value"

[logging]
format = "json"
"""
OCR_SECRET = "ocr-SECRET-7f3a91"


class Cli:
    """Runs `ocrbatch --config <tmp>/ocrbatch.toml ...` in-process and captures its output."""

    def __init__(self, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.workdir = workdir
        self.capsys = capsys
        self.outputs: list[str] = []

    def __call__(self, *args: str, expect: int = 0) -> tuple[str, str]:
        try:
            main(["--config", str(self.workdir / "ocrbatch.toml"), *args])
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        out, err = self.capsys.readouterr()
        self.outputs += [out, err]
        assert code == expect, f"exit {code}, expected {expect}\n{out}\n{err}"
        return out, err

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json")[0])


CREATE_RECEIPTS = (
    "batch",
    "create",
    "--name",
    "영수증",
    "--domain",
    "receipts",
    "--input",
    "in/r",
    "--result",
    "out/r",
)
CREATE_FORMS = (
    "batch",
    "create",
    "--name",
    "forms",
    "--domain",
    "forms",
    "--template-id",
    "3",
    "--template-id",
    "4",
    "--file-format",
    "xls",
    "--input",
    "in/f",
    "--result",
    "out/f",
)
