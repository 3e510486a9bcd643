"""Opens a `Storage` for any location, sharing one S3 client between all S3 locations."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ocrbatch.errors import StorageError
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.local import LocalStorage
from ocrbatch.storage.s3 import S3Storage, open_s3_client

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


class StorageFactory:
    """Storage views for locations: `async with StorageFactory(settings) as f: await f.open(loc)`.

    The S3 client (and its connection pool) is created on first use and closed on exit.
    """

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._stack = AsyncExitStack()
        self._s3_client: S3Client | None = None

    async def __aenter__(self) -> StorageFactory:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._s3_client = None
        await self._stack.aclose()

    async def open(self, location: Location, *, create: bool = False) -> Storage:
        """A storage view on `location`; with `create`, a local directory is made if missing (a
        location ocrbatch writes to: results, control). Buckets are never created."""
        if not location.is_s3:
            if create:
                try:
                    await asyncio.to_thread(Path(location.prefix).mkdir, parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(
                        f"cannot create the directory: {exc.strerror}", location=str(location)
                    ) from None
            return LocalStorage(location)
        if self._s3_client is None:
            self._s3_client = await open_s3_client(self._settings, self._stack)
        return S3Storage(location, self._s3_client)
