"""`ocrbatch demo`: the main job end to end on embedded defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ocrbatch.demo.runner import run_demo


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), help="Keep the demo files here.")
def demo_command(workdir: Path | None) -> None:
    """Run the embedded demo: no cloud account, no Docker."""
    sys.exit(run_demo(workdir))
