"""Webhook delivery: each batch's chunks POSTed to its receiver, signed, one at a time and in order.

Retries go through the shared backoff policy of `ocrbatch.clova.retries` (full jitter, `Retry-After`
honoured and capped at `backoff_max_s`); on top of it, the receiver's answer decides: 429, 5xx and
transport failures are retried until a 2xx; 410 stops deliveries for the batch and flags it; other
4xx (client errors) are tried `max_attempts` times over the chunk's attempts, then the chunk is
parked under `_outbox/dead/` as a dead letter. Redirects are not followed, and a receiver at an
address the outbound policy refuses (`ocrbatch.outbound`) is never sent to: both park the chunk
at once. A chunk leaves the outbox only after a 2xx.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import structlog
from prometheus_client import Counter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ocrbatch.batches.spec import Batch, SetStatus, Webhook
from ocrbatch.clova.contract import parse_retry_after
from ocrbatch.clova.retries import backoff_retrying
from ocrbatch.errors import ObjectNotFound
from ocrbatch.locations import masked_url
from ocrbatch.outbound import OutboundPolicy, OutboundRefused, open_outbound_session
from ocrbatch.settings import WebhookSettings
from ocrbatch.types import Clock, Sleep
from ocrbatch.webhooks.outbox import Outbox, chunk_id_of
from ocrbatch.webhooks.signing import signed_headers

log = structlog.get_logger("ocrbatch.webhooks")
MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer body: read, then dropped


def open_webhook_session(settings: WebhookSettings) -> aiohttp.ClientSession:
    """The session webhooks (and the SNS fetches of `serve`) go through: under the outbound policy
    of `settings.allow_networks`, apart from the OCR calls' session."""
    return open_outbound_session(OutboundPolicy(settings.allow_networks))


class Undelivered(Exception):
    """A POST the receiver did not take: its status (None when unreachable), its Retry-After, and
    why in words (the dead letter's reason)."""

    def __init__(
        self,
        status: int | None,
        retry_after_s: float | None,
        *,
        reason: str | None = None,
        refused: bool = False,
    ) -> None:
        self.reason = reason or (f"HTTP {status}" if status is not None else "receiver unreachable")
        super().__init__(self.reason)
        self.status = status
        self.retry_after_s = retry_after_s
        self.refused = refused  # by the outbound policy: never sent, never retried

    @property
    def redirect(self) -> bool:
        """A 3xx: never followed (the signed chunk goes to the configured URL only), never retried."""
        return self.status is not None and 300 <= self.status < 400

    @property
    def client_error(self) -> bool:
        """A 4xx but 429: the receiver refuses this chunk, not just now."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 429


class _RetryRules:
    """Whether one chunk's failed POST is tried again: after a 429, a 5xx or a transport failure
    always; after a 410 never; after a client error until the chunk has had `max_client_errors`."""

    def __init__(self, max_client_errors: int) -> None:
        self._max_client_errors = max_client_errors
        self._client_errors = 0

    def __call__(self, error: BaseException) -> bool:
        if not isinstance(error, Undelivered) or error.status == 410 or error.redirect or error.refused:
            return False
        if error.client_error:
            self._client_errors += 1
            return self._client_errors < self._max_client_errors
        return True


@dataclass
class _Recipient:
    """One batch's receiver and the chunks waiting for it."""

    batch: Batch
    webhook: Webhook
    outbox: Outbox
    dead_letters: int = 0
    waiting: asyncio.Queue[str] = field(default_factory=asyncio.Queue)  # chunk keys, in order
    stopped_reason: str | None = None  # set by a 410: nothing more is sent
    task: asyncio.Task[None] | None = None


class Deliveries:
    """Sends the chunks of every batch with a webhook, and counts what became of them."""

    def __init__(
        self,
        settings: WebhookSettings,
        session: aiohttp.ClientSession,
        *,
        set_status: SetStatus,
        domain_secrets: dict[str, str],
        wall_clock: Clock,
        sleep: Sleep,
        chunks: Counter,
    ) -> None:
        self._settings = settings
        self._session = session
        self._set_status = set_status
        self._domain_secrets = domain_secrets
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._chunks = chunks
        self._recipients: dict[str, _Recipient] = {}
        self.sent = 0
        self.retried = 0
        self.dead_lettered = 0

    def add(self, batch: Batch, webhook: Webhook, outbox: Outbox) -> None:
        """Take on a batch's receiver; the chunks `send` queues wait for `start`."""
        self._recipients[batch.id] = _Recipient(batch, webhook, outbox)

    def update(self, batch: Batch, webhook: Webhook) -> None:
        """The batch's webhook changed: every chunk from now on, those waiting and the next attempt
        of the one being sent included, goes to the new URL signed with the new secret. A new URL
        is a new receiver, so a former one's 410 no longer stops the deliveries."""
        recipient = self._recipients[batch.id]
        if webhook.url != recipient.webhook.url:
            recipient.stopped_reason = None
        recipient.batch, recipient.webhook = batch, webhook

    def start(self, batch_id: str, *, waiting: list[str], dead_letters: int) -> None:
        """Start sending the batch's chunks: any queued since `add`, then the `waiting` ones its
        outbox already held."""
        recipient = self._recipients[batch_id]
        recipient.dead_letters = dead_letters
        for key in waiting:
            recipient.waiting.put_nowait(key)
        recipient.task = asyncio.create_task(self._send_loop(recipient), name=f"webhook-deliver-{batch_id}")

    def send(self, batch_id: str, key: str) -> None:
        """Queue a chunk just written to the batch's outbox, after those already waiting."""
        self._recipients[batch_id].waiting.put_nowait(key)

    def dead_letters(self, batch_id: str) -> int:
        """The batch's chunks its receiver refused for good, parked under `_outbox/dead/`."""
        recipient = self._recipients.get(batch_id)
        return recipient.dead_letters if recipient is not None else 0

    @property
    def waiting(self) -> int:
        """Chunks written and not yet delivered, across batches."""
        return sum(recipient.waiting.qsize() for recipient in self._recipients.values())

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every batch's chunks to be sent; True if they were."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(recipient.waiting.join() for recipient in self._recipients.values())),
                timeout=timeout_s,
            )
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop sending (the chunks not sent stay in the outboxes)."""
        tasks = [recipient.task for recipient in self._recipients.values() if recipient.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_loop(self, recipient: _Recipient) -> None:
        while True:
            key = await recipient.waiting.get()
            try:
                if recipient.stopped_reason is None:
                    await self._deliver(recipient, key)
            except Exception as exc:  # a delivery must never end the loop; the chunk stays in the outbox
                log.error("webhook.delivery_error", batch_id=recipient.batch.id, key=key, error=str(exc))
            finally:
                recipient.waiting.task_done()

    async def _deliver(self, recipient: _Recipient, key: str) -> None:
        try:
            stored = await recipient.outbox.results.read(key)
        except ObjectNotFound:
            return  # delivered by another replica meanwhile
        chunk_id = stored.info.metadata.get("chunk-id") or chunk_id_of(key)
        batch = recipient.batch
        try:
            async for attempt in self._retrying(batch.id, chunk_id):
                with attempt:  # the batch's webhook as it is now: an edit reaches the next attempt
                    webhook = recipient.webhook
                    secret = (
                        webhook.secret.get_secret_value()
                        if webhook.secret
                        else self._domain_secrets.get(batch.domain)
                    )
                    status = await self._post(webhook.url, stored.data, secret, chunk_id)
        except Undelivered as refused:
            if refused.status == 410:
                await self._stop(recipient, chunk_id)
            else:
                await self._dead_letter(recipient, key, stored.data, chunk_id, refused.reason)
            return
        await recipient.outbox.results.delete(key)
        self.sent += 1
        self._chunks.labels(outcome="sent").inc()
        log.info("webhook.sent", batch_id=batch.id, chunk_id=chunk_id, status=status)

    def _retrying(self, batch_id: str, chunk_id: str) -> AsyncRetrying:
        """The shared backoff policy, with the receiver's answers deciding what is retried."""

        def count_and_log(retry_state: RetryCallState) -> None:
            refused = retry_state.outcome.exception() if retry_state.outcome is not None else None
            if not isinstance(refused, Undelivered):  # `_RetryRules` retries nothing else
                raise TypeError(f"a retry after {refused!r}")
            self.retried += 1
            self._chunks.labels(outcome="retried").inc()
            # Logged as the receiver asked it (the sleep itself is capped at backoff_max_s).
            wait_s = (
                refused.retry_after_s if refused.retry_after_s is not None else retry_state.upcoming_sleep
            )
            log.info(
                "webhook.retry",
                batch_id=batch_id,
                chunk_id=chunk_id,
                status=refused.status,
                wait_s=round(wait_s, 3),
            )

        return backoff_retrying(
            retry=retry_if_exception(_RetryRules(self._settings.max_attempts)),
            initial_s=self._settings.backoff_initial_s,
            max_s=self._settings.backoff_max_s,
            sleep=self._sleep,
            before_sleep=count_and_log,
        )

    async def _post(self, url: str, body: bytes, secret: str | None, chunk_id: str) -> int:
        """POST a chunk signed now: the receiver's 2xx status, else `Undelivered`."""
        headers = {
            "Content-Type": "application/json",
            **signed_headers(secret, message_id=chunk_id, timestamp_s=int(self._wall_clock()), body=body),
        }
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout_s)
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                # Only the status matters: a bounded read, and the connection is closed if more came.
                await response.content.read(MAX_ANSWER_BYTES)
                status = response.status
                retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
                location = response.headers.get("Location")
        except OutboundRefused as refused:
            log.error("webhook.address_refused", url=masked_url(url), reason=str(refused))
            raise Undelivered(None, None, reason=f"not sent: {refused}", refused=True) from None
        except (aiohttp.ClientError, TimeoutError):
            raise Undelivered(None, None) from None
        if 300 <= status < 400:
            reason = f"HTTP {status} redirect to {location!r}: redirects are not followed"
            raise Undelivered(status, None, reason=reason)
        if not 200 <= status < 300:
            raise Undelivered(status, retry_after_s)
        return status

    async def _stop(self, recipient: _Recipient, chunk_id: str) -> None:
        """A 410: send nothing more to this receiver, and say so in the batch's status."""
        url = masked_url(recipient.webhook.url)
        reason = f"webhook: {url} answered 410 Gone; deliveries stopped, chunks kept"
        recipient.stopped_reason = reason
        log.error("webhook.gone", batch_id=recipient.batch.id, chunk_id=chunk_id)
        await self._set_status(recipient.batch, "error", reason)

    async def _dead_letter(
        self, recipient: _Recipient, key: str, body: bytes, chunk_id: str, reason: str
    ) -> None:
        dead_key = await recipient.outbox.park(key, body, chunk_id, reason)
        self.dead_lettered += 1
        self._chunks.labels(outcome="dead_lettered").inc()
        recipient.dead_letters += 1
        log.error(
            "webhook.dead_letter", batch_id=recipient.batch.id, chunk_id=chunk_id, reason=reason, key=dead_key
        )
