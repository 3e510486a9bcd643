"""The `ocrbatch` command line.

Exit codes: 0 success, 1 an operation failed (storage unreachable, concurrent change),
2 bad input (usage, invalid settings, a batch rule, an unknown batch). Errors are one line on
stderr; nothing is written when a command fails.
"""

from __future__ import annotations

import asyncio
import sys
import tomllib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
import structlog
import yaml

from ocrbatch.batches.spec import BatchStatus, parse_spec
from ocrbatch.batches.store import BatchStore, open_batch_store
from ocrbatch.cli import output as cli_output
from ocrbatch.cli.operations import estimate_command, retry_failed_command, status_command
from ocrbatch.cli.servers import emulator_command, engine_command
from ocrbatch.demo.runner import run_demo
from ocrbatch.errors import (
    BatchNotFound,
    BatchRuleViolation,
    ConfigError,
    OcrBatchError,
)
from ocrbatch.logs import configure_logging
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.settings import Settings, load_settings

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
_BAD_INPUT = (BatchRuleViolation, BatchNotFound, ConfigError)
T = TypeVar("T")

log = structlog.get_logger("ocrbatch.cli.root")


@dataclass
class CliState:
    """Per-invocation state: settings are loaded once, on first use, and passed down."""

    config_path: Path | None
    log_stream: TextIO | None = None  # stderr when None (resolved at use); the worker logs to stdout
    _settings: Settings | None = field(default=None, init=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            settings = load_settings(self.config_path)
            configure_logging(
                level=settings.logging.level,
                output_format=settings.logging.format,
                stream=self.log_stream or sys.stderr,
            ).add(settings.secret_values())
            self._settings = settings
        return self._settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="OCRBATCH_CONFIG",
    help="TOML settings file (also OCRBATCH_CONFIG); OCRBATCH_* variables override it.",
)
@click.version_option(package_name="ocrbatch")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """ocrbatch: OCR every image and PDF in object storage through a CLOVA OCR compatible API."""
    ctx.obj = CliState(config_path)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps ocrbatch errors to a one-line message and an exit code."""
    try:
        # Without standalone mode click returns the code of ctx.exit(n) instead of exiting.
        code = cli.main(args=argv, prog_name="ocrbatch", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILURE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT if isinstance(exc, click.UsageError) else exc.exit_code)
    except _BAD_INPUT as exc:
        _fail(exc, EXIT_BAD_INPUT)
    except OcrBatchError as exc:
        _fail(exc, EXIT_FAILURE)
    if isinstance(code, int) and code:
        sys.exit(code)


def _fail(exc: Exception, code: int) -> None:
    click.echo("error: " + " ".join(str(exc).split()), err=True)
    sys.exit(code)


# -- config ---------------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Inspect the settings."""


@config.command("check")
@click.pass_obj
def config_check(state: CliState) -> None:
    """Validate the settings and print them, secrets masked."""
    settings = state.settings
    source = str(state.config_path) if state.config_path else "no config file"
    click.echo(f"settings are valid ({source}, OCRBATCH_* environment applied):", err=True)
    cli_output.print_json(settings.masked())


# -- batch ----------------------------------------------------------------------------------


@cli.group()
def batch() -> None:
    """Define, list, search, edit and delete batches."""


def _spec_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The console's create form as options (all optional here; `create` checks what is required)."""
    options = [
        click.option("--name", help="1-50 characters; unique."),
        click.option("--domain", help="Name of a configured OCR domain."),
        click.option("--language", type=click.Choice(["ko", "ja", "zh-TW"]), help="General domains only."),
        click.option("--table-extraction/--no-table-extraction", default=None, help="General domains only."),
        click.option("--long-image/--no-long-image", default=None, help="General only; may cost more."),
        click.option(
            "--template-id", "template_ids", type=int, multiple=True, help="Template domains; repeatable."
        ),
        click.option("--file-format", type=click.Choice(["json", "xls"]), help="Result file format."),
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
    """List batches, optionally searching by name."""
    items = _with_store(state, lambda store: store.list_batches(search))
    if as_json:
        cli_output.print_json([cli_output.batch_json(item.batch) for item in items])
    elif not items:
        click.echo("no batches" + (f" match {search!r}" if search else ""))
    else:
        cli_output.console().print(cli_output.batches_table(items))


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
    """Delete a batch definition; its results are kept."""
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("refusing to delete without --yes (no terminal to confirm on)")
        click.confirm(f"Delete batch {ref!r}? Its results are kept.", abort=True)
    deleted = _with_store(state, lambda store: store.delete(ref))
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
        raise ConfigError(f"{path} cannot be parsed: {' '.join(str(exc).split())}") from None
    entries = data.get(key) if isinstance(data, dict) and set(data) == {key} else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError(f"{path}: expected {shape} and nothing else")
    return entries


# -- run ----------------------------------------------------------------------------------------


@cli.command("run")
@click.option(
    "--once", is_flag=True, help="Process what is pending now and exit (1 if a batch ended in error)."
)
@click.pass_obj
def run_command(state: CliState, once: bool) -> None:
    """Run the worker: OCR every pending input of every batch, re-discovering every poll interval."""
    state.log_stream = sys.stdout
    sys.exit(asyncio.run(run_worker(state.settings, once=once)))


@cli.command("serve")
@click.pass_obj
def serve_command(state: CliState) -> None:
    """Run the worker and the HTTP API (batches, status, health) until stopped."""
    state.log_stream = sys.stdout
    sys.exit(asyncio.run(run_worker(state.settings, once=False, serve=True)))


# -- demo -----------------------------------------------------------------------------------


@cli.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), help="Keep the demo files here.")
def demo_command(workdir: Path | None) -> None:
    """Run the embedded demo: no cloud account, no Docker."""
    sys.exit(run_demo(workdir))


cli.add_command(emulator_command)
cli.add_command(engine_command)
cli.add_command(estimate_command)
cli.add_command(retry_failed_command)
cli.add_command(status_command)
