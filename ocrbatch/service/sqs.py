"""The SQS consumer: S3 upload notifications from a queue, processed as they arrive.

Replicas consume one queue as competing consumers. A received message stays invisible to the others
while its inputs are processed (its visibility is extended every half timeout) and is deleted only
once every input it announces is settled: result or failure record written, not a document, gone,
or not in any running batch. A message whose inputs another worker holds, or that shutdown left
pending, is made visible again after `unsettled_retry_s` (at once on shutdown) and redelivered.
Messages that are not S3 events, or that announce no upload, are logged and deleted: no retry would
ever make them one. A message still unsettled at its `max_deliveries`-th delivery (its inputs keep
failing, or the control storage is down for long) is deleted too, logged with the reason: events
only hurry discovery along, and the reconcile pass covers its inputs. Item claims (`claims.py`)
keep a duplicate delivery from processing an input twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import aioboto3
import structlog
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from ocrbatch.batches.events import NotAnEvent, SnsConfirmation, Upload, parse_notification
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.settings import SqsSettings, StorageSettings
from ocrbatch.types import Sleep, sleep_unless

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

log = structlog.get_logger("ocrbatch.sqs")
ProcessUploads = Callable[[list[Upload]], Awaitable[bool]]
SQS_MAX_MESSAGES_PER_RECEIVE = 10
RECEIVE_BACKOFF_MAX_S = 30.0


class SqsConsumer:
    """Receives upload notifications and hands them to `process` until `stopping` is set."""

    def __init__(
        self,
        settings: SqsSettings,
        storage: StorageSettings,
        process: ProcessUploads,
        *,
        stopping: asyncio.Event,
        metrics: WorkerMetrics | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if settings.queue_url is None:
            raise ValueError("sqs.queue_url is not set")
        self._settings = settings
        self._queue_url = settings.queue_url
        self._storage = storage
        self._process = process
        self._stopping = stopping
        self._sleep = sleep
        self._metrics = metrics or WorkerMetrics()
        self._tasks: set[asyncio.Task[None]] = set()
        self.deleted = 0
        self.returned = 0

    async def run(self) -> None:
        """Receive and process until stopped; then wait for the messages being processed."""
        async with self._client() as client:
            log.info("sqs.consuming", queue=self._queue_url)
            backoff_s = 1.0
            try:
                while not self._stopping.is_set():
                    await self._wait_for_room()
                    try:
                        messages = await self._receive(client)
                    except (BotoCoreError, ClientError) as exc:
                        log.error("sqs.receive_failed", error=str(exc), retry_in_s=backoff_s)
                        await self._sleep_unless_stopped(backoff_s)
                        backoff_s = min(backoff_s * 2, RECEIVE_BACKOFF_MAX_S)
                        continue
                    backoff_s = 1.0
                    for message in messages:
                        task = asyncio.create_task(self._handle(client, message))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
            finally:
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[SQSClient]:
        settings, storage = self._settings, self._storage
        access_key_id = settings.access_key_id or storage.access_key_id
        secret_access_key = settings.secret_access_key or storage.secret_access_key
        session = aioboto3.Session(
            aws_access_key_id=access_key_id.get_secret_value() if access_key_id else None,
            aws_secret_access_key=secret_access_key.get_secret_value() if secret_access_key else None,
            region_name=settings.region or storage.region,
        )
        config = AioConfig(
            connect_timeout=storage.connect_timeout_s,
            read_timeout=settings.wait_time_s + storage.read_timeout_s,  # a long poll is not a stall
            retries={"max_attempts": storage.max_attempts, "mode": "standard"},
        )
        async with session.client("sqs", endpoint_url=settings.endpoint_url, config=config) as client:
            yield client

    async def _wait_for_room(self) -> None:
        while len(self._tasks) >= self._settings.max_messages_in_flight:
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    async def _receive(self, client: SQSClient) -> list[MessageTypeDef]:
        """One long poll, cut short by shutdown (a message received meanwhile is redelivered)."""
        room = self._settings.max_messages_in_flight - len(self._tasks)
        receive = asyncio.create_task(
            client.receive_message(
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=min(SQS_MAX_MESSAGES_PER_RECEIVE, room),
                WaitTimeSeconds=self._settings.wait_time_s,
                VisibilityTimeout=self._settings.visibility_timeout_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        )
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receive, stop):
                if not task.done():
                    task.cancel()
            await asyncio.gather(stop, return_exceptions=True)
        if receive.cancelled():
            with contextlib.suppress(asyncio.CancelledError):
                await receive
            return []
        return list((await receive).get("Messages", []))

    async def _handle(self, client: SQSClient, message: MessageTypeDef) -> None:
        message_id = message.get("MessageId", "")
        receipt = message.get("ReceiptHandle", "")
        try:
            announced = parse_notification(json.loads(message.get("Body", "")))
        except ValueError as exc:  # not JSON, or NotAnEvent
            reason = str(exc) if isinstance(exc, NotAnEvent) else "the body is not JSON"
            log.error("sqs.not_an_event", message_id=message_id, reason=reason)
            self._metrics.sqs_messages.labels(outcome="not_an_event").inc()
            await self._delete(client, message_id, receipt)
            return
        if isinstance(announced, SnsConfirmation):
            log.error("sqs.sns_confirmation_ignored", message_id=message_id, topic=announced.topic_arn)
            self._metrics.sqs_messages.labels(outcome="not_an_event").inc()
            await self._delete(client, message_id, receipt)
            return
        if not announced:
            log.info(
                "sqs.message_done",
                message_id=message_id,
                uploads=0,
                settled=True,
                reason="announces no upload (a test event, or no object created)",
            )
            await self._delete(client, message_id, receipt)
            return
        heartbeat = asyncio.create_task(self._keep_invisible(client, message_id, receipt))
        try:
            settled = await self._process(announced)
        except Exception as exc:  # the message comes back; the reconcile pass covers the rest
            log.error("sqs.processing_failed", message_id=message_id, error=str(exc))
            settled = False
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        log.info("sqs.message_done", message_id=message_id, uploads=len(announced), settled=settled)
        deliveries, limit = _deliveries(message), self._settings.max_deliveries
        if settled:
            await self._delete(client, message_id, receipt)
        elif limit and deliveries >= limit and not self._stopping.is_set():
            log.error(
                "sqs.message_abandoned",
                message_id=message_id,
                deliveries=deliveries,
                keys=[upload.key for upload in announced][:10],
                reason=f"not settled after {deliveries} deliveries; the reconcile pass covers its inputs",
            )
            self._metrics.sqs_messages.labels(outcome="abandoned").inc()
            await self._delete(client, message_id, receipt)
        else:
            retry_s = 0 if self._stopping.is_set() else self._settings.unsettled_retry_s
            await self._change_visibility(client, message_id, receipt, retry_s)
            self.returned += 1
            self._metrics.sqs_messages.labels(outcome="returned").inc()

    async def _keep_invisible(self, client: SQSClient, message_id: str, receipt: str) -> None:
        timeout_s = self._settings.visibility_timeout_s
        while True:
            await self._sleep(timeout_s / 2)
            await self._change_visibility(client, message_id, receipt, timeout_s)

    async def _delete(self, client: SQSClient, message_id: str, receipt: str) -> None:
        try:
            await client.delete_message(QueueUrl=self._queue_url, ReceiptHandle=receipt)
            self.deleted += 1
            self._metrics.sqs_messages.labels(outcome="deleted").inc()
        except (BotoCoreError, ClientError) as exc:  # it is redelivered, then found settled
            log.warning("sqs.delete_failed", message_id=message_id, error=str(exc))

    async def _change_visibility(
        self, client: SQSClient, message_id: str, receipt: str, timeout_s: int
    ) -> None:
        try:
            await client.change_message_visibility(
                QueueUrl=self._queue_url, ReceiptHandle=receipt, VisibilityTimeout=timeout_s
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning("sqs.visibility_not_changed", message_id=message_id, error=str(exc))

    async def _sleep_unless_stopped(self, delay_s: float) -> None:
        await sleep_unless(self._stopping, self._sleep, delay_s)


def _deliveries(message: MessageTypeDef) -> int:
    """How many times SQS has delivered the message, this delivery included (1 if it does not say)."""
    try:
        return max(1, int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1")))
    except ValueError:
        return 1
