"""What a batch has done: the counters behind `_report.json` and the progress log lines."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocrbatch.batches.layout import REPORT_KEY
from ocrbatch.batches.spec import Batch
from ocrbatch.errors import ObjectNotFound, StorageError
from ocrbatch.storage.factory import StorageFactory


@dataclass
class BatchReport:
    """Counts of one batch over a pass: what discovery found, then what this pass did."""

    batch_id: str
    batch_name: str
    started_at: datetime
    started_monotonic_s: float
    discovered: int = 0
    skipped: int = 0
    done_before: int = 0
    failed_before: int = 0
    pending_found: int = 0
    succeeded: int = 0
    failed: int = 0
    left_pending: int = 0  # not finished this pass (fatal domain error, shutdown): still pending
    elsewhere: int = 0  # pending when listed, but held or settled by another worker meanwhile
    calls: int = 0
    retries_by_code: Counter[str] = field(default_factory=Counter)
    billable_units: int = 0
    updated_at: datetime | None = None

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def pending(self) -> int:
        return max(0, self.pending_found - self.finished - self.elsewhere)

    def rate_per_s(self, now_monotonic_s: float) -> float:
        elapsed_s = now_monotonic_s - self.started_monotonic_s
        return self.finished / elapsed_s if elapsed_s > 0 else 0.0

    def eta_s(self, now_monotonic_s: float) -> float | None:
        rate = self.rate_per_s(now_monotonic_s)
        return self.pending / rate if rate > 0 else None

    def progress(self, now_monotonic_s: float) -> dict[str, Any]:
        """The fields of a progress log line."""
        eta = self.eta_s(now_monotonic_s)
        return {
            "batch_id": self.batch_id,
            "batch": self.batch_name,
            "done": self.finished,
            "total": self.pending_found,
            "rate_per_s": round(self.rate_per_s(now_monotonic_s), 2),
            "eta_s": None if eta is None else round(eta, 1),
        }

    def to_json(self, now: datetime | None = None, *, now_monotonic_s: float | None = None) -> dict[str, Any]:
        """The content of `_report.json`: totals over the whole result location, and this pass
        (with its rate and ETA when `now_monotonic_s` is given)."""
        self.updated_at = now or datetime.now(UTC)
        rate = self.rate_per_s(now_monotonic_s) if now_monotonic_s is not None else None
        eta = self.eta_s(now_monotonic_s) if now_monotonic_s is not None else None
        return {
            "batch_id": self.batch_id,
            "batch": self.batch_name,
            "succeeded": self.done_before + self.succeeded,
            "failed": self.failed_before + self.failed,
            "skipped": self.skipped,
            "pending": self.pending,
            "inputs": self.discovered,
            "this_pass": {
                "succeeded": self.succeeded,
                "failed": self.failed,
                "handled_elsewhere": self.elsewhere,
                "calls": self.calls,
                "retries_by_code": dict(sorted(self.retries_by_code.items())),
                "billable_units": self.billable_units,
                "rate_per_s": None if rate is None else round(rate, 2),
                "eta_s": None if eta is None else round(eta, 1),
            },
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Progress:
    """Where a batch stands, from a report (`BatchReport.to_json`'s shape): `done` of `total`
    documents (skipped files are not counted), this pass's rate and the ETA of what is pending."""

    done: int
    total: int
    pending: int
    rate_per_s: float | None
    eta_s: float | None

    @property
    def fraction(self) -> float:
        """Done over total, 1.0 when there is nothing to do."""
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "pending": self.pending,
            "percent": round(self.fraction * 100, 1),
            "rate_per_s": self.rate_per_s,
            "eta_s": self.eta_s if self.pending else None,
        }


def progress_of(report: Mapping[str, Any]) -> Progress:
    """The progress a report shows; missing or odd figures count as 0."""
    this_pass = report.get("this_pass")
    if not isinstance(this_pass, Mapping):
        this_pass = {}

    def count(value: object) -> int:
        return value if isinstance(value, int) and value > 0 else 0

    def figure(value: object) -> float | None:
        return float(value) if isinstance(value, int | float) and value > 0 else None

    done = count(report.get("succeeded")) + count(report.get("failed"))
    return Progress(
        done=done,
        total=max(done, count(report.get("inputs")) - count(report.get("skipped"))),
        pending=count(report.get("pending")),
        rate_per_s=figure(this_pass.get("rate_per_s")),
        eta_s=figure(this_pass.get("eta_s")),
    )


async def read_report(storages: StorageFactory, batch: Batch) -> dict[str, Any] | None:
    """The batch's `_report.json`, or None before a first run (or when it cannot be read)."""
    try:
        results = await storages.open(batch.result_location)
        data: dict[str, Any] = json.loads((await results.read(REPORT_KEY)).data)
    except (ObjectNotFound, StorageError, ValueError):
        return None
    return data
