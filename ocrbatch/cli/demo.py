"""`ocrbatch demo`: the main job end to end on embedded defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ocrbatch.demo.runner import run_demo


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), help="Keep the demo files here.")
@click.option(
    "--keep-console", is_flag=True, help="Keep `serve` and its web console up at the end, until Ctrl-C."
)
def demo_command(workdir: Path | None, keep_console: bool) -> None:
    """Run the embedded demo: no cloud account, no Docker. It ends with the web console."""
    sys.exit(run_demo(workdir, keep_console=keep_console))
