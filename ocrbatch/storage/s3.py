"""`Storage` on an S3-compatible bucket through one shared aioboto3 client.

Keys are relative to the location's prefix. Metadata values are percent-encoded on the wire
because S3 metadata must be ASCII, and decoded on the way back, so callers read exactly what they
wrote (Korean and Japanese text included). Errors become `StorageError`s that carry only the
service's error code and message: nothing from the request (headers, signature, credentials).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import quote, unquote, urlsplit

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ocrbatch.errors import ObjectNotFound, PreconditionFailed, StorageError
from ocrbatch.locations import Location
from ocrbatch.storage.base import (
    DEFAULT_PAGE_SIZE,
    ObjectInfo,
    Storage,
    StoredObject,
    check_key,
    check_metadata,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from ocrbatch.settings import StorageSettings

# S3 stores "binary/octet-stream" when no type is sent; sending this keeps both backends alike.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# SigV4 presigned URLs are valid for at most seven days.
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
# HEAD responses have no body, so botocore reports their status as the code ("404", "403").
_ACCESS_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"})

_T = TypeVar("_T")


async def open_s3_client(settings: StorageSettings, stack: AsyncExitStack) -> S3Client:
    """Create the S3 client described by `settings`; `stack` closes it (and its connection pool)."""
    access_key_id = settings.access_key_id.get_secret_value() if settings.access_key_id else None
    secret_access_key = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    session = aioboto3.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=settings.region,
    )
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=settings.max_pool_connections,
    )
    client = session.client("s3", endpoint_url=settings.endpoint_url, config=config)
    return await stack.enter_async_context(client)


def encode_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Percent-encode every value so any text survives S3's ASCII-only metadata headers."""
    return {key: quote(value, safe="") for key, value in metadata.items()}


def decode_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Undo `encode_metadata` (values that were never encoded and hold no '%' pass unchanged)."""
    return {key: unquote(value) for key, value in metadata.items()}


class S3Storage(Storage):
    """The objects under `s3://bucket/prefix/`, through a client owned by the caller."""

    def __init__(self, location: Location, client: S3Client) -> None:
        if not location.is_s3:
            raise ValueError(f"{location} is not an S3 location")
        self.location = location
        self._client = client
        self._bucket = location.bucket

    def _full_key(self, key: str) -> str:
        return self.location.prefix + key

    async def list_pages(
        self, prefix: str = "", *, start_after: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[list[ObjectInfo]]:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        base = self.location.prefix
        request: dict[str, Any] = {"Bucket": self._bucket, "Prefix": base + prefix, "MaxKeys": page_size}
        if start_after is not None:
            request["StartAfter"] = base + start_after
        while True:
            response = await self._call(None, lambda: self._client.list_objects_v2(**request))
            page = [
                ObjectInfo(
                    key=item["Key"][len(base) :],
                    size=item["Size"],
                    etag=item["ETag"],
                    last_modified=item["LastModified"].astimezone(UTC),
                )
                for item in response.get("Contents", [])
                # "folder/" markers made by consoles are not objects a local directory could hold.
                if not item["Key"].endswith("/")
            ]
            if page:
                yield page
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return
            # The token encodes where to resume; StartAfter only positions the first request.
            request.pop("StartAfter", None)
            request["ContinuationToken"] = token

    async def read(self, key: str) -> StoredObject:
        check_key(key)

        async def get() -> tuple[ObjectInfo, bytes]:
            response = await self._client.get_object(Bucket=self._bucket, Key=self._full_key(key))
            async with response["Body"] as body:
                data = await body.read()
            info = ObjectInfo(
                key=key,
                size=len(data),
                etag=response["ETag"],
                last_modified=response["LastModified"].astimezone(UTC),
                metadata=decode_metadata(response.get("Metadata", {})),
                content_type=response.get("ContentType"),
            )
            return info, data

        info, data = await self._call(key, get)
        return StoredObject(info=info, data=data)

    async def head(self, key: str) -> ObjectInfo:
        check_key(key)
        response = await self._call(
            key, lambda: self._client.head_object(Bucket=self._bucket, Key=self._full_key(key))
        )
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=response["ETag"],
            last_modified=response["LastModified"].astimezone(UTC),
            metadata=decode_metadata(response.get("Metadata", {})),
            content_type=response.get("ContentType"),
        )

    async def write(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Put the object in one request; S3 checks the precondition atomically.

        The returned `last_modified` is the server's `Date` header (the local clock if absent):
        a head afterwards would cost a request and could see a later writer's object.
        """
        check_key(key)
        metadata = dict(metadata or {})
        check_metadata(metadata)
        if if_match is not None and if_none_match:
            raise ValueError("pass if_match or if_none_match, not both")
        content_type = content_type or DEFAULT_CONTENT_TYPE
        request: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": self._full_key(key),
            "Body": data,
            "Metadata": encode_metadata(metadata),
            "ContentType": content_type,
        }
        if if_none_match:
            request["IfNoneMatch"] = "*"
        if if_match is not None:
            request["IfMatch"] = if_match
        response = await self._call(
            key, lambda: self._client.put_object(**request), conditional=if_match is not None
        )
        return ObjectInfo(
            key=key,
            size=len(data),
            etag=response["ETag"],
            last_modified=_server_date(response.get("ResponseMetadata", {})),
            metadata=metadata,
            content_type=content_type,
        )

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        check_key(key)
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": self._full_key(key)}
        if if_match is not None:
            request["IfMatch"] = if_match
        await self._call(key, lambda: self._client.delete_object(**request), conditional=if_match is not None)

    async def presigned_get_url(self, key: str, *, expires_s: int) -> str:
        check_key(key)
        if not 1 <= expires_s <= MAX_PRESIGN_EXPIRES_S:
            raise ValueError(f"expires_s must be between 1 and {MAX_PRESIGN_EXPIRES_S}")
        params = {"Bucket": self._bucket, "Key": self._full_key(key)}
        return await self._call(
            key,
            lambda: self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s),
        )

    async def _call(
        self, key: str | None, operation: Callable[[], Awaitable[_T]], *, conditional: bool = False
    ) -> _T:
        """Await `operation()`, turning every client failure into a `StorageError`.

        With `conditional`, a missing object means the if-match lost (S3 says NoSuchKey).
        """
        try:
            return await operation()
        except ClientError as exc:
            self._raise_client_error(key, exc, conditional=conditional)
        except NoCredentialsError as exc:
            raise self._error(key, "no storage credentials configured") from exc
        except (BotoConnectionError, HTTPClientError, aiohttp.ClientError) as exc:
            # Transport errors name only the URL; keep them as the cause for debugging.
            raise self._error(key, f"cannot reach {self._endpoint()}") from exc
        except BotoCoreError as exc:
            # Other client-side errors may quote request parameters: name only their kind.
            raise self._error(key, f"S3 client error ({type(exc).__name__})") from None

    def _raise_client_error(self, key: str | None, exc: ClientError, *, conditional: bool) -> NoReturn:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        # Collapsed to one line: the message goes into one-line operator logs.
        message = " ".join(str(error.get("Message") or "").split())
        where = {"location": str(self.location), "key": key}
        # `from None`: the ClientError's response holds request details (string-to-sign, headers).
        if code in _NOT_FOUND_CODES:
            if conditional:
                raise PreconditionFailed("object does not exist (if-match)", **where) from None
            raise ObjectNotFound("object does not exist", **where) from None
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _PRECONDITION_CODES or status == 412:
            raise PreconditionFailed(f"precondition failed ({code})", **where) from None
        if code == "NoSuchBucket":
            raise StorageError(f"bucket {self._bucket!r} does not exist", **where) from None
        if code in _ACCESS_CODES:
            raise StorageError(f"access denied ({code})", **where) from None
        raise StorageError(f"{code}: {message}" if message else code, **where) from None

    def _error(self, key: str | None, reason: str) -> StorageError:
        return StorageError(reason, location=str(self.location), key=key)

    def _endpoint(self) -> str:
        """The endpoint as scheme://host[:port], without any user info it might carry."""
        parts = urlsplit(self._client.meta.endpoint_url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def _server_date(response_metadata: Mapping[str, Any]) -> datetime:
    """The response's `Date` header as UTC, or now when it is missing or unreadable."""
    header = response_metadata.get("HTTPHeaders", {}).get("date")
    if header:
        try:
            return parsedate_to_datetime(header).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)
