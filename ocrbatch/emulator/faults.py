"""Faults the emulator injects: random ones at configured rates, and scripted ones for tests.

Random draws come from one seeded generator, so a run with the same seed and the same order
of calls injects the same faults. A scripted fault applies to the next call (or the next call
for a given image name) and takes precedence over the random ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ocrbatch.clova.contract import ERROR_CODES
from ocrbatch.types import FailedInferResult


class FaultSettings(BaseModel):
    """Rates are probabilities per admitted call (0-1); latency is per call, in milliseconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    http_error_rate: float = Field(default=0.0, ge=0, le=1)
    drop_rate: float = Field(default=0.0, ge=0, le=1)
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    error_result_rate: float = Field(default=0.0, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _rates_share_one_draw(self) -> FaultSettings:
        """Each call draws one outcome from bands as wide as the rates, so together they cover at
        most every call; a larger sum would silently shrink the last bands."""
        rates = (
            self.error_rate,
            self.rate_limit_rate,
            self.http_error_rate,
            self.drop_rate,
            self.failure_rate,
            self.error_result_rate,
        )
        if math.fsum(rates) > 1:  # fsum: 0.1 + 0.2 + 0.7 is exactly 1, as the user meant
            raise ValueError("the fault rates add up to more than 1")
        return self


class ScriptedFault(BaseModel):
    """One scripted outcome: an error code, a bare HTTP status, a dropped connection, or an
    image-level FAILURE/ERROR; optionally only for calls whose image has `name`, and `times` calls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str | None = None
    http_status: int | None = Field(default=None, ge=400, le=599)
    drop: bool = False
    infer_result: FailedInferResult | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    retry_after_s: int | None = Field(default=None, ge=0)
    name: str | None = None
    times: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_outcome(self) -> ScriptedFault:
        outcomes = [
            self.code is not None,
            self.http_status is not None,
            self.drop,
            self.infer_result is not None,
        ]
        if sum(outcomes) > 1:
            raise ValueError("a scripted fault has at most one of code, http_status, drop, infer_result")
        if sum(outcomes) == 0 and self.latency_ms is None:
            raise ValueError("a scripted fault needs an outcome or a latency")
        if self.code is not None and self.code not in ERROR_CODES:
            raise ValueError(f"unknown error code {self.code!r}")
        return self


@dataclass(frozen=True)
class Decision:
    """What happens to one admitted call."""

    latency_s: float = 0.0
    code: str | None = None
    http_status: int | None = None
    drop: bool = False
    infer_result: FailedInferResult | None = None
    retry_after_s: int | None = None


@dataclass
class _Pending:
    fault: ScriptedFault
    calls_left: int


class FaultPlan:
    """Decides each admitted call's fate from the scripted queue, else from the random rates."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._script: list[_Pending] = []

    def configure(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)

    def script(self, faults: Iterable[ScriptedFault]) -> None:
        self._script.extend(_Pending(fault, fault.times) for fault in faults)

    def clear_script(self) -> None:
        self._script.clear()

    @property
    def scripted_left(self) -> int:
        return sum(pending.calls_left for pending in self._script)

    def decide(self, name: str) -> Decision:
        scripted = self._take_scripted(name)
        if scripted is not None:
            latency_ms = scripted.latency_ms if scripted.latency_ms is not None else self._latency_ms()
            return Decision(
                latency_s=latency_ms / 1000,
                code=scripted.code,
                http_status=scripted.http_status,
                drop=scripted.drop,
                infer_result=scripted.infer_result,
                retry_after_s=scripted.retry_after_s,
            )
        settings, rng = self.settings, self._rng
        latency_s = self._latency_ms() / 1000
        draw = rng.random()
        # One draw split into bands, so the rates add up exactly and stay independent of order.
        bands: list[tuple[float, Decision]] = [
            (settings.error_rate, Decision(latency_s, code=rng.choice(("0500", "0501")))),
            (settings.rate_limit_rate, Decision(0.0, code="0025")),
            (settings.http_error_rate, Decision(latency_s, http_status=rng.choice((502, 503, 504)))),
            (settings.drop_rate, Decision(latency_s, drop=True)),
            (settings.failure_rate, Decision(latency_s, infer_result="FAILURE")),
            (settings.error_result_rate, Decision(latency_s, infer_result="ERROR")),
        ]
        for rate, decision in bands:
            if draw < rate:
                return decision
            draw -= rate
        return Decision(latency_s)

    def _latency_ms(self) -> float:
        mean, jitter = self.settings.latency_ms, self.settings.latency_jitter_ms
        if jitter == 0:
            return mean
        return max(0.0, self._rng.uniform(mean - jitter, mean + jitter))

    def _take_scripted(self, name: str) -> ScriptedFault | None:
        for index, pending in enumerate(self._script):
            if pending.fault.name is not None and pending.fault.name != name:
                continue
            pending.calls_left -= 1
            if pending.calls_left == 0:
                del self._script[index]
            return pending.fault
        return None
