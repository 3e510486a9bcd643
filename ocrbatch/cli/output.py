"""How the CLI shows batches and plans: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from ocrbatch.batches.apply import PlannedChange
from ocrbatch.batches.broken import BrokenBatch
from ocrbatch.batches.spec import Batch
from ocrbatch.batches.store import StoredBatch
from ocrbatch.locations import masked_url


def console() -> Console:
    """A console for stdout; wide when piped, so tables are not folded at 80 columns."""
    width = None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    return Console(width=width, highlight=False, soft_wrap=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def batch_json(batch: Batch) -> dict[str, Any]:
    """The batch as JSON, webhook secret masked."""
    return batch.model_dump(mode="json")


def domain_info(batch: Batch) -> str:
    """The console's "Domain information" column: recognition and extraction settings."""
    if batch.template_ids is not None:
        parts = [f"templates {','.join(str(template_id) for template_id in batch.template_ids)}"]
    else:
        parts = [f"lang {batch.language}", f"tables {'on' if batch.table_extraction else 'off'}"]
        parts.append(f"long images {'on' if batch.long_image else 'off'}")
    parts.append(batch.file_format)
    return ", ".join(parts)


def status_text(batch: Batch) -> str:
    return f"{batch.status}: {batch.status_reason}" if batch.status_reason else batch.status


def batches_table(items: Iterable[StoredBatch], broken: Iterable[BrokenBatch] = ()) -> Table:
    """The console's batch list; a broken document is a row of its id, the name it states, and
    status `broken` with the reason (which names the document)."""
    table = Table("ID", "Name", "Domain", "Domain information", "Input", "Result", "Webhook", "Status")
    for column in table.columns:
        column.overflow = "fold"  # paths and URLs are shown whole, never cut with an ellipsis
    for item in items:
        batch = item.batch
        table.add_row(
            batch.id,
            batch.name,
            batch.domain,
            domain_info(batch),
            batch.input_path,
            batch.result_path,
            masked_url(batch.webhook.url) if batch.webhook else "-",
            status_text(batch),
        )
    for document in broken:
        table.add_row(
            document.batch_id, document.name or "-", "-", "-", "-", "-", "-", f"broken: {document.message}"
        )
    return table


def batch_table(batch: Batch) -> Table:
    table = Table("Field", "Value", show_header=False)
    for field, value in batch_json(batch).items():
        table.add_row(field, _cell(value))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items() if item is not None)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return "-" if value is None else str(value)


def plan_table(changes: Iterable[PlannedChange], *, dry_run: bool) -> Table:
    table = Table("Action" + (" (dry run)" if dry_run else ""), "Name", "ID")
    for change in changes:
        table.add_row(change.action, change.name, change.batch_id)
    return table
