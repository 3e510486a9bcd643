"""The soak's side of storage (bench/soak_world.py): a result location seen on S3 (moto, read
directly, not through a proxy) and on a local directory gives the same answers, ocrbatch's private
`.ocrbatch/` objects left out of both; and the claims a process holds are found by its pid."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bench.soak_world import (
    LocalView,
    LocationView,
    S3View,
    held_claims,
    leftover_temp_files,
    read_objects,
    settled,
    stored_inputs,
)
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.local import LocalStorage
from ocrbatch.storage.s3 import open_s3_client

RawPut = Callable[[str, bytes], Awaitable[None]]  # writes past the view, at a key of the location


def _record(key: str, *, retryable: bool) -> bytes:
    return json.dumps({"key": key, "message": "injected", "retryable": retryable}).encode()


# What the workers leave: a result, a final and a retryable failure record, a chunk waiting, the
# legacy sequence document, and the report.
OBJECTS = {
    "day-00/a.png.json": b'{"images": []}',
    "_failed/day-00/c.png.json": _record("day-00/c.png", retryable=False),
    "_failed/day-00/d.png.json": _record("day-00/d.png", retryable=True),
    "_outbox/000000000001-msg_1.json": b"{}",
    "_outbox/sequence.json": b'{"last": 1}',
    "_report.json": b"{}",
}


@pytest.fixture(params=["local", "s3"])
def bucket(request: pytest.FixtureRequest) -> str | None:
    """None for a local directory; else a fresh bucket (the S3 fixtures start moto only then)."""
    return None if request.param == "local" else str(request.getfixturevalue("s3_bucket"))


@pytest.fixture
async def location(
    request: pytest.FixtureRequest, bucket: str | None, tmp_path: Path
) -> AsyncIterator[tuple[LocationView, RawPut, int]]:
    """A view of a result location holding `OBJECTS` (written through the view), ocrbatch's private
    objects and, on S3, objects beside the location; with a writer past the view and the number of
    temp files it must report."""
    if bucket is None:
        root = tmp_path / "out"

        async def put_local(key: str, data: bytes) -> None:
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)

        view: LocationView = LocalView(root)
        await put_local(".ocrbatch/tmp/0a1b.tmp", b"cut short")
        await put_local(".ocrbatch/meta/day-00/a.png.json.json", b"{}")
        await view.write_many(OBJECTS)
        yield view, put_local, 1
        return
    settings: StorageSettings = request.getfixturevalue("s3_settings")
    async with AsyncExitStack() as stack:
        client = await open_s3_client(settings, stack)

        async def put_s3(key: str, data: bytes) -> None:
            await client.put_object(Bucket=bucket, Key="out/" + key, Body=data)

        view = S3View(client, bucket, "out")
        await put_s3(".ocrbatch/meta/day-00/a.png.json.json", b"{}")
        await put_s3("day-01/", b"")  # a console's folder marker
        await client.put_object(Bucket=bucket, Key="in/day-00/a.png", Body=b"input")
        await client.put_object(Bucket=bucket, Key="outer/x.json", Body=b"{}")
        await view.write_many(OBJECTS)
        yield view, put_s3, 0


async def test_a_view_shows_the_locations_objects_without_ocrbatchs_private_ones(
    location: tuple[LocationView, RawPut, int],
) -> None:
    """Every object of the location by key, nothing under `.ocrbatch/`, no folder marker, nothing
    of a sibling prefix; a key gone since it was listed is left out of a read."""
    view, _, temp_files = location
    assert sorted(await view.keys()) == sorted(OBJECTS)
    assert await read_objects(view) == OBJECTS
    assert await view.read_many(["day-00/a.png.json", "day-00/gone.png.json"]) == {
        "day-00/a.png.json": OBJECTS["day-00/a.png.json"]
    }
    assert await leftover_temp_files(view) == temp_files


async def test_settled_and_stored_read_the_same_on_both_backends(
    location: tuple[LocationView, RawPut, int],
) -> None:
    """A result settles its input, a final failure record too, a retryable one not; a waiting chunk
    counts in the outbox, the legacy sequence document not. Only a result makes an input stored."""
    view, put, _ = location
    assert await settled(view) == ({"day-00/a.png"}, {"day-00/c.png"}, 1)
    among = {"day-00/a.png", "day-00/c.png", "day-00/d.png", "day-00/e.png"}
    assert await stored_inputs(view, among) == {"day-00/a.png"}
    await put("day-00/e.png.json", b'{"images": []}')
    assert await stored_inputs(view, among) == {"day-00/a.png", "day-00/e.png"}
    assert await stored_inputs(view, set()) == set()


async def test_held_claims_are_found_by_the_pid_of_their_holder(tmp_path: Path) -> None:
    """The claims `ItemClaims` takes name this process: `held_claims` finds exactly those by its
    pid, none by another pid, and a released claim no longer."""
    (tmp_path / "control").mkdir()
    coordination = StorageCoordination(LocalStorage(Location.parse(str(tmp_path / "control"))))
    claims = ItemClaims(coordination, ttl_s=30)
    documents = ["a.png", "b.png", "c.png"]
    for key in ("a.png", "b.png"):
        assert await claims.take("batch1", key)
    assert await claims.take("batch2", "c.png")  # another batch's claim
    assert await held_claims(coordination, "batch1", documents, os.getpid()) == {"a.png", "b.png"}
    assert await held_claims(coordination, "batch1", documents, os.getpid() + 1) == set()
    await claims.release("batch1", "a.png")
    assert await held_claims(coordination, "batch1", documents, os.getpid()) == {"b.png"}
