"""Shared fixtures, one section per area of the code they serve."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from emulator_fixtures import StartEmulator
from moto.server import ThreadedMotoServer
from process_fixtures import ServeProcess
from process_fixtures import serve_process as start_serve_process
from pydantic import SecretStr
from worker_fixtures import WorkerSetup

from ocrbatch.clova.client import open_ocr_session
from ocrbatch.emulator.server import Emulator
from ocrbatch.emulator.settings import EmulatorSettings
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.s3 import open_s3_client

# ---------------------------------------------------------------------------------------------
# Storage: a real S3 fake (moto over HTTP in a thread), fresh buckets, opened storages.
# ---------------------------------------------------------------------------------------------

BucketMaker = Callable[[], Awaitable[str]]
StorageOpener = Callable[[StorageSettings, Location], AbstractAsyncContextManager[Storage]]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One moto S3 server for the whole session; yields its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(moto_server: str) -> StorageSettings:
    """Settings that reach the moto server (moto accepts any credentials)."""
    return StorageSettings(
        endpoint_url=moto_server,
        access_key_id=SecretStr("testing"),
        secret_access_key=SecretStr("testing"),
        addressing_style="path",
        max_attempts=1,
    )


@pytest.fixture
async def make_bucket(s3_settings: StorageSettings) -> AsyncIterator[BucketMaker]:
    """A factory creating empty buckets with unique names (the server is shared by all tests)."""
    async with AsyncExitStack() as stack:
        client = await open_s3_client(s3_settings, stack)

        async def make() -> str:
            name = f"test-{uuid.uuid4().hex[:24]}"
            await client.create_bucket(Bucket=name)
            return name

        yield make


@pytest.fixture
async def s3_bucket(make_bucket: BucketMaker) -> str:
    """The name of a fresh, empty bucket."""
    return await make_bucket()


@pytest.fixture
async def storage_factory(s3_settings: StorageSettings) -> AsyncIterator[StorageFactory]:
    """An open `StorageFactory` whose S3 client talks to the moto server."""
    async with StorageFactory(s3_settings) as factory:
        yield factory


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    """An existing, empty directory to use as a local storage root."""
    root = tmp_path / "storage-root"
    root.mkdir()
    return root


@pytest.fixture(params=["local", "s3"])
def storage_location(request: pytest.FixtureRequest) -> Location:
    """An empty location on each backend: a local directory, or `s3://<fresh bucket>/some/prefix/`.

    The S3 fixtures are requested only for the S3 case, so local-only runs start no server.
    """
    if request.param == "local":
        return Location.parse(str(request.getfixturevalue("local_root")))
    bucket = request.getfixturevalue("s3_bucket")
    return Location.parse(f"s3://{bucket}/some/prefix/")


@asynccontextmanager
async def _open_storage(settings: StorageSettings, location: Location) -> AsyncIterator[Storage]:
    async with StorageFactory(settings) as factory:
        yield await factory.open(location)


@pytest.fixture
def open_storage() -> StorageOpener:
    """`async with open_storage(settings, location) as storage`: any location, closed on exit."""
    return _open_storage


def _settings_for(request: pytest.FixtureRequest, location: Location) -> StorageSettings:
    return request.getfixturevalue("s3_settings") if location.is_s3 else StorageSettings()


@pytest.fixture
async def storage(request: pytest.FixtureRequest, storage_location: Location) -> AsyncIterator[Storage]:
    """An opened, empty `Storage` on each backend."""
    async with _open_storage(_settings_for(request, storage_location), storage_location) as opened:
        yield opened


@pytest.fixture
async def local_storage(local_root: Path) -> AsyncIterator[Storage]:
    """An opened, empty `Storage` on a local directory."""
    async with _open_storage(StorageSettings(), Location.parse(str(local_root))) as opened:
        yield opened


@pytest.fixture
async def s3_storage(s3_settings: StorageSettings, s3_bucket: str) -> AsyncIterator[Storage]:
    """An opened, empty `Storage` on `s3://<fresh bucket>/some/prefix/`."""
    async with _open_storage(s3_settings, Location.parse(f"s3://{s3_bucket}/some/prefix/")) as opened:
        yield opened


# ---------------------------------------------------------------------------------------------
# OCR: the emulator as a real server on loopback, and one shared client session.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def start_emulator() -> AsyncIterator[StartEmulator]:
    """Start emulators with given settings (`await start_emulator(max_concurrent_calls=2)`); stopped after."""
    async with AsyncExitStack() as stack:

        async def start(**settings: Any) -> Emulator:
            return await stack.enter_async_context(Emulator(EmulatorSettings(**settings)))

        yield start


@pytest.fixture
async def ocr_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The shared HTTP session an OCR client uses."""
    async with open_ocr_session() as session:
        yield session


# ---------------------------------------------------------------------------------------------
# Worker: a bucket with input/result prefixes, an emulator, and settings pointing at both.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def make_worker_setup(
    start_emulator: StartEmulator,
    make_bucket: BucketMaker,
    s3_settings: StorageSettings,
    storage_factory: StorageFactory,
) -> Callable[..., Awaitable[WorkerSetup]]:
    """`await make_worker_setup(max_concurrent_calls=5, faults={...})`: emulator settings as keywords."""

    async def make(**emulator_settings: Any) -> WorkerSetup:
        bucket = await make_bucket()
        emulator = await start_emulator(**emulator_settings)
        inputs = await storage_factory.open(Location.parse(f"s3://{bucket}/in"))
        results = await storage_factory.open(Location.parse(f"s3://{bucket}/out"))
        return WorkerSetup(bucket, emulator, s3_settings, inputs, results)

    return make


# ---------------------------------------------------------------------------------------------
# Processes: `ocrbatch serve` as a real child process.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def serve_process() -> ServeProcess:
    """`async with serve_process(config) as served:` a running `ocrbatch serve` whose API listens at
    `served.url`; on exit it is stopped with SIGTERM and must exit 0."""
    return start_serve_process
