"""One batch's calls to its OCR domain: each part of an item through the domain's limiter, retried
with backoff (the tenacity policy of `clova.retries`), counted in the batch's report and metrics."""

from __future__ import annotations

from collections.abc import Callable

from ocrbatch.batches.report import BatchReport
from ocrbatch.batches.spec import Batch
from ocrbatch.clova.client import OcrCall, OcrClient
from ocrbatch.clova.contract import ErrorClass, OcrError, OcrResponse
from ocrbatch.clova.retries import ocr_retrying
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.settings import WorkerSettings
from ocrbatch.types import Clock, Sleep
from ocrbatch.worker.limiter import DomainLimiter
from ocrbatch.worker.prepare import Part


class CallFailed(Exception):
    """A call that failed for good, with the attempts it took (tenacity's error alone loses them)."""

    def __init__(self, error: OcrError, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


class BatchStopped(Exception):
    """The batch was stopped (fatal error on its domain, or shutdown): leave the item pending."""


class BatchCalls:
    """Sends the parts of one batch's items; `stopped` says when the batch must send no more."""

    def __init__(
        self,
        batch: Batch,
        *,
        limiter: DomainLimiter,
        client: OcrClient,
        report: BatchReport,
        metrics: WorkerMetrics,
        settings: WorkerSettings,
        clock: Clock,
        sleep: Sleep,
        stopped: Callable[[], bool],
    ) -> None:
        self._batch = batch
        self._limiter = limiter
        self._client = client
        self._report = report
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._stopped = stopped
        self._call_seconds = metrics.call_seconds.labels(domain=batch.domain)
        # For Little's law (`batch_run.py`): time this batch's calls waited for a slot, and held one.
        self.slot_wait_s = 0.0
        self.slot_s = 0.0

    async def call(self, key: str, fmt: str, part: Part) -> tuple[OcrResponse, int]:
        """One part of input `key` through the limiter with retries; returns the response and the
        attempts it took. `CallFailed` once it failed for good, `BatchStopped` if the batch stops."""
        batch, settings = self._batch, self._settings
        call = OcrCall(
            name=part.image_name(key),
            image_format=fmt,
            data=part.data,
            url=part.url,
            lang=batch.language,
            template_ids=tuple(batch.template_ids or ()),
            table_detection=bool(batch.table_extraction),
        )
        attempts = 0
        try:
            async for attempt in ocr_retrying(
                max_attempts=settings.max_attempts,
                backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s,
                sleep=self._sleep,
            ):
                with attempt:
                    if self._stopped():
                        raise BatchStopped
                    attempts += 1
                    response = await self._one_call(call)
                    return response, attempts
        except OcrError as error:
            raise CallFailed(error, attempts) from error
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _one_call(self, call: OcrCall) -> OcrResponse:
        domain, limiter = self._batch.domain, self._limiter
        asked_s = self._clock()
        async with limiter.slot(self._batch.id) as permit:
            started_s = self._clock()
            self.slot_wait_s += started_s - asked_s
            if self._stopped():  # stopped (paused, shutting down) while waiting for the slot
                raise BatchStopped
            self._report.calls += 1
            try:
                response = await self._client.recognize(call)
            except OcrError as error:
                if error.error_class is ErrorClass.RATE_LIMITED:
                    permit.rate_limited()
                elif error.error_class is ErrorClass.QUOTA:
                    limiter.pause(error.retry_after_s or self._settings.quota_pause_s)
                elif error.error_class is not ErrorClass.TRANSPORT:
                    permit.succeeded()  # the service answered: the concurrency was fine
                if error.error_class.retryable:
                    code = error.code or error.error_class.value
                    self._report.retries_by_code[code] += 1
                    self._metrics.retries.labels(domain=domain, code=code).inc()
                raise
            finally:
                held_s = self._clock() - started_s
                self.slot_s += held_s
                self._call_seconds.observe(held_s)
            permit.succeeded()
        errors = [image for image in response.images if image.infer_result == "ERROR"]
        if errors:
            self._report.retries_by_code["ERROR"] += 1
            raise OcrError(ErrorClass.SERVICE, f"inferResult ERROR: {errors[0].message or 'no message'}")
        return response
