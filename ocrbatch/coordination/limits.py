"""The limits both call limiters keep, this process's (`worker/limiter.py`) and the one shared
through Redis (`slots.py`): which limits are valid, the rate rule, and a shared slot's permit.
Importing them loads no Redis client."""

from __future__ import annotations

import math
from dataclasses import dataclass


def check_limits(
    max_concurrent_calls: int,
    calls_per_second: float | None,
    decrease_factor: float,
    recover_after_successes: int | None,
) -> None:
    """Refuse limits no limiter can keep (the local one and the shared one take the same)."""
    if max_concurrent_calls < 1:
        raise ValueError(f"max_concurrent_calls must be at least 1, not {max_concurrent_calls}")
    if calls_per_second is not None and not calls_per_second > 0:
        raise ValueError(f"calls_per_second must be positive, not {calls_per_second}")
    if not 0 < decrease_factor < 1:
        raise ValueError(f"decrease_factor must lie between 0 and 1, not {decrease_factor}")
    if recover_after_successes is not None and recover_after_successes < 1:
        raise ValueError(f"recover_after_successes must be at least 1, not {recover_after_successes}")


def rate_window(calls_per_second: float | None) -> tuple[int, float]:
    """The rate rule both limiters apply: of the last `starts` starts, the oldest must be at least
    `window_s` old (`calls_per_second` in a one-second window; below 1/s, one per 1/cps s).
    (0, 0.0) when there is no rate limit."""
    if calls_per_second is None:
        return 0, 0.0
    return max(1, math.floor(calls_per_second)), max(1.0, 1.0 / calls_per_second)


@dataclass(frozen=True)
class SharedPermit:
    """One shared slot, held from `acquire` to `release`."""

    token: str  # this slot's lease id
    epoch: int  # how many times the shared cap had been lowered when granted
    at_cap: bool  # this grant took the last free slot under the cap
