"""The batch catalog as a pass reads it, through outages of the control path.

While the control storage (or Redis) fails, the catalog is read again with backoff (full jitter):
until it answers or the worker stops, or for `control_max_attempts` attempts. Meanwhile
`CatalogReader.error` says why, which readiness shows; the first failure is logged at error
level and the retries as warnings, and the recovery with how long the path was down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from tenacity import RetryCallState, retry_if_exception_type, stop_after_attempt, stop_never

from ocrbatch.batches.store import BatchStore, StoredBatch
from ocrbatch.clova.retries import backoff_retrying
from ocrbatch.errors import StorageError
from ocrbatch.settings import WorkerSettings
from ocrbatch.types import Sleep, sleep_unless

log = structlog.get_logger("ocrbatch.worker")


class CatalogReader:
    """Reads the valid batches for a pass, waiting out a failing control path."""

    def __init__(
        self,
        store: BatchStore,
        settings: WorkerSettings,
        *,
        stopping: asyncio.Event,
        sleep: Sleep,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._settings = settings
        self._stopping = stopping
        self._sleep = sleep
        self._clock = clock
        self.error: str | None = None  # why the catalog cannot be read now, while retried
        self._down_since_s = 0.0

    async def read(self, *, forever: bool) -> list[StoredBatch] | None:
        """The valid batches: with `forever`, read again until the path answers or the worker
        stops (None); otherwise `control_max_attempts` times, then `StorageError`."""
        settings = self._settings
        retrying = backoff_retrying(
            retry=retry_if_exception_type(StorageError),
            initial_s=settings.control_backoff_initial_s,
            max_s=settings.control_backoff_max_s,
            stop=stop_never if forever else stop_after_attempt(settings.control_max_attempts),
            sleep=self._sleep_unless_stopping,
            before_sleep=self._failed,
        )
        catalog: list[StoredBatch] | None = None
        try:
            async for attempt in retrying:
                with attempt:
                    if self._stopping.is_set():
                        return None
                    catalog = await self._store.list_batches()
        except StorageError as exc:
            log.error("worker.control_unavailable", error=str(exc), gave_up=True)
            raise StorageError(
                f"the batch catalog could not be read in {settings.control_max_attempts} attempts: {exc}"
            ) from None
        if self.error is not None:
            log.info("worker.control_recovered", down_s=round(self._clock() - self._down_since_s, 3))
            self.error = None
        return catalog

    def _failed(self, retry_state: RetryCallState) -> None:
        """Before each wait: remember why, and log it (at error level when it starts failing)."""
        outcome, action = retry_state.outcome, retry_state.next_action
        error = str(outcome.exception()) if outcome is not None else "unknown error"
        first = self.error is None
        if first:
            self._down_since_s = self._clock()
        self.error = error
        (log.error if first else log.warning)(
            "worker.control_unavailable",
            error=error,
            attempt=retry_state.attempt_number,
            retry_in_s=round(action.sleep, 3) if action is not None else None,
        )

    async def _sleep_unless_stopping(self, delay_s: float) -> None:
        await sleep_unless(self._stopping, self._sleep, delay_s)
