"""The S3 proxy makes moto behave like other stores, as seen by a plain aioboto3 client."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from bench.s3_proxy import S3Proxy, StartS3Proxy
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.s3 import open_s3_client

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

BucketMaker = Callable[[], Awaitable[str]]
ClientOpener = Callable[[str], Awaitable["S3Client"]]
KEYS = [f"k{index}" for index in range(5)]


@pytest.fixture
async def client_at(s3_settings: StorageSettings) -> AsyncIterator[ClientOpener]:
    """`await client_at(url)`: an S3 client made as ocrbatch makes them, for another endpoint."""
    async with AsyncExitStack() as stack:

        async def open_client(url: str) -> S3Client:
            return await open_s3_client(s3_settings.model_copy(update={"endpoint_url": url}), stack)

        yield open_client


@pytest.fixture
async def bucket_with_keys(make_bucket: BucketMaker, client_at: ClientOpener, moto_server: str) -> str:
    """A fresh bucket holding the five objects `KEYS`, written to moto directly."""
    bucket = await make_bucket()
    client = await client_at(moto_server)
    for key in KEYS:
        await client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    return bucket


async def _proxied(
    start_s3_proxy: StartS3Proxy, client_at: ClientOpener, profile: str
) -> tuple[S3Proxy, S3Client]:
    proxy = await start_s3_proxy(profile)
    return proxy, await client_at(proxy.url)


async def _precondition_error(call: Awaitable[Any]) -> dict[str, Any]:
    with pytest.raises(ClientError) as failure:
        await call
    return dict(failure.value.response)


# -- ncp: NAVER Cloud as documented -----------------------------------------------------------------


async def test_ncp_answers_list_objects_v2_with_a_v1_listing(
    start_s3_proxy: StartS3Proxy, client_at: ClientOpener, bucket_with_keys: str
) -> None:
    """A V2 request gets a V1 answer: no KeyCount and, past MaxKeys, truncated without a token;
    StartAfter is ignored, so the page starts at the first key."""
    proxy, client = await _proxied(start_s3_proxy, client_at, "ncp")

    response = await client.list_objects_v2(Bucket=bucket_with_keys, MaxKeys=2, StartAfter="k2")

    assert "KeyCount" not in response
    assert response["IsTruncated"] is True
    assert "NextContinuationToken" not in response
    assert [item["Key"] for item in response["Contents"]] == ["k0", "k1"]
    assert proxy.counts["list_v2"] == 1
    assert proxy.counts["v2_downgraded"] == 1


async def test_ncp_pages_list_objects_v1_by_marker(
    start_s3_proxy: StartS3Proxy, client_at: ClientOpener, bucket_with_keys: str
) -> None:
    """V1 pages continue after the Marker; without a delimiter no NextMarker is sent (as S3
    documents), so the client continues after the page's last key."""
    proxy, client = await _proxied(start_s3_proxy, client_at, "ncp")
    pages: list[list[str]] = []
    request: dict[str, Any] = {"Bucket": bucket_with_keys, "MaxKeys": 2}
    while True:
        response = await client.list_objects(**request)
        assert "NextMarker" not in response
        pages.append([item["Key"] for item in response.get("Contents", [])])
        if not response["IsTruncated"]:
            break
        request["Marker"] = pages[-1][-1]

    assert pages == [["k0", "k1"], ["k2", "k3"], ["k4"]]
    assert proxy.counts["list_v1"] == 3
    assert proxy.counts["next_marker_dropped"] == 2


async def test_ncp_ignores_conditional_put_headers(
    start_s3_proxy: StartS3Proxy, client_at: ClientOpener, bucket_with_keys: str
) -> None:
    """`If-None-Match: *` on an existing key and a wrong `If-Match` are dropped: both writes succeed."""
    proxy, client = await _proxied(start_s3_proxy, client_at, "ncp")

    await client.put_object(Bucket=bucket_with_keys, Key="k0", Body=b"created twice", IfNoneMatch="*")
    await client.put_object(Bucket=bucket_with_keys, Key="k1", Body=b"matched nothing", IfMatch="wrong")

    first = await client.get_object(Bucket=bucket_with_keys, Key="k0")
    second = await client.get_object(Bucket=bucket_with_keys, Key="k1")
    assert await first["Body"].read() == b"created twice"
    assert await second["Body"].read() == b"matched nothing"
    assert proxy.counts["put"] == 2
    assert proxy.counts["conditional_dropped"] == 2


# -- aws: moto itself, directly and through the pass-through proxy ---------------------------------


@pytest.fixture(params=["direct", "aws"])
async def aws_client(
    request: pytest.FixtureRequest, moto_server: str, start_s3_proxy: StartS3Proxy, client_at: ClientOpener
) -> S3Client:
    """A client of moto itself, or of moto through the "aws" proxy that changes nothing."""
    if request.param == "direct":
        return await client_at(moto_server)
    proxy = await start_s3_proxy("aws")
    return await client_at(proxy.url)


async def test_aws_lists_v2_with_key_count_and_token(aws_client: S3Client, bucket_with_keys: str) -> None:
    """moto answers V2 as S3 does: KeyCount, StartAfter honoured, and a token that continues."""
    first = await aws_client.list_objects_v2(Bucket=bucket_with_keys, MaxKeys=2, StartAfter="k0")
    rest = await aws_client.list_objects_v2(
        Bucket=bucket_with_keys, MaxKeys=2, ContinuationToken=first["NextContinuationToken"]
    )

    assert first["KeyCount"] == 2
    assert first["IsTruncated"] is True
    assert [item["Key"] for item in first["Contents"]] == ["k1", "k2"]
    assert [item["Key"] for item in rest["Contents"]] == ["k3", "k4"]
    assert rest["IsTruncated"] is False


async def test_aws_v1_listing_carries_a_next_marker_without_a_delimiter(
    aws_client: S3Client, bucket_with_keys: str
) -> None:
    """moto sends NextMarker on every truncated V1 page (S3 sends it only with a delimiter), and
    a Marker naming the last key continues the listing."""
    first = await aws_client.list_objects(Bucket=bucket_with_keys, MaxKeys=2)
    second = await aws_client.list_objects(Bucket=bucket_with_keys, MaxKeys=2, Marker="k1")

    assert first["IsTruncated"] is True
    assert first["NextMarker"]
    assert [item["Key"] for item in second["Contents"]] == ["k2", "k3"]


async def test_aws_refuses_failed_put_preconditions(aws_client: S3Client, bucket_with_keys: str) -> None:
    """moto checks `If-None-Match: *` and `If-Match` on PutObject: 412 PreconditionFailed."""
    created = await _precondition_error(
        aws_client.put_object(Bucket=bucket_with_keys, Key="k0", Body=b"x", IfNoneMatch="*")
    )
    matched = await _precondition_error(
        aws_client.put_object(Bucket=bucket_with_keys, Key="k1", Body=b"x", IfMatch="wrong")
    )

    for error in (created, matched):
        assert error["Error"]["Code"] == "PreconditionFailed"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 412
    unchanged = await aws_client.get_object(Bucket=bucket_with_keys, Key="k0")
    assert await unchanged["Body"].read() == b"k0"


async def test_aws_proxy_passes_objects_and_metadata_through(
    start_s3_proxy: StartS3Proxy, client_at: ClientOpener, s3_bucket: str
) -> None:
    """Bodies larger than one streamed chunk, their length, ETag and metadata arrive unchanged, and
    the proxy adds no header of its own (moto stores its default type when none is sent)."""
    proxy, client = await _proxied(start_s3_proxy, client_at, "aws")
    body = bytes(range(256)) * 1024

    await client.put_object(Bucket=s3_bucket, Key="big", Body=body, Metadata={"source": "scan"})
    head = await client.head_object(Bucket=s3_bucket, Key="big")
    got = await client.get_object(Bucket=s3_bucket, Key="big")

    assert head["ContentLength"] == len(body)
    assert head["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'  # noqa: S324 - S3's ETag, not security
    assert head["Metadata"] == {"source": "scan"}
    assert head["ContentType"] == "binary/octet-stream"
    assert await got["Body"].read() == body
    assert (proxy.counts["put"], proxy.counts["head"], proxy.counts["get"]) == (1, 1, 1)


# -- no-token and no-metadata ----------------------------------------------------------------------


async def test_no_token_says_truncated_without_a_continuation_token(
    start_s3_proxy: StartS3Proxy, client_at: ClientOpener, bucket_with_keys: str
) -> None:
    """A V2 page past MaxKeys is still a V2 answer (KeyCount) and truncated, but has no token."""
    proxy, client = await _proxied(start_s3_proxy, client_at, "no-token")

    response = await client.list_objects_v2(Bucket=bucket_with_keys, MaxKeys=2)

    assert response["KeyCount"] == 2
    assert response["IsTruncated"] is True
    assert "NextContinuationToken" not in response
    assert proxy.counts["token_dropped"] == 1


async def test_no_metadata_keeps_no_user_metadata(
    start_s3_proxy: StartS3Proxy, client_at: ClientOpener, moto_server: str, s3_bucket: str
) -> None:
    """Metadata written through the proxy is not stored: neither the proxy nor moto returns it."""
    proxy, client = await _proxied(start_s3_proxy, client_at, "no-metadata")

    await client.put_object(Bucket=s3_bucket, Key="doc", Body=b"x", Metadata={"source": "scan"})

    assert (await client.head_object(Bucket=s3_bucket, Key="doc"))["Metadata"] == {}
    stored = await (await client_at(moto_server)).head_object(Bucket=s3_bucket, Key="doc")
    assert stored["Metadata"] == {}
    assert proxy.counts["metadata_dropped"] == 1


# -- the fixtures ------------------------------------------------------------------------------------


async def test_delay_holds_every_request(
    start_s3_proxy: StartS3Proxy, client_at: ClientOpener, s3_bucket: str
) -> None:
    """With `delay_s`, a request is answered no sooner than that delay."""
    proxy = await start_s3_proxy("aws", delay_s=0.2)
    client = await client_at(proxy.url)

    started_s = time.monotonic()
    await client.list_objects_v2(Bucket=s3_bucket)

    assert time.monotonic() - started_s >= 0.2


async def test_ncp_settings_reach_moto_through_an_ncp_proxy(
    ncp_settings: StorageSettings, s3_settings: StorageSettings, bucket_with_keys: str
) -> None:
    """`ncp_settings` is `s3_settings` with another endpoint, whose V2 listings come back as V1."""
    async with AsyncExitStack() as stack:
        client = await open_s3_client(ncp_settings, stack)
        response = await client.list_objects_v2(Bucket=bucket_with_keys)

    assert ncp_settings.endpoint_url != s3_settings.endpoint_url
    assert ncp_settings.model_dump(exclude={"endpoint_url"}) == s3_settings.model_dump(
        exclude={"endpoint_url"}
    )
    assert "KeyCount" not in response
    assert [item["Key"] for item in response["Contents"]] == KEYS
