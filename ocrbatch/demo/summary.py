"""The demo's closing summary: per batch its outcomes and where its results are, the webhook
chunks that arrived, a line of the text recognised in each document, the OCR service's figures,
and how long it all took. Reads only what the run left on disk and the service's statistics."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import click

from ocrbatch.demo.script import ADMIN_TOKEN
from ocrbatch.demo.webhooks import WebhookReceiver

_RESULT_KINDS = {".json": "JSON", ".xlsx": "Excel", ".pdf": "searchable PDF"}
_PREVIEW_CHARS = 70


def print_summary(
    workdir: Path,
    *,
    service_url: str,
    engine: str,
    receiver: WebhookReceiver,
    total_s: float,
    worker_s: float,
) -> None:
    stats_url = service_url + "/_emulator/stats"  # http on loopback: the demo started it
    request = urllib.request.Request(stats_url, headers={"X-OCR-ADMIN-TOKEN": ADMIN_TOKEN})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (loopback)
        stats: dict[str, Any] = json.load(response)
    click.secho("\nsummary", bold=True)
    items = 0
    for report_path in sorted((workdir / "results").glob("*/_report.json")):
        items += _batch_summary(workdir, report_path)
    _webhook_summary(workdir, receiver)
    general = stats["domains"]["general"]
    service = "local OCR engine (Tesseract)" if engine == "tesseract" else "CLOVA emulator (synthetic text)"
    click.echo(
        f"  {service}: {stats['calls']} calls, answers {stats['answers']}, "
        f"peak {general['peak_in_flight']} in flight of {general['max_concurrent_calls']}, "
        f"recognised twice: {len(stats['recognised_more_than_once'])}"
    )
    if stats["engine"]["name"] == "tesseract":
        engine_stats = stats["engine"]
        click.echo(
            f"    {engine_stats['pages']} pages recognised by {engine_stats['version']}, at most "
            f"{engine_stats['peak_running']} at once on {engine_stats['processes']} processes"
        )
    click.secho(
        f"  {_count(items, 'item')} in {total_s:.0f} s in all; the worker's run took {worker_s:.1f} s",
        bold=True,
    )


def _batch_summary(workdir: Path, report_path: Path) -> int:
    """Print one batch's outcomes, results and failures; returns its number of items."""
    folder = report_path.parent
    report = json.loads(report_path.read_text(encoding="utf-8"))
    click.echo(
        f"  {report['batch']}: {_count(report['inputs'], 'item')}: {report['succeeded']} succeeded, "
        f"{report['failed']} failed, {report['skipped']} skipped, {report['pending']} pending"
    )
    for suffix, kind in _RESULT_KINDS.items():
        results = sorted(path for path in folder.glob(f"*{suffix}") if not path.name.startswith("_"))
        if results:
            names = ", ".join(path.name for path in results)
            click.echo(f"    {kind} results in {folder.relative_to(workdir)}/: {names}")
    for failure in sorted((folder / "_failed").glob("**/*.json")):
        record = json.loads(failure.read_text(encoding="utf-8"))
        click.echo(f"    failure record {failure.relative_to(workdir)}: {record['message']}")
    return int(report["inputs"])


def _webhook_summary(workdir: Path, receiver: WebhookReceiver) -> None:
    chunks = receiver.chunks
    items = [item for chunk in chunks for item in chunk.items]
    refused = f", {receiver.refused} refused" if receiver.refused else ""
    click.echo(
        f"  webhooks: {_count(len(chunks), 'signed chunk')} with {_count(len(items), 'item')}{refused}, "
        f"saved in {receiver.folder.relative_to(workdir)}/"
    )
    for chunk in chunks:
        click.echo(
            f"    {chunk.path.relative_to(workdir)} ({chunk.batch_name}, {_count(len(chunk.items), 'item')})"
        )
    click.echo("  recognised text, the first line of each document (from the webhook payloads):")
    for item in sorted(items, key=lambda item: str(item.get("key"))):
        click.echo(f"    {item.get('key')}: {first_line(item.get('result')) or '-'}")


def first_line(result: Any) -> str:
    """The words of the first line of the first page of a CLOVA result, shortened."""
    if not isinstance(result, dict) or not result.get("images"):
        return ""
    words = []
    for field in result["images"][0].get("fields") or []:
        words.append(str(field.get("inferText", "")))
        if field.get("lineBreak"):
            break
    line = " ".join(words)
    return line if len(line) <= _PREVIEW_CHARS else line[: _PREVIEW_CHARS - 1] + "…"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
