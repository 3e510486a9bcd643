"""Leases on keys of a `Coordination`, with nothing but compare-and-swap: no cluster protocol.

A lease is a small JSON document `{"owner", "expires_at", ...}` (wall-clock seconds, since other
processes and machines read it). It is taken with a create, taken over with a replace once expired
(or unreadable, or its holder is known to be dead), renewed with a replace on the version its
holder got, and released with a versioned delete, so a holder whose lease was taken over cannot
remove the new one.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from ocrbatch.coordination.base import Coordination
from ocrbatch.errors import PreconditionFailed


def new_owner() -> str:
    """An owner id for one process: leases are never shared across restarts."""
    return secrets.token_hex(8)


class Leases:
    """Take, renew and release leases on keys of `coordination` as `owner`."""

    def __init__(
        self,
        coordination: Coordination,
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
        about_owner: Mapping[str, Any] | None = None,
        holder_dead: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        """`about_owner` goes into every lease document; `holder_dead` tells from another lease's
        document that its holder is gone, so the lease need not be waited out."""
        self._coordination = coordination
        self.owner = owner
        self._clock = clock
        self._about_owner = dict(about_owner or {})
        self._holder_dead = holder_dead

    async def take(self, key: str, ttl_s: float) -> str | None:
        """The etag of the lease on `key` if it was free or expired; None while someone holds it."""
        try:
            return await self._coordination.create(key, self._body(ttl_s))
        except PreconditionFailed:
            pass
        holder = await self._read(key)
        if holder is None:  # released in between: one more try, then it is someone else's turn
            with contextlib.suppress(PreconditionFailed):
                return await self._coordination.create(key, self._body(ttl_s))
            return None
        etag, expires_at, document = holder
        if expires_at >= self._clock() and not (self._holder_dead and self._holder_dead(document)):
            return None
        try:
            return await self._coordination.replace(key, self._body(ttl_s), version=etag)
        except PreconditionFailed:
            return None  # another taker was quicker

    async def held(self, key: str) -> bool:
        """Whether someone holds a live lease on `key` (not expired, holder not known to be dead)."""
        holder = await self._read(key)
        if holder is None:
            return False
        _, expires_at, document = holder
        return expires_at >= self._clock() and not (self._holder_dead and self._holder_dead(document))

    async def renew(self, key: str, etag: str, ttl_s: float) -> str | None:
        """The lease's new etag, or None when it is no longer ours (it expired and was taken over)."""
        try:
            return await self._coordination.replace(key, self._body(ttl_s), version=etag)
        except PreconditionFailed:
            return None

    async def release(self, key: str, etag: str) -> None:
        """Remove our lease; a lease taken over by someone else is left alone."""
        with contextlib.suppress(PreconditionFailed):
            await self._coordination.delete(key, version=etag)

    def _body(self, ttl_s: float) -> bytes:
        document = {**self._about_owner, "owner": self.owner, "expires_at": self._clock() + ttl_s}
        return json.dumps(document).encode()

    async def _read(self, key: str) -> tuple[str, float, dict[str, Any]] | None:
        stored = await self._coordination.read(key)
        if stored is None:
            return None
        try:
            document = json.loads(stored.data)
            expires_at = float(document["expires_at"])
        except (ValueError, KeyError, TypeError):
            return stored.version, 0.0, {}  # an unreadable lease is treated as expired
        return stored.version, expires_at, document if isinstance(document, dict) else {}
