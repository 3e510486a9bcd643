"""`ocrbatch demo`: the product end to end on embedded defaults: local directories, the emulator.

It writes sample documents, starts the CLOVA emulator, defines batches through the real CLI
(showing the console's rules refusing bad ones), runs the worker once, runs it again to show
that nothing is paid for twice, and prints where the results are. Every step checks its exit
code, so a broken demo fails; the emulator is stopped whatever happens.
"""

from __future__ import annotations

import io
import json
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import click
from PIL import Image, ImageDraw
from pypdf import PdfWriter

MARKER = "# Written by `ocrbatch demo`"
DEMO_CONFIG = """\
# Written by `ocrbatch demo`: local directories and the CLOVA emulator, no cloud account.
[storage]
control_path = "control"

[domains.receipts]
kind = "general"
invoke_url = "{url}/general"
secret = "demo-general-secret"
max_concurrent_calls = 5
table_extraction = true
default_language = "ko"

[domains.forms]
kind = "template"
invoke_url = "{url}/infer"
secret = "demo-template-secret"
max_concurrent_calls = 5
transfer_mode = "multipart"

[worker]
backoff_initial_s = 0.2
progress_interval_s = 2

[logging]
format = "console"
level = "info"
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
        ],
        0,
        "a General OCR batch with table extraction",
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
            "--input",
            "inbox/forms",
            "--result",
            "results/forms",
        ],
        0,
        "a Template OCR batch",
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
    (
        ["batch", "apply", "-f", "batches.yaml", "--dry-run"],
        0,
        "what applying the declared batches would change",
    ),
    (["batch", "apply", "-f", "batches.yaml"], 0, "apply: the Template batch now writes Excel workbooks"),
    (["batch", "apply", "-f", "batches.yaml"], 0, "apply again: nothing changes (idempotent)"),
    (["run", "--once"], 0, "the worker: every input becomes a result or a failure record"),
    (["run", "--once"], 0, "again: everything is done, so no API call is made"),
    (["batch", "list"], 0, "the batches after the run"),
]


def run_demo(workdir: Path | None) -> int:
    """Run every step in `workdir` (a temporary directory if None); returns the exit code."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        code = _run(workdir)
        if code == 0:
            click.secho(f"the demo's files are kept in {workdir}", bold=True)
        return code
    with tempfile.TemporaryDirectory(prefix="ocrbatch-demo-") as tmp:
        code = _run(Path(tmp))
    if code == 0:
        click.secho(
            "the demo's files were removed; run `ocrbatch demo --workdir DIR` to keep them", bold=True
        )
    return code


def _prepare(workdir: Path) -> None:
    """Start from a clean demo directory; never touch a directory the demo did not make."""
    config = workdir / "ocrbatch.toml"
    made_by_demo = config.is_file() and config.read_text(encoding="utf-8").startswith(MARKER)
    if any(workdir.iterdir()) and not made_by_demo:
        raise click.UsageError(
            f"{workdir} is not empty and was not made by the demo; choose an empty directory"
        )
    for folder in ("control", "inbox", "results"):
        shutil.rmtree(workdir / folder, ignore_errors=True)


def _run(workdir: Path) -> int:
    _prepare(workdir)
    samples = write_samples(workdir / "inbox")
    (workdir / "batches.yaml").write_text(APPLY_FILE, encoding="utf-8")
    click.secho(f"ocrbatch demo in {workdir}: {samples} sample documents in inbox/", bold=True)
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocrbatch",
            "emulator",
            "--port",
            "0",
            "--general-secret",
            "demo-general-secret",
            "--template-secret",
            "demo-template-secret",
            "--latency-ms",
            "150",
            "--latency-jitter-ms",
            "100",
            "--error-rate",
            "0.05",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    ) as emulator:
        try:
            url = _first_line(emulator)
            click.secho(f"CLOVA emulator listening on {url}", bold=True)
            (workdir / "ocrbatch.toml").write_text(DEMO_CONFIG.format(url=url), encoding="utf-8")
            code = _run_steps(workdir)
            if code == 0:
                _summary(workdir, url)
            return code
        finally:
            emulator.terminate()
            emulator.wait(timeout=30)


def _first_line(process: subprocess.Popen[str]) -> str:
    stdout = process.stdout
    ready = select.select([stdout], [], [], 30)[0] if stdout is not None else []
    line = stdout.readline().strip() if stdout is not None and ready else ""
    if not line.startswith("http://"):
        raise click.ClickException("the emulator did not start")
    return line


def _run_steps(workdir: Path) -> int:
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


def _summary(workdir: Path, emulator_url: str) -> None:
    with urllib.request.urlopen(emulator_url + "/_emulator/stats", timeout=10) as response:  # noqa: S310  (loopback)
        stats: dict[str, Any] = json.load(response)
    click.secho("\nsummary", bold=True)
    for name in ("receipts", "forms"):
        folder = workdir / "results" / name
        report = json.loads((folder / "_report.json").read_text(encoding="utf-8"))
        click.echo(
            f"  {report['batch']}: {report['succeeded']} succeeded, {report['failed']} failed, "
            f"{report['skipped']} skipped, {report['pending']} pending"
        )
        for path in sorted(folder.rglob("*")):
            if path.is_file() and ".ocrbatch" not in path.parts:
                click.echo(f"    {path.relative_to(workdir)}")
    general = stats["domains"]["general"]
    click.echo(
        f"  API: {stats['calls']} calls, answers {stats['answers']}, "
        f"peak {general['peak_in_flight']} in flight of {general['max_concurrent_calls']}, "
        f"recognised twice: {len(stats['recognised_more_than_once'])}"
    )


def write_samples(inbox: Path) -> int:
    """Receipts, a 12-page PDF, a long receipt, forms, a corrupt file and an unsupported one."""
    receipts, forms = inbox / "receipts", inbox / "forms"
    receipts.mkdir(parents=True)
    forms.mkdir(parents=True)
    files: dict[Path, bytes] = {}
    for index in range(8):
        files[receipts / f"receipt-{index + 1:02}.png"] = _page(f"RECEIPT {index + 1}", 600 + 20 * index, 900)
    files[receipts / "scan.jpg"] = _page("SCAN", 800, 600, image_format="JPEG")
    files[receipts / "contract-12-pages.pdf"] = _pdf(12)
    files[receipts / "long-receipt.png"] = _page("LONG RECEIPT", 1000, 9000)
    files[receipts / "broken.jpg"] = b"\xff\xd8\xff\xe0 not really a JPEG"
    files[receipts / "logo.gif"] = b"GIF89a"
    for index in range(3):
        files[forms / f"application-{index + 1}.png"] = _page(f"FORM {index + 1}", 1190, 1684)
    for path, data in files.items():
        path.write_bytes(data)
    return len(files)


def _page(text: str, width: int, height: int, *, image_format: str = "PNG") -> bytes:
    image = Image.new("L", (width, height), 255)
    ImageDraw.Draw(image).text((40, 40), text, fill=0)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def _pdf(pages: int) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
