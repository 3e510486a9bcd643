"""The soak's side of storage: its inputs, what the workers left in the result location, what a
worker had in hand when it was killed, and the deliberate breakages `--break` applies to show that
the checks fail.

A location is seen through a `LocationView`: a local directory (`LocalView`), or a prefix of a
bucket read and written with aioboto3 on moto itself, never through the proxy the workers go
through (`S3View`). Both leave ocrbatch's private objects out (`.ocrbatch/`: temp files, sidecars,
probes), as the workers' own listings do.
"""

from __future__ import annotations

import asyncio
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError
from pydantic import SecretStr

from bench.common import OCR_SECRET, png, write_inputs
from bench.receiver import FlakyReceiver
from ocrbatch.batches.layout import (
    FAILED_FALLBACK_PREFIX,
    OUTBOX_PREFIX,
    RESULT_SUFFIX,
    failed_input_key,
    failure_record_key,
    is_own_object,
    result_key,
)
from ocrbatch.clova.client import OcrCall, OcrClient, open_ocr_session
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.claims import CLAIM_PREFIX, claim_key
from ocrbatch.emulator.server import Emulator
from ocrbatch.storage.local_root import PRIVATE_DIR
from ocrbatch.storage.s3_names import PRIVATE_PREFIX
from ocrbatch.webhooks.outbox import SEQUENCE_KEY

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

EMPTY_INPUTS = 20  # zero-byte documents: failure records without a call
CORRUPT_INPUTS = 20  # unreadable documents: failure records without a call
UNSUPPORTED_INPUTS = 10  # .txt: skipped, neither result nor failure record
BREAKS = ("duplicate-record", "partial-object", "double-billing", "lost-webhook", "secret-in-log")
JSON_SUFFIX = RESULT_SUFFIX["json"]  # the soak's batch writes JSON results
S3_CONCURRENCY = 16  # requests at once to moto


class LocationView(ABC):
    """A location as the soak sees it, behind the workers' backs: every object by key (ocrbatch's
    private objects left out), their bytes, and writes (inputs, `--break`)."""

    @abstractmethod
    async def keys(self) -> list[str]:
        """Every object key, in no particular order."""

    @abstractmethod
    async def read_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The bytes of `keys`; a key whose object is gone (deleted since it was listed) is left out."""

    @abstractmethod
    async def write_many(self, objects: Mapping[str, bytes]) -> None:
        """Write each object whole (replacing what is there)."""

    async def temp_files(self) -> int:
        """Temp files of interrupted writes (invisible to listings, but litter)."""
        return 0


def local_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(key, path) of every file under `root`, ocrbatch's private directory left out."""
    for directory, subdirectories, files in os.walk(root):
        if Path(directory) == root and PRIVATE_DIR in subdirectories:
            subdirectories.remove(PRIVATE_DIR)
        for name in files:
            path = Path(directory) / name
            yield path.relative_to(root).as_posix(), path


class LocalView(LocationView):
    """A local directory; `.ocrbatch/` at its root is ocrbatch's."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    async def keys(self) -> list[str]:
        return await asyncio.to_thread(lambda: [key for key, _ in local_files(self.root)])

    async def read_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        def read() -> dict[str, bytes]:
            found = {}
            for key in keys:
                try:
                    found[key] = (self.root / key).read_bytes()
                except FileNotFoundError:
                    continue
            return found

        return await asyncio.to_thread(read)

    async def write_many(self, objects: Mapping[str, bytes]) -> None:
        def write() -> None:
            for key, data in objects.items():
                (self.root / key).parent.mkdir(parents=True, exist_ok=True)
                (self.root / key).write_bytes(data)

        await asyncio.to_thread(write)

    async def temp_files(self) -> int:
        tmp = self.root / PRIVATE_DIR / "tmp"
        return await asyncio.to_thread(lambda: sum(1 for _ in tmp.iterdir()) if tmp.is_dir() else 0)


class S3View(LocationView):
    """`s3://bucket/prefix` through `client` (on moto itself); `prefix/.ocrbatch/` is ocrbatch's,
    and a PUT is whole or absent, so no temp file is ever left."""

    def __init__(self, client: S3Client, bucket: str, prefix: str) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._limit = asyncio.Semaphore(S3_CONCURRENCY)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    async def keys(self) -> list[str]:
        found: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if key and not key.endswith("/") and not key.startswith(PRIVATE_PREFIX):
                    found.append(key)
        return found

    async def _read(self, key: str) -> bytes | None:
        async with self._limit:
            try:
                response = await self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                    return None
                raise
            async with response["Body"] as body:
                return await body.read()

    async def read_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        wanted = list(keys)
        datas = await asyncio.gather(*(self._read(key) for key in wanted))
        return {key: data for key, data in zip(wanted, datas, strict=True) if data is not None}

    async def _write(self, key: str, data: bytes) -> None:
        async with self._limit:
            await self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    async def write_many(self, objects: Mapping[str, bytes]) -> None:
        await asyncio.gather(*(self._write(key, data) for key, data in objects.items()))


def write_soak_inputs(directory: Path, items: int) -> tuple[set[str], set[str]]:
    """`items` PNGs in folders of 1,000, plus empty, corrupt and unsupported files; returns the
    documents (keys the worker must settle) and the unsupported keys."""
    documents = set(
        write_inputs(directory, items, key_of=lambda index: f"day-{index // 1000:02}/scan-{index:05}.png")
    )
    for index in range(EMPTY_INPUTS):
        (directory / f"empty-{index:02}.png").write_bytes(b"")
        documents.add(f"empty-{index:02}.png")
    for index in range(CORRUPT_INPUTS):
        (directory / f"corrupt-{index:02}.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
        documents.add(f"corrupt-{index:02}.png")
    skipped = set()
    for index in range(UNSUPPORTED_INPUTS):
        (directory / f"notes-{index:02}.txt").write_text("not a document\n", encoding="utf-8")
        skipped.add(f"notes-{index:02}.txt")
    return documents, skipped


async def copy_inputs(directory: Path, target: LocationView) -> int:
    """Copy every file under `directory` to `target` (inputs written locally, then uploaded)."""
    files = await asyncio.to_thread(lambda: {key: path.read_bytes() for key, path in local_files(directory)})
    await target.write_many(files)
    return len(files)


async def read_objects(view: LocationView) -> dict[str, bytes]:
    return await view.read_many(await view.keys())


async def leftover_temp_files(view: LocationView) -> int:
    return await view.temp_files()


async def stored_inputs(view: LocationView, among: Collection[str]) -> set[str]:
    """The inputs of `among` that have a result. A failure record does not count: an image that
    was recognised is safe only once its result is written."""
    if not among:
        return set()
    keys = set(await view.keys())
    return {key for key in among if result_key(key, JSON_SUFFIX) in keys}


async def settled(view: LocationView) -> tuple[set[str], set[str], int]:
    """Inputs with a result, inputs with a final failure record, chunks waiting in the outbox."""
    results, final_failures, outbox = set(), set(), 0
    records: dict[str, str | None] = {}  # failure record -> its input (None: the record's `key` says)
    for key in await view.keys():
        if (source := failed_input_key(key)) is not None or key.startswith(FAILED_FALLBACK_PREFIX):
            records[key] = source
        elif key.startswith(OUTBOX_PREFIX):
            outbox += key.endswith(".json") and key != SEQUENCE_KEY  # chunks, markers, manifests
        elif key.endswith(JSON_SUFFIX) and not is_own_object(key):
            results.add(key.removesuffix(JSON_SUFFIX))
    for key, data in (await view.read_many(records)).items():
        try:
            record = json.loads(data)
            retryable = record.get("retryable", True)
            input_key = records[key] or str(record["key"])
        except (ValueError, KeyError):
            retryable = True  # being written or broken: not settled
        if not retryable:
            final_failures.add(input_key)
    return results, final_failures, outbox


async def held_claims(
    coordination: Coordination, batch_id: str, documents: Iterable[str], pid: int
) -> set[str]:
    """The inputs of `documents` whose claim (`coordination/claims.py`) is held by process `pid`."""
    by_claim = {claim_key(batch_id, key): key for key in documents}
    held = set()
    async for key in coordination.keys(f"{CLAIM_PREFIX}{batch_id}/"):
        stored = await coordination.read(key)
        if stored is None or key not in by_claim:
            continue
        try:
            holder = json.loads(stored.data)
        except ValueError:
            continue
        if isinstance(holder, dict) and holder.get("pid") == pid:
            held.add(by_claim[key])
    return held


async def apply_break(
    name: str, *, results: LocationView, emulator: Emulator, receiver: FlakyReceiver, log: Path
) -> str:
    """Break one invariant on purpose; returns what was done."""
    result_key = sorted(
        key for key in await results.keys() if key.startswith("day-") and key.endswith(JSON_SUFFIX)
    )[0]
    source_key = result_key.removesuffix(JSON_SUFFIX)
    if name == "duplicate-record":
        record = {"key": source_key, "message": "written by --break", "retryable": False}
        await results.write_many({failure_record_key(source_key): json.dumps(record).encode()})
        return f"wrote a failure record beside the result of {source_key}"
    if name == "partial-object":
        data = (await results.read_many([result_key]))[result_key]
        await results.write_many({result_key: data[:20]})
        return f"cut {result_key} to 20 bytes"
    if name == "double-billing":
        async with open_ocr_session() as session:
            client = OcrClient(session, invoke_url=emulator.url + "/general", secret=SecretStr(OCR_SECRET))
            await client.recognize(OcrCall(name=source_key, image_format="png", data=png(200, 100)))
        return f"recognised {source_key} once more"
    if name == "lost-webhook":
        receiver.deliveries[:] = [
            delivery
            for delivery in receiver.deliveries
            if source_key not in {key for key, _ in delivery.items}
        ]
        return f"the receiver forgot every chunk carrying {source_key}"
    if name == "secret-in-log":
        await asyncio.to_thread(_append_secret, log)
        return f"appended the OCR secret to {log.name}"
    raise ValueError(f"unknown breakage {name!r}; one of {', '.join(BREAKS)}")


def _append_secret(log: Path) -> None:
    with log.open("a", encoding="utf-8") as output:
        output.write(json.dumps({"event": "oops", "note": f"Bearer {OCR_SECRET}"}) + "\n")
