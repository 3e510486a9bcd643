"""`Coordination` on the control location: documents are objects, versions are etags.

With conditional writes (probed, or stated by `[storage] conditional_writes = "yes"`), every change
is one conditional request and the store decides who wins. Without them (`single_writer=True`),
a change is a read, a comparison and a plain write: correct only because this process is the
control path's single writer (`single_writer.py`), and the README states the window it leaves for
edits made through the CLI or API while the worker runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ocrbatch.coordination.base import Coordination, Versioned
from ocrbatch.errors import ObjectNotFound, PreconditionFailed
from ocrbatch.storage.base import Storage

_JSON = "application/json"


class StorageCoordination(Coordination):
    """Versioned documents as objects of `storage` (the control location)."""

    def __init__(self, storage: Storage, *, single_writer: bool = False) -> None:
        self.storage = storage
        self._single_writer = single_writer
        self.backend = "single-writer" if single_writer else "storage"
        self.where = str(storage.location)

    async def read(self, key: str) -> Versioned | None:
        try:
            stored = await self.storage.read(key)
        except ObjectNotFound:
            return None
        return Versioned(stored.data, stored.info.etag)

    async def create(self, key: str, data: bytes) -> str:
        if self._single_writer:
            if await self.read(key) is not None:
                raise PreconditionFailed("document exists", location=self.where, key=key)
            return (await self.storage.write(key, data, content_type=_JSON)).etag
        return (await self.storage.write(key, data, content_type=_JSON, if_none_match=True)).etag

    async def replace(self, key: str, data: bytes, *, version: str) -> str:
        if self._single_writer:
            await self._expect(key, version)
            return (await self.storage.write(key, data, content_type=_JSON)).etag
        try:
            return (await self.storage.write(key, data, content_type=_JSON, if_match=version)).etag
        except ObjectNotFound:
            raise PreconditionFailed("document is gone", location=self.where, key=key) from None

    async def delete(self, key: str, *, version: str | None = None) -> None:
        if version is None:
            await self.storage.delete(key)
            return
        if self._single_writer:
            await self._expect(key, version)
            await self.storage.delete(key)
            return
        try:
            await self.storage.delete(key, if_match=version)
        except ObjectNotFound:
            raise PreconditionFailed("document is gone", location=self.where, key=key) from None

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        async for info in self.storage.list(prefix):
            yield info.key

    async def _expect(self, key: str, version: str) -> None:
        current = await self.read(key)
        if current is None or current.version != version:
            raise PreconditionFailed("document changed since it was read", location=self.where, key=key)
