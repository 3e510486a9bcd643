"""`ocrbatch demo`: the product end to end on embedded defaults, on documents with real text.

It renders sample documents (Korean, Japanese, Traditional Chinese and English text, a table, a
12-page PDF, a long receipt, a corrupt file), starts the OCR service (the local Tesseract engine
when Tesseract and its language data are installed, else the CLOVA emulator, which answers with
synthetic text) and a webhook receiver, defines batches through the real CLI (showing the
console's rules refusing bad ones), runs the worker once with its progress shown, runs it again
to show that nothing is paid for twice, and prints a summary. Storage is local directories.
Every step checks its exit code and has a time limit, so a broken demo fails instead of hanging;
the OCR service and the receiver are stopped whatever happens.
"""

from __future__ import annotations

import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Literal, NoReturn

import click

from ocrbatch.demo import samples
from ocrbatch.demo.summary import print_summary
from ocrbatch.demo.webhooks import WebhookReceiver
from ocrbatch.engine.tesseract import EngineUnavailable, detect_tesseract, missing_languages

DemoEngine = Literal["auto", "tesseract", "emulator"]
MARKER = "# Written by `ocrbatch demo`"
SECRET = "demo-secret"  # noqa: S105  (the loopback OCR service's key, also written to the demo's config)
STEP_TIMEOUT_S = 180
STOP_TIMEOUT_S = 10
# Three General domains, one per language, because a batch has one language and a General domain
# one batch; they share the OCR service, whose cap is the sum of theirs.
DOMAIN_CAP = 2
DOMAINS = {"ocr-ko": "ko", "ocr-ja": "ja", "ocr-zh-tw": "zh-TW"}
DEMO_CONFIG_HEAD = f"""\
{MARKER}: local directories and the {{service}}, no cloud account.
[storage]
control_path = "control"

[worker]
backoff_initial_s = 0.2
progress_interval_s = 2

[logging]
format = "console"
level = "info"
"""
DEMO_DOMAIN = """
[domains.{name}]
kind = "general"
invoke_url = "{url}/general"
secret = "{secret}"
max_concurrent_calls = {cap}
default_language = "{language}"
"""

APPLY_FILE = """\
# Batches declared for `ocrbatch batch apply` (GitOps style): the Korean one as created above,
# and one per other language; the Japanese batch writes Excel workbooks.
batches:
  - name: 영수증-2026
    domain: ocr-ko
    language: ko
    long_image: true
    input_path: inbox/ko
    result_path: results/ko
    webhook: {{url: "{hook}/ko", secret_file: webhook-secret.txt}}
  - name: 請求書＿日本
    domain: ocr-ja
    language: ja
    file_format: xls
    input_path: inbox/ja
    result_path: results/ja
    webhook: {{url: "{hook}/ja", secret_file: webhook-secret.txt}}
  - name: 發票-臺灣
    domain: ocr-zh-tw
    language: zh-TW
    input_path: inbox/zh-TW
    result_path: results/zh-TW
    webhook: {{url: "{hook}/zh-TW", secret_file: webhook-secret.txt}}
"""

# (arguments, expected exit code, what the step shows); `{hook}` is the webhook receiver's URL.
STEPS: list[tuple[list[str], int, str]] = [
    (["config", "check"], 0, "the effective settings, secrets masked"),
    (
        [
            "batch",
            "create",
            "--name",
            "영수증-2026",
            "--domain",
            "ocr-ko",
            "--language",
            "ko",
            "--long-image",
            "--input",
            "inbox/ko",
            "--result",
            "results/ko",
            "--webhook-url",
            "{hook}/ko",
            "--webhook-secret-file",
            "webhook-secret.txt",
        ],
        0,
        "a General OCR batch for long receipts too, posting results to a webhook",
    ),
    (
        [
            "batch",
            "create",
            "--name",
            "second-korean",
            "--domain",
            "ocr-ko",
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
            "ocr-ja",
            "--input",
            "inbox/ja",
            "--result",
            "inbox/ja/results",
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
            "ocr-ja",
            "--input",
            "inbox/ja",
            "--result",
            "results/ja",
        ],
        2,
        "refused: space and '!' are not allowed in names",
    ),
    (["batch", "list", "--search", "영수"], 0, "search by name"),
    (
        ["batch", "apply", "-f", "batches.yaml", "--dry-run"],
        0,
        "what applying the declared batches would change",
    ),
    (["batch", "apply", "-f", "batches.yaml"], 0, "apply: a Japanese and a Chinese batch are added"),
    (["batch", "apply", "-f", "batches.yaml"], 0, "apply again: nothing changes (idempotent)"),
    (["run", "--once"], 0, "the worker: every input becomes a result or a failure record"),
    (["run", "--once"], 0, "again: everything is done, so no API call is made"),
    (["batch", "list"], 0, "the batches after the run"),
]
_STREAMED = ("run",)  # steps whose output is shown as it comes: the worker's progress


def run_demo(workdir: Path | None, *, engine: DemoEngine = "auto") -> int:
    """Run every step in `workdir` (a temporary directory if None); returns the exit code.
    `engine`: "auto" uses Tesseract when it is installed with its language data.
    SIGTERM ends the demo as Ctrl-C does, stopping what it started on the way out."""
    if threading.current_thread() is not threading.main_thread():
        return _run_demo(workdir, engine)  # signal handlers can only be set in the main thread
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        return _run_demo(workdir, engine)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


def _run_demo(workdir: Path | None, engine: DemoEngine) -> int:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        code = _run(workdir, engine)
        if code == 0:
            click.secho(f"the demo's files are kept in {workdir}", bold=True)
        return code
    with tempfile.TemporaryDirectory(prefix="ocrbatch-demo-") as tmp:
        code = _run(Path(tmp), engine)
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
    for folder in ("control", "inbox", "results", "webhooks"):
        shutil.rmtree(workdir / folder, ignore_errors=True)


def _run(workdir: Path, engine: DemoEngine) -> int:
    started_s = time.monotonic()
    _prepare(workdir)
    count = write_samples(workdir / "inbox")
    click.secho(f"ocrbatch demo in {workdir}: {count} sample documents in inbox/", bold=True)
    if samples.find_font("ko") is None:
        click.secho(
            "no CJK font found: Korean, Japanese and Chinese text is drawn as empty boxes "
            "(install fonts-noto-cjk to see it recognised)",
            fg="yellow",
        )
    use_engine = _choose_engine(engine)
    secret = secrets.token_hex(24)  # the worker signs every chunk with it; the receiver checks
    (workdir / "webhook-secret.txt").write_text(secret + "\n", encoding="utf-8")
    with WebhookReceiver(workdir / "webhooks", secret) as receiver:
        click.secho(f"webhook receiver listening on {receiver.url}", bold=True)
        (workdir / "batches.yaml").write_text(APPLY_FILE.format(hook=receiver.url), encoding="utf-8")
        with _start_service(use_engine) as service:
            try:
                url = _first_line(service)
                service_name = "local OCR engine (Tesseract)" if use_engine else "CLOVA emulator"
                click.secho(f"{service_name} listening on {url}", bold=True)
                (workdir / "ocrbatch.toml").write_text(_config(url, use_engine), encoding="utf-8")
                code, worker_s = _run_steps(workdir, receiver.url)
                if code == 0:
                    print_summary(
                        workdir,
                        service_url=url,
                        engine="tesseract" if use_engine else "emulator",
                        receiver=receiver,
                        total_s=time.monotonic() - started_s,
                        worker_s=worker_s,
                    )
                return code
            finally:
                _stop(service)


def _choose_engine(engine: DemoEngine) -> bool:
    """True to run the Tesseract engine; says why not when "auto" falls back to the emulator."""
    if engine == "emulator":
        return False
    try:
        install = detect_tesseract()
    except EngineUnavailable as exc:
        if engine == "tesseract":
            raise click.ClickException(str(exc)) from None
        click.secho(f"using the CLOVA emulator (synthetic text): {exc}", fg="yellow")
        return False
    missing = missing_languages(install.languages)
    if missing and engine == "auto":
        click.secho(
            f"using the CLOVA emulator (synthetic text): Tesseract has no data for {', '.join(missing)}",
            fg="yellow",
        )
        return False
    return True


def _config(url: str, use_engine: bool) -> str:
    service = "local OCR engine (Tesseract)" if use_engine else "CLOVA emulator"
    domains = "".join(
        DEMO_DOMAIN.format(name=name, url=url, secret=SECRET, cap=DOMAIN_CAP, language=language)
        for name, language in DOMAINS.items()
    )
    return DEMO_CONFIG_HEAD.format(service=service) + domains


def _start_service(use_engine: bool) -> subprocess.Popen[str]:
    cap = str(DOMAIN_CAP * len(DOMAINS))
    if use_engine:
        args = ["engine", "--secret", SECRET, "--max-concurrent-calls", cap]
    else:
        args = ["emulator", "--general-secret", SECRET, "--max-concurrent-calls", cap]
        args += ["--latency-ms", "150", "--latency-jitter-ms", "100", "--error-rate", "0.05"]
    return subprocess.Popen(
        [sys.executable, "-m", "ocrbatch", *args, "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _first_line(process: subprocess.Popen[str]) -> str:
    stdout = process.stdout
    ready = select.select([stdout], [], [], 30)[0] if stdout is not None else []
    line = stdout.readline().strip() if stdout is not None and ready else ""
    if not line.startswith("http://"):
        raise click.ClickException("the OCR service did not start")
    return line


def _run_steps(workdir: Path, hook_url: str) -> tuple[int, float]:
    """Run every step; (exit code, seconds the first worker run took)."""
    worker_s = 0.0
    for number, (template, expected, what) in enumerate(STEPS, start=1):
        args = [arg.replace("{hook}", hook_url) for arg in template]
        click.secho(f"\n[{number}/{len(STEPS)}] {what}", bold=True)
        click.secho("$ ocrbatch " + shlex.join(args), fg="cyan")
        started_s = time.monotonic()
        code = _cli(workdir, args, stream=args[0] in _STREAMED)
        if args[0] == "run" and not worker_s:
            worker_s = time.monotonic() - started_s
        if code != expected:
            click.secho(f"demo failed: exit code {code}, expected {expected}", fg="red", err=True)
            return 1, worker_s
    click.secho(f"\ndemo finished: all {len(STEPS)} steps behaved as expected", bold=True)
    return 0, worker_s


def _cli(workdir: Path, args: list[str], *, stream: bool) -> int:
    """Run one `ocrbatch` command in `workdir`, show its output, return its exit code (killed and
    answered -9 after `STEP_TIMEOUT_S`)."""
    command = [sys.executable, "-m", "ocrbatch", "--config", "ocrbatch.toml", *args]
    if not stream:
        try:
            result = subprocess.run(
                command,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            click.secho(f"the step took longer than {STEP_TIMEOUT_S} s", fg="red", err=True)
            return -9
        sys.stdout.write(result.stdout)
        if result.stderr:
            click.secho(result.stderr.rstrip(), fg="yellow" if result.returncode else None)
        return result.returncode
    with subprocess.Popen(
        command,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    ) as process:
        watchdog = threading.Timer(STEP_TIMEOUT_S, process.kill)
        watchdog.start()
        try:
            for line in process.stdout or ():
                sys.stdout.write(line)
                sys.stdout.flush()
        finally:
            watchdog.cancel()
            if process.poll() is None:  # interrupted: the worker gets its graceful shutdown
                _stop(process)
        return process.wait()


def write_samples(inbox: Path) -> int:
    """The sample documents, one folder per batch; returns how many files were written."""
    korean, japanese, chinese = inbox / "ko", inbox / "ja", inbox / "zh-TW"
    text = samples.SAMPLE_TEXT
    files: dict[Path, bytes] = {
        korean / "invoice-ko.png": samples.encode(samples.text_page(text["ko"], "ko"), "PNG"),
        korean / "invoice-en.jpg": samples.encode(samples.text_page(text["en"], "en"), "JPEG"),
        korean / "price-table.png": samples.encode(samples.table_page(), "PNG"),
        korean / "contract-12-pages.pdf": samples.contract_pdf(12),
        korean / "long-receipt.png": samples.encode(samples.long_receipt(), "PNG"),
        korean / "broken.jpg": b"\xff\xd8\xff\xe0 not really a JPEG",
        korean / "logo.gif": b"GIF89a",
        japanese / "seikyusho.png": samples.encode(samples.text_page(text["ja"], "ja"), "PNG"),
        chinese / "fapiao.png": samples.encode(samples.text_page(text["zh-TW"], "zh-TW"), "PNG"),
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return len(files)
