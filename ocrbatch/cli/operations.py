"""Commands about batches' work rather than their definitions: `status`, `estimate`, `retry-failed`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import click
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from ocrbatch.batches.report import progress_of, read_report
from ocrbatch.batches.store import batch_store_in
from ocrbatch.cli import output as cli_output
from ocrbatch.cli.state import CliState
from ocrbatch.errors import BatchRuleViolation
from ocrbatch.settings import Settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.operations import BatchOperations


@click.command("estimate")
@click.argument("ref")
@click.option(
    "--call-latency-s",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Assumed seconds per API call, for the expected duration.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def estimate_command(state: CliState, ref: str, call_latency_s: float, as_json: bool) -> None:
    """Dry run: what a run of the batch would send, cost and take. Nothing is sent or written."""
    settings = state.settings

    async def go() -> dict[str, Any]:
        async with batch_operations(settings) as operations:
            try:
                return await operations.estimate(ref, call_latency_s=call_latency_s)
            except BatchRuleViolation as exc:
                raise click.UsageError(str(exc)) from None

    figures = asyncio.run(go())
    if as_json:
        cli_output.print_json(figures)
        return
    click.echo(
        f"batch {figures['batch']!r}: {figures['inputs']} inputs "
        f"({figures['done']} done, {figures['failed']} failed, {figures['skipped']} skipped, "
        f"{figures['pending']} pending)"
    )
    click.echo(
        f"  to send: {figures['items']} items, {figures['pages']} pages, "
        f"{figures['billable_units']} billable units, {figures['calls']} API calls"
    )
    if figures["refused"]:
        click.echo(f"  refused without a call: {figures['refused']} (failure records would say why)")
    click.echo(
        f"  expected duration: {figures['expected_duration_s']:.0f} s at {figures['max_concurrent_calls']} "
        f"calls in flight of {figures['call_latency_s']:g} s each"
    )


@click.command("retry-failed")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def retry_failed_command(state: CliState, ref: str, as_json: bool) -> None:
    """Remove the batch's failure records, so the next run sends those items again."""
    settings = state.settings

    async def go() -> tuple[str, list[str]]:
        async with batch_operations(settings) as operations:
            batch, items = await operations.retry_failed(ref)
            return batch.name, items

    name, items = asyncio.run(go())
    if as_json:
        cli_output.print_json({"batch": name, "retrying": items})
    else:
        click.echo(f"batch {name!r}: {len(items)} failed item(s) will be sent again by the next run")


@contextlib.asynccontextmanager
async def batch_operations(settings: Settings) -> AsyncIterator[BatchOperations]:
    """The operations on batches' work, over the settings' storages, for one command."""
    async with StorageFactory(settings.storage) as storages:
        yield BatchOperations(settings, await batch_store_in(settings, storages), storages)


async def batch_statuses(settings: Settings) -> list[dict[str, Any]]:
    """Each batch with its status and the figures of its `_report.json` (None before a first run)."""
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        return [
            {
                "id": stored.batch.id,
                "name": stored.batch.name,
                "status": stored.batch.status,
                "reason": stored.batch.status_reason,
                "report": await read_report(storages, stored.batch),
            }
            for stored in await store.list_batches()
        ]


def _status_table(entries: list[dict[str, Any]]) -> Table:
    table = Table("Batch", "Status", "Progress", "Done", "Failed", "Skipped", "Rate", "ETA")
    for entry in entries:
        report = entry["report"]
        status = entry["status"] + (f": {entry['reason']}" if entry["reason"] else "")
        if report is None:
            table.add_row(entry["name"], status, "-", "-", "-", "-", "-", "-")
            continue
        progress = progress_of(report)
        rate, eta = progress.rate_per_s, progress.to_json()["eta_s"]
        table.add_row(
            entry["name"],
            status,
            ProgressBar(total=1000, completed=round(progress.fraction * 1000), width=30),
            f"{progress.done}/{progress.total}",
            str(report["failed"]),
            str(report["skipped"]),
            f"{rate:.1f}/s" if rate else "-",
            f"{eta:.0f} s" if eta else "-",
        )
    return table


@click.command("status")
@click.option("--watch", is_flag=True, help="Keep the view up to date until interrupted.")
@click.option(
    "--interval-s", default=2.0, show_default=True, type=click.FloatRange(min=0.2), help="Refresh period."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status_command(state: CliState, watch: bool, interval_s: float, as_json: bool) -> None:
    """Progress of every batch: done/total, failures, rate and ETA, from their reports."""
    settings = state.settings
    entries = asyncio.run(batch_statuses(settings))
    if as_json:
        cli_output.print_json(entries)
        return
    console = cli_output.console()
    if not watch:
        console.print(_status_table(entries) if entries else "no batches")
        return
    with Live(_status_table(entries), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval_s)
                live.update(_status_table(asyncio.run(batch_statuses(settings))))
        except KeyboardInterrupt:
            pass
