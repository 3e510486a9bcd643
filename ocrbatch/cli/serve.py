"""`ocrbatch serve`: the worker and the HTTP API with the console."""

from __future__ import annotations

import asyncio
import sys

import click
from pydantic import SecretStr

from ocrbatch.cli.state import CliState
from ocrbatch.cli.tokens import new_token, write_token_file
from ocrbatch.logs import learn_secrets
from ocrbatch.service.access import check_bind
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.service.serving import start_api


@click.command("serve")
@click.pass_obj
def serve_command(state: CliState) -> None:
    """Run the worker and the HTTP API (batches, status, health) until stopped. Without an
    api.token, a new one is made for this run and written to a file only this user can read."""
    state.log_stream = sys.stdout
    settings = state.settings
    check_bind(settings.api.host, settings.api.token)  # a token made here is for loopback only
    if settings.api.token is None:
        token = new_token()
        learn_secrets([token])
        token_file = write_token_file(token, prefix="ocrbatch-api-")
        sys.stderr.write(f"API token (Authorization: Bearer <token>) for this run in {token_file}\n")
        settings = settings.model_copy(
            update={"api": settings.api.model_copy(update={"token": SecretStr(token)})}
        )
    sys.exit(asyncio.run(run_worker(settings, once=False, serve=start_api)))
