"""`ocrbatch run` and `ocrbatch serve`: the worker as a process (with the HTTP API for `serve`),
with two-phase shutdown.

The first SIGTERM/SIGINT stops discovery and new items; items in flight finish within
`shutdown_grace_s`, results and reports are flushed, and the process exits 0. A second signal
exits at once.

The control path may fail while the process runs: `serve` and `run` keep passing (the catalog is
read again with backoff) and the API stays up, answering 503 where it needs storage; `/readyz`
says why it is not ready (storage down, broken batch documents) until that is over. `run --once`
gives up after `control_max_attempts` reads and exits 1 with the reason; a control path that
cannot be reached at start-up fails start-up (exit 1, with the reason), `serve` included.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import ClientSession, web

from ocrbatch.batches.events import Upload, batches_for
from ocrbatch.batches.spec import Batch
from ocrbatch.batches.store import BatchStore, batch_store_in
from ocrbatch.clova.client import open_ocr_session
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.coordination.memory import MemoryCoordination
from ocrbatch.coordination.single_writer import SingleWriter
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.service.access import check_bind
from ocrbatch.settings import Settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.webhooks.delivery import open_webhook_session
from ocrbatch.worker.worker import PassResult, Worker

if TYPE_CHECKING:
    from ocrbatch.service.sqs import ProcessUploads, SqsConsumer

log = structlog.get_logger("ocrbatch.run")
EXIT_FORCED = 130
# Starts the HTTP API beside the worker (`serving.start_api`): given by `serve`, so that `run`
# never loads the API and the console.
StartApi = Callable[[Settings, BatchStore, StorageFactory, Worker, ClientSession], Awaitable[web.AppRunner]]


async def run_worker(settings: Settings, *, once: bool, serve: StartApi | None = None) -> int:
    """Run until done (`once`) or until a signal; with `serve` (`serving.start_api`), the HTTP
    API runs beside the worker. Returns the process exit code."""
    if serve is not None:
        check_bind(settings.api.host, settings.api.token)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop_requested.is_set():
            log.warning("worker.forced_exit", signal=signal.Signals(signum).name)
            os._exit(EXIT_FORCED)
        log.info(
            "worker.stopping", signal=signal.Signals(signum).name, grace_s=settings.worker.shutdown_grace_s
        )
        stop_requested.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await _run(settings, once=once, serve=serve, stop_requested=stop_requested)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _run(
    settings: Settings, *, once: bool, serve: StartApi | None, stop_requested: asyncio.Event
) -> int:
    max_connections = sum(domain.max_concurrent_calls for domain in settings.domains.values()) * 2 + 8
    async with (
        StorageFactory(settings.storage) as storages,
        open_ocr_session(max_connections=max_connections) as session,
        open_webhook_session(settings.webhook) as outbound,
    ):
        service = _Service(settings, storages, session, outbound, once=once, stop_requested=stop_requested)
        try:
            await service.startup(serve=serve)
            outcome = await service.main_loop()
        finally:
            await service.shutdown()
    if once and outcome is not None and outcome.errors:
        for batch_id, reason in outcome.errors.items():
            log.error("worker.batch_in_error", batch_id=batch_id, reason=reason)
        return 1
    log.info("worker.stopped")
    return 0


class _Service:
    """The worker process: `startup`, `main_loop` until done or a signal, `shutdown`."""

    def __init__(
        self,
        settings: Settings,
        storages: StorageFactory,
        session: ClientSession,
        outbound: ClientSession,
        *,
        once: bool,
        stop_requested: asyncio.Event,
    ) -> None:
        """`session` calls the OCR domains; `outbound` makes the requests batches and events name
        (webhooks, SNS confirmations), under the outbound policy."""
        self._settings = settings
        self._storages = storages
        self._session = session
        self._outbound = outbound
        self._once = once
        self._stop_requested = stop_requested
        self._claims: ItemClaims | None = None
        self._single_writer: SingleWriter | None = None
        self._worker: Worker | None = None
        self._store: BatchStore | None = None
        self._api: web.AppRunner | None = None

    async def startup(self, *, serve: StartApi | None) -> None:
        """Register the worker (its claims and outbox items are then known as alive) and start the
        API when serving."""
        settings = self._settings
        store = await batch_store_in(settings, self._storages)
        self._store = store
        coordination = store.coordination
        if isinstance(coordination, StorageCoordination) and coordination.backend == "single-writer":
            # No compare-and-swap anywhere: become the only worker, or refuse to process.
            self._single_writer = SingleWriter(
                coordination.storage,
                ttl_s=settings.worker.claim_ttl_s,
                settle_s=settings.coordination.single_writer_settle_s,
            )
            await self._single_writer.acquire()
            # No other worker can exist: claims only keep this process's own tasks apart.
            claims_at: Coordination = MemoryCoordination()
        else:
            claims_at = coordination
        self._claims = ItemClaims(claims_at, ttl_s=settings.worker.claim_ttl_s)
        await self._claims.register()
        if self._once and not await self._claims.work_alone():  # alone: no claim in storage
            # Another `run --once` works alone: it shares once it sees this worker registered.
            await self._claims.wait_until_shared(
                self._stop_requested, timeout_s=settings.worker.claim_ttl_s / 2
            )
        self._worker = Worker(
            settings,
            store=store,
            storages=self._storages,
            session=self._session,
            outbound_session=self._outbound,
            claims=self._claims,
        )
        if serve is not None:
            self._api = await serve(settings, store, self._storages, self._worker, self._outbound)
        log.info(
            "worker.started",
            once=self._once,
            domains=sorted(settings.domains),
            claims_owner=self._claims.owner,
            coordination=coordination.backend,
            coordination_at=coordination.where,
        )

    async def main_loop(self) -> PassResult | None:
        """Passes (one with `once`) and the SQS consumer until done or a signal; then the work under
        way gets `shutdown_grace_s` to finish. Returns the pass's outcome with `once`."""
        if self._worker is None or self._claims is None or self._store is None:
            raise RuntimeError("startup() comes first")
        worker, settings = self._worker, self._settings
        work = asyncio.create_task(worker.run_pass() if self._once else worker.run_forever(), name="worker")
        consumers: list[asyncio.Task[None]] = []
        if settings.sqs.queue_url is not None and not self._once:
            sqs = importlib.import_module("ocrbatch.service.sqs")  # aioboto3, for a queue only
            consumer: SqsConsumer = sqs.SqsConsumer(
                settings.sqs,
                settings.storage,
                _settle_announced(self._store, worker),
                stopping=worker.stopping,
                metrics=worker.metrics,
            )
            consumers.append(asyncio.create_task(consumer.run(), name="sqs-consumer"))
        tasks: set[asyncio.Task[Any]] = {work, *consumers}
        keep_alive = asyncio.create_task(self._keep_alive(), name="keep-alive")
        stopper = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            worker.stop()
            # The pass, the messages and the announcements being processed share the grace period.
            tasks.add(asyncio.create_task(worker.wait_for_announcements(), name="announcements"))
            _, late = await asyncio.wait(tasks, timeout=settings.worker.shutdown_grace_s)
            for task in late:
                log.warning(
                    "worker.grace_expired", grace_s=settings.worker.shutdown_grace_s, task=task.get_name()
                )
                task.cancel()
        finally:
            for task in (stopper, keep_alive):
                task.cancel()
            await asyncio.gather(stopper, keep_alive, return_exceptions=True)
        outcomes = await asyncio.gather(*consumers, return_exceptions=True)
        for task, failure in zip(consumers, outcomes, strict=True):
            if isinstance(failure, Exception):
                log.error("worker.task_failed", task=task.get_name(), error=str(failure))
        try:
            return await work
        except asyncio.CancelledError:
            return None

    async def _keep_alive(self) -> None:
        """Renew this worker's claims, shared call slots and single-writer lease until cancelled."""
        if self._claims is None or self._worker is None:
            return
        renewals = [self._claims.keep_alive(), self._worker.keep_alive()]
        if self._claims.alone:
            renewals.append(self._claims.share_when_joined())
        if self._single_writer is not None:
            renewals.append(self._single_writer.keep_alive())
        await asyncio.gather(*renewals)

    async def shutdown(self) -> None:
        """Make buffered webhook items into chunks and deliver what the time allows, unregister,
        stop the API."""
        if self._worker is not None:
            # After a signal the grace period went to the items: chunks are only made durable.
            deliver_s = 0.0 if self._stop_requested.is_set() else self._settings.worker.shutdown_grace_s
            await asyncio.shield(self._worker.finish(deliver_s))
        if self._claims is not None:
            await self._claims.unregister()
        if self._single_writer is not None:
            await self._single_writer.release()
        if self._api is not None:
            await self._api.cleanup()


def readiness_details(store: BatchStore, storages: StorageFactory) -> dict[str, Any]:
    """What `/readyz` and `config check` show besides the status: what each storage endpoint was
    found to do, and where coordination happens."""
    coordination = store.coordination
    return {
        "storage": [endpoint.as_dict() for endpoint in storages.endpoints()],
        "coordination": {"backend": coordination.backend, "at": coordination.where},
    }


def for_batches(uploads: list[Upload], batches: list[Batch]) -> list[Upload]:
    """The uploads that some batch reads; each of the others is logged with why it is ignored."""
    wanted = []
    for upload in uploads:
        if batches_for(upload, batches):
            wanted.append(upload)
        else:
            log.info(
                "events.upload_ignored",
                bucket=upload.bucket,
                key=upload.key,
                reason="no batch reads this location (no such batch, or outside every input path)",
            )
    return wanted


def _settle_announced(store: BatchStore, worker: Worker) -> ProcessUploads:
    """What the SQS consumer does with a message's uploads: those no batch reads are settled at
    once (logged with the reason), the others are processed by the worker."""

    async def process(uploads: list[Upload]) -> bool:
        wanted = for_batches(uploads, [stored.batch for stored in await store.list_batches()])
        return await worker.process_uploads(wanted) if wanted else True

    return process


async def probe_capabilities(settings: Settings) -> dict[str, Any]:
    """Probe the control path's endpoint, and every other endpoint the batches write results to
    (in a batch's result location), as the worker would; returns `readiness_details`."""
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        for stored in await store.list_batches():
            location = stored.batch.result_location
            if not storages.endpoint(location).probed:
                await storages.capabilities(location)
        return readiness_details(store, storages)
