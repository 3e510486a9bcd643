"""The soak's files: its inputs, what the worker left in the result directory, and the deliberate
breakages `--break` applies to show that the checks fail."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr

from bench.common import OCR_SECRET, png, write_inputs
from bench.receiver import FlakyReceiver
from ocrbatch.batches.layout import OUTBOX_PREFIX, failed_input_key, failure_record_key, is_own_object
from ocrbatch.clova.client import OcrCall, OcrClient, open_ocr_session
from ocrbatch.emulator.server import Emulator
from ocrbatch.storage.local import PRIVATE_DIR
from ocrbatch.webhooks.outbox import SEQUENCE_KEY

EMPTY_INPUTS = 20  # zero-byte documents: failure records without a call
CORRUPT_INPUTS = 20  # unreadable documents: failure records without a call
UNSUPPORTED_INPUTS = 10  # .txt: skipped, neither result nor failure record
BREAKS = ("duplicate-record", "partial-object", "double-billing", "lost-webhook", "secret-in-log")


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


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    """(key, path) of every object under `root`, ocrbatch's private directory left out."""
    for directory, subdirectories, files in os.walk(root):
        if Path(directory) == root and PRIVATE_DIR in subdirectories:
            subdirectories.remove(PRIVATE_DIR)
        for name in files:
            path = Path(directory) / name
            yield path.relative_to(root).as_posix(), path


def read_objects(root: Path) -> dict[str, bytes]:
    return {key: path.read_bytes() for key, path in _files(root)}


def leftover_temp_files(root: Path) -> int:
    """Temp files of interrupted writes (invisible to listings, but litter)."""
    tmp = root / PRIVATE_DIR / "tmp"
    return sum(1 for _ in tmp.iterdir()) if tmp.is_dir() else 0


def stored_inputs(root: Path) -> set[str]:
    """Inputs with a result or a failure record of any kind."""
    stored = set()
    for key, _ in _files(root):
        if (source := failed_input_key(key)) is not None:
            stored.add(source)
        elif key.endswith(".json") and not is_own_object(key):
            stored.add(key.removesuffix(".json"))
    return stored


def settled(root: Path) -> tuple[set[str], set[str], int]:
    """Inputs with a result, inputs with a final failure record, chunks waiting in the outbox."""
    results, final_failures, outbox = set(), set(), 0
    for key, path in _files(root):
        if (source := failed_input_key(key)) is not None:
            try:
                retryable = json.loads(path.read_bytes()).get("retryable", True)
            except (ValueError, OSError):
                retryable = True  # being written or broken: not settled
            if not retryable:
                final_failures.add(source)
        elif key.startswith(OUTBOX_PREFIX):
            outbox += key.endswith(".json") and key != SEQUENCE_KEY  # chunks, markers, manifests
        elif key.endswith(".json") and not is_own_object(key):
            results.add(key.removesuffix(".json"))
    return results, final_failures, outbox


async def apply_break(
    name: str, *, results_dir: Path, emulator: Emulator, receiver: FlakyReceiver, log: Path
) -> str:
    """Break one invariant on purpose; returns what was done."""
    result_key = sorted(
        key for key, _ in _files(results_dir) if key.startswith("day-") and key.endswith(".json")
    )[0]
    source_key = result_key.removesuffix(".json")
    if name == "duplicate-record":
        record = {"key": source_key, "message": "written by --break", "retryable": False}
        target = results_dir / failure_record_key(source_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record), encoding="utf-8")
        return f"wrote a failure record beside the result of {source_key}"
    if name == "partial-object":
        path = results_dir / result_key
        path.write_bytes(path.read_bytes()[:20])
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
        with log.open("a", encoding="utf-8") as output:
            output.write(json.dumps({"event": "oops", "note": f"Bearer {OCR_SECRET}"}) + "\n")
        return f"appended the OCR secret to {log.name}"
    raise ValueError(f"unknown breakage {name!r}; one of {', '.join(BREAKS)}")
