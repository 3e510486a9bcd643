"""Batch documents as read, and the broken ones: a document that does not parse as a batch
(hand-edited, truncated, from a newer version, sealed with a key that is not configured).

Listings skip a broken document and show it as a `BrokenBatch`, logged at error level once per
version of it; reading it by id raises `BrokenBatchDocument`. One bad document never hides the
other batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError

from ocrbatch.batches.sealing import Sealer
from ocrbatch.batches.spec import Batch, webhook_secrets
from ocrbatch.coordination.base import Versioned
from ocrbatch.errors import OcrBatchError, validation_problems
from ocrbatch.logs import learn_secrets

_SHOWN_NAME_CHARS = 100
log = structlog.get_logger("ocrbatch.batches")


@dataclass(frozen=True)
class BrokenBatch:
    """A batch document that is not a valid batch (not JSON, or a field breaks a rule): shown with
    its reason and skipped by the worker until it is fixed or deleted."""

    batch_id: str  # from the document's key, `batches/{id}.json`
    key: str
    document: str  # where it is: the control location (or Redis server) and the key
    reason: str  # the first problem, such as "name: is required" or "Invalid JSON: ..."
    version: str
    name: str | None = None  # the name the document states, if it states one

    @property
    def message(self) -> str:
        return f"{self.document}: batch document is not valid ({self.reason}); fix or delete it"

    def as_dict(self) -> dict[str, Any]:
        """How listings (CLI JSON, API) show it: a batch's id, name and status, with the key."""
        return {
            "id": self.batch_id,
            "name": self.name,
            "status": "broken",
            "status_reason": self.message,
            "key": self.key,
            "document": self.document,
        }


class BrokenBatchDocument(OcrBatchError):
    """The batch asked for is stored in a document that is not a valid batch."""

    def __init__(self, broken: BrokenBatch) -> None:
        super().__init__(broken.message)
        self.broken = broken


def read_document(stored: Versioned, *, key: str, where: str, sealer: Sealer | None) -> Batch | BrokenBatch:
    """The batch that the document at `key` (of the backend `where`) holds, its sealed values
    opened and learnt by the log redactor; or the reason it is broken."""
    try:
        # The context opens sealed values (and says the data is a stored document).
        batch = Batch.model_validate_json(stored.data, context={"sealer": sealer})
    except ValidationError as exc:
        problems = validation_problems(exc, unknown_key="is not a batch field")
        field, rule = problems[0]
        reason = f"{field}: {rule}" if field else rule
        if len(problems) > 1:
            reason += f" (and {len(problems) - 1} more)"
        return BrokenBatch(
            batch_id=key.rpartition("/")[2].removesuffix(".json"),
            key=key,
            document=f"{where.rstrip('/')}/{key}" if where else key,
            reason=reason,
            version=stored.version,
            name=_stated_name(stored.data),
        )
    learn_secrets(webhook_secrets(batch.webhook))  # never in a log line
    return batch


class BrokenLog:
    """Logs a broken document at error level once per version of it, and its repair or removal once."""

    def __init__(self) -> None:
        self._versions: dict[str, str] = {}  # broken document key -> version logged

    def note(self, key: str, found: object) -> None:
        """What reading `key` found: a `BrokenBatch`, a valid batch, or None (no document)."""
        if isinstance(found, BrokenBatch):
            if self._versions.get(key) != found.version:
                self._versions[key] = found.version
                log.error(
                    "batch.document_broken",
                    key=key,
                    document=found.document,
                    batch_id=found.batch_id,
                    reason=found.reason,
                )
        elif self._versions.pop(key, None) is not None:
            log.info("batch.document_repaired" if found else "batch.document_removed", key=key)

    def forget_missing(self, keys: list[str]) -> None:
        """Documents logged as broken and no longer among `keys` were deleted."""
        for key in set(self._versions) - set(keys):
            self.note(key, None)


def _stated_name(data: bytes) -> str | None:
    """The `name` a document that is not a valid batch states, if it is JSON and has one."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    name = document.get("name") if isinstance(document, dict) else None
    return name[:_SHOWN_NAME_CHARS] if isinstance(name, str) and name.strip() else None
