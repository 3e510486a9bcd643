"""Helpers for the storage tests: the keys a storage lists, and many objects written at once."""

from __future__ import annotations

import asyncio

from ocrbatch.storage.base import Storage


async def listed_keys(storage: Storage, prefix: str = "", *, start_after: str | None = None) -> list[str]:
    return [info.key async for info in storage.list(prefix, start_after=start_after)]


async def write_all(storage: Storage, keys: list[str]) -> None:
    await asyncio.gather(*(storage.write(key, key.encode()) for key in keys))
