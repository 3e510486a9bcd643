"""Opens a `Storage` for any location, sharing one S3 client between all S3 locations.

The factory also keeps what each endpoint was found to do (`Endpoint`, one for the S3 endpoint and
one for local directories): a view on a location that ocrbatch writes to (`create=True`) probes its
endpoint on first open, so conditional writes and metadata are known before they are relied on.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ocrbatch.errors import StorageError
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.capabilities import Endpoint
from ocrbatch.storage.local import LocalStorage
from ocrbatch.storage.s3_names import endpoint_name

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from ocrbatch.storage.s3 import S3Storage


class StorageFactory:
    """Storage views for locations: `async with StorageFactory(settings) as f: await f.open(loc)`.

    The S3 client (and its connection pool) is created on first use and closed on exit.
    """

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._stack = AsyncExitStack()
        self._s3_client: S3Client | None = None
        self._endpoints = {
            "local": Endpoint.configured("local", conditional_writes=settings.conditional_writes),
            "s3": Endpoint.configured(
                endpoint_name(settings.endpoint_url),
                list_api=settings.list_api,
                conditional_writes=settings.conditional_writes,
            ),
        }
        self._endpoints["local"].list_api = "walk"

    async def __aenter__(self) -> StorageFactory:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def close_with(self, close: Callable[[], Awaitable[None]]) -> None:
        """Have `close` awaited when the factory closes (a client opened beside its storages)."""
        self._stack.push_async_callback(close)

    async def aclose(self) -> None:
        self._s3_client = None
        await self._stack.aclose()

    def endpoint(self, location: Location) -> Endpoint:
        """What `location`'s endpoint is known to do."""
        return self._endpoints["s3" if location.is_s3 else "local"]

    def endpoints(self) -> list[Endpoint]:
        """The endpoints probed or listed so far, for `config check`, /readyz and metrics."""
        return [endpoint for endpoint in self._endpoints.values() if endpoint.probed or endpoint.list_api]

    async def capabilities(self, location: Location) -> Endpoint:
        """`location`'s endpoint, probed in `location` (which must be writable) if not yet."""
        storage = await self.open(location, create=True)
        endpoint = self.endpoint(location)
        await endpoint.ensure_probed(storage)
        return endpoint

    async def open(self, location: Location, *, create: bool = False, private: bool = False) -> Storage:
        """A storage view on `location`; with `create` (a location ocrbatch writes to: results,
        control), a local directory is made if missing, and an S3 endpoint not probed yet is probed
        there. Buckets are never created. `private` (the control path): local files are 0600."""
        if not location.is_s3:
            if create:
                try:
                    await asyncio.to_thread(Path(location.prefix).mkdir, parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(
                        f"cannot create the directory: {exc.strerror}", location=str(location)
                    ) from None
            return LocalStorage(location, private=private)
        s3_storage, open_s3_client = _s3_backend()
        if self._s3_client is None:
            self._s3_client = await open_s3_client(self._settings, self._stack)
        storage = s3_storage(location, self._s3_client, self._endpoints["s3"])
        if create:
            await self._endpoints["s3"].ensure_probed(storage)
        return storage


def _s3_backend() -> tuple[type[S3Storage], Callable[[StorageSettings, AsyncExitStack], Awaitable[S3Client]]]:
    """The S3 backend, imported on first use: aioboto3 and botocore take a quarter of a second to
    load, which a worker on local directories never needs."""
    backend = importlib.import_module("ocrbatch.storage.s3")
    return backend.S3Storage, backend.open_s3_client
