"""How calls to another service are retried (tenacity): exponential backoff with full jitter, the
server's `Retry-After` honoured and capped, and an injectable sleep so tests never wait.

`backoff_retrying` is the one mechanism; each caller says what it retries and when it stops: OCR
calls here (`ocr_retrying`), webhook deliveries in `ocrbatch.webhooks.delivery`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_never
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from ocrbatch.clova.contract import OcrError
from ocrbatch.types import Sleep


@runtime_checkable
class AsksToWait(Protocol):
    """A failed attempt's error that may carry the server's `Retry-After`, in seconds."""

    retry_after_s: float | None


class _WaitHonouringRetryAfter:
    """Before the n-th retry, the server's `Retry-After` if the failed attempt's error carries one,
    else uniform(0, min(max_s, initial_s x 2^(n-1))) (full jitter); capped at `max_s` either way."""

    def __init__(self, *, initial_s: float, max_s: float) -> None:
        self._jitter = wait_random_exponential(multiplier=initial_s, max=max_s)
        self._max_s = max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, AsksToWait) and error.retry_after_s is not None:
            return min(error.retry_after_s, self._max_s)
        return float(self._jitter(retry_state))


def backoff_retrying(
    *,
    retry: retry_base,
    initial_s: float,
    max_s: float,
    stop: stop_base = stop_never,
    sleep: Sleep = asyncio.sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """A retry loop (`async for attempt in ...: with attempt: ...`): errors `retry` accepts are
    retried until `stop` (never, by default), waiting as `_WaitHonouringRetryAfter` says (an error
    that `AsksToWait` sets the wait); anything else, and the last error once `stop` says so, is
    raised as is. `before_sleep` sees each retry before its wait (to count and log it)."""
    return AsyncRetrying(
        stop=stop,
        wait=_WaitHonouringRetryAfter(initial_s=initial_s, max_s=max_s),
        retry=retry,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def is_retryable(error: BaseException) -> bool:
    """An OCR error another attempt may fix (quota, rate limit, service, transport)."""
    return isinstance(error, OcrError) and error.error_class.retryable


def ocr_retrying(
    *,
    max_attempts: int,
    backoff_initial_s: float,
    backoff_max_s: float,
    sleep: Sleep = asyncio.sleep,
) -> AsyncRetrying:
    """A retry loop for one OCR call: `async for attempt in ocr_retrying(...): with attempt: ...`.

    Retryable `OcrError`s (quota, rate limit, service, transport) are retried; anything else, and
    the last retryable error once attempts run out, is raised as is.
    """
    return backoff_retrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(max_attempts),
        initial_s=backoff_initial_s,
        max_s=backoff_max_s,
        sleep=sleep,
    )
