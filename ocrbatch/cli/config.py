"""`ocrbatch config`: the settings as the process sees them."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from ocrbatch.cli import output as cli_output
from ocrbatch.cli.state import CliState
from ocrbatch.service.lifecycle import probe_capabilities


@click.group()
def config() -> None:
    """Inspect the settings."""


@config.command("check")
@click.option(
    "--probe/--no-probe",
    default=True,
    show_default=True,
    help="Probe what the storage endpoints can do (a small object written and removed in the control"
    " path and in result locations) and show the coordination backend.",
)
@click.pass_obj
def config_check(state: CliState, probe: bool) -> None:
    """Validate the settings and print them, secrets masked, with what the stores were found to do."""
    settings = state.settings
    source = str(state.config_path) if state.config_path else "no config file"
    click.echo(f"settings are valid ({source}, OCRBATCH_* environment applied)", err=True)
    found = asyncio.run(probe_capabilities(settings)) if probe else None
    if found is not None:
        for endpoint in found["storage"]:
            click.echo(_capability_line(endpoint), err=True)
        coordination = found["coordination"]
        click.echo(f"coordination: {coordination['backend']} at {coordination['at']}", err=True)
    cli_output.print_json({"settings": settings.masked(), "capabilities": found})


def _capability_line(endpoint: dict[str, Any]) -> str:
    def yes_no(value: object) -> str:
        return "unknown" if value is None else "yes" if value else "NO"

    return (
        f"storage {endpoint['endpoint']}: listing {endpoint['list_api']}, conditional writes"
        f" {yes_no(endpoint['conditional_writes'])} ({endpoint['conditional_writes_source']}),"
        f" user metadata {yes_no(endpoint['user_metadata'])}"
    )
