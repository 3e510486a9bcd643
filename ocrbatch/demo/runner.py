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

import os
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
from cryptography.fernet import Fernet

from ocrbatch.demo import samples
from ocrbatch.demo.console import api_config, run_console
from ocrbatch.demo.processes import stop_process
from ocrbatch.demo.script import (
    ADMIN_TOKEN,
    DOMAIN_CAP,
    DOMAINS,
    MARKER,
    SEALING_KEY_FILE,
    SECRET,
    STEPS,
    apply_file,
    demo_config,
    write_samples,
)
from ocrbatch.demo.summary import print_summary
from ocrbatch.demo.webhooks import WebhookReceiver
from ocrbatch.engine.tesseract import EngineUnavailable, detect_tesseract, missing_languages

DemoEngine = Literal["auto", "tesseract", "emulator"]
STEP_TIMEOUT_S = 180
_STREAMED = ("run",)  # steps whose output is shown as it comes: the worker's progress


def run_demo(workdir: Path | None, *, engine: DemoEngine = "auto", keep_console: bool = False) -> int:
    """Run every step in `workdir` (a temporary directory if None); returns the exit code.
    `engine`: "auto" uses Tesseract when it is installed with its language data. It ends with
    the web console on the demo's batches, kept up until Ctrl-C with `keep_console`.
    SIGTERM ends the demo as Ctrl-C does, stopping what it started on the way out."""
    if threading.current_thread() is not threading.main_thread():
        return _run_demo(workdir, engine, keep_console)  # signal handlers can only be set in the main thread
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        return _run_demo(workdir, engine, keep_console)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


def _run_demo(workdir: Path | None, engine: DemoEngine, keep_console: bool) -> int:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        code = _run(workdir, engine, keep_console)
        if code == 0:
            click.secho(f"the demo's files are kept in {workdir}", bold=True)
        return code
    with tempfile.TemporaryDirectory(prefix="ocrbatch-demo-") as tmp:
        code = _run(Path(tmp), engine, keep_console)
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


def _run(workdir: Path, engine: DemoEngine, keep_console: bool) -> int:
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
    _write_sealing_key(workdir / SEALING_KEY_FILE)
    secret = secrets.token_hex(24)  # the worker signs every chunk with it; the receiver checks
    (workdir / "webhook-secret.txt").write_text(secret + "\n", encoding="utf-8")
    with WebhookReceiver(workdir / "webhooks", secret) as receiver:
        click.secho(f"webhook receiver listening on {receiver.url}", bold=True)
        (workdir / "batches.yaml").write_text(apply_file(receiver.url), encoding="utf-8")
        with _start_service(use_engine) as service:
            try:
                url = _first_line(service)
                service_name = "local OCR engine (Tesseract)" if use_engine else "CLOVA emulator"
                click.secho(f"{service_name} listening on {url}", bold=True)
                config = demo_config(url, use_engine) + api_config(workdir)
                (workdir / "ocrbatch.toml").write_text(config, encoding="utf-8")
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
                    code = run_console(workdir, keep=keep_console)
                return code
            finally:
                stop_process(service)


def _write_sealing_key(path: Path) -> None:
    """A new key for this run (the demo's batch documents seal their webhook secrets with it),
    readable by its owner only."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as key_file:
        key_file.write(Fernet.generate_key().decode("ascii") + "\n")


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


def _start_service(use_engine: bool) -> subprocess.Popen[str]:
    cap = str(DOMAIN_CAP * len(DOMAINS))
    if use_engine:
        args = ["engine", "--secret", SECRET, "--max-concurrent-calls", cap]
    else:
        args = ["emulator", "--general-secret", SECRET, "--max-concurrent-calls", cap]
        args += ["--latency-ms", "150", "--latency-jitter-ms", "100", "--error-rate", "0.05"]
    return subprocess.Popen(
        [sys.executable, "-m", "ocrbatch", *args, "--port", "0"],
        env={**os.environ, "OCRBATCH_EMULATOR_ADMIN_TOKEN": ADMIN_TOKEN},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


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
                stop_process(process)
        return process.wait()
