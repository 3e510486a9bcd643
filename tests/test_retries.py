"""The retry policy for OCR calls: what is retried, how long it waits, and when it gives up."""

from __future__ import annotations

import pytest

from ocrbatch.clova.contract import ErrorClass, OcrError
from ocrbatch.clova.retries import ocr_retrying


class Recorder:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def run(errors: list[OcrError], *, max_attempts: int = 5, recorder: Recorder) -> int:
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
    recorder = Recorder()
    errors = [OcrError(ErrorClass.SERVICE, "x", code="0500") for _ in range(4)]
    assert await run(errors, recorder=recorder) == 5
    assert len(recorder.slept) == 4
    for number, seconds in enumerate(recorder.slept):
        assert 0 <= seconds <= min(30, 2**number)


async def test_retry_after_is_honoured_and_capped() -> None:
    """A Retry-After from the server is the wait, capped at the maximum backoff."""
    recorder = Recorder()
    errors = [
        OcrError(ErrorClass.RATE_LIMITED, "x", code="0025", retry_after_s=7),
        OcrError(ErrorClass.TRANSPORT, "x", retry_after_s=3600),
    ]
    assert await run(errors, recorder=recorder) == 3
    assert recorder.slept == [7, 30]


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
    recorder = Recorder()
    with pytest.raises(OcrError):
        await run([OcrError(error_class, "x")], recorder=recorder)
    assert recorder.slept == []


async def test_attempts_are_bounded() -> None:
    """After max_attempts the last retryable error is raised as is."""
    recorder = Recorder()
    errors = [OcrError(ErrorClass.SERVICE, f"attempt {n}", code="0501") for n in range(10)]
    with pytest.raises(OcrError, match="attempt 2"):
        await run(errors, max_attempts=3, recorder=recorder)
    assert len(recorder.slept) == 2
