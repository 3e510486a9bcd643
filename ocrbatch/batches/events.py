"""S3 event notifications: which uploads they announce, and whether a batch cares.

Accepted shapes: S3 event notifications (`{"Records": [{"eventName": "ObjectCreated:Put",
"s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]}`), as AWS sends them and as MinIO's
webhook target sends them (with extra top-level `EventName`/`Key`); and the same wrapped in an SNS
HTTP message (`Type: Notification`, the event JSON in `Message`). Keys arrive URL-encoded
(`unquote_plus`). Test events (`s3:TestEvent`) and `UnsubscribeConfirmation`s announce nothing.
Events can be lost, so they only hurry discovery along: the periodic pass still reconciles
everything. This module only reads bodies: whether an SNS message is to be believed is
`ocrbatch.service.sns`'s to say, before it is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from ocrbatch.batches.spec import Batch


class NotAnEvent(ValueError):
    """The body is not an S3 event notification or an SNS message carrying one."""


@dataclass(frozen=True)
class Upload:
    bucket: str
    key: str


@dataclass(frozen=True)
class SnsConfirmation:
    """An SNS subscription asking to be confirmed by a GET of `subscribe_url`."""

    topic_arn: str
    subscribe_url: str


def parse_notification(body: Any) -> list[Upload] | SnsConfirmation:
    """The uploads an event body announces (none for test events), or an SNS confirmation request."""
    if not isinstance(body, dict):
        raise NotAnEvent("the body must be a JSON object")
    message_type = body.get("Type")
    if message_type == "SubscriptionConfirmation":
        url, topic = body.get("SubscribeURL"), body.get("TopicArn")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise NotAnEvent("an SNS SubscriptionConfirmation needs a SubscribeURL")
        return SnsConfirmation(str(topic or ""), url)
    if message_type == "UnsubscribeConfirmation":
        return []
    if message_type == "Notification":
        try:
            body = json.loads(body.get("Message") or "")
        except ValueError:
            raise NotAnEvent("the SNS Message is not JSON") from None
        if not isinstance(body, dict):
            raise NotAnEvent("the SNS Message must be a JSON object")
    if body.get("Event") == "s3:TestEvent" or body.get("EventName") == "s3:TestEvent":
        return []
    records = body.get("Records")
    if not isinstance(records, list):
        raise NotAnEvent("expected S3 event Records")
    return list(_uploads(records))


def _uploads(records: Iterable[Any]) -> Iterable[Upload]:
    for record in records:
        if not isinstance(record, dict):
            continue
        event_name = str(record.get("eventName", ""))
        if "ObjectCreated" not in event_name:
            continue  # deletions and the rest need no OCR
        s3 = record.get("s3") or {}
        bucket = (s3.get("bucket") or {}).get("name")
        key = (s3.get("object") or {}).get("key")
        if isinstance(bucket, str) and isinstance(key, str):
            yield Upload(bucket, unquote_plus(key))


def batches_for(upload: Upload, batches: Iterable[Batch]) -> list[Batch]:
    """The batches whose input location holds the uploaded object."""
    return [
        batch
        for batch in batches
        if batch.input_location.is_s3
        and batch.input_location.bucket == upload.bucket
        and upload.key.startswith(batch.input_location.prefix)
    ]
