"""`ocrbatch config`: the settings as the process sees them."""

from __future__ import annotations

import click

from ocrbatch.cli import output as cli_output
from ocrbatch.cli.state import CliState


@click.group()
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
