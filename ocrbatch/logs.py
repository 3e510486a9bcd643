"""Structured logging: JSON lines on stdout, console rendering on a TTY, secrets redacted.

Redaction works two ways, so a secret cannot slip through under an unexpected key: values of
keys that name a secret ("secret", "token", "password", ...) are masked, and every known secret
value (from the settings and batch webhooks) is replaced wherever it appears in a string.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

REDACTED = "**********"
_SECRET_KEY_RE = re.compile(
    r"(secret|token|password|passwd|authorization|credential|api[_-]?key|access[_-]?key)", re.IGNORECASE
)


class SecretRedactor:
    """A structlog processor that masks secrets in every event before it is rendered."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register more secret values (for example a batch's webhook secret once it is loaded)."""
        # Very short values would redact ordinary words; they are not credible secrets anyway.
        self._secrets.update(secret for secret in secrets if len(secret) >= 4)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {key: self._clean(key, value) for key, value in event_dict.items()}

    def _clean(self, key: str, value: Any) -> Any:
        if value is not None and _SECRET_KEY_RE.search(key) and not isinstance(value, bool):
            return REDACTED
        return self._scrub(value)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, MutableMapping):
            return {key: self._clean(str(key), item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(item) for item in value]
        if isinstance(value, BaseException):
            return self._scrub(f"{type(value).__name__}: {value}")
        return value


_active: SecretRedactor | None = None  # the redactor of the logging `configure_logging` set up


def learn_secrets(secrets: Iterable[str]) -> None:
    """Have the process's log redactor mask these values too (a batch's webhook secret, read from
    its document); nothing happens before logging is configured."""
    if _active is not None:
        _active.add(secrets)


def configure_logging(
    *,
    level: str = "info",
    output_format: Literal["auto", "json", "console"] = "auto",
    redactor: SecretRedactor | None = None,
    stream: TextIO | None = None,
) -> SecretRedactor:
    """Set up structlog for the process; returns the redactor so callers can add secrets later
    (`learn_secrets` reaches it too)."""
    global _active  # noqa: PLW0603 - structlog's configuration is the process's, and so is its redactor
    stream = stream or sys.stdout
    redactor = redactor or SecretRedactor()
    _active = redactor
    use_console = output_format == "console" or (output_format == "auto" and stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks are rendered to text first so the redactor sees them too.
            structlog.processors.format_exc_info
            if use_console
            else structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return redactor
