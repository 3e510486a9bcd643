"""The demo's last step: `ocrbatch serve` on the demo's batches, with the web console.

It starts serve (the API on a free loopback port, batches open to the demo's directory, a token
made for the run and written to a file only this user can read), logs in to the console over
HTTP as a browser does, opens its main pages on the demo's data and prints how long the server
took for each (`Server-Timing`), then the console's URL and where the login token is. With
`keep`, serve stays up until Ctrl-C; otherwise it is stopped. serve's log goes to `serve.log`.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Final

import click

from ocrbatch.demo.processes import stop_process

START_TIMEOUT_S: Final = 30
SERVE_LOG: Final = "serve.log"
_LISTENING = re.compile(r"console\.listening\s+url=(\S+)")
_TOKEN_FILE = re.compile(r"API token .* in (\S+)")
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_BATCH_ID = re.compile(r'data-batch-id="([a-z0-9]+)"')
_RESULT_LINK = re.compile(r'class="result-link" href="([^"]+)"')
_FAILURE_LINK = re.compile(r'class="failure-link" href="([^"]+)"')


def api_config(workdir: Path) -> str:
    """The `[api]` section serve runs with: loopback, a free port, the demo's directory open."""
    return f'\n[api]\nhost = "127.0.0.1"\nport = 0\nallowed_locations = [{json.dumps(str(workdir))}]\n'


def run_console(workdir: Path, *, keep: bool) -> int:
    """Serve the console on the demo's data, check it, print how to reach it; 0 when it answered."""
    log_path = workdir / SERVE_LOG
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "ocrbatch", "--config", "ocrbatch.toml", "serve"],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_for(log_path, _LISTENING, process, "the console did not start")
        token_file = Path(_wait_for(log_path, _TOKEN_FILE, process, "serve did not say where its token is"))
        timings = ConsoleClient(url, token_file.read_text(encoding="utf-8").strip()).visit_pages()
        click.secho("\nconsole pages on the demo's data (time on the server, Server-Timing)", bold=True)
        for page, duration_ms in timings:
            click.echo(f"  {page:<28} {duration_ms:7.1f} ms")
        click.secho(f"\nconsole: {url}", bold=True)
        click.echo(f"  log in with the API token in {token_file} (for example: cat {token_file})")
        if not keep:
            click.echo("  serve is stopped now; `ocrbatch demo --workdir DIR --keep-console` keeps it up")
            return 0
        click.echo("  serve keeps running; press Ctrl-C to stop it")
        try:
            return process.wait()
        except KeyboardInterrupt:
            click.echo("\nstopping serve")
            return 0
    finally:
        stop_process(process)


class ConsoleClient:
    """The console as a browser sees it: cookies kept, the CSRF token taken from each page."""

    def __init__(self, url: str, token: str) -> None:
        self._base = url.rstrip("/").removesuffix("/console")
        self._token = token
        jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def visit_pages(self) -> list[tuple[str, float]]:
        """Log in, then open the list, each batch's page, a failure and a result; (page, ms) each."""
        login, _ = self.get("/console/login")
        csrf = _CSRF.search(login)
        if csrf is None:
            raise click.ClickException("the console's login page has no form token")
        listing, list_ms = self.post("/console/login", {"token": self._token, "csrf": csrf.group(1)})
        if 'id="batch-table"' not in listing:
            raise click.ClickException("the console did not accept the demo's API token")
        timings = [("batch list", list_ms)]
        for batch_id in _BATCH_ID.findall(listing):
            _, page_ms = self.get(f"/console/batches/{batch_id}")
            timings.append((f"batch page {batch_id[:8]}", page_ms))
            results, results_ms = self.get(f"/console/batches/{batch_id}/results")
            failures, failures_ms = self.get(f"/console/batches/{batch_id}/failures")
            timings += [("  results", results_ms), ("  failures", failures_ms)]
            for name, links in (("  result viewer", _RESULT_LINK), ("  a failure", _FAILURE_LINK)):
                found = links.search(results if links is _RESULT_LINK else failures)
                if found:
                    timings.append((name, self.get(found.group(1).replace("&amp;", "&"))[1]))
        return timings

    def get(self, path: str) -> tuple[str, float]:
        return self._open(urllib.request.Request(self._base + path))  # noqa: S310  (loopback)

    def post(self, path: str, form: dict[str, str]) -> tuple[str, float]:
        body = urllib.parse.urlencode(form).encode()
        return self._open(urllib.request.Request(self._base + path, data=body, method="POST"))  # noqa: S310

    def _open(self, request: urllib.request.Request) -> tuple[str, float]:
        with self._opener.open(request, timeout=30) as response:
            text = response.read().decode("utf-8")
            return text, _server_ms(response.headers.get("Server-Timing", ""))


def _server_ms(header: str) -> float:
    found = re.search(r"dur=([0-9.]+)", header)
    return float(found.group(1)) if found else float("nan")


def _wait_for(
    log_path: Path,
    pattern: re.Pattern[str],
    process: subprocess.Popen[bytes],
    failure: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    deadline_s = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline_s:
        found = pattern.search(log_path.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        sleep(0.1)
    raise click.ClickException(f"{failure} within {START_TIMEOUT_S} s; see {log_path}")
