"""Webhooks: finished items in chunks of up to 1,000, durable until a receiver takes them.

Per batch, finished items are buffered and a chunk is made when `chunk_size` have accumulated,
when no item of the batch has finished for `idle_flush_s`, and on shutdown. A chunk is written to
the batch's outbox (`_outbox/` in its result location) before the first attempt and removed after
a 2xx, so it survives restarts and is resent with the same id (`webhook-id`); receivers
de-duplicate by it. Delivery runs in the background, one chunk at a time per batch, in order, with
retries, 410 and dead letters as `delivery.py` says.

A finished item is durable before its result is written (`outbox.py` has the layout): a
worker attaching the batch chunks again the items a gone worker left unchunked, if their results
were kept. Chunk numbers and the manifests of chunks being made are documents of the coordination
backend the service is given (the worker's: Redis, the control location, or the single writer),
so replicas chunking the same batch never share a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from ocrbatch.batches.spec import Batch, SetStatus
from ocrbatch.clova.contract import OcrResponse
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.errors import StorageError
from ocrbatch.locations import masked_url
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.settings import WebhookSettings
from ocrbatch.storage.base import Storage
from ocrbatch.types import Clock, Sleep
from ocrbatch.webhooks.delivery import Deliveries
from ocrbatch.webhooks.outbox import DEAD_PREFIX, Outbox, chunk_key

log = structlog.get_logger("ocrbatch.webhooks")
RECOVER_INTERVAL_S = 60.0
SOLO_WRITER = "solo"  # the writer of a worker without claims: the only worker on its batches


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
    """One batch's buffer of finished items, not yet in a chunk."""

    batch: Batch
    outbox: Outbox
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (marker key, item)
    own_markers: set[str] = field(default_factory=set)  # written or taken over, not yet deleted
    last_item_s: float = 0.0
    recovered_at_s: float | None = None
    item_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    idle_task: asyncio.Task[None] | None = None


class WebhookService:
    """Buffers and persists the chunks of every batch that has a webhook, and has them delivered."""

    def __init__(
        self,
        settings: WebhookSettings,
        session: aiohttp.ClientSession,
        *,
        set_status: SetStatus,
        domain_secrets: dict[str, str] | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        idle_sleep: Sleep | None = None,
        metrics: WorkerMetrics | None = None,
        claims: ItemClaims | None = None,
        coordination: Coordination | None = None,
    ) -> None:
        """`coordination` keeps each batch's chunk counter and manifests (`outbox.py`); without it,
        the batch's result location does, through its own conditional writes (a local directory)."""
        self._chunks = (metrics or WorkerMetrics()).webhook_chunks
        self._settings = settings
        self._idle_sleep = idle_sleep or sleep  # the idle timer; backoffs use `sleep`
        self._clock = clock
        self._hooks: dict[str, _BatchHook] = {}
        self._claims = claims
        self._coordination = coordination
        self._writer = claims.owner if claims is not None else SOLO_WRITER
        self._deliveries = Deliveries(
            settings,
            session,
            set_status=set_status,
            domain_secrets=domain_secrets or {},
            wall_clock=wall_clock,
            sleep=sleep,
            chunks=self._chunks,
        )

    @property
    def sent(self) -> int:
        """Chunks a receiver took (2xx), since the service started."""
        return self._deliveries.sent

    @property
    def retried(self) -> int:
        """Deliveries tried again, since the service started."""
        return self._deliveries.retried

    @property
    def dead_lettered(self) -> int:
        """Chunks parked as dead letters, since the service started."""
        return self._deliveries.dead_lettered

    # -- feeding --------------------------------------------------------------------------------

    async def attach(self, batch: Batch, results: Storage) -> None:
        """Start serving a batch: resend what its outbox still holds (after a restart, same ids) and
        chunk the items that gone workers finished but never chunked. Called again (every pass),
        it looks for such items again every `RECOVER_INTERVAL_S`."""
        if batch.webhook is None:
            return
        if (hook := self._hooks.get(batch.id)) is not None:
            self.update(batch)
            if hook.recovered_at_s is None or self._clock() - hook.recovered_at_s >= RECOVER_INTERVAL_S:
                await self._recover(hook)
            return
        outbox = Outbox(results, writer=self._writer, coordination=self._coordination, batch_id=batch.id)
        hook = _BatchHook(batch, outbox)
        self._hooks[batch.id] = hook
        self._deliveries.add(batch, batch.webhook, hook.outbox)
        # Manifests of this writer's former life are settled; a live replica's are its own business.
        await hook.outbox.settle_manifests(writer_busy=self._other_writer_alive)
        pending = await hook.outbox.chunk_keys()
        dead_letters = await hook.outbox.dead_letters()
        self._deliveries.start(batch.id, waiting=pending, dead_letters=dead_letters)
        if pending:
            log.info("webhook.resending", batch_id=batch.id, chunks=len(pending))
        hook.idle_task = asyncio.create_task(self._idle_loop(hook), name=f"webhook-idle-{batch.id}")
        await self._recover(hook)

    def update(self, batch: Batch) -> None:
        """Use the batch's current webhook (URL, secret, `locations_only`) from the next chunk on;
        chunks waiting in the outbox go to the new URL too. A batch whose webhook was removed keeps
        its chunks in the outbox, delivered once it has one again."""
        hook = self._hooks.get(batch.id)
        if hook is None or batch.webhook is None or batch.webhook == hook.batch.webhook:
            return
        before = hook.batch.webhook
        hook.batch = batch
        self._deliveries.update(batch, batch.webhook)
        log.info(
            "webhook.changed",
            batch_id=batch.id,
            url=masked_url(batch.webhook.url),
            url_changed=before is None or before.url != batch.webhook.url,
            secret_changed=before is None or before.secret != batch.webhook.secret,
            locations_only=batch.webhook.locations_only,
        )

    def locations_only(self, batch: Batch) -> bool:
        """Whether the batch's items go out without their results, as its webhook now says."""
        hook = self._hooks.get(batch.id)
        webhook = hook.batch.webhook if hook is not None else batch.webhook
        return webhook is not None and webhook.locations_only

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
        dead_letters = self._deliveries.dead_letters(batch_id)
        if not dead_letters:
            return None
        return f"webhook: {dead_letters} chunk(s) refused by the receiver, parked under {DEAD_PREFIX}"

    @property
    def outbox_size(self) -> int:
        """Chunks written and not yet delivered, across batches (for metrics and logs)."""
        return self._deliveries.waiting

    # -- lifecycle ------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Make chunks of everything buffered (on shutdown, and at the end of `run --once`)."""
        for hook in self._hooks.values():
            await self._flush(hook)

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every outbox to empty; True if it did. Chunks left stay durable."""
        return await self._deliveries.drain(timeout_s)

    async def close(self) -> None:
        """Stop the background tasks (undelivered chunks stay in the outboxes)."""
        idle_tasks = [hook.idle_task for hook in self._hooks.values() if hook.idle_task is not None]
        for task in idle_tasks:  # first, so that no chunk is made while the deliveries stop
            task.cancel()
        await self._deliveries.close()
        await asyncio.gather(*idle_tasks, return_exceptions=True)

    # -- chunks ---------------------------------------------------------------------------------

    async def _recover(self, hook: _BatchHook) -> None:
        """Chunk the items of gone workers that never made it into a chunk (tried again later when
        storage fails: they are durable meanwhile)."""
        hook.recovered_at_s = self._clock()
        try:
            # First the chunkings a gone writer left half done, so its markers are not sent twice.
            await hook.outbox.settle_manifests(writer_busy=self._writer_busy)
            await self._recover_items(hook)
        except StorageError as exc:
            log.warning("webhook.recovery_failed", batch_id=hook.batch.id, error=str(exc))

    async def _other_writer_alive(self, writer: str) -> bool:
        return writer != self._writer and self._claims is not None and await self._claims.worker_alive(writer)

    async def _writer_busy(self, writer: str) -> bool:
        """This process (it may be making a chunk right now) or another live worker."""
        return writer == self._writer or await self._other_writer_alive(writer)

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
            if self.locations_only(hook.batch):  # made before locations_only was switched on
                items = [{name: value for name, value in item.items() if name != "result"} for item in items]
            try:
                sequence = await hook.outbox.next_sequence()
            except BaseException:
                hook.items[:0] = marked  # nothing written yet: they wait for the next flush
                raise
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
            self._deliveries.send(hook.batch.id, key)
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
