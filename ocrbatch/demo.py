"""`ocrbatch demo`: the product end to end on embedded defaults (local directories, no cloud).

For now it defines, lists, edits and re-applies batches through the real CLI, and shows the
console's rules refusing bad definitions. Every step checks its exit code, so a broken demo fails.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

DEMO_CONFIG = """\
# Written by `ocrbatch demo`: an embedded setup with local directories only.
[storage]
control_path = "control"

[domains.receipts]
kind = "general"
invoke_url = "http://127.0.0.1:9/general"
secret = "demo-general-secret"
max_concurrent_calls = 5
table_extraction = true
default_language = "ko"

[domains.forms]
kind = "template"
invoke_url = "http://127.0.0.1:9/infer"
secret = "demo-template-secret"
max_concurrent_calls = 5

[logging]
format = "console"
level = "warning"
"""

APPLY_FILE = """\
# The same two batches, declared for `ocrbatch batch apply` (GitOps style).
batches:
  - name: 영수증-2026
    domain: receipts
    language: ko
    table_extraction: true
    input_path: inbox/receipts
    result_path: results/receipts
    webhook: {url: "http://127.0.0.1:8081/ocr-results"}
  - name: 申込書＿フォーム
    domain: forms
    template_ids: [101, 102]
    file_format: xls
    input_path: inbox/forms
    result_path: results/forms
"""

# (arguments, expected exit code, what the step shows)
STEPS: list[tuple[list[str], int, str]] = [
    (["config", "check"], 0, "the effective settings, secrets masked"),
    (
        [
            "batch",
            "create",
            "--name",
            "영수증-2026",
            "--domain",
            "receipts",
            "--language",
            "ko",
            "--table-extraction",
            "--input",
            "inbox/receipts",
            "--result",
            "results/receipts",
            "--webhook-url",
            "http://127.0.0.1:8081/ocr-results",
        ],
        0,
        "a General OCR batch with table extraction and a webhook",
    ),
    (
        [
            "batch",
            "create",
            "--name",
            "申込書＿フォーム",
            "--domain",
            "forms",
            "--template-id",
            "101",
            "--template-id",
            "102",
            "--file-format",
            "xls",
            "--input",
            "inbox/forms",
            "--result",
            "results/forms",
        ],
        0,
        "a Template OCR batch writing Excel results",
    ),
    (
        [
            "batch",
            "create",
            "--name",
            "second-general",
            "--domain",
            "receipts",
            "--input",
            "inbox/other",
            "--result",
            "results/other",
        ],
        2,
        "refused: only one batch per General domain",
    ),
    (
        [
            "batch",
            "create",
            "--name",
            "nested",
            "--domain",
            "forms",
            "--template-id",
            "7",
            "--input",
            "inbox",
            "--result",
            "inbox/results",
        ],
        2,
        "refused: the result path lies inside the input path",
    ),
    (
        [
            "batch",
            "create",
            "--name",
            "bad name!",
            "--domain",
            "forms",
            "--template-id",
            "7",
            "--input",
            "inbox/x",
            "--result",
            "results/x",
        ],
        2,
        "refused: space and '!' are not allowed in names",
    ),
    (["batch", "list"], 0, "every batch"),
    (["batch", "list", "--search", "영수"], 0, "search by name"),
    (["batch", "edit", "영수증-2026", "--pause"], 0, "pause a batch"),
    (["batch", "edit", "申込書＿フォーム", "--file-format", "json"], 0, "edit one field"),
    (
        ["batch", "apply", "-f", "batches.yaml", "--dry-run"],
        0,
        "what applying the declared batches would change",
    ),
    (["batch", "apply", "-f", "batches.yaml"], 0, "apply: brings the Template batch back to xls"),
    (["batch", "apply", "-f", "batches.yaml"], 0, "apply again: nothing changes (idempotent)"),
    (["batch", "show", "영수증-2026", "--json"], 0, "one batch as JSON"),
    (["batch", "delete", "申込書＿フォーム", "--yes"], 0, "delete a batch (results are kept)"),
    (["batch", "list"], 0, "what is left"),
]


def run_demo(workdir: Path | None) -> int:
    """Run every step in `workdir` (a temporary directory if None); returns the exit code."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        code = _run_steps(workdir)
        if code == 0:
            click.secho(f"batch documents are kept in {workdir / 'control'}", bold=True)
        return code
    with tempfile.TemporaryDirectory(prefix="ocrbatch-demo-") as tmp:
        code = _run_steps(Path(tmp))
    if code == 0:
        click.secho(
            "the demo's files were removed; run `ocrbatch demo --workdir DIR` to keep them", bold=True
        )
    return code


def _prepare(workdir: Path) -> None:
    """Start from a clean demo directory; never touch a directory the demo did not make."""
    config = workdir / "ocrbatch.toml"
    made_by_demo = config.is_file() and config.read_text(encoding="utf-8") == DEMO_CONFIG
    if any(workdir.iterdir()) and not made_by_demo:
        raise click.UsageError(
            f"{workdir} is not empty and was not made by the demo; choose an empty directory"
        )
    shutil.rmtree(workdir / "control", ignore_errors=True)


def _run_steps(workdir: Path) -> int:
    _prepare(workdir)
    (workdir / "ocrbatch.toml").write_text(DEMO_CONFIG, encoding="utf-8")
    (workdir / "batches.yaml").write_text(APPLY_FILE, encoding="utf-8")
    for folder in ("inbox/receipts", "inbox/forms", "results"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    click.secho(f"ocrbatch demo in {workdir}", bold=True)
    for number, (args, expected, what) in enumerate(STEPS, start=1):
        click.secho(f"\n[{number}/{len(STEPS)}] {what}", bold=True)
        click.secho("$ ocrbatch " + shlex.join(args), fg="cyan")
        result = subprocess.run(
            [sys.executable, "-m", "ocrbatch", "--config", "ocrbatch.toml", *args],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        sys.stdout.write(result.stdout)
        if result.stderr:
            click.secho(result.stderr.rstrip(), fg="yellow" if result.returncode else None)
        if result.returncode != expected:
            click.secho(
                f"demo failed: exit code {result.returncode}, expected {expected}", fg="red", err=True
            )
            return 1
    click.secho(f"\ndemo finished: all {len(STEPS)} steps behaved as expected", bold=True)
    return 0
