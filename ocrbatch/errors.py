"""Errors that reach operators.

Every message is written to be shown as is: it names what failed and why, and never carries a
secret. Callers at the edges (CLI, HTTP API) turn these into exit codes and status codes.
"""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(error: ValidationError, *, unknown_key: str) -> list[tuple[str, str]]:
    """Each (dotted key, rule) of a pydantic error, worded for operators.

    Input values are left out on purpose: the value under a bad key may be a secret.
    `unknown_key` is the rule shown for a key the model does not have.
    """
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        rule = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            rule = "is required"
        elif item["type"] == "extra_forbidden":
            rule = unknown_key
        problems.append((".".join(str(part) for part in item["loc"]), rule))
    return problems


class OcrBatchError(Exception):
    """Base class: the message is safe to show to an operator."""


class ConfigError(OcrBatchError):
    """The settings are invalid; start-up stops."""


class StorageError(OcrBatchError):
    """A storage operation failed; the message names the location, the key and the reason.
    `transient`: whether trying again later may succeed (an item's failure record is then
    retryable)."""

    transient = True

    def __init__(self, message: str, *, location: str | None = None, key: str | None = None) -> None:
        self.location = location
        self.key = key
        where = location or ""
        if key is not None:
            where = f"{where.rstrip('/')}/{key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)


class ObjectNotFound(StorageError):
    """The object (or the bucket/directory holding it) does not exist."""


class PreconditionFailed(StorageError):
    """A create-only or if-match write lost: the object exists or changed since it was read."""


class SymlinkRefused(StorageError):
    """A local key is (or passes through) a symbolic link that is never followed: it leads outside
    the location's root, into ocrbatch's private directory, or to a directory. Final for that key."""

    transient = False


class UnsupportedOperation(StorageError):
    """The backend cannot do this (for example presigned URLs on a local directory)."""

    transient = False


class BatchNotFound(OcrBatchError):
    """No batch has this id or name."""


class BatchConflict(OcrBatchError):
    """The batch changed since it was read, or another writer holds the catalog."""


class BatchRuleViolation(OcrBatchError):
    """A batch definition breaks one or more of the console's rules; each names the field and the rule."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{field}: {rule}" for field, rule in violations))


class ExportRefused(BatchRuleViolation):
    """An export asked of a batch cannot be made as asked (a format or option the batch's results
    do not allow); each violation names the option and why."""
