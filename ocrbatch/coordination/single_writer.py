"""One worker at a time on a control path whose store cannot compare-and-swap.

Without conditional writes and without Redis, two workers would both win every claim and bill
the same images twice. So the first worker becomes the control path's single writer: it writes
`locks/single-writer.json` (its owner id, host, pid, expiry), waits `settle_s`, and reads it back;
it renews the document while it runs and removes it on exit. A second worker that finds a live
document, or reads back someone else's, refuses to process and says what to configure.

The race window: two workers starting within the same instant both find no document and both
write. The read-back after `settle_s` catches this unless one worker's check-and-write took longer
than `settle_s`; then the later writer wins and the earlier one refuses. The README states this.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from ocrbatch.coordination.claims import about_this_process, process_gone
from ocrbatch.coordination.leases import new_owner
from ocrbatch.errors import ObjectNotFound, OcrBatchError, StorageError
from ocrbatch.storage.base import Storage
from ocrbatch.types import Sleep

log = structlog.get_logger("ocrbatch.claims")
SINGLE_WRITER_KEY = "locks/single-writer.json"


class SecondWriterRefused(OcrBatchError):
    """Another worker is the single writer of this control path."""


class SingleWriter:
    """This process as the only worker writing to `control` (a store without conditional writes)."""

    def __init__(
        self,
        control: Storage,
        *,
        ttl_s: float,
        settle_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._control = control
        self._ttl_s = ttl_s
        self._settle_s = settle_s
        self._clock = clock
        self._sleep = sleep
        self._host = socket.gethostname()
        self.owner = new_owner()
        self._held = False

    async def acquire(self) -> None:
        """Become the single writer, or raise `SecondWriterRefused` saying who is and what to do."""
        holder = await self._holder()
        if holder is not None and self._alive_other(holder):
            raise self._refusal(holder)
        await self._write()
        await self._sleep(self._settle_s)
        holder = await self._holder()
        if holder is None or holder.get("owner") != self.owner:
            raise self._refusal(holder or {})
        self._held = True
        log.warning(
            "worker.single_writer",
            control=str(self._control.location),
            reason="the store enforces no conditional writes and no Redis is configured",
        )

    async def keep_alive(self) -> None:
        """Renew every third of the lifetime until cancelled; a takeover is logged loudly."""
        while True:
            await self._sleep(self._ttl_s / 3)
            try:
                holder = await self._holder()
                if holder is not None and holder.get("owner") != self.owner:
                    log.error("worker.single_writer_lost", holder=_who(holder))
                await self._write()
            except StorageError as exc:
                log.warning("worker.single_writer_not_renewed", error=str(exc))

    async def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            holder = await self._holder()
            if holder is not None and holder.get("owner") == self.owner:
                await self._control.delete(SINGLE_WRITER_KEY)
        except StorageError as exc:  # it expires on its own
            log.warning("worker.single_writer_not_released", error=str(exc))

    async def _holder(self) -> dict[str, Any] | None:
        try:
            document = json.loads((await self._control.read(SINGLE_WRITER_KEY)).data)
        except ObjectNotFound:
            return None
        except ValueError:
            return {}  # unreadable: treated as expired
        return document if isinstance(document, dict) else {}

    def _alive_other(self, holder: dict[str, Any]) -> bool:
        try:
            expires_at = float(holder["expires_at"])
        except (KeyError, TypeError, ValueError):
            return False
        if holder.get("owner") == self.owner or expires_at < self._clock():
            return False
        return not process_gone(holder, host=self._host)

    async def _write(self) -> None:
        document = {
            **about_this_process(self._host),
            "owner": self.owner,
            "expires_at": self._clock() + self._ttl_s,
        }
        await self._control.write(SINGLE_WRITER_KEY, json.dumps(document).encode())

    def _refusal(self, holder: dict[str, Any]) -> SecondWriterRefused:
        return SecondWriterRefused(
            f"another worker ({_who(holder)}) is processing from {self._control.location}. This store"
            " does not enforce conditional writes, so two workers would send the same images twice:"
            ' stop the other worker, or run several with [coordination] backend = "redis" and url ='
            ' "redis://host:6379/0".'
        )


def _who(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"
