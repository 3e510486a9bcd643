"""`ocrbatch batch`: define, list, search, edit, delete and apply batches (the console's Batch list)."""

from __future__ import annotations

import asyncio
import sys
import tomllib
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
import structlog
import yaml

from ocrbatch.batches.broken import BrokenBatch, BrokenBatchDocument
from ocrbatch.batches.spec import Batch, BatchStatus, parse_spec
from ocrbatch.batches.store import BatchStore, open_batch_store
from ocrbatch.cli import output as cli_output
from ocrbatch.cli.state import CliState
from ocrbatch.errors import ConfigError
from ocrbatch.types import LANGUAGES

T = TypeVar("T")
log = structlog.get_logger("ocrbatch.cli")


@click.group()
def batch() -> None:
    """Define, list, search, edit and delete batches."""


def _spec_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The console's create form as options (all optional here; `create` checks what is required)."""
    options = [
        click.option("--name", help="1-50 characters; unique."),
        click.option("--domain", help="Name of a configured OCR domain."),
        click.option("--language", type=click.Choice(LANGUAGES), help="General domains only."),
        click.option("--table-extraction/--no-table-extraction", default=None, help="General domains only."),
        click.option("--long-image/--no-long-image", default=None, help="General only; may cost more."),
        click.option(
            "--template-id", "template_ids", type=int, multiple=True, help="Template domains; repeatable."
        ),
        click.option(
            "--file-format",
            type=click.Choice(["json", "xls", "pdf"]),
            help="Result file format: json, xls (an Excel workbook) or pdf (a searchable PDF and its JSON).",
        ),
        click.option("--input", "input_path", help="s3://bucket/prefix or a local directory."),
        click.option("--result", "result_path", help="s3://bucket/prefix or a local directory."),
        click.option("--webhook-url", help="http(s) URL that receives results in chunks."),
        click.option(
            "--webhook-secret-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="File holding the webhook signing secret.",
        ),
        click.option(
            "--webhook-locations-only/--webhook-full-results",
            default=None,
            help="Send only result locations, not OCR results, to the webhook.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _spec_changes(options: Mapping[str, Any]) -> dict[str, Any]:
    """The spec fields given on the command line (None means "not given")."""
    changes = {
        key: value
        for key, value in options.items()
        if key
        in (
            "name",
            "domain",
            "language",
            "table_extraction",
            "long_image",
            "file_format",
            "input_path",
            "result_path",
        )
        and value is not None
    }
    if options.get("template_ids"):
        changes["template_ids"] = list(options["template_ids"])
    webhook: dict[str, Any] = {}
    if options.get("webhook_url") is not None:
        webhook["url"] = options["webhook_url"]
    if options.get("webhook_secret_file") is not None:
        webhook["secret_file"] = str(options["webhook_secret_file"])
    if options.get("webhook_locations_only") is not None:
        webhook["locations_only"] = options["webhook_locations_only"]
    if webhook:
        changes["webhook"] = webhook
    return changes


def _show(item_batch: Any, as_json: bool, message: str | None = None) -> None:
    if as_json:
        cli_output.print_json(cli_output.batch_json(item_batch))
        return
    if message:
        click.echo(message)
    cli_output.console().print(cli_output.batch_table(item_batch))


def _with_store(state: CliState, action: Callable[[BatchStore], Coroutine[Any, Any, T]]) -> T:
    settings = state.settings

    async def go() -> T:
        async with open_batch_store(settings) as store:
            return await action(store)

    return asyncio.run(go())


@batch.command("create")
@_spec_options
@click.pass_obj
def batch_create(state: CliState, /, *, as_json: bool, **options: Any) -> None:
    """Create a batch (the console's "Create batch")."""
    spec = parse_spec(_spec_changes(options))
    created = _with_store(state, lambda store: store.create(spec))
    log.info("batch.created", batch_id=created.batch.id, name=created.batch.name)
    _show(created.batch, as_json, f"created batch {created.batch.name!r} ({created.batch.id})")


@batch.command("list")
@click.option("--search", help="Only batches whose name contains this text.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def batch_list(state: CliState, search: str | None, as_json: bool) -> None:
    """List batches, optionally searching by name; documents that are not valid batches are listed
    as broken, with the reason."""
    catalog = _with_store(state, lambda store: store.catalog(search))
    if as_json:
        listed = [cli_output.batch_json(item.batch) for item in catalog.batches]
        cli_output.print_json(listed + [broken.as_dict() for broken in catalog.broken])
    elif not catalog.batches and not catalog.broken:
        click.echo("no batches" + (f" match {search!r}" if search else ""))
    else:
        cli_output.console().print(cli_output.batches_table(catalog.batches, catalog.broken))


@batch.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def batch_show(state: CliState, ref: str, as_json: bool) -> None:
    """Show one batch by id or name."""
    item = _with_store(state, lambda store: store.get(ref))
    _show(item.batch, as_json)


@batch.command("edit")
@click.argument("ref")
@_spec_options
@click.option("--no-webhook", is_flag=True, help="Remove the webhook.")
@click.option("--pause", "status", flag_value="paused", default=None, help="Stop processing the batch.")
@click.option("--resume", "status", flag_value="available", help="Resume a paused or failed batch.")
@click.option("--if-match", help="Only edit if the batch document still has this etag.")
@click.pass_obj
def batch_edit(
    state: CliState,
    /,
    ref: str,
    *,
    as_json: bool,
    no_webhook: bool,
    status: BatchStatus | None,
    if_match: str | None,
    **options: Any,
) -> None:
    """Change the given fields of a batch; the others keep their values."""
    changes = _spec_changes(options)
    if no_webhook:
        if "webhook" in changes:
            raise click.UsageError("--no-webhook cannot be combined with other --webhook options")
        changes["webhook"] = None
    if not changes and status is None:
        raise click.UsageError("nothing to change: give at least one option")
    updated = _with_store(state, lambda store: store.update(ref, changes, if_match=if_match, status=status))
    log.info("batch.edited", batch_id=updated.batch.id, fields=sorted(changes))
    _show(updated.batch, as_json, f"updated batch {updated.batch.name!r} ({updated.batch.id})")


@batch.command("delete")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def batch_delete(state: CliState, ref: str, yes: bool, as_json: bool) -> None:
    """Delete a batch definition (a broken one too); its results are kept."""
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("refusing to delete without --yes (no terminal to confirm on)")
        click.confirm(f"Delete batch {ref!r}? Its results are kept.", abort=True)

    async def delete(store: BatchStore) -> Batch | BrokenBatch:
        try:
            return await store.delete(ref)
        except BrokenBatchDocument as refused:
            await store.delete_broken(refused.broken)
            return refused.broken

    deleted = _with_store(state, delete)
    if isinstance(deleted, BrokenBatch):
        log.info("batch.deleted", batch_id=deleted.batch_id, key=deleted.key, broken=True)
        if as_json:
            cli_output.print_json(deleted.as_dict())
        else:
            click.echo(f"deleted the broken batch document {deleted.document}")
        return
    log.info("batch.deleted", batch_id=deleted.id, name=deleted.name)
    if as_json:
        cli_output.print_json(cli_output.batch_json(deleted))
    else:
        click.echo(f"deleted batch {deleted.name!r} ({deleted.id}); its results were kept")


@batch.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--prune", is_flag=True, help="Delete batches that the file does not declare.")
@click.option("--dry-run", is_flag=True, help="Show what would change without writing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def batch_apply(state: CliState, path: Path, prune: bool, dry_run: bool, as_json: bool) -> None:
    """Declare batches from a TOML or YAML file (idempotent: matched by name)."""
    specs = [parse_spec(entry) for entry in read_batch_file(path)]
    changes = _with_store(state, lambda store: store.apply(specs, prune=prune, dry_run=dry_run))
    if not dry_run:
        log.info(
            "batch.applied", file=str(path), changes=[(change.action, change.name) for change in changes]
        )
    if as_json:
        cli_output.print_json([vars(change) for change in changes])
    else:
        cli_output.console().print(cli_output.plan_table(changes, dry_run=dry_run))


def _parse_problem(error: Exception) -> str:
    """What the parser found wrong, and where, without the text it quotes: the line may hold a
    webhook secret. (TOML's messages give only the position; YAML's quote the line.)"""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{error.problem or error.context or 'invalid YAML'}{where}"
    if isinstance(error, yaml.YAMLError):
        return "invalid YAML"
    return " ".join(str(error).split())


def read_batch_file(path: Path) -> list[dict[str, Any]]:
    """The batches of an apply file: TOML `[[batch]]` tables, or a YAML `batches:` list.

    The key must be there and be the only one: a misspelt key must not read as "no batches",
    which `--prune` would turn into deleting every batch.
    """
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: use a .toml, .yaml or .yml file")
    key, shape = (
        ("batch", "[[batch]] tables") if suffix == ".toml" else ("batches", "a 'batches:' list of mappings")
    )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data: Any = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be parsed: {_parse_problem(exc)}") from None
    entries = data.get(key) if isinstance(data, dict) and set(data) == {key} else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError(f"{path}: expected {shape} and nothing else")
    return entries
