"""The `ocrbatch` command line; `main` is the console entry point."""

from ocrbatch.cli.root import main

__all__ = ["main"]
