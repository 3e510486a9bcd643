"""`ocrbatch run`: the worker alone (`serve.py` adds the HTTP API)."""

from __future__ import annotations

import asyncio
import sys

import click

from ocrbatch.cli.state import CliState
from ocrbatch.service.lifecycle import run_worker


@click.command("run")
@click.option(
    "--once", is_flag=True, help="Process what is pending now and exit (1 if a batch ended in error)."
)
@click.pass_obj
def run_command(state: CliState, once: bool) -> None:
    """Run the worker: OCR every pending input of every batch, re-discovering every poll interval."""
    state.log_stream = sys.stdout
    sys.exit(asyncio.run(run_worker(state.settings, once=once)))
