"""One batch's webhook outbox: what waits in its result location, its records in the coordination
backend, and how both are written.

In the batch's result location (`_outbox/`):
- `_outbox/items/{writer}-{digest}.json`: a finished item, written before its result, until its
  chunk is written. It names the result it announces, so after a crash it is sent only if that
  result was kept.
- `_outbox/{sequence}-{chunk id}.json`: a chunk, until a receiver takes it.
- `_outbox/dead/`: chunks a receiver refused for good.

In the coordination backend (`Coordination`: Redis, the control location's conditional writes, or
the single writer), under `outbox/{batch id}/`, since several replicas chunk the same batch:
- `sequence.json`: `{"last": N}`, the last chunk number given out. A number is taken by a
  compare-and-swap (read, then `replace` at the version read, or `create` for the first), tried
  again when another writer got there first: every replica gets unique, rising numbers, and a lost
  race consumes none.
- `manifests/{chunk id}.json`: the markers of a chunk being made. Order: manifest, chunk, markers
  deleted, manifest deleted; so a crash in between never sends an item twice.

Before the coordination kept them, both lived in the result location as plain writes
(`_outbox/sequence.json`, `_outbox/manifests/`). An upgraded batch starts numbering after the
legacy `_outbox/sequence.json` (read only while the coordination has no counter, never written),
and its legacy manifests are settled once when the batch is attached. Without a coordination (an
outbox on a bare local directory, as in unit tests), the result location itself is the
coordination: `StorageCoordination` over it, with the counter and manifests at those legacy keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ocrbatch.batches.layout import OUTBOX_PREFIX
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.errors import ObjectNotFound, PreconditionFailed, StorageError
from ocrbatch.storage.base import Storage
from ocrbatch.types import Sleep

log = structlog.get_logger("ocrbatch.webhooks")
DEAD_PREFIX = OUTBOX_PREFIX + "dead/"
ITEMS_PREFIX = OUTBOX_PREFIX + "items/"
# The legacy records in the result location (and where an outbox without coordination keeps them).
MANIFESTS_PREFIX = OUTBOX_PREFIX + "manifests/"
SEQUENCE_KEY = OUTBOX_PREFIX + "sequence.json"
# The outbox records of every batch in the coordination backend.
COORDINATION_PREFIX = "outbox/"
_CHUNK_SUFFIX = ".json"
# Compare-and-swap attempts for one chunk number, and the jittered waits between them (full jitter,
# doubling from the base up to the cap): lost races are retried, never a number skipped.
SEQUENCE_ATTEMPTS = 20
_RETRY_BASE_S = 0.005
_RETRY_CAP_S = 0.25


def coordination_prefix(batch_id: str) -> str:
    """Where a batch's outbox records live in the coordination backend."""
    return f"{COORDINATION_PREFIX}{batch_id}/"


def sequence_key(batch_id: str) -> str:
    """The coordination key of a batch's chunk counter."""
    return coordination_prefix(batch_id) + "sequence.json"


def manifest_key(batch_id: str, chunk_id: str) -> str:
    """The coordination key of the manifest of a batch's chunk being made."""
    return f"{coordination_prefix(batch_id)}manifests/{chunk_id}.json"


def chunk_key(sequence: int, chunk_id: str) -> str:
    """Where chunk number `sequence` waits for delivery: keys sort in sequence order."""
    return f"{OUTBOX_PREFIX}{sequence:012d}-{chunk_id}{_CHUNK_SUFFIX}"


def chunk_id_of(key: str) -> str:
    """The chunk id a chunk's key was built with (`chunk_key`'s inverse)."""
    return key.rsplit("-", 1)[-1].removesuffix(_CHUNK_SUFFIX)


WriterBusy = Callable[[str], Awaitable[bool]]  # whether a writer may still be making its chunks


ANNOUNCED_BY = "webhook-marker"  # result metadata: the marker that announces this result


def announced_by(marker: str | None) -> dict[str, str]:
    """The metadata naming the marker that announces a result or failure record (none without)."""
    return {} if marker is None else {ANNOUNCED_BY: marker}


class SequenceUnavailable(StorageError):
    """No chunk number could be taken: the counter kept changing under us, or is unreadable."""


_DELETES_AT_ONCE = 32


class Outbox:
    """The outbox of the batch whose result location is `results`, written by `writer`.

    With `coordination` (and the batch's id), the chunk counter and the manifests are documents of
    that backend, shared by every replica; without, of `StorageCoordination(results)` (a result
    location with conditional writes, used by one process or by writers on one local directory).
    """

    def __init__(
        self,
        results: Storage,
        *,
        writer: str,
        coordination: Coordination | None = None,
        batch_id: str | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.results = results
        self._writer = writer
        self._sleep = sleep
        if coordination is None:
            self.coordination: Coordination = StorageCoordination(results)
            self._sequence_key, self._manifests_prefix = SEQUENCE_KEY, MANIFESTS_PREFIX
            self._legacy_apart = False  # the legacy keys are this coordination's own
        else:
            if batch_id is None:
                raise ValueError("an outbox in a coordination backend needs its batch's id")
            self.coordination = coordination
            self._sequence_key = sequence_key(batch_id)
            self._manifests_prefix = coordination_prefix(batch_id) + "manifests/"
            self._legacy_apart = True
        self._allocating = asyncio.Lock()  # this writer's numbers one at a time: it never races itself

    # -- items ------------------------------------------------------------------------------------

    async def write_item(
        self, item: dict[str, Any], *, result_key: str | None, source_etag: str | None
    ) -> str:
        """Make a finished item durable; returns its marker's key."""
        digest = hashlib.sha256(str(item["key"]).encode()).hexdigest()[:40]
        marker = f"{ITEMS_PREFIX}{self._writer}-{digest}.json"
        document = {"writer": self._writer, "item": item, "result_key": result_key}
        document["source_etag"] = source_etag
        body = json.dumps(document, ensure_ascii=False).encode()
        await asyncio.shield(self.results.write(marker, body, content_type="application/json"))
        return marker

    async def markers_by_writer(self, *, excluding: set[str]) -> dict[str, list[str]]:
        """Every item marker but `excluding`, by the writer that left it."""
        found: dict[str, list[str]] = {}
        async for info in self.results.list(ITEMS_PREFIX):
            if info.key not in excluding:
                writer = info.key.removeprefix(ITEMS_PREFIX).partition("-")[0]
                found.setdefault(writer, []).append(info.key)
        return found

    async def read_item(self, marker: str) -> dict[str, Any] | None:
        """The item a marker holds, if its result was kept; a marker whose result was not (its
        writer died before writing it: the input is still pending) is removed."""
        try:
            document = json.loads((await self.results.read(marker)).data)
            item: dict[str, Any] = document["item"]
        except ObjectNotFound:
            return None
        except (ValueError, KeyError, TypeError):
            log.error("webhook.marker_unreadable", key=marker)
            return None
        if not await self._result_kept(marker, document):
            log.info("webhook.marker_dropped", key=item.get("key"))
            await self.delete([marker])
            return None
        return item

    async def _result_kept(self, marker: str, document: dict[str, Any]) -> bool:
        """Whether the result the marker announces is there, made from the same input, and still
        the one this marker announces: a result written again by another worker (which took the
        item over from this marker's dead writer) names that worker's marker instead."""
        result_key = document.get("result_key")
        if not isinstance(result_key, str):
            return True
        try:
            info = await self.results.head(result_key)
        except ObjectNotFound:
            return False
        announcer = info.metadata.get(ANNOUNCED_BY)
        if announcer is not None and announcer != marker:
            return False
        return info.metadata.get("source-etag") == document.get("source_etag")

    # -- chunks -----------------------------------------------------------------------------------

    @staticmethod
    def is_chunk(key: str) -> bool:
        return (
            key.startswith(OUTBOX_PREFIX)
            and key.endswith(_CHUNK_SUFFIX)
            and not key.startswith((DEAD_PREFIX, ITEMS_PREFIX, MANIFESTS_PREFIX))
            and key != SEQUENCE_KEY
        )

    async def chunk_keys(self) -> list[str]:
        """The chunks waiting for delivery, oldest first."""
        return [info.key async for info in self.results.list(OUTBOX_PREFIX) if self.is_chunk(info.key)]

    async def dead_letters(self) -> int:
        return len([info async for info in self.results.list(DEAD_PREFIX)])

    async def next_sequence(self) -> int:
        """The batch's next chunk number, unique across writers and rising across restarts: the
        counter in the coordination advanced by one compare-and-swap. A race lost to another writer
        is tried again after a short jittered wait, `SEQUENCE_ATTEMPTS` times in all, then
        `SequenceUnavailable`; a lost race consumes no number."""
        async with self._allocating:
            for attempt in range(SEQUENCE_ATTEMPTS):
                if attempt:
                    await self._sleep(random.uniform(0, min(_RETRY_CAP_S, _RETRY_BASE_S * 2**attempt)))
                current = await self.coordination.read(self._sequence_key)
                last = await self._legacy_last() if current is None else self._last_of(current.data)
                body = json.dumps({"last": last + 1}).encode()
                try:
                    if current is None:
                        await self.coordination.create(self._sequence_key, body)
                    else:
                        await self.coordination.replace(self._sequence_key, body, version=current.version)
                except PreconditionFailed:
                    continue  # another writer took a number meanwhile
                return last + 1
        raise SequenceUnavailable(
            f"no chunk number after {SEQUENCE_ATTEMPTS} attempts: other writers kept changing the "
            "counter first (the chunk is made on the next flush)",
            location=self.coordination.where,
            key=self._sequence_key,
        )

    def _last_of(self, data: bytes) -> int:
        try:
            last = json.loads(data)["last"]
        except (ValueError, KeyError, TypeError):
            last = None
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise SequenceUnavailable(
                'the chunk counter is unreadable (expected {"last": N}, N the last chunk number '
                "sent); fix it by hand, to at least the highest sequence receivers have seen",
                location=self.coordination.where,
                key=self._sequence_key,
            )
        return last

    async def _legacy_last(self) -> int:
        """Where a counter that does not exist yet starts: after the legacy `_outbox/sequence.json`
        of the result location, if the batch has one (it was chunked before the upgrade)."""
        if not self._legacy_apart:
            return 0  # the counter is that object, and it does not exist
        try:
            stored = await self.results.read(SEQUENCE_KEY)
        except ObjectNotFound:
            return 0
        try:
            last = int(json.loads(stored.data)["last"])
        except (ValueError, KeyError, TypeError):
            log.error("webhook.legacy_sequence_unreadable", key=SEQUENCE_KEY)
            return 0
        return max(last, 0)

    async def write_chunk(self, key: str, chunk_id: str, body: bytes, markers: list[str]) -> None:
        """Write a chunk and remove the markers of its items, under a manifest in the coordination."""
        manifest = f"{self._manifests_prefix}{chunk_id}.json"
        record = {"chunk": key, "markers": markers, "writer": self._writer}
        await self.coordination.create(manifest, json.dumps(record).encode())
        await self.results.write(key, body, metadata={"chunk-id": chunk_id}, content_type="application/json")
        await self.delete(markers)
        await self.coordination.delete(manifest)

    async def settle_manifests(self, *, writer_busy: WriterBusy | None = None) -> None:
        """Finish chunkings a crash interrupted: a written chunk's markers are removed; a chunk never
        written leaves its markers to be chunked again. A manifest whose writer is still at work
        (`writer_busy`) is left to it. The manifests are the coordination's, and (once, after an
        upgrade) the legacy ones under `_outbox/manifests/` of the result location."""
        for key in [key async for key in self.coordination.keys(self._manifests_prefix)]:
            stored = await self.coordination.read(key)
            if stored is not None and await self._settle(key, stored.data, writer_busy):
                await self.coordination.delete(key)
        if not self._legacy_apart:
            return
        for key in [info.key async for info in self.results.list(MANIFESTS_PREFIX)]:
            try:
                data = (await self.results.read(key)).data
            except ObjectNotFound:
                continue  # settled meanwhile
            if await self._settle(key, data, writer_busy):
                await self.delete([key])

    async def _settle(self, where: str, data: bytes, writer_busy: WriterBusy | None) -> bool:
        """Settle one manifest's chunk; False when it is left: unreadable (its markers are then
        recovered as items) or its writer is still making the chunk."""
        try:
            manifest = json.loads(data)
            chunk_key, markers = str(manifest["chunk"]), [str(key) for key in manifest["markers"]]
        except (ValueError, KeyError, TypeError):
            log.error("webhook.manifest_unreadable", key=where)
            return False
        writer = manifest.get("writer")
        if writer_busy is not None and isinstance(writer, str) and await writer_busy(writer):
            return False
        try:
            await self.results.head(chunk_key)
        except ObjectNotFound:
            pass  # never written (or delivered by a worker that found it): the markers decide
        else:
            await self.delete(markers)
        return True

    async def park(self, key: str, body: bytes, chunk_id: str, reason: str) -> str:
        """Move a refused chunk to the dead letters; returns where it is now."""
        dead_key = DEAD_PREFIX + key.removeprefix(OUTBOX_PREFIX)
        # A plain write: a replica parking the same chunk writes the same bytes.
        await self.results.write(dead_key, body, metadata={"chunk-id": chunk_id, "reason": reason})
        await self.results.delete(key)
        return dead_key

    async def delete(self, keys: list[str]) -> None:
        """Delete these keys, a few at a time; ones already gone are fine."""
        for start in range(0, len(keys), _DELETES_AT_ONCE):
            outcomes = await asyncio.gather(
                *(self.results.delete(key) for key in keys[start : start + _DELETES_AT_ONCE]),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, Exception) and not isinstance(outcome, ObjectNotFound):
                    raise outcome
