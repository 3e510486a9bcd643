"""A store like NAVER Object Storage on loopback, for replicas of the worker: moto (in this process,
a thread) behind an `S3Proxy` profile ("ncp": V1 listings only, conditional headers dropped), and
a `redis-server` child process for `[coordination] backend = "redis"`.

    async with open_s3_world(work, profile="ncp") as world:
        sections = {"storage": world.storage_section(), "coordination": world.coordination_section()}
        client = await world.direct_client(stack)  # moto itself, past the proxy: for checks

The workers reach the bucket only through the proxy; whoever checks their work reads moto
directly, so what the proxy changes never hides what was stored. How many workers share the world
is the caller's choice: `python -m bench.soak --profile ncp` runs 2, a `make bench` row may run more.
Everything listens on 127.0.0.1 and is stopped on exit.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from bench.redis_server import RedisServer, start_redis_server
from bench.s3_proxy import S3Proxy
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.s3 import open_s3_client

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

ListApi = Literal["auto", "v2", "v1"]  # as `[storage] list_api`
ConditionalWrites = Literal["auto", "yes", "no"]  # as `[storage] conditional_writes`
REGION = "us-east-1"
ACCESS_KEY_ID = "bench-access-key"
# moto accepts any keys; this one is distinctive so that a log carrying it is found.
SECRET_ACCESS_KEY = "bench-s3-secret-5c0e81f2"  # noqa: S105 - moto's, not a credential


@dataclass(frozen=True)
class S3World:
    """A running world: moto at `moto_url`, the proxy in front of it, Redis, one empty bucket."""

    moto_url: str
    proxy: S3Proxy
    redis: RedisServer
    bucket: str
    key_prefix: str
    slot_lease_s: float
    list_api: ListApi
    conditional_writes: ConditionalWrites

    @property
    def proxy_url(self) -> str:
        return self.proxy.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def secret_access_key(self) -> str:
        return SECRET_ACCESS_KEY

    def location(self, prefix: str) -> str:
        """`s3://bucket/prefix`: a batch's input or result path."""
        return f"s3://{self.bucket}/{prefix}"

    def storage_section(self, *, control_prefix: str = "control") -> dict[str, object]:
        """`[storage]` for a worker: the bucket through the proxy, the control path in it."""
        return {
            "endpoint_url": self.proxy_url,
            "region": REGION,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "addressing_style": "path",
            "list_api": self.list_api,
            "conditional_writes": self.conditional_writes,
            "control_path": self.location(control_prefix),
        }

    def coordination_section(self) -> dict[str, object]:
        """`[coordination]` for a worker: Redis, with slot leases of `slot_lease_s`."""
        return {
            "backend": "redis",
            "url": self.redis_url,
            "key_prefix": self.key_prefix,
            "slot_lease_s": self.slot_lease_s,
        }

    def direct_settings(self) -> StorageSettings:
        """Storage settings that reach moto itself, past the proxy."""
        return StorageSettings(
            endpoint_url=self.moto_url,
            region=REGION,
            access_key_id=SecretStr(ACCESS_KEY_ID),
            secret_access_key=SecretStr(SECRET_ACCESS_KEY),
            addressing_style="path",
            max_pool_connections=32,
        )

    async def direct_client(self, stack: AsyncExitStack) -> S3Client:
        """An aioboto3 client on moto itself (not through the proxy); `stack` closes it."""
        return await open_s3_client(self.direct_settings(), stack)


@asynccontextmanager
async def open_s3_world(
    directory: Path,
    *,
    profile: str = "ncp",
    bucket: str = "ocrbatch-bench",
    key_prefix: str = "ocrbatch:",
    slot_lease_s: float = 5.0,
    list_api: ListApi = "auto",
    conditional_writes: ConditionalWrites = "auto",
) -> AsyncIterator[S3World]:
    """Start moto, the `profile` proxy and redis-server (its files in `directory/redis`), create
    `bucket`; stop all three on exit. `list_api` and `conditional_writes` go into
    `storage_section` as they are ("auto": the workers find out, as they would on NCP)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    redis_dir = directory / "redis"
    await asyncio.to_thread(redis_dir.mkdir, parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    async with AsyncExitStack() as stack:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        await asyncio.to_thread(server.start)
        stack.push_async_callback(asyncio.to_thread, server.stop)
        host, port = server.get_host_and_port()
        moto_url = f"http://{host}:{port}"
        proxy = S3Proxy(moto_url, profile=profile)
        await proxy.start()
        stack.push_async_callback(proxy.stop)
        redis = await asyncio.to_thread(start_redis_server, executable, redis_dir)
        stack.push_async_callback(asyncio.to_thread, redis.stop)
        world = S3World(
            moto_url=moto_url,
            proxy=proxy,
            redis=redis,
            bucket=bucket,
            key_prefix=key_prefix,
            slot_lease_s=slot_lease_s,
            list_api=list_api,
            conditional_writes=conditional_writes,
        )
        async with AsyncExitStack() as setup:
            client = await world.direct_client(setup)
            await client.create_bucket(Bucket=bucket)
        yield world
