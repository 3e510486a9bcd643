"""What one `ocrbatch` invocation carries from the root group to its commands."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ocrbatch.logs import configure_logging
from ocrbatch.settings import Settings, load_settings


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
