"""`ocrbatch serve`'s HTTP API beside the worker: the routes of `api.py`, the console, `/readyz`
and the S3 event notifications, started by `lifecycle.run_worker` once the worker is up."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import ClientSession, web

from ocrbatch.batches.events import Upload
from ocrbatch.batches.remote import LocationGate, RemoteEdits
from ocrbatch.batches.report import read_report
from ocrbatch.batches.spec import Batch
from ocrbatch.batches.store import BatchStore
from ocrbatch.console.app import create_console
from ocrbatch.errors import StorageError
from ocrbatch.service.api import NotReady, create_app
from ocrbatch.service.lifecycle import for_batches, readiness_details
from ocrbatch.service.sns import SnsVerifier
from ocrbatch.settings import Settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.operations import BatchOperations
from ocrbatch.worker.worker import Worker

log = structlog.get_logger("ocrbatch.run")
READY_TIMEOUT_S = 5.0  # /readyz answers within this even when the control storage hangs


async def start_api(
    settings: Settings, store: BatchStore, storages: StorageFactory, worker: Worker, session: ClientSession
) -> web.AppRunner:
    """The HTTP API on the configured address; logs the URL it listens on (port 0 picks one)."""

    async def report(batch: Batch) -> dict[str, Any] | None:
        return await read_report(storages, batch)

    async def ready() -> dict[str, Any]:
        return await _readiness(store, storages, worker)

    async def on_uploads(uploads: list[Upload]) -> int:
        wanted = for_batches(uploads, [stored.batch for stored in await store.list_batches()])
        if wanted:
            worker.announce(wanted)
        log.info("events.received", uploads=len(uploads), for_batches=len(wanted))
        return len(wanted)

    check_signatures = settings.events.sns_signatures == "verify"
    if not check_signatures:
        log.warning(
            "events.sns_signatures_off",
            reason="SNS messages are accepted without verifying their signatures (emulated stores only)",
        )
    operations = BatchOperations(
        settings,
        store,
        storages,
        live=worker,
        nudge=worker.trigger,
        outbox_counters=lambda: {
            "sent": worker.webhooks.sent,
            "retried": worker.webhooks.retried,
            "dead_lettered": worker.webhooks.dead_lettered,
        },
    )
    console = _console(settings, store, operations, worker)
    app = create_app(
        store,
        token=settings.api.token,
        public_hosts=settings.api.public_hosts,
        allowed_locations=settings.api.allowed_locations,
        on_batch_changed=worker.batch_changed,
        read_report=report,
        ready=ready,
        metrics=worker.metrics.render,
        on_uploads=on_uploads,
        sns=SnsVerifier(session, check_signatures=check_signatures),
        operations=operations,
        console=console,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.api.host, settings.api.port).start()
    host, port = runner.addresses[0][:2]
    log.info("api.listening", url=f"http://{host}:{port}")
    if console is not None:
        log.info("console.listening", url=f"http://{host}:{port}/console/")
    return runner


def _console(
    settings: Settings, store: BatchStore, operations: BatchOperations, worker: Worker
) -> web.Application | None:
    """The web console, unless `[api] console = false`; it logs in with the API token, so
    without one (auth off, loopback only) it is not served."""
    if not settings.api.console:
        return None
    if settings.api.token is None:
        log.warning("console.off", reason="the console logs in with the API token, and api.token is not set")
        return None
    return create_console(
        operations=operations,
        edits=RemoteEdits(
            store, LocationGate(settings.api.allowed_locations), on_batch_changed=worker.batch_changed
        ),
        token=settings.api.token,
        domains=settings.domains,
        session_ttl_s=settings.api.console_session_ttl_s,
    )


async def _readiness(store: BatchStore, storages: StorageFactory, worker: Worker) -> dict[str, Any]:
    """`/readyz`: ready when the catalog can be read now (within `READY_TIMEOUT_S`), the worker's
    passes can read it, and every batch document parses; otherwise `NotReady` says which is not."""
    details = readiness_details(store, storages)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            catalog = await store.catalog()
    except StorageError as exc:
        raise NotReady(f"the control storage cannot be read: {exc}", details) from None
    except TimeoutError:
        raise NotReady(
            f"the control storage at {store.coordination.where} did not answer within {READY_TIMEOUT_S:g} s",
            details,
        ) from None
    if worker.control_error is not None:
        reason = f"passes are waiting for the control storage (retried with backoff): {worker.control_error}"
        raise NotReady(reason, details)
    if catalog.broken:
        raise NotReady(
            f"{len(catalog.broken)} batch document(s) are not valid batches and are skipped: "
            + "; ".join(broken.message for broken in catalog.broken),
            {**details, "broken_batches": [broken.as_dict() for broken in catalog.broken]},
        )
    return details
