"""Storage with latency: every request of a wrapped `Storage` (read, head, listing page, write and
delete) takes `delay_s` longer, as a remote object store's requests do, and is counted by kind.
The worker gets it through a `StorageFactory` that wraps every storage it opens."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping

from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import DEFAULT_PAGE_SIZE, ObjectInfo, Storage, StoredObject
from ocrbatch.storage.factory import StorageFactory


class DelayedStorage(Storage):
    """`inner`, with `delay_s` added to every request: `read`, `head`, each page of `list_pages`,
    `write` and `delete` (a presigned URL is made locally, without a request); each is counted
    in `requests` as `{label} {kind}`."""

    def __init__(self, inner: Storage, delay_s: float, *, requests: Counter[str], label: str) -> None:
        self.location = inner.location
        self.listed_metadata = inner.listed_metadata
        self._inner = inner
        self._delay_s = delay_s
        self._requests = requests
        self._label = label

    async def _request(self, kind: str) -> None:
        self._requests[f"{self._label} {kind}"] += 1
        if self._delay_s > 0:
            await asyncio.sleep(self._delay_s)

    async def list_pages(
        self, prefix: str = "", *, start_after: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[list[ObjectInfo]]:
        pages = self._inner.list_pages(prefix, start_after=start_after, page_size=page_size)
        try:
            async for page in pages:
                await self._request("list")
                yield page
        finally:
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()

    async def read(self, key: str) -> StoredObject:
        await self._request("read")
        return await self._inner.read(key)

    async def head(self, key: str) -> ObjectInfo:
        await self._request("head")
        return await self._inner.head(key)

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
        await self._request("write")
        return await self._inner.write(
            key,
            data,
            metadata=metadata,
            content_type=content_type,
            if_match=if_match,
            if_none_match=if_none_match,
        )

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        await self._request("delete")
        await self._inner.delete(key, if_match=if_match)

    async def presigned_get_url(self, key: str, *, expires_s: int) -> str:
        return await self._inner.presigned_get_url(key, expires_s=expires_s)


class DelayedStorageFactory(StorageFactory):
    """A `StorageFactory` whose storages all answer `delay_s` late (none when `delay_s` is 0),
    their requests counted in `requests` by `labels` (location -> label; else "control" for the
    private storages and "other")."""

    def __init__(self, settings: StorageSettings, delay_s: float, *, labels: Mapping[str, str]) -> None:
        super().__init__(settings)
        self._delay_s = delay_s
        self._labels = dict(labels)
        self.requests: Counter[str] = Counter()

    async def open(self, location: Location, *, create: bool = False, private: bool = False) -> Storage:
        storage = await super().open(location, create=create, private=private)
        label = self._labels.get(str(location), "control" if private else "other")
        return DelayedStorage(storage, self._delay_s, requests=self.requests, label=label)
