"""Helpers for the webhook tests: a batch with a webhook, a `WebhookService` on fake time attached
to it, finished items, and the outbox's keys."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
from fake_clock import FakeClock

from ocrbatch.batches.layout import OUTBOX_PREFIX
from ocrbatch.batches.spec import Batch
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.settings import WebhookSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.claims import ItemClaims
from ocrbatch.webhooks.service import WebhookService

SECRET = "whsec_" + base64.b64encode(b"a-receiver-shared-secret-32bytes").decode()
BATCH_ID = "b0000000000000001"
UNREACHABLE = "http://127.0.0.1:9/hook"  # nothing listens there


def batch(url: str, *, secret: str | None = SECRET, locations_only: bool = False) -> Batch:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    webhook: dict[str, Any] | None = {"url": url, "secret": secret, "locations_only": locations_only}
    return Batch.model_validate(
        {
            "id": BATCH_ID,
            "name": "receipts",
            "domain": "receipts",
            "language": "ko",
            "table_extraction": False,
            "long_image": False,
            "input_path": "s3://data/in",
            "result_path": "s3://data/out",
            "webhook": webhook if url else None,
            "created_at": now,
            "updated_at": now,
        }
    )


class StatusLog:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, batch: Batch, status: Any, reason: str | None) -> None:
        self.calls.append((status, reason))


def service(
    session: aiohttp.ClientSession,
    time: FakeClock,
    statuses: StatusLog,
    backoffs: FakeClock | None = None,
    *,
    claims: ItemClaims | None = None,
    metrics: WorkerMetrics | None = None,
    **settings: Any,
) -> WebhookService:
    """A service on fake time: the idle timer waits for `time.advance`, backoffs are only recorded."""
    return WebhookService(
        WebhookSettings(**settings),
        session,
        set_status=statuses,
        clock=time,
        wall_clock=time,
        sleep=(backoffs or FakeClock(advance_on_sleep=False)).sleep,
        idle_sleep=time.sleep_until_advanced,
        metrics=metrics,
        claims=claims,
    )


def item(index: int) -> dict[str, Any]:
    return {
        "key": f"scans/{index:05}.png",
        "resultLocation": f"s3://data/out/scans/{index:05}.png.json",
        "status": "succeeded",
        "inferResult": "SUCCESS",
        "message": "SUCCESS",
    }


async def finish(webhooks: WebhookService, index: int) -> None:
    """Finish item `index` as the worker does: durable first, then done once its result is written."""
    pending = await webhooks.item_pending(BATCH_ID, item(index))
    assert pending is not None, "a batch with a webhook makes each finished item durable"
    await webhooks.item_done(pending)


@asynccontextmanager
async def attached(
    url: str,
    results: Storage,
    *,
    items: int = 0,
    time: FakeClock | None = None,
    statuses: StatusLog | None = None,
    backoffs: FakeClock | None = None,
    metrics: WorkerMetrics | None = None,
    **settings: Any,
) -> AsyncIterator[WebhookService]:
    """A `service` attached to a batch sending to `url`, its first `items` items finished; closed on
    leaving. Its clock stands still unless the test moves `time`."""
    async with aiohttp.ClientSession() as session:
        webhooks = service(
            session, time or FakeClock(), statuses or StatusLog(), backoffs, metrics=metrics, **settings
        )
        await webhooks.attach(batch(url), results)
        for index in range(items):
            await finish(webhooks, index)
        try:
            yield webhooks
        finally:
            await webhooks.close()


async def outbox_keys(results: Storage, prefix: str = OUTBOX_PREFIX) -> list[str]:
    return [info.key async for info in results.list(prefix)]
