"""The S3 backend's own mechanics (against moto): presigned URLs, a missing bucket, error messages
that name the problem and never the credentials, and folder markers."""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import aiohttp
import pytest
from fixtures.storage import listed_keys
from pydantic import SecretStr

from ocrbatch.errors import ObjectNotFound, StorageError
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.s3 import open_s3_client

if TYPE_CHECKING:
    from conftest import BucketMaker, StorageOpener


# ---- presigned URLs ----


async def test_s3_presigned_url_serves_the_object(s3_storage: Storage) -> None:
    """A presigned GET URL returns the object's bytes to a plain HTTP client."""
    await s3_storage.write("scans/영수증 1.png", b"image bytes")

    url = await s3_storage.presigned_get_url("scans/영수증 1.png", expires_s=300)

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert await response.read() == b"image bytes"


# ---- a missing bucket is an error, never an empty result ----


async def test_s3_missing_bucket_is_an_error_naming_it(
    s3_settings: StorageSettings, open_storage: StorageOpener
) -> None:
    """Listing, reading and writing in a missing bucket raise StorageError naming the bucket."""
    location = Location.parse("s3://no-such-bucket-here/in/")
    async with open_storage(s3_settings, location) as storage:
        with pytest.raises(StorageError) as listing:
            await listed_keys(storage)
        with pytest.raises(StorageError) as reading:
            await storage.read("x")
        with pytest.raises(StorageError):
            await storage.write("x", b"x")

    message = str(listing.value)
    assert message == "s3://no-such-bucket-here/in/: bucket 'no-such-bucket-here' does not exist"
    assert not isinstance(reading.value, ObjectNotFound)


# ---- S3 error messages ----


async def test_s3_errors_never_carry_credentials(
    s3_settings: StorageSettings, open_storage: StorageOpener
) -> None:
    """A failing request's message is one line with the code's meaning and no secret."""
    secret = "S3CR3T-do-not-log"
    settings = s3_settings.model_copy(update={"secret_access_key": SecretStr(secret)})
    async with open_storage(settings, Location.parse("s3://missing-bucket-for-secrets/")) as storage:
        with pytest.raises(StorageError) as raised:
            await storage.write("k", b"x", metadata={"note": secret})

    message = str(raised.value)
    assert secret not in message
    assert "\n" not in message
    assert "missing-bucket-for-secrets" in message


async def test_s3_unreachable_endpoint_names_the_endpoint(
    s3_settings: StorageSettings, open_storage: StorageOpener
) -> None:
    """When nothing listens at the endpoint, the error says which endpoint cannot be reached."""
    with socket.socket() as probe:  # a port that was free a moment ago: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = s3_settings.model_copy(update={"endpoint_url": f"http://127.0.0.1:{port}"})
    async with open_storage(settings, Location.parse("s3://any-bucket/")) as storage:
        with pytest.raises(StorageError, match=rf"cannot reach http://127\.0\.0\.1:{port}$"):
            await storage.head("k")


async def test_s3_folder_markers_are_not_listed(
    s3_settings: StorageSettings, make_bucket: BucketMaker, open_storage: StorageOpener
) -> None:
    """Zero-byte 'folder/' markers that consoles create are not objects, so listings skip them."""
    bucket = await make_bucket()
    async with AsyncExitStack() as stack:
        client = await open_s3_client(s3_settings, stack)
        await client.put_object(Bucket=bucket, Key="in/", Body=b"")
        await client.put_object(Bucket=bucket, Key="in/a.png", Body=b"x")

    async with open_storage(s3_settings, Location.parse(f"s3://{bucket}/")) as storage:
        assert await listed_keys(storage) == ["in/a.png"]
