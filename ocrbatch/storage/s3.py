"""`Storage` on an S3-compatible bucket through one shared aioboto3 client.

Keys are relative to the location's prefix. Metadata values are percent-encoded on the wire
because S3 metadata must be ASCII, and decoded on the way back, so callers read exactly what they
wrote (Korean and Japanese text included). Errors become `StorageError`s that carry only the
service's error code and message: nothing from the request (headers, signature, credentials).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import quote, unquote

import aioboto3
import aiohttp
import structlog
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
    check_metadata,
)
from ocrbatch.storage.capabilities import Endpoint
from ocrbatch.storage.s3_names import MAX_KEY_BYTES, PRIVATE_PREFIX, SIDECAR_PREFIX, endpoint_name

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
log = structlog.get_logger("ocrbatch.storage")


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

    def __init__(self, location: Location, client: S3Client, endpoint: Endpoint | None = None) -> None:
        """`endpoint` records what the store does, shared by every view on it (one per client)."""
        if not location.is_s3:
            raise ValueError(f"{location} is not an S3 location")
        self.location = location
        self._client = client
        self._bucket = location.bucket
        self._endpoint = endpoint or Endpoint(endpoint_name(client.meta.endpoint_url))

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    def _full_key(self, key: str) -> str:
        return self.location.prefix + key

    def _check_key(self, key: str) -> None:
        """Any key S3 allows: not empty, at most 1,024 UTF-8 bytes with the location's prefix.
        `a//b.png`, `./x.png` and `x/../y.png` are different objects on S3, and are read as such
        (results never use such names: `batches/layout.py` maps them)."""
        if not key:
            raise ValueError("an object key must not be empty")
        if len(self._full_key(key).encode()) > MAX_KEY_BYTES:
            raise StorageError(
                f"the key is longer than S3's {MAX_KEY_BYTES} bytes", location=str(self.location), key=key
            )

    async def list_pages(
        self, prefix: str = "", *, start_after: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[list[ObjectInfo]]:
        """Pages of a V2 or V1 listing, as the endpoint speaks (found by the first listing).

        A page that says it is truncated but gives no way to continue resumes after its last key;
        one with no key to resume after is an error. Keys that go backwards or repeat are an error:
        a listing is never ended early without saying so.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        base = self.location.prefix
        after = None if start_after is None else base + start_after
        token: str | None = None
        last_key = after
        while True:
            response = await self._list_page(base + prefix, after, token, page_size)
            raw_keys = [item["Key"] for item in response.get("Contents", [])]
            for raw_key in raw_keys:
                if last_key is not None and raw_key <= last_key:
                    raise self._error(
                        None,
                        f"the store's listing went backwards or repeated a key ({raw_key!r} after"
                        f" {last_key!r}); it cannot be trusted to be complete",
                    )
                last_key = raw_key
            page = [
                ObjectInfo(
                    key=item["Key"][len(base) :],
                    size=item["Size"],
                    etag=item["ETag"],
                    last_modified=item["LastModified"].astimezone(UTC),
                )
                for item in response.get("Contents", [])
                # "folder/" markers made by consoles are not objects a local directory could hold;
                # sidecars (stores without user metadata) are ocrbatch's own, as in local directories.
                if not item["Key"].endswith("/") and not item["Key"].startswith(base + PRIVATE_PREFIX)
            ]
            if page:
                yield page
            if not response.get("IsTruncated"):
                return
            token = response.get("NextContinuationToken") or None
            next_marker = response.get("NextMarker") or (raw_keys[-1] if raw_keys else None)
            if token is None and next_marker is None:
                raise self._error(
                    None, "the store says the listing is truncated but gives no key to continue after"
                )
            if token is None:
                if self._endpoint.list_api == "v2":
                    log.warning("storage.listing_resumed", location=str(self.location), after=next_marker)
                after = next_marker

    async def _list_page(
        self, full_prefix: str, after: str | None, token: str | None, page_size: int
    ) -> dict[str, Any]:
        """One page: V2 from `token` or after `after`, or V1 after the marker `after`."""
        request: dict[str, Any] = {"Bucket": self._bucket, "Prefix": full_prefix, "MaxKeys": page_size}
        if self._endpoint.list_api != "v1":
            if token is not None:
                request["ContinuationToken"] = token
            elif after is not None:
                request["StartAfter"] = after
            response: dict[str, Any] = dict(
                await self._call(None, lambda: self._client.list_objects_v2(**request))
            )
            if self._endpoint.list_api == "v2":
                return response
            # A V2 answer always carries KeyCount; a store that ignores list-type=2 answers V1.
            self._endpoint.list_api = "v2" if "KeyCount" in response else "v1"
            log.info(
                "storage.list_api_probed", endpoint=self._endpoint.name, list_api=self._endpoint.list_api
            )
            if self._endpoint.list_api == "v2":
                return response
            request.pop("ContinuationToken", None)
            request.pop("StartAfter", None)
        if after is not None:
            request["Marker"] = after
        return dict(await self._call(None, lambda: self._client.list_objects(**request)))

    async def read(self, key: str) -> StoredObject:
        self._check_key(key)

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
        return StoredObject(info=await self._with_sidecar(info), data=data)

    async def head(self, key: str) -> ObjectInfo:
        self._check_key(key)
        response = await self._call(
            key, lambda: self._client.head_object(Bucket=self._bucket, Key=self._full_key(key))
        )
        info = ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=response["ETag"],
            last_modified=response["LastModified"].astimezone(UTC),
            metadata=decode_metadata(response.get("Metadata", {})),
            content_type=response.get("ContentType"),
        )
        return await self._with_sidecar(info)

    # -- metadata sidecars, for stores that do not keep user metadata ---------------------------

    def _sidecars(self) -> bool:
        """Whether metadata may have to live in a sidecar: the store drops it, or is not probed yet."""
        return self._endpoint.metadata is not True

    async def _with_sidecar(self, info: ObjectInfo) -> ObjectInfo:
        """`info` with the metadata its sidecar keeps, when the store kept none and the sidecar
        describes exactly this object (same etag); otherwise `info` as it is."""
        if info.metadata or not self._sidecars() or info.key.startswith(PRIVATE_PREFIX):
            return info
        try:
            response = await self._client.get_object(Bucket=self._bucket, Key=self._sidecar_key(info.key))
            async with response["Body"] as body:
                sidecar = json.loads(await body.read())
        except ClientError:
            return info  # no sidecar (or unreadable): the object has no metadata
        except ValueError:
            return info
        metadata = sidecar.get("metadata") if isinstance(sidecar, dict) else None
        if sidecar.get("etag") != info.etag or not isinstance(metadata, dict):
            return info  # written for another version of the object
        return replace(info, metadata={str(k): str(v) for k, v in metadata.items()})

    def _sidecar_key(self, key: str) -> str:
        return self._full_key(f"{SIDECAR_PREFIX}{key}.json")

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
        self._check_key(key)
        metadata = dict(metadata or {})
        check_metadata(metadata)
        if if_match is not None and if_none_match:
            raise ValueError("pass if_match or if_none_match, not both")
        content_type = content_type or DEFAULT_CONTENT_TYPE
        if if_match is not None or if_none_match:
            await self._endpoint.ensure_probed(self)
            self._endpoint.check_conditional(str(self.location), key)
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
        if metadata and self._sidecars() and not key.startswith(PRIVATE_PREFIX):
            sidecar = json.dumps({"etag": response["ETag"], "metadata": metadata}).encode()
            sidecar_key = self._sidecar_key(key)
            await self._call(
                key, lambda: self._client.put_object(Bucket=self._bucket, Key=sidecar_key, Body=sidecar)
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
        self._check_key(key)
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": self._full_key(key)}
        if if_match is not None:
            await self._endpoint.ensure_probed(self)
            self._endpoint.check_conditional(str(self.location), key)
            request["IfMatch"] = if_match
        await self._call(key, lambda: self._client.delete_object(**request), conditional=if_match is not None)
        if self._sidecars() and not key.startswith(PRIVATE_PREFIX):
            sidecar_key = self._sidecar_key(key)
            await self._call(key, lambda: self._client.delete_object(Bucket=self._bucket, Key=sidecar_key))

    async def presigned_get_url(self, key: str, *, expires_s: int) -> str:
        self._check_key(key)
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
            raise self._error(key, f"cannot reach {self._endpoint.name}") from exc
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


def _server_date(response_metadata: Mapping[str, Any]) -> datetime:
    """The response's `Date` header as UTC, or now when it is missing or unreadable."""
    header = response_metadata.get("HTTPHeaders", {}).get("date")
    if header:
        try:
            return parsedate_to_datetime(header).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)
