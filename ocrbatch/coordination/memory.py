"""`Coordination` in this process's memory: for what only this process can ever contend for.

A single writer (`single_writer.py`) is the only worker on its control path, so its item claims
and its registration guard it only against itself (a pass and an announced upload holding the same
input): keeping them here instead of in the control location saves about four storage requests
per item, and nothing durable is lost, since a restarted worker has none of its former claims
either way.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import AsyncIterator

from ocrbatch.coordination.base import Coordination, Versioned
from ocrbatch.errors import PreconditionFailed


class MemoryCoordination(Coordination):
    """Versioned documents in a dict; versions count up from 1."""

    backend = "memory"

    def __init__(self, where: str = "this process") -> None:
        self.where = where
        self._documents: dict[str, Versioned] = {}
        self._sorted: list[bytes] = []  # the keys as UTF-8, in order
        self._versions = itertools.count(1)

    async def read(self, key: str) -> Versioned | None:
        return self._documents.get(key)

    async def create(self, key: str, data: bytes) -> str:
        if key in self._documents:
            raise PreconditionFailed("document exists", location=self.where, key=key)
        bisect.insort(self._sorted, key.encode())
        return self._store(key, data)

    async def replace(self, key: str, data: bytes, *, version: str) -> str:
        self._expect(key, version)
        return self._store(key, data)

    async def delete(self, key: str, *, version: str | None = None) -> None:
        if version is not None:
            self._expect(key, version)
        if self._documents.pop(key, None) is not None:
            encoded = key.encode()
            del self._sorted[bisect.bisect_left(self._sorted, encoded)]

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        encoded = prefix.encode()
        for key in self._sorted[bisect.bisect_left(self._sorted, encoded) :]:
            if not key.startswith(encoded):
                return
            yield key.decode()

    def _store(self, key: str, data: bytes) -> str:
        version = str(next(self._versions))
        self._documents[key] = Versioned(data, version)
        return version

    def _expect(self, key: str, version: str) -> None:
        current = self._documents.get(key)
        if current is None or current.version != version:
            raise PreconditionFailed("document changed since it was read", location=self.where, key=key)
