"""How OCR calls are retried (tenacity): exponential backoff with full jitter, `Retry-After`
honoured, a bounded number of attempts, and an injectable sleep so tests never wait."""

from __future__ import annotations

import asyncio

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from ocrbatch.clova.contract import OcrError
from ocrbatch.types import Sleep


class _WaitHonouringRetryAfter:
    """Full-jitter exponential backoff, or the server's `Retry-After` when it gave one (capped)."""

    def __init__(self, *, initial_s: float, max_s: float) -> None:
        self._jitter = wait_random_exponential(multiplier=initial_s, max=max_s)
        self._max_s = max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, OcrError) and error.retry_after_s is not None:
            return min(error.retry_after_s, self._max_s)
        return float(self._jitter(retry_state))


def is_retryable(error: BaseException) -> bool:
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
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=_WaitHonouringRetryAfter(initial_s=backoff_initial_s, max_s=backoff_max_s),
        retry=retry_if_exception(is_retryable),
        sleep=sleep,
        reraise=True,
    )
