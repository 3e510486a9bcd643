"""The shared retry policy, and OCR calls' use of it: what is retried, how long it waits, and when
it gives up (webhook deliveries' use of it is in test_webhooks.py)."""

from __future__ import annotations

import pytest
from fixtures.clock import FakeClock
from tenacity import retry_if_exception_type

from ocrbatch.clova.contract import ErrorClass, OcrError
from ocrbatch.clova.retries import backoff_retrying, ocr_retrying


async def run(errors: list[OcrError], *, max_attempts: int = 5, recorder: FakeClock) -> int:
    """Raise the given errors in turn, then succeed; returns the attempts made."""
    attempts = 0
    async for attempt in ocr_retrying(
        max_attempts=max_attempts, backoff_initial_s=1, backoff_max_s=30, sleep=recorder.sleep
    ):
        with attempt:
            attempts += 1
            if errors:
                raise errors.pop(0)
    return attempts


async def test_retryable_errors_are_retried_with_full_jitter() -> None:
    """Service and transport errors are retried; each wait lies in [0, min(max, initial x 2^n)]."""
    recorder = FakeClock(advance_on_sleep=False)
    errors = [OcrError(ErrorClass.SERVICE, "x", code="0500") for _ in range(4)]
    assert await run(errors, recorder=recorder) == 5
    assert len(recorder.sleeps_s) == 4
    for number, seconds in enumerate(recorder.sleeps_s):
        assert 0 <= seconds <= min(30, 2**number)


async def test_retry_after_is_honoured_and_capped() -> None:
    """A Retry-After from the server is the wait, capped at the maximum backoff."""
    recorder = FakeClock(advance_on_sleep=False)
    errors = [
        OcrError(ErrorClass.RATE_LIMITED, "x", code="0025", retry_after_s=7),
        OcrError(ErrorClass.TRANSPORT, "x", retry_after_s=3600),
    ]
    assert await run(errors, recorder=recorder) == 3
    assert recorder.sleeps_s == [7, 30]


@pytest.mark.parametrize(
    "error_class",
    [
        ErrorClass.ITEM_INVALID,
        ErrorClass.FATAL_DOMAIN,
        ErrorClass.TABLES_DISABLED,
        ErrorClass.TEMPLATE_NOT_DEPLOYED,
    ],
)
async def test_non_retryable_errors_are_raised_at_once(error_class: ErrorClass) -> None:
    """Errors that another attempt cannot fix are raised after one attempt, without waiting."""
    recorder = FakeClock(advance_on_sleep=False)
    with pytest.raises(OcrError):
        await run([OcrError(error_class, "x")], recorder=recorder)
    assert recorder.sleeps_s == []


async def test_attempts_are_bounded() -> None:
    """After max_attempts the last retryable error is raised as is."""
    recorder = FakeClock(advance_on_sleep=False)
    errors = [OcrError(ErrorClass.SERVICE, f"attempt {n}", code="0501") for n in range(10)]
    with pytest.raises(OcrError, match="attempt 2"):
        await run(errors, max_attempts=3, recorder=recorder)
    assert len(recorder.sleeps_s) == 2


class Busy(Exception):
    """An error of some other service, which may say how long to wait."""

    def __init__(self, retry_after_s: float | None = None) -> None:
        super().__init__("busy")
        self.retry_after_s = retry_after_s


async def test_the_shared_policy_honours_any_error_asking_to_wait_and_by_default_never_stops() -> None:
    """Without a `stop`, errors `retry` accepts are retried however many there are; an error's
    `retry_after_s` is the wait (capped), else the full-jitter bound doubles from the initial wait."""
    recorder = FakeClock(advance_on_sleep=False)
    errors = [Busy() for _ in range(10)] + [Busy(retry_after_s=2), Busy(retry_after_s=3600)]
    attempts = 0
    async for attempt in backoff_retrying(
        retry=retry_if_exception_type(Busy), initial_s=0.5, max_s=30, sleep=recorder.sleep
    ):
        with attempt:
            attempts += 1
            if errors:
                raise errors.pop(0)
    assert attempts == 13
    for number, seconds in enumerate(recorder.sleeps_s[:10]):
        assert 0 <= seconds <= min(30, 0.5 * 2**number)
    assert recorder.sleeps_s[10:] == [2, 30]
