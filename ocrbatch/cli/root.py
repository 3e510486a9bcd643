"""The `ocrbatch` command line.

Exit codes: 0 success, 1 an operation failed (storage unreachable, concurrent change),
2 bad input (usage, invalid settings, a batch rule, an unknown batch). Errors are one line on
stderr; nothing is written when a command fails.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from ocrbatch.cli.state import CliState
from ocrbatch.errors import (
    BatchNotFound,
    BatchRuleViolation,
    ConfigError,
    OcrBatchError,
)

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
_BAD_INPUT = (BatchRuleViolation, BatchNotFound, ConfigError)


# Each command's module, imported when the command runs (or `--help` lists them): `ocrbatch run`
# then loads neither the console nor the emulator, the engine or the demo.
COMMANDS = {
    "config": "ocrbatch.cli.config:config",
    "batch": "ocrbatch.cli.batches:batch",
    "run": "ocrbatch.cli.worker:run_command",
    "serve": "ocrbatch.cli.serve:serve_command",
    "status": "ocrbatch.cli.operations:status_command",
    "estimate": "ocrbatch.cli.operations:estimate_command",
    "retry-failed": "ocrbatch.cli.operations:retry_failed_command",
    "export": "ocrbatch.cli.export:export_command",
    "emulator": "ocrbatch.cli.servers:emulator_command",
    "engine": "ocrbatch.cli.servers:engine_command",
    "demo": "ocrbatch.cli.demo:demo_command",
}


class LazyGroup(click.Group):
    """A group whose commands are `COMMANDS`, each imported on first use (click's documented
    pattern for lazily loaded subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
