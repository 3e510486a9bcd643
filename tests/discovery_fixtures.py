"""Helpers for the discovery tests: a batch's input and result storages (`Pair`) with helpers to
lay out inputs, results and failure records, and each discovered item summed up as a string."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.worker.discovery import DiscoveredItem, discover


@dataclass(frozen=True)
class PairLocations:
    settings: StorageSettings
    inputs: Location
    results: Location


@dataclass(frozen=True)
class Pair:
    """A batch's input and result storages, with helpers to lay out objects."""

    inputs: Storage
    results: Storage

    async def put_inputs(self, *keys: str) -> dict[str, str]:
        """Write inputs (their key as content); return their etags."""
        return {key: (await self.inputs.write(key, key.encode())).etag for key in keys}

    async def put_result(self, key: str, source_etag: str, *, suffix: str = ".json") -> None:
        await self.results.write(key + suffix, b"{}", metadata={"source-etag": source_etag})

    async def put_failure(self, key: str, source_etag: str, *, retryable: bool) -> None:
        metadata = {"source-etag": source_etag, "retryable": "true" if retryable else "false"}
        await self.results.write(f"_failed/{key}.json", b"{}", metadata=metadata)

    async def discover(self, suffix: str = ".json", **options: Any) -> list[DiscoveredItem]:
        items = [item async for item in discover(self.inputs, self.results, result_suffix=suffix, **options)]
        listed = [info.key async for info in self.inputs.list()]
        assert [item.key for item in items] == listed  # every input once, in key order
        return items

    async def states(self, suffix: str = ".json", **options: Any) -> dict[str, str]:
        return state_by_key(await self.discover(suffix, **options))


def state_by_key(items: list[DiscoveredItem]) -> dict[str, str]:
    """Each item as "state (reason) [retry]", the parts present."""
    return {
        item.key: item.state
        + (f" ({item.reason})" if item.reason else "")
        + (" [retry]" if item.retry_of_failure else "")
        for item in items
    }
