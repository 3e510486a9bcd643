"""One batch's webhook outbox in its result location: what waits there, and how it is written.

- `_outbox/items/{writer}-{digest}.json`: a finished item, written before its result, until its
  chunk is written. It names the result it announces, so after a crash it is sent only if that
  result was kept.
- `_outbox/{sequence}-{chunk id}.json`: a chunk, until a receiver takes it.
- `_outbox/manifests/{chunk id}.json`: the markers of a chunk being made. Order: manifest, chunk,
  markers deleted, manifest deleted; so a crash in between never sends an item twice.
- `_outbox/dead/`: chunks a receiver refused for good. `_outbox/sequence.json`: the last chunk number.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import structlog

from ocrbatch.batches.layout import OUTBOX_PREFIX
from ocrbatch.errors import ObjectNotFound
from ocrbatch.storage.base import Storage

log = structlog.get_logger("ocrbatch.webhooks")
DEAD_PREFIX = OUTBOX_PREFIX + "dead/"
ITEMS_PREFIX = OUTBOX_PREFIX + "items/"
MANIFESTS_PREFIX = OUTBOX_PREFIX + "manifests/"
SEQUENCE_KEY = OUTBOX_PREFIX + "sequence.json"
_CHUNK_SUFFIX = ".json"


def chunk_key(sequence: int, chunk_id: str) -> str:
    """Where chunk number `sequence` waits for delivery: keys sort in sequence order."""
    return f"{OUTBOX_PREFIX}{sequence:012d}-{chunk_id}{_CHUNK_SUFFIX}"


def chunk_id_of(key: str) -> str:
    """The chunk id a chunk's key was built with (`chunk_key`'s inverse)."""
    return key.rsplit("-", 1)[-1].removesuffix(_CHUNK_SUFFIX)


_DELETES_AT_ONCE = 32


class Outbox:
    """The outbox of the batch whose result location is `results`, written by `writer`."""

    def __init__(self, results: Storage, *, writer: str) -> None:
        self.results = results
        self._writer = writer
        self._sequence: int | None = None

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
        if not await self._result_kept(document):
            log.info("webhook.marker_dropped", key=item.get("key"))
            await self.delete([marker])
            return None
        return item

    async def _result_kept(self, marker: dict[str, Any]) -> bool:
        result_key = marker.get("result_key")
        if not isinstance(result_key, str):
            return True
        try:
            info = await self.results.head(result_key)
        except ObjectNotFound:
            return False
        return info.metadata.get("source-etag") == marker.get("source_etag")

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
        """The batch's next chunk number, persisted so numbers keep rising across restarts."""
        if self._sequence is None:
            try:
                self._sequence = int(json.loads((await self.results.read(SEQUENCE_KEY)).data)["last"])
            except (ObjectNotFound, ValueError, KeyError, TypeError):
                self._sequence = 0
        self._sequence += 1
        await self.results.write(SEQUENCE_KEY, json.dumps({"last": self._sequence}).encode())
        return self._sequence

    async def write_chunk(self, key: str, chunk_id: str, body: bytes, markers: list[str]) -> None:
        """Write a chunk and remove the markers of its items, under a manifest."""
        manifest = f"{MANIFESTS_PREFIX}{chunk_id}.json"
        await self.results.write(manifest, json.dumps({"chunk": key, "markers": markers}).encode())
        await self.results.write(key, body, metadata={"chunk-id": chunk_id}, content_type="application/json")
        await self.delete(markers)
        await self.delete([manifest])

    async def settle_manifests(self) -> None:
        """Finish chunkings a crash interrupted: a written chunk's markers are removed; a chunk never
        written leaves its markers to be chunked again."""
        async for info in self.results.list(MANIFESTS_PREFIX):
            try:
                manifest = json.loads((await self.results.read(info.key)).data)
                chunk_key, markers = str(manifest["chunk"]), [str(key) for key in manifest["markers"]]
            except (ObjectNotFound, ValueError, KeyError, TypeError):
                continue  # settled meanwhile, or unreadable: its markers are recovered as items
            try:
                await self.results.head(chunk_key)
            except ObjectNotFound:
                pass  # never written (or delivered by a worker that found it): the markers decide
            else:
                await self.delete(markers)
            await self.delete([info.key])

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
