"""Webhook delivery: finished items in chunks of up to 1,000, durable until a receiver takes them.

Per batch, finished items are buffered and a chunk is made when `chunk_size` have accumulated,
when no item of the batch has finished for `idle_flush_s`, and on shutdown. A chunk is written to
the batch's outbox (`_outbox/` in its result location) before the first attempt and removed after
a 2xx, so it survives restarts and is resent with the same id (`webhook-id`); receivers
de-duplicate by it. Delivery runs in the background, one chunk at a time per batch, in order:
429/5xx/transport failures are retried with backoff and jitter (honouring `Retry-After`) until
they succeed; 410 stops deliveries for the batch and flags it; other 4xx are retried
`max_attempts` times, then the chunk is parked under `_outbox/dead/` as a dead letter.

A finished item is durable before its result is written (`outbox.py` has the layout): a
worker attaching the batch chunks again the items a gone worker left unchunked, if their results
were kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from ocrbatch.batches.spec import Batch, Webhook
from ocrbatch.clova.contract import OcrResponse, parse_retry_after
from ocrbatch.errors import ObjectNotFound, StorageError
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.settings import WebhookSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.claims import ItemClaims
from ocrbatch.types import Sleep
from ocrbatch.webhooks.outbox import DEAD_PREFIX, Outbox, chunk_id_of, chunk_key
from ocrbatch.webhooks.signing import signed_headers

log = structlog.get_logger("ocrbatch.webhooks.service")
RECOVER_INTERVAL_S = 60.0
SOLO_WRITER = "solo"  # the writer of a worker without claims: the only worker on its batches
SetStatus = Callable[[Batch, Any, str | None], Awaitable[None]]


def item_payload(
    *,
    key: str,
    result_location: str,
    succeeded: bool,
    message: str,
    response: OcrResponse | None,
    locations_only: bool,
) -> dict[str, Any]:
    """One item of a chunk: where its result is, how it ended, and (unless asked not to) the result."""
    infer_result = response.images[0].infer_result if response and response.images else None
    item: dict[str, Any] = {
        "key": key,
        "resultLocation": result_location,
        "status": "succeeded" if succeeded else "failed",
        "inferResult": infer_result,
        "message": message,
    }
    if not locations_only and response is not None:
        item["result"] = response.to_wire()
    return item


@dataclass(frozen=True)
class PendingItem:
    """A finished item made durable in the outbox, its result not yet confirmed."""

    batch_id: str
    marker: str
    item: dict[str, Any]


@dataclass
class _BatchHook:
    """One batch's buffer and delivery queue."""

    batch: Batch
    webhook: Webhook
    outbox: Outbox
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (marker key, item)
    own_markers: set[str] = field(default_factory=set)  # written or taken over, not yet deleted
    last_item_s: float = 0.0
    recovered_at_s: float | None = None
    stopped_reason: str | None = None
    dead_letters: int = 0
    item_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    to_deliver: asyncio.Queue[str] = field(default_factory=asyncio.Queue)  # chunk keys
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class WebhookService:
    """Buffers, persists and delivers the chunks of every batch that has a webhook."""

    def __init__(
        self,
        settings: WebhookSettings,
        session: aiohttp.ClientSession,
        *,
        set_status: SetStatus,
        domain_secrets: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        idle_sleep: Sleep | None = None,
        metrics: WorkerMetrics | None = None,
        claims: ItemClaims | None = None,
    ) -> None:
        self._chunks = (metrics or WorkerMetrics()).webhook_chunks
        self._settings = settings
        self._idle_sleep = idle_sleep or sleep  # the idle timer; backoffs use `sleep`
        self._session = session
        self._set_status = set_status
        self._domain_secrets = domain_secrets or {}
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._hooks: dict[str, _BatchHook] = {}
        self._claims = claims
        self._writer = claims.owner if claims is not None else SOLO_WRITER
        self.sent = 0
        self.retried = 0
        self.dead_lettered = 0

    # -- feeding --------------------------------------------------------------------------------

    async def attach(self, batch: Batch, results: Storage) -> None:
        """Start serving a batch: resend what its outbox still holds (after a restart, same ids) and
        chunk the items that gone workers finished but never chunked. Called again (every pass),
        it looks for such items again every `RECOVER_INTERVAL_S`."""
        if batch.webhook is None:
            return
        if (hook := self._hooks.get(batch.id)) is not None:
            if hook.recovered_at_s is None or self._clock() - hook.recovered_at_s >= RECOVER_INTERVAL_S:
                await self._recover(hook)
            return
        hook = _BatchHook(batch, batch.webhook, Outbox(results, writer=self._writer))
        self._hooks[batch.id] = hook
        await hook.outbox.settle_manifests()
        pending = await hook.outbox.chunk_keys()
        hook.dead_letters = await hook.outbox.dead_letters()
        for key in pending:
            hook.to_deliver.put_nowait(key)
        if pending:
            log.info("webhook.resending", batch_id=batch.id, chunks=len(pending))
        hook.tasks = [
            asyncio.create_task(self._deliver_loop(hook), name=f"webhook-deliver-{batch.id}"),
            asyncio.create_task(self._idle_loop(hook), name=f"webhook-idle-{batch.id}"),
        ]
        await self._recover(hook)

    async def item_finished(self, batch_id: str, item: dict[str, Any]) -> None:
        """Add one finished item; makes a chunk when `chunk_size` have accumulated."""
        pending = await self.item_pending(batch_id, item)
        if pending is not None:
            await self.item_done(pending)

    async def item_pending(
        self,
        batch_id: str,
        item: dict[str, Any],
        *,
        result_key: str | None = None,
        source_etag: str | None = None,
    ) -> PendingItem | None:
        """Make an item durable before its result (`result_key`, made from `source_etag`) is
        written; `item_done` once it is, `item_abandoned` if it is not. Should the worker die in
        between, the item is delivered only if that result exists. None without a webhook."""
        hook = self._hooks.get(batch_id)
        if hook is None:
            return None
        marker = await hook.outbox.write_item(item, result_key=result_key, source_etag=source_etag)
        hook.own_markers.add(marker)
        return PendingItem(batch_id, marker, item)

    async def item_abandoned(self, pending: PendingItem) -> None:
        """The item's result was not kept: forget its marker."""
        hook = self._hooks.get(pending.batch_id)
        if hook is not None:
            hook.own_markers.discard(pending.marker)
            with contextlib.suppress(StorageError):  # a stale marker is dropped by its next reader
                await hook.outbox.delete([pending.marker])

    async def item_done(self, pending: PendingItem) -> None:
        """The item's result is written: buffer it for the next chunk."""
        hook = self._hooks.get(pending.batch_id)
        if hook is None:
            return
        hook.items.append((pending.marker, pending.item))
        hook.last_item_s = self._clock()
        hook.item_arrived.set()
        if len(hook.items) >= self._settings.chunk_size:
            await self._flush(hook)

    def status_note(self, batch_id: str) -> str | None:
        """What the batch's status should say about its webhook (dead letters), if anything."""
        hook = self._hooks.get(batch_id)
        if hook is None or not hook.dead_letters:
            return None
        return f"webhook: {hook.dead_letters} chunk(s) refused by the receiver, parked under {DEAD_PREFIX}"

    @property
    def outbox_size(self) -> int:
        """Chunks written and not yet delivered, across batches (for metrics and logs)."""
        return sum(hook.to_deliver.qsize() for hook in self._hooks.values())

    # -- lifecycle ------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Make chunks of everything buffered (on shutdown, and at the end of `run --once`)."""
        for hook in self._hooks.values():
            await self._flush(hook)

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every outbox to empty; True if it did. Chunks left stay durable."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(hook.to_deliver.join() for hook in self._hooks.values())), timeout=timeout_s
            )
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the background tasks (undelivered chunks stay in the outboxes)."""
        tasks = [task for hook in self._hooks.values() for task in hook.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- chunks ---------------------------------------------------------------------------------

    async def _recover(self, hook: _BatchHook) -> None:
        """Chunk the items of gone workers that never made it into a chunk (tried again later when
        storage fails: they are durable meanwhile)."""
        hook.recovered_at_s = self._clock()
        try:
            await self._recover_items(hook)
        except StorageError as exc:
            log.warning("webhook.recovery_failed", batch_id=hook.batch.id, error=str(exc))

    async def _recover_items(self, hook: _BatchHook) -> None:
        # Not ours: writer ids are unique, or (solo) they are a former life's.
        by_writer = await hook.outbox.markers_by_writer(excluding=hook.own_markers)
        for writer, markers in by_writer.items():
            if self._claims is None or writer == self._writer:
                await self._recover_markers(hook, writer, markers)
                continue
            if await self._claims.worker_alive(writer):
                continue
            # One recoverer per gone writer and batch: another replica may be looking too.
            if await self._claims.take(f"webhook-{hook.batch.id}", writer):
                try:
                    await self._recover_markers(hook, writer, markers)
                finally:
                    await self._claims.release(f"webhook-{hook.batch.id}", writer)

    async def _recover_markers(self, hook: _BatchHook, writer: str, markers: list[str]) -> None:
        recovered = 0
        for marker in markers:
            item = await hook.outbox.read_item(marker)
            if item is not None:
                hook.own_markers.add(marker)
                hook.items.append((marker, item))
                recovered += 1
        if recovered:
            log.info("webhook.items_recovered", batch_id=hook.batch.id, writer=writer, items=recovered)
            await self._flush(hook)

    async def _flush(self, hook: _BatchHook) -> None:
        while hook.items:
            marked, hook.items = (
                hook.items[: self._settings.chunk_size],
                hook.items[self._settings.chunk_size :],
            )
            if not hook.items:
                hook.item_arrived.clear()
            markers, items = [marker for marker, _ in marked], [item for _, item in marked]
            sequence = await hook.outbox.next_sequence()
            chunk_id = f"msg_{uuid.uuid4().hex}"
            body = json.dumps(
                {
                    "batchId": hook.batch.id,
                    "batchName": hook.batch.name,
                    "chunkId": chunk_id,
                    "sequence": sequence,
                    "count": len(items),
                    "items": items,
                },
                ensure_ascii=False,
            ).encode()
            key = chunk_key(sequence, chunk_id)
            await asyncio.shield(hook.outbox.write_chunk(key, chunk_id, body, markers))
            hook.own_markers.difference_update(markers)
            log.info(
                "webhook.chunk_made",
                made_at_s=self._clock(),
                batch_id=hook.batch.id,
                chunk_id=chunk_id,
                sequence=sequence,
                count=len(items),
            )
            hook.to_deliver.put_nowait(key)
            self._chunks.labels(outcome="made").inc()

    async def _idle_loop(self, hook: _BatchHook) -> None:
        """Make a smaller chunk once no item of the batch has finished for `idle_flush_s`."""
        while True:
            await hook.item_arrived.wait()
            wait_s = hook.last_item_s + self._settings.idle_flush_s - self._clock()
            if wait_s > 0:
                await self._idle_sleep(wait_s)
                continue
            await self._flush(hook)

    # -- delivery -------------------------------------------------------------------------------

    async def _deliver_loop(self, hook: _BatchHook) -> None:
        while True:
            key = await hook.to_deliver.get()
            try:
                if hook.stopped_reason is None:
                    await self._deliver(hook, key)
            except Exception as exc:  # a delivery must never end the loop; the chunk stays in the outbox
                log.error("webhook.delivery_error", batch_id=hook.batch.id, key=key, error=str(exc))
            finally:
                hook.to_deliver.task_done()

    async def _deliver(self, hook: _BatchHook, key: str) -> None:
        try:
            stored = await hook.outbox.results.read(key)
        except ObjectNotFound:
            return  # delivered by another replica meanwhile
        chunk_id = stored.info.metadata.get("chunk-id") or chunk_id_of(key)
        webhook = hook.webhook
        secret = (
            webhook.secret.get_secret_value()
            if webhook.secret
            else self._domain_secrets.get(hook.batch.domain)
        )
        settings = self._settings
        delay_s, client_errors = settings.backoff_initial_s, 0
        while True:
            headers = {
                "Content-Type": "application/json",
                **signed_headers(
                    secret, message_id=chunk_id, timestamp_s=int(self._wall_clock()), body=stored.data
                ),
            }
            status, retry_after = await self._post(webhook.url, stored.data, headers)
            if status is not None and 200 <= status < 300:
                await hook.outbox.results.delete(key)
                self.sent += 1
                self._chunks.labels(outcome="sent").inc()
                log.info("webhook.sent", batch_id=hook.batch.id, chunk_id=chunk_id, status=status)
                return
            if status == 410:
                reason = f"webhook: {webhook.url} answered 410 Gone; deliveries stopped, chunks kept"
                hook.stopped_reason = reason
                log.error("webhook.gone", batch_id=hook.batch.id, chunk_id=chunk_id)
                await self._set_status(hook.batch, "error", reason)
                return
            if status is not None and 400 <= status < 500 and status != 429:
                client_errors += 1
                if client_errors >= settings.max_attempts:
                    await self._dead_letter(hook, key, stored.data, chunk_id, f"HTTP {status}")
                    return
            self.retried += 1
            self._chunks.labels(outcome="retried").inc()
            wait_s = retry_after if retry_after is not None else random.uniform(0, delay_s)
            log.info(
                "webhook.retry",
                batch_id=hook.batch.id,
                chunk_id=chunk_id,
                status=status,
                wait_s=round(wait_s, 3),
            )
            await self._sleep(min(wait_s, settings.backoff_max_s))
            delay_s = min(delay_s * 2, settings.backoff_max_s)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, float | None]:
        """The receiver's status and Retry-After; (None, None) when it could not be reached."""
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout_s)
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as response:
                await response.read()
                return response.status, parse_retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError):
            return None, None

    async def _dead_letter(self, hook: _BatchHook, key: str, body: bytes, chunk_id: str, reason: str) -> None:
        dead_key = await hook.outbox.park(key, body, chunk_id, reason)
        self.dead_lettered += 1
        self._chunks.labels(outcome="dead_lettered").inc()
        hook.dead_letters += 1
        log.error(
            "webhook.dead_letter", batch_id=hook.batch.id, chunk_id=chunk_id, reason=reason, key=dead_key
        )
