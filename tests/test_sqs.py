"""Uploads announced by moto's S3 through SQS and SNS to real `serve` processes."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aioboto3
from fixtures.process import TOKEN, ServeProcess
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, WorkerSetup, create_batch, keys, write_config

from ocrbatch.batches.events import Upload
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.service.sqs import SqsConsumer
from ocrbatch.settings import SqsSettings, StorageSettings
from ocrbatch.storage.factory import StorageFactory


def _session(storage: StorageSettings) -> aioboto3.Session:
    assert storage.access_key_id is not None
    assert storage.secret_access_key is not None
    return aioboto3.Session(
        aws_access_key_id=storage.access_key_id.get_secret_value(),
        aws_secret_access_key=storage.secret_access_key.get_secret_value(),
        region_name="us-east-1",
    )


async def _queue_for_uploads(setup: WorkerSetup) -> str:
    """A fresh queue that the bucket notifies of every object created under `in/`; its URL."""
    storage = setup.storage_settings
    session = _session(storage)
    async with (
        session.client("sqs", endpoint_url=storage.endpoint_url) as sqs,
        session.client("s3", endpoint_url=storage.endpoint_url) as s3,
    ):
        queue_url = (await sqs.create_queue(QueueName=f"uploads-{uuid.uuid4().hex[:12]}"))["QueueUrl"]
        attributes = await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        await s3.put_bucket_notification_configuration(
            Bucket=setup.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": attributes["Attributes"]["QueueArn"],
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "in/"}]}},
                    }
                ]
            },
        )
    return queue_url


async def _messages_left(storage: StorageSettings, queue_url: str) -> int:
    """Messages still in the queue, visible or being processed."""
    async with _session(storage).client("sqs", endpoint_url=storage.endpoint_url) as sqs:
        attributes = (
            await sqs.get_queue_attributes(
                QueueUrl=queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )
        )["Attributes"]
    return sum(int(value) for value in attributes.values())


def _serve_config(setup: WorkerSetup, path: Path, queue_url: str | None, **worker: Any) -> Path:
    config = write_config(setup, path, **worker)
    with config.open("a", encoding="utf-8") as file:
        file.write(f'[api]\nport = 0\ntoken = "{TOKEN}"\n')
        if queue_url is not None:
            file.write(
                f'[sqs]\nqueue_url = "{queue_url}"\nendpoint_url = "{setup.storage_settings.endpoint_url}"\n'
                "wait_time_s = 1\nvisibility_timeout_s = 30\nunsettled_retry_s = 1\n"
            )
    return config


async def _wait_for_results(setup: WorkerSetup, wanted: set[str], timeout_s: float) -> None:
    async def poll() -> None:
        # The bucket offers nothing to wait on but its listing.
        while not wanted <= set(await keys(setup.results)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout=timeout_s)
    except TimeoutError:
        missing = sorted(wanted - set(await keys(setup.results)))
        raise AssertionError(f"no {missing} in the results after {timeout_s} s") from None


async def test_an_upload_notified_through_sqs_gets_its_result_without_waiting_for_a_pass(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """S3 -> SQS -> serve: with the next pass an hour away, the message makes serve recognise the
    upload (no pass did), and it is deleted once the result is written; an upload that is not a
    document is ignored."""
    setup = await make_worker_setup()
    settings = setup.settings()
    await create_batch(setup, settings)
    queue_url = await _queue_for_uploads(setup)
    config = _serve_config(setup, tmp_path / "ocrbatch.toml", queue_url, poll_interval_s=3600.0)
    async with serve_process(config) as served:
        await served.wait_for_log("batch.pass_done")  # the first pass is over; the next is an hour away
        await setup.inputs.write("fresh upload.png", png(123, 45))
        await served.wait_for_log("sqs.message_done", uploads=1, settled=True)
        await served.wait_for_log("item.done", key="fresh upload.png", outcome="succeeded")
        assert "fresh upload.png.json" in await keys(setup.results)
        # The message, not a pass, made the result.
        assert len(served.events("batch.pass_done")) == 1
        assert served.events("worker.pass_requested") == []
        async with _session(setup.storage_settings).client(
            "s3", endpoint_url=setup.storage_settings.endpoint_url
        ) as s3:
            await s3.put_object(Bucket=setup.bucket, Key="in/notes.txt", Body=b"not a document")
        await _wait_for_messages(setup.storage_settings, queue_url, 0)
    assert setup.emulator.stats()["recognitions"] == {"fresh upload.png": 1}


async def _wait_for_messages(storage: StorageSettings, queue_url: str, count: int) -> None:
    async def poll() -> None:
        # The queue offers nothing to wait on but its counters.
        while await _messages_left(storage, queue_url) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout=30)
    except TimeoutError:
        left = await _messages_left(storage, queue_url)
        raise AssertionError(f"{left} message(s) left in the queue after 30 s, not {count}") from None


async def test_two_replicas_on_one_queue_process_every_item_exactly_once(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """Two serve processes consume one queue while reconciling every second: each of 40 uploads gets
    its result, the emulator recognised each exactly once, and every message was deleted."""
    setup = await make_worker_setup(max_concurrent_calls=4, faults={"latency_ms": 20, "seed": 2})
    settings = setup.settings()
    await create_batch(setup, settings)
    queue_url = await _queue_for_uploads(setup)
    configs = [
        _serve_config(setup, tmp_path / f"replica-{index}.toml", queue_url, poll_interval_s=1.0)
        for index in range(2)
    ]
    async with serve_process(configs[0]), serve_process(configs[1]):
        uploads = {f"batch/scan-{index:03}.png": png(150 + index, 90) for index in range(40)}
        await asyncio.gather(*(setup.inputs.write(key, data) for key, data in uploads.items()))
        await _wait_for_results(setup, {key + ".json" for key in uploads}, timeout_s=60)
        await _wait_for_messages(setup.storage_settings, queue_url, 0)
    stats = setup.emulator.stats()
    assert stats["recognised_more_than_once"] == {}
    assert sorted(stats["recognitions"]) == sorted(uploads)
    async with StorageFactory(setup.storage_settings) as storages:
        control = await storages.open(setup.location("control"))
        assert await keys(control, "claims/") == []


async def test_an_upload_notified_through_an_sns_subscription_gets_its_result_without_a_pass(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """S3 -> SNS -> HTTP subscription on serve's event endpoint (token in the query): with the next
    pass an hour away, the notification makes serve recognise the upload (no pass did). moto signs
    with a certificate SNS never served, so signatures are off, which serve warns about."""
    setup = await make_worker_setup()
    settings = setup.settings()
    await create_batch(setup, settings)
    config = _serve_config(setup, tmp_path / "ocrbatch.toml", None, poll_interval_s=3600.0)
    with config.open("a", encoding="utf-8") as file:
        file.write('[events]\nsns_signatures = "off"\n')
    storage = setup.storage_settings
    async with serve_process(config) as served:
        url = served.url
        assert served.events("events.sns_signatures_off")
        await served.wait_for_log("batch.pass_done")  # the first pass is over; the next is an hour away
        session = _session(storage)
        async with (
            session.client("sns", endpoint_url=storage.endpoint_url) as sns,
            session.client("s3", endpoint_url=storage.endpoint_url) as s3,
        ):
            topic = (await sns.create_topic(Name=f"uploads-{uuid.uuid4().hex[:12]}"))["TopicArn"]
            await sns.subscribe(
                TopicArn=topic, Protocol="http", Endpoint=f"{url}/api/v1/events/s3?token={TOKEN}"
            )
            await s3.put_bucket_notification_configuration(
                Bucket=setup.bucket,
                NotificationConfiguration={
                    "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]
                },
            )
        await setup.inputs.write("via sns.png", png(222, 111))
        await served.wait_for_log("events.received", uploads=1, for_batches=1)
        await served.wait_for_log("item.done", key="via sns.png", outcome="succeeded")
        assert "via sns.png.json" in await keys(setup.results)
        # The notification, not a pass, made the result.
        assert len(served.events("batch.pass_done")) == 1
        assert served.events("worker.pass_requested") == []
    assert json.loads(json.dumps(setup.emulator.stats()["recognitions"])) == {"via sns.png": 1}


async def test_the_consumer_deletes_settled_and_bad_messages_and_returns_unsettled_ones(
    s3_settings: StorageSettings,
) -> None:
    """Messages that are not S3 events (bad JSON, a missing Records list) and test events are
    deleted; an SNS-wrapped event is read; a message whose uploads are not settled comes back and is
    deleted once they are."""
    session = _session(s3_settings)
    async with session.client("sqs", endpoint_url=s3_settings.endpoint_url) as sqs:
        queue_url = (await sqs.create_queue(QueueName=f"unit-{uuid.uuid4().hex[:12]}"))["QueueUrl"]
        created = {
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "in/a+b.png"}},
        }
        s3_event = {"Records": [created]}
        for body in (
            "not json",
            json.dumps({"no": "records"}),
            json.dumps({"Event": "s3:TestEvent"}),
            json.dumps({"Type": "Notification", "Message": json.dumps(s3_event)}),
        ):
            await sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    stopping = asyncio.Event()
    calls: list[list[Upload]] = []

    async def process(uploads: list[Upload]) -> bool:
        calls.append(uploads)
        if len(calls) == 2:
            stopping.set()
        return len(calls) == 2  # unsettled the first time, settled when it comes back

    settings = SqsSettings(
        queue_url=queue_url,
        endpoint_url=s3_settings.endpoint_url,
        wait_time_s=1,
        visibility_timeout_s=30,
        unsettled_retry_s=0,
    )
    metrics = WorkerMetrics()
    consumer = SqsConsumer(settings, s3_settings, process, stopping=stopping, metrics=metrics)
    await within(consumer.run(), 30, "the consumer did not stop")
    assert calls == [[Upload("b", "in/a b.png")]] * 2
    assert (consumer.deleted, consumer.returned) == (4, 1)
    counted = {
        outcome: metrics.registry.get_sample_value("ocrbatch_sqs_messages_total", {"outcome": outcome})
        for outcome in ("deleted", "returned", "not_an_event")
    }
    assert counted == {"deleted": 4, "returned": 1, "not_an_event": 2}
    assert await _messages_left(s3_settings, queue_url) == 0
