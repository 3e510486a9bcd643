"""The emulator's limits for one OCR domain, and the measurements of how it was used.

A call is admitted only while fewer than `max_concurrent_calls` are in flight, fewer than
`calls_per_second` were admitted in the last second, and the quota is not used up; otherwise
it is answered 0025 (rate) or 0023 (quota), as the service does. Slot utilisation is the time
admitted calls spent in flight divided by `cap x` the time from the first admission to the
last completion: 1.0 means every slot was busy all the time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DomainMeter:
    """Admission control and usage figures of one domain."""

    max_concurrent_calls: int
    calls_per_second: float | None = None
    quota: int | None = None
    in_flight: int = 0
    peak_in_flight: int = 0
    admitted: int = 0
    busy_s: float = 0.0
    first_admit_s: float | None = None
    last_release_s: float | None = None
    _recent: deque[float] = field(default_factory=deque)
    _in_flight_since_sum_s: float = 0.0  # sum of the admission times of the calls in flight

    def try_admit(self, now_s: float) -> str | None:
        """Admit a call (returns None) or name the code that refuses it ("0023" or "0025")."""
        if self.quota is not None and self.admitted >= self.quota:
            return "0023"
        if self.in_flight >= self.max_concurrent_calls:
            return "0025"
        if self.calls_per_second is not None:
            while self._recent and self._recent[0] <= now_s - 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.calls_per_second:
                return "0025"
            self._recent.append(now_s)
        self.in_flight += 1
        self._in_flight_since_sum_s += now_s
        self.admitted += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self.first_admit_s is None:
            self.first_admit_s = now_s
        return None

    def release(self, admitted_at_s: float, now_s: float) -> None:
        self.in_flight -= 1
        self._in_flight_since_sum_s -= admitted_at_s
        self.busy_s += now_s - admitted_at_s
        self.last_release_s = now_s

    def utilisation(self, now_s: float) -> float | None:
        """Busy slot-time over available slot-time since the first admission (None before one)."""
        if self.first_admit_s is None:
            return None
        end_s = now_s if self.in_flight else (self.last_release_s or now_s)
        window_s = end_s - self.first_admit_s
        if window_s <= 0:
            return None
        busy_s = self.busy_s + self.in_flight * now_s - self._in_flight_since_sum_s
        return min(1.0, busy_s / (self.max_concurrent_calls * window_s))

    def snapshot(self, now_s: float) -> dict[str, Any]:
        utilisation = self.utilisation(now_s)
        return {
            "max_concurrent_calls": self.max_concurrent_calls,
            "calls_per_second": self.calls_per_second,
            "quota": self.quota,
            "admitted": self.admitted,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "busy_s": round(self.busy_s, 6),
            "slot_utilisation": None if utilisation is None else round(utilisation, 4),
        }
