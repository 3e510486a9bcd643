"""One interface for every compare-and-swap ocrbatch does: small versioned documents by key.

Batch documents, the catalog lease, item claims, outbox manifests and worker registrations are
all such documents. A `Coordination` keeps them where the operator chose (`[coordination]`):
- `storage`: objects in the control location, guarded by the store's conditional writes;
- `redis`: keys in a Redis database, guarded by short Lua scripts;
- on a store without conditional writes and no Redis, the control location with plain writes,
  used only after this process became the single writer (`single_writer.py`).

A version is opaque: compare it for equality and pass it back to `replace` or `delete`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Versioned:
    """A document's bytes and the version they were read at."""

    data: bytes
    version: str


class Coordination(ABC):
    """Versioned documents under string keys ("batches/0a1b.json"), listed in key order."""

    backend: str  # "storage", "redis" or "single-writer": what `config check` and /readyz show
    where: str  # the control location or the Redis server (without credentials)

    @abstractmethod
    async def read(self, key: str) -> Versioned | None:
        """The document and its version; None when there is none."""

    @abstractmethod
    async def create(self, key: str, data: bytes) -> str:
        """Store a new document; `PreconditionFailed` when one exists. Returns its version."""

    @abstractmethod
    async def replace(self, key: str, data: bytes, *, version: str) -> str:
        """Overwrite the document if it is still at `version`; `PreconditionFailed` when it changed
        or is gone. Returns the new version."""

    @abstractmethod
    async def delete(self, key: str, *, version: str | None = None) -> None:
        """Remove the document. With `version`, only if it is still at it (`PreconditionFailed`
        otherwise, a missing document included); without, a missing document is fine."""

    @abstractmethod
    def keys(self, prefix: str) -> AsyncIterator[str]:
        """The keys that start with `prefix`, in ascending order (UTF-8 bytes)."""

    async def aclose(self) -> None:  # noqa: B027 - most backends hold nothing to close
        """Release connections."""
