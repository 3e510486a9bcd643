"""What `BatchOperations` answers: a batch's progress, its failure records and results in pages,
one result document, the webhook's outbox, and `NotViewable` when something cannot be shown."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ocrbatch.batches.report import Progress, progress_of
from ocrbatch.batches.spec import Batch

T = TypeVar("T")


class NotViewable(Exception):
    """The object asked for cannot be shown: `reason` says why, in words for the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BatchProgress:
    """A batch's status and figures: its report (live when a pass works on it) and the progress
    derived from it; `report` is None before a first run."""

    batch: Batch
    report: dict[str, Any] | None
    live: bool

    @property
    def progress(self) -> Progress | None:
        return None if self.report is None else progress_of(self.report)

    def to_json(self) -> dict[str, Any]:
        progress = self.progress
        return {
            "status": self.batch.status,
            "status_reason": self.batch.status_reason,
            "live": self.live,
            "progress": None if progress is None else progress.to_json(),
            "report": self.report,
        }


@dataclass(frozen=True)
class FailureRecord:
    key: str  # the input's key
    record_key: str
    code: str | None
    message: str
    attempts: int | None
    retryable: bool | None
    failed_at: str | None
    trace_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "code": self.code,
            "message": self.message,
            "attempts": self.attempts,
            "retryable": self.retryable,
            "failed_at": self.failed_at,
            "trace_id": self.trace_id,
        }


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; `after` continues it (None: this was the last page)."""

    items: list[T]
    after: str | None
    scanned_all: bool = True  # False: a filtered page stopped after `MAX_RECORDS_SCANNED` reads


@dataclass(frozen=True)
class ResultEntry:
    key: str  # the input's key
    result_key: str
    size: int
    last_modified: str


@dataclass(frozen=True)
class ResultDocument:
    """An input's JSON result: the OCR response the worker stored."""

    key: str
    result_key: str
    response: dict[str, Any]


@dataclass(frozen=True)
class OutboxView:
    waiting: list[str]  # chunk keys waiting for delivery
    dead: list[dict[str, Any]]  # chunk key, chunk id and reason of each dead letter
    counters: dict[str, int] = field(default_factory=dict)  # sent/retried/dead-lettered (live)

    def to_json(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "dead": self.dead, "counters": self.counters}
