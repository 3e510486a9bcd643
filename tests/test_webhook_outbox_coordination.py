"""The webhook outbox's chunk numbers and manifests in the coordination backend: replicas chunking
one batch share one counter (Redis, or the conditional writes of a local directory or of S3), so
numbers are unique, rising and without gaps; a crash between a chunk and its markers is settled
once; and a batch upgraded mid-run continues after its legacy `_outbox/sequence.json` and has its
legacy manifests settled."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures.clock import FakeClock
from fixtures.receiver import Receiver
from fixtures.samples import png
from fixtures.waits import within
from fixtures.webhooks import BATCH_ID, StatusLog, attached, batch, finish, item, outbox_keys, service
from fixtures.worker import MakeSetup, create_batch

from ocrbatch.coordination.base import Coordination, Versioned
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.coordination.redis import open_redis_coordination
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.errors import StorageError
from ocrbatch.locations import Location
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.local import LocalStorage
from ocrbatch.webhooks.outbox import (
    ITEMS_PREFIX,
    MANIFESTS_PREFIX,
    SEQUENCE_ATTEMPTS,
    SEQUENCE_KEY,
    Outbox,
    SequenceUnavailable,
    announced_by,
    chunk_key,
    coordination_prefix,
    manifest_key,
    sequence_key,
)

WAIT_S = 30.0


@dataclass(frozen=True)
class Backend:
    """Where the coordination of a test is: "redis" at `redis_url`, or objects of `storage` (a
    local control directory, or S3)."""

    kind: str
    redis_url: str | None = None
    storage: Storage | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Coordination]:
        if self.redis_url is not None:
            redis = open_redis_coordination(self.redis_url, f"test-{uuid.uuid4().hex}:")
            try:
                yield redis
            finally:
                await redis.aclose()
        else:
            assert self.storage is not None
            yield StorageCoordination(self.storage)


def backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Redis under a prefix of this test's own, or the conditional writes of a local control
    directory or of S3 (moto); what each needs is started only for it (from a fixture that is not
    async, so that it may request the async ones lazily)."""
    if kind == "redis":
        return Backend(kind, redis_url=request.getfixturevalue("redis_url"))
    if kind == "s3":
        return Backend(kind, storage=request.getfixturevalue("s3_storage"))
    control = tmp_path / "outbox-control"
    control.mkdir()
    return Backend(kind, storage=LocalStorage(Location.parse(str(control))))


@pytest.fixture(params=["redis", "local"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend(request.param, request, tmp_path)


@pytest.fixture(params=["redis", "local", "s3"])
def any_shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend(request.param, request, tmp_path)


@pytest.fixture
async def shared(shared_backend: Backend) -> AsyncIterator[Coordination]:
    """The coordination the replicas share: Redis, or a local control directory's conditional writes."""
    async with shared_backend.open() as opened:
        yield opened


@pytest.fixture
async def any_shared(any_shared_backend: Backend) -> AsyncIterator[Coordination]:
    """`shared`, and also the conditional writes of S3 (moto)."""
    async with any_shared_backend.open() as opened:
        yield opened


@pytest.fixture
def outbox_results(tmp_path: Path) -> Storage:
    """The batch's result location, where chunks and item markers wait: a local directory."""
    root = tmp_path / "outbox-results"
    root.mkdir()
    return LocalStorage(Location.parse(str(root)))


def replica_view(results: Storage) -> Storage:
    """The same result location opened again, as another replica holds it."""
    return LocalStorage(results.location)


async def last_number(coordination: Coordination, batch_id: str = BATCH_ID) -> int:
    stored = await coordination.read(sequence_key(batch_id))
    assert stored is not None, "the batch's counter is a document of the coordination"
    last: int = json.loads(stored.data)["last"]
    return last


async def manifests(coordination: Coordination, batch_id: str = BATCH_ID) -> list[str]:
    return [key async for key in coordination.keys(coordination_prefix(batch_id) + "manifests/")]


async def leave_markers(results: Storage, coordination: Coordination | None, count: int) -> list[str]:
    """A worker finishes `count` items (their markers written, not yet chunked) and dies."""
    async with attached(
        "http://127.0.0.1:9/hook", results, coordination=coordination, idle_flush_s=3600
    ) as crashed:
        for index in range(count):
            pending = await crashed.item_pending(BATCH_ID, item(index))
            assert pending is not None
    return sorted(await outbox_keys(results, ITEMS_PREFIX))


def chunk_body(chunk_id: str, sequence: int, count: int) -> bytes:
    items = [item(index) for index in range(count)]
    document = {
        "batchId": BATCH_ID,
        "chunkId": chunk_id,
        "sequence": sequence,
        "count": count,
        "items": items,
    }
    return json.dumps(document).encode()


# -- chunk numbers --------------------------------------------------------------------------------


async def test_two_replicas_interleaving_chunks_get_unique_rising_numbers(
    receiver: Receiver, outbox_results: Storage, shared: Coordination
) -> None:
    """Two replicas (distinct writers, each with its view of the result location) chunk the same
    batch in turns through one coordination: chunk k gets number k whoever made it, each replica's
    numbers rise, and the counter lives in the coordination only (no `_outbox/sequence.json`)."""
    time, statuses = FakeClock(), StatusLog()
    claims = [ItemClaims(shared, ttl_s=600), ItemClaims(shared, ttl_s=600)]
    for replica_claims in claims:
        await replica_claims.register()
    async with aiohttp.ClientSession() as session:
        replicas = [
            service(session, time, statuses, claims=replica_claims, coordination=shared, chunk_size=1)
            for replica_claims in claims
        ]
        for replica, view in zip(replicas, [outbox_results, replica_view(outbox_results)], strict=True):
            await replica.attach(batch(receiver.url), view)
        made_by: dict[int, int] = {}
        for index in range(10):
            made_by[index] = index % 2
            await finish(replicas[index % 2], index)
        await receiver.wait_for(10)
        for replica in replicas:
            assert await replica.drain(WAIT_S)
            await replica.close()
    sequence_of = {
        payload["items"][0]["key"]: payload["sequence"]
        for payload in (request.payload for request in receiver.received)
    }
    assert sequence_of == {item(index)["key"]: index + 1 for index in range(10)}
    for writer in (0, 1):
        numbers = [sequence_of[item(index)["key"]] for index in range(10) if made_by[index] == writer]
        assert numbers == sorted(set(numbers))
    assert await last_number(shared) == 10
    assert await manifests(shared) == []
    assert await outbox_keys(outbox_results) == []


async def test_fifty_concurrent_allocations_across_two_writers_are_exactly_1_to_50(
    outbox_results: Storage, any_shared: Coordination
) -> None:
    """50 numbers taken at once, 25 by each of two writers sharing one coordination: races lost are
    tried again and consume nothing, so the numbers are exactly 1..50, each writer's rising."""
    writers = [
        Outbox(view, writer=name, coordination=any_shared, batch_id=BATCH_ID)
        for name, view in (("a", outbox_results), ("b", replica_view(outbox_results)))
    ]
    taken = await within(
        asyncio.gather(*(writer.next_sequence() for _ in range(25) for writer in writers)),
        WAIT_S,
        "50 chunk numbers were not taken",
    )
    assert sorted(taken) == list(range(1, 51))
    for first in (0, 1):
        mine = taken[first::2]  # each writer's, in the order it asked for them
        assert mine == sorted(mine)
    assert await last_number(any_shared) == 50


class _AlwaysPreempted(Coordination):
    """A real coordination where another writer advances the counter between every read and the
    compare-and-swap that follows it."""

    def __init__(self, inner: Coordination) -> None:
        self.inner, self.backend, self.where = inner, inner.backend, inner.where
        self.preempting, self.preempted = True, 0
        self.down = False

    async def read(self, key: str) -> Versioned | None:
        if self.down:
            raise StorageError("the coordination is unreachable", location=self.where, key=key)
        current = await self.inner.read(key)
        if self.preempting and key.endswith("sequence.json"):
            self.preempted += 1
            body = json.dumps({"last": self.preempted}).encode()
            if current is None:
                await self.inner.create(key, body)
            else:
                await self.inner.replace(key, body, version=current.version)
        return current

    async def create(self, key: str, data: bytes) -> str:
        return await self.inner.create(key, data)

    async def replace(self, key: str, data: bytes, *, version: str) -> str:
        return await self.inner.replace(key, data, version=version)

    async def delete(self, key: str, *, version: str | None = None) -> None:
        await self.inner.delete(key, version=version)

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        async for key in self.inner.keys(prefix):
            yield key


async def test_a_counter_always_changed_first_gives_up_after_bounded_attempts(
    outbox_results: Storage, shared: Coordination
) -> None:
    """When another writer wins every race, taking a number stops after `SEQUENCE_ATTEMPTS` tries,
    with short jittered waits between them, raising an error that names the counter; the lost
    races took no number, and once the contention ends the next number follows the last given."""
    contended = _AlwaysPreempted(shared)
    waits = FakeClock(advance_on_sleep=False)
    outbox = Outbox(outbox_results, writer="a", coordination=contended, batch_id=BATCH_ID, sleep=waits.sleep)
    with pytest.raises(SequenceUnavailable, match=f"after {SEQUENCE_ATTEMPTS} attempts") as raised:
        await outbox.next_sequence()
    assert raised.value.key == sequence_key(BATCH_ID)
    assert len(waits.sleeps_s) == SEQUENCE_ATTEMPTS - 1
    assert all(0 <= wait_s <= 0.25 for wait_s in waits.sleeps_s)
    assert await last_number(shared) == SEQUENCE_ATTEMPTS  # the other writer's, none of ours
    contended.preempting = False
    assert await outbox.next_sequence() == SEQUENCE_ATTEMPTS + 1


async def test_items_stay_buffered_when_no_number_can_be_taken(
    receiver: Receiver, outbox_results: Storage, shared: Coordination
) -> None:
    """With the coordination unreachable, making a chunk fails before anything is written: the
    items stay buffered (and durable), and the next flush sends them in one chunk, numbered 1."""
    flaky = _AlwaysPreempted(shared)
    flaky.preempting = False
    async with attached(
        receiver.url, outbox_results, coordination=flaky, chunk_size=2, idle_flush_s=3600
    ) as hooks:
        await finish(hooks, 0)
        flaky.down = True
        with pytest.raises(StorageError, match="unreachable"):
            await finish(hooks, 1)
        assert len(await outbox_keys(outbox_results, ITEMS_PREFIX)) == 2
        flaky.down = False
        await hooks.flush()
        await receiver.wait_for(1)
        assert await hooks.drain(WAIT_S)
    [request] = receiver.received
    assert request.payload["sequence"] == 1
    assert [entry["key"] for entry in request.payload["items"]] == [item(0)["key"], item(1)["key"]]
    assert await outbox_keys(outbox_results) == []


# -- upgrades: the legacy counter -----------------------------------------------------------------


async def test_a_legacy_sequence_file_makes_the_next_number_42(
    receiver: Receiver, outbox_results: Storage, shared: Coordination
) -> None:
    """A batch chunked before the upgrade has `_outbox/sequence.json` at 41 and no counter in the
    coordination: the next chunks are 42 and 43, and the legacy file is only read, never written."""
    legacy = json.dumps({"last": 41}).encode()
    await outbox_results.write(SEQUENCE_KEY, legacy)
    async with attached(receiver.url, outbox_results, items=2, coordination=shared, chunk_size=1) as hooks:
        await receiver.wait_for(2)
        assert await hooks.drain(WAIT_S)
    assert sorted(request.payload["sequence"] for request in receiver.received) == [42, 43]
    assert await last_number(shared) == 43
    assert (await outbox_results.read(SEQUENCE_KEY)).data == legacy


async def test_without_a_coordination_the_result_location_keeps_the_counter(
    receiver: Receiver, outbox_results: Storage
) -> None:
    """A service given no coordination (a bare local result location) keeps counting in
    `_outbox/sequence.json` through that directory's conditional writes, continuing after 41."""
    await outbox_results.write(SEQUENCE_KEY, json.dumps({"last": 41}).encode())
    async with attached(receiver.url, outbox_results, items=1, chunk_size=1) as hooks:
        await receiver.wait_for(1)
        assert await hooks.drain(WAIT_S)
    assert receiver.received[0].payload["sequence"] == 42
    assert json.loads((await outbox_results.read(SEQUENCE_KEY)).data) == {"last": 42}


# -- crashes and upgrades: manifests --------------------------------------------------------------


async def test_a_crash_between_a_chunk_and_its_markers_is_settled_once(
    receiver: Receiver, outbox_results: Storage, shared: Coordination
) -> None:
    """A worker took number 1, created the manifest in the coordination, wrote the chunk and died
    before deleting the markers: the restart deletes the markers and the manifest and sends the
    chunk once; its items are not chunked again, and the next chunk is number 2."""
    markers = await leave_markers(outbox_results, shared, 3)
    sequence = await Outbox(
        outbox_results, writer="solo", coordination=shared, batch_id=BATCH_ID
    ).next_sequence()
    key = chunk_key(sequence, "msg_1")
    manifest = {"chunk": key, "markers": markers, "writer": "solo"}
    await shared.create(manifest_key(BATCH_ID, "msg_1"), json.dumps(manifest).encode())
    await outbox_results.write(key, chunk_body("msg_1", sequence, 3), metadata={"chunk-id": "msg_1"})
    async with attached(receiver.url, outbox_results, coordination=shared, idle_flush_s=3600) as restarted:
        await receiver.wait_for(1)
        assert await restarted.drain(WAIT_S)
        assert await outbox_keys(outbox_results) == []
        assert await manifests(shared) == []
        await restarted.flush()  # nothing is left to chunk
        await finish(restarted, 3)
        await restarted.flush()
        await receiver.wait_for(2)
        assert await restarted.drain(WAIT_S)
    first, second = (request.payload for request in receiver.received)
    assert (first["chunkId"], first["sequence"], first["count"]) == ("msg_1", 1, 3)
    assert (second["sequence"], [entry["key"] for entry in second["items"]]) == (2, [item(3)["key"]])


async def test_a_manifest_whose_chunk_was_never_written_leaves_its_items_to_one_new_chunk(
    receiver: Receiver, outbox_results: Storage, shared: Coordination
) -> None:
    """A worker died after the manifest but before the chunk: the restart drops the manifest and
    chunks the items again, once, under the next number."""
    markers = await leave_markers(outbox_results, shared, 3)
    manifest = {"chunk": chunk_key(1, "msg_lost"), "markers": markers, "writer": "solo"}
    await shared.create(manifest_key(BATCH_ID, "msg_lost"), json.dumps(manifest).encode())
    await shared.create(sequence_key(BATCH_ID), json.dumps({"last": 1}).encode())
    async with attached(receiver.url, outbox_results, coordination=shared, idle_flush_s=3600) as restarted:
        await receiver.wait_for(1)
        assert await restarted.drain(WAIT_S)
        await restarted.flush()
    [request] = receiver.received
    assert request.payload["sequence"] == 2
    assert sorted(entry["key"] for entry in request.payload["items"]) == [item(i)["key"] for i in range(3)]
    assert await manifests(shared) == []
    assert await outbox_keys(outbox_results) == []


async def test_a_legacy_manifest_in_the_result_location_is_settled_after_an_upgrade(
    receiver: Receiver, outbox_results: Storage, shared: Coordination
) -> None:
    """A crash before the upgrade left `_outbox/manifests/msg_1.json` (a plain write) beside its
    chunk and markers: the upgraded worker, coordinating elsewhere, still settles it: markers and
    manifest deleted, the chunk sent once."""
    markers = await leave_markers(outbox_results, None, 3)
    key = chunk_key(1, "msg_1")
    await outbox_results.write(SEQUENCE_KEY, json.dumps({"last": 1}).encode())
    await outbox_results.write(
        f"{MANIFESTS_PREFIX}msg_1.json", json.dumps({"chunk": key, "markers": markers}).encode()
    )
    await outbox_results.write(key, chunk_body("msg_1", 1, 3), metadata={"chunk-id": "msg_1"})
    async with attached(receiver.url, outbox_results, coordination=shared, idle_flush_s=3600) as upgraded:
        await receiver.wait_for(1)
        assert await upgraded.drain(WAIT_S)
        await upgraded.flush()
        assert await upgraded.drain(WAIT_S)
    assert [request.headers["webhook-id"] for request in receiver.received] == ["msg_1"]
    assert await outbox_keys(outbox_results) == [SEQUENCE_KEY]


# -- the worker -----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["moto", "ncp-redis"])
async def test_the_worker_numbers_chunks_in_its_coordination(
    make_worker_setup: MakeSetup,
    receiver: Receiver,
    storage_factory: StorageFactory,
    request: pytest.FixtureRequest,
    profile: str,
) -> None:
    """`run --once` numbers its chunks in the worker's coordination: the control location's
    conditional writes on moto, Redis on the NAVER profile (which has none); the result location
    keeps only chunks until delivered, no counter and no manifest."""
    setup = await make_worker_setup(store="moto" if profile == "moto" else "ncp")
    coordination_settings: dict[str, Any] = {}
    if profile == "ncp-redis":
        redis_url = request.getfixturevalue("redis_url")
        coordination_settings = {"backend": "redis", "url": redis_url, "key_prefix": f"t-{uuid.uuid4().hex}:"}
    settings = setup.settings(coordination=coordination_settings)
    for index in range(3):
        await setup.inputs.write(f"{index}.png", png(100 + index, 100))
    batch_id = await create_batch(setup, settings, webhook={"url": receiver.url})
    assert await within(run_worker(settings, once=True), WAIT_S, "the worker did not finish") == 0
    [delivered] = receiver.received
    assert (delivered.payload["sequence"], delivered.payload["count"]) == (1, 3)
    if profile == "moto":
        control = await storage_factory.open(Location.parse(f"s3://{setup.bucket}/control"))
        coordination: Coordination = StorageCoordination(control)
    else:
        coordination = open_redis_coordination(redis_url, coordination_settings["key_prefix"])
    try:
        assert await last_number(coordination, batch_id) == 1
        assert await manifests(coordination, batch_id) == []
    finally:
        await coordination.aclose()
    assert await outbox_keys(setup.results) == []


async def test_a_live_replica_s_half_made_chunk_is_left_to_it_and_settled_once_it_is_gone(
    receiver: Receiver, outbox_results: Storage, shared: Coordination
) -> None:
    """Replica A (registered, alive) has written its manifest but not yet its chunk when replica B
    attaches the batch: B leaves the manifest alone. A then writes the chunk and dies before
    removing its markers. B's next recovery settles A's manifest first: the markers go, and B
    chunks none of A's items again (they are in A's chunk)."""
    a_claims, b_claims = ItemClaims(shared, ttl_s=60), ItemClaims(shared, ttl_s=60)
    await a_claims.register()
    a_outbox = Outbox(outbox_results, writer=a_claims.owner, coordination=shared, batch_id=BATCH_ID)
    markers = []
    for index in range(2):
        result_key = f"scans/{index:05}.png.json"
        await outbox_results.write(result_key, b"{}")
        markers.append(await a_outbox.write_item(item(index), result_key=result_key, source_etag=None))
    sequence = await a_outbox.next_sequence()
    key = chunk_key(sequence, "msg_a")
    record = {"chunk": key, "markers": markers, "writer": a_claims.owner}
    await shared.create(manifest_key(BATCH_ID, "msg_a"), json.dumps(record).encode())
    time = FakeClock()
    async with attached(
        receiver.url, outbox_results, coordination=shared, claims=b_claims, time=time, idle_flush_s=3600
    ) as b:
        assert await manifests(shared) == [manifest_key(BATCH_ID, "msg_a")], (
            "B settled a live replica's chunk"
        )
        await outbox_results.write(key, chunk_body("msg_a", sequence, 2), metadata={"chunk-id": "msg_a"})
        await a_claims.unregister()  # A dies before deleting its markers and manifest
        time.now_s += 61  # past RECOVER_INTERVAL_S: the next pass's attach recovers again
        await b.attach(batch(receiver.url), outbox_results)
        assert await manifests(shared) == []
        assert await outbox_keys(outbox_results, ITEMS_PREFIX) == []
        await b.flush()
    assert receiver.received == [], "B chunked again items that A's chunk carries"
    assert await last_number(shared) == sequence


async def test_a_dead_writer_s_marker_is_dropped_once_another_worker_announced_the_item_again(
    outbox_results: Storage,
) -> None:
    """Writer A made item 0 durable and died before its result; writer B took the item over, made
    its own marker and wrote the result, which names B's marker. Recovering A's markers then drops
    A's (B's chunk carries the item), although the result was made from the same input. A result
    naming no marker (written by an older version) is still judged by its input's etag."""
    a, b = (Outbox(outbox_results, writer=writer) for writer in ("aaaa", "bbbb"))
    result_key = "scans/00000.png.json"
    a_marker = await a.write_item(item(0), result_key=result_key, source_etag="etag-1")
    b_marker = await b.write_item(item(0), result_key=result_key, source_etag="etag-1")
    metadata = {"source-etag": "etag-1", **announced_by(b_marker)}
    await outbox_results.write(result_key, b"{}", metadata=metadata)
    assert await a.read_item(a_marker) is None
    assert a_marker not in await outbox_keys(outbox_results, ITEMS_PREFIX)
    assert await b.read_item(b_marker) == item(0)
    older_key = "scans/00001.png.json"
    older = await a.write_item(item(1), result_key=older_key, source_etag="etag-2")
    await outbox_results.write(older_key, b"{}", metadata={"source-etag": "etag-2"})
    assert await a.read_item(older) == item(1)
