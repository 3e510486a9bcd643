"""Shared fixtures, one section per area of the code they serve."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import structlog
from aiohttp.test_utils import TestClient, TestServer
from fixtures.api import API_LOCATIONS, DOMAINS, TOKEN, Api, StartApi
from fixtures.cli import CONFIG, OCR_SECRET, Cli
from fixtures.clock import FakeClock
from fixtures.discovery import Pair, PairLocations
from fixtures.emulator import StartEmulator
from fixtures.process import ServeProcess
from fixtures.process import serve_process as start_serve_process
from fixtures.receiver import Receiver
from fixtures.sealing import SEALER, SECRET_KEY
from fixtures.worker import WorkerProfile, WorkerSetup
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from bench.redis_server import start_redis_server
from bench.s3_proxy import S3Proxy, StartS3Proxy
from ocrbatch.batches.store import BatchStore
from ocrbatch.clova.client import open_ocr_session
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.redis import open_redis_coordination
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.emulator.server import Emulator
from ocrbatch.emulator.settings import EmulatorSettings
from ocrbatch.locations import Location
from ocrbatch.service.api import create_app
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.local import LocalStorage
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
# Storage behind a proxy: moto made to behave like other S3 stores (NAVER Cloud, …).
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def start_s3_proxy(moto_server: str) -> AsyncIterator[StartS3Proxy]:
    """`await start_s3_proxy("ncp", delay_s=0.01)`: an `S3Proxy` in front of moto; stopped after."""
    started: list[S3Proxy] = []

    async def start(profile: str, **options: Any) -> S3Proxy:
        proxy = S3Proxy(moto_server, profile=profile, **options)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def ncp_settings(s3_settings: StorageSettings, start_s3_proxy: StartS3Proxy) -> StorageSettings:
    """`s3_settings` through an "ncp" proxy: V1 listings only, conditional headers ignored."""
    proxy = await start_s3_proxy("ncp")
    return s3_settings.model_copy(update={"endpoint_url": proxy.url})


# ---------------------------------------------------------------------------------------------
# Storage profiles: where a batch's control and result locations are, and where compare-and-swap
# happens. `local` and `s3` (moto) enforce conditional writes, so documents are objects there;
# `ncp` (moto behind the NAVER Object Storage proxy) does not, so they are kept in Redis. The suites
# of what coordinates (batch store, claims, webhooks) run on all three; the storage suites test
# conditional writes themselves and keep to `storage` (local and s3).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileLocations:
    """The settings reaching one profile's store, and a control and a result location on it."""

    settings: StorageSettings
    control: Location
    results: Location


@pytest.fixture(params=["local", "s3", "ncp"])
def storage_profile(request: pytest.FixtureRequest) -> str:
    """`local`, `s3` or `ncp`: what `profile_storage`, `coordination` and `results` are on."""
    return str(request.param)


@pytest.fixture
def profile_locations(
    request: pytest.FixtureRequest, storage_profile: str, tmp_path: Path
) -> ProfileLocations:
    """Two empty sibling locations on the profile's store: directories `control` and `results` of
    `tmp_path`, or prefixes `control/` and `results/` of a fresh bucket, reached through moto or
    through the "ncp" proxy. S3 and the proxy are started only for their profiles (a fixture that
    is not async, so that it may request the async ones lazily)."""
    if storage_profile == "local":
        directories = [tmp_path / "control", tmp_path / "results"]
        for directory in directories:
            directory.mkdir()
        return ProfileLocations(StorageSettings(), *(Location.parse(str(path)) for path in directories))
    settings = request.getfixturevalue("s3_settings" if storage_profile == "s3" else "ncp_settings")
    bucket = request.getfixturevalue("s3_bucket")
    return ProfileLocations(
        settings, Location.parse(f"s3://{bucket}/control/"), Location.parse(f"s3://{bucket}/results/")
    )


@pytest.fixture
async def profile_storages(profile_locations: ProfileLocations) -> AsyncIterator[StorageFactory]:
    """The `StorageFactory` (one S3 client) opening the profile's locations; closed after."""
    async with StorageFactory(profile_locations.settings) as factory:
        yield factory


@pytest.fixture
async def profile_storage(profile_locations: ProfileLocations, profile_storages: StorageFactory) -> Storage:
    """An opened, empty control location on each profile."""
    return await profile_storages.open(profile_locations.control)


@pytest.fixture
async def coordination(
    request: pytest.FixtureRequest, storage_profile: str, profile_storage: Storage
) -> AsyncIterator[Coordination]:
    """Where the profile's documents live: objects of `profile_storage` guarded by its conditional
    writes (local, s3), or Redis under a key prefix of this test's own (ncp, whose store ignores
    conditional headers). Closed after."""
    opened: Coordination
    if storage_profile == "ncp":
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
        opened = open_redis_coordination(request.getfixturevalue("redis_url"), prefix)
    else:
        opened = StorageCoordination(profile_storage)
    yield opened
    await opened.aclose()


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
    start_s3_proxy: StartS3Proxy,
) -> Callable[..., Awaitable[WorkerSetup]]:
    """`await make_worker_setup(max_concurrent_calls=5, faults={...})`: emulator settings as keywords.
    With `store="ncp"`, the worker reaches the bucket through the NAVER Object Storage profile (V1
    listings only, conditional headers dropped); with `storage_delay_s`, through a proxy that
    delays each request that long. The setup's own storages still reach moto directly."""

    async def make(
        *, store: str = "moto", storage_delay_s: float = 0.0, **emulator_settings: Any
    ) -> WorkerSetup:
        bucket = await make_bucket()
        emulator = await start_emulator(**emulator_settings)
        inputs = await storage_factory.open(Location.parse(f"s3://{bucket}/in"))
        results = await storage_factory.open(Location.parse(f"s3://{bucket}/out"))
        settings = s3_settings
        if store != "moto" or storage_delay_s > 0:
            proxy = await start_s3_proxy("aws" if store == "moto" else store, delay_s=storage_delay_s)
            settings = s3_settings.model_copy(update={"endpoint_url": proxy.url})
        return WorkerSetup(bucket, emulator, settings, inputs, results)

    return make


@pytest.fixture(params=["moto", "ncp"])
def worker_profile(request: pytest.FixtureRequest) -> WorkerProfile:
    """How the worker reaches the setup's bucket and where it coordinates: moto with documents in
    the control location, or the NAVER Object Storage profile (no conditional writes) with Redis
    under a key prefix of this test's own. Pass `store` to `make_worker_setup` and `coordination`
    to `WorkerSetup.settings`."""
    if request.param == "moto":
        return WorkerProfile("moto", {})
    redis_url = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    return WorkerProfile("ncp", {"backend": "redis", "url": redis_url, "key_prefix": prefix})


# ---------------------------------------------------------------------------------------------
# Processes: `ocrbatch serve` as a real child process.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def serve_process() -> ServeProcess:
    """`async with serve_process(config) as served:` a running `ocrbatch serve` whose API listens at
    `served.url`; on exit it is stopped with SIGTERM and must exit 0."""
    return start_serve_process


# ---------------------------------------------------------------------------------------------
# Webhooks: a real receiver on loopback, and a result location for the outbox on each profile.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A started webhook receiver that answers 200 unless scripted otherwise; stopped after."""
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def results(profile_locations: ProfileLocations, profile_storages: StorageFactory) -> Storage:
    """A batch's empty result location on each profile, where the webhook outbox lives: a local
    directory, or `s3://<fresh bucket>/results/` (through the "ncp" proxy for ncp)."""
    return await profile_storages.open(profile_locations.results)


# ---------------------------------------------------------------------------------------------
# Worker limiter: fake time for a domain limiter.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_time() -> FakeClock:
    """Time from 0 s, moved only by the limiter's sleeps."""
    return FakeClock(now_s=0.0)


# ---------------------------------------------------------------------------------------------
# Discovery: a batch's input and result storages on each backend.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def pair_locations(request: pytest.FixtureRequest, tmp_path: Path) -> PairLocations:
    """Two sibling locations on one backend: two directories, or two prefixes of a fresh bucket."""
    if request.param == "local":
        dirs = [tmp_path / "inputs", tmp_path / "results"]
        for directory in dirs:
            directory.mkdir()
        return PairLocations(StorageSettings(), *(Location.parse(str(directory)) for directory in dirs))
    bucket = request.getfixturevalue("s3_bucket")
    return PairLocations(
        request.getfixturevalue("s3_settings"),
        Location.parse(f"s3://{bucket}/inputs/"),
        Location.parse(f"s3://{bucket}/results/"),
    )


@pytest.fixture
async def pair(pair_locations: PairLocations) -> AsyncIterator[Pair]:
    """Opened input and result storages on each backend."""
    async with StorageFactory(pair_locations.settings) as factory:
        yield Pair(await factory.open(pair_locations.inputs), await factory.open(pair_locations.results))


# ---------------------------------------------------------------------------------------------
# CLI: `ocrbatch` in-process, in a working directory holding its settings file.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """`cli(*args, expect=0)`: `ocrbatch` run in-process in `tmp_path`, which holds its settings file."""
    (tmp_path / "ocrbatch.toml").write_text(CONFIG.format(ocr_secret=OCR_SECRET, secret_key=SECRET_KEY))
    monkeypatch.chdir(tmp_path)
    yield Cli(tmp_path, capsys)
    structlog.reset_defaults()


# ---------------------------------------------------------------------------------------------
# API: the HTTP API as a real server on loopback, over a local batch store.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def start_api() -> AsyncIterator[StartApi]:
    """`await start_api(store, **create_app_options)`: the API on 127.0.0.1, port 0, open to
    `s3://data/` unless `allowed_locations` says otherwise; stopped after.

    On teardown, checks that no response body ever carried the token.
    """
    started: list[Api] = []

    async def start(store: BatchStore, **options: Any) -> Api:
        options.setdefault("token", SecretStr(TOKEN))
        options.setdefault("allowed_locations", [API_LOCATIONS])
        client: TestClient[Any, Any] = TestClient(
            TestServer(create_app(store, **options), host="127.0.0.1", port=0)
        )
        await client.start_server()
        started.append(Api(client))
        return started[-1]

    yield start
    for api in started:
        await api.client.close()
        assert not any(TOKEN in body for body in api.bodies)


@pytest.fixture
def store(tmp_path: Path) -> BatchStore:
    """A batch store on a local control directory, with a General and a Template domain; webhook
    secrets are sealed with the tests' key."""
    control = tmp_path / "control"
    control.mkdir()
    location = Location.parse(str(control))
    coordination = StorageCoordination(LocalStorage(location))
    return BatchStore(coordination, control=location, domains=DOMAINS, sealer=SEALER)


@pytest.fixture
async def api(start_api: StartApi, store: BatchStore) -> Api:
    """The API over the local store, with the token required."""
    return await start_api(store)


# ---------------------------------------------------------------------------------------------
# Redis: a real redis-server per test process (one per xdist worker), flushed for each test.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `redis-server` on loopback for the session; yields `redis://127.0.0.1:PORT/0`."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH; .ci/run installs it (apt-get install redis-server)")
        pytest.skip("redis-server is not on PATH: the Redis backend tests need it")
    server = start_redis_server(executable, tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis URL, its database emptied (FLUSHDB) before the test."""
    with redis.Redis.from_url(redis_server) as client:
        client.flushdb()
    return redis_server


# ---------------------------------------------------------------------------------------------
# Browser: the server time of each console page the browser tests visited, in the summary.
# ---------------------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A table of the console pages the browser tests opened and each one's `Server-Timing`
    (`app;dur=`), from the user property those tests set (it reaches the controller under xdist)."""
    from fixtures.browser import server_timing_rows, timing_table

    rows = [
        row
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport)
        for row in server_timing_rows(report)
    ]
    if rows:
        terminalreporter.section("console pages: server time (Server-Timing app;dur)")
        for line in timing_table(rows):
            terminalreporter.line(line)
