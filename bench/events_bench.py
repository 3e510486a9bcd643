"""Upload -> result latency in event mode: `ocrbatch serve` on S3 (moto on loopback) with polling
made rare, uploads announced to `POST /api/v1/events/s3` one at a time, as MinIO or SNS would.

The latency of an upload runs from the moment its PUT returned to the moment the worker logged
`item.done` for its key (the result is written by then).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from bench.common import PYTHON, child_process, emulator_process, general_domain, png, write_config
from bench.scenarios import EMULATOR_CAP, JITTER_MS, LATENCY_MS
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.s3 import open_s3_client

BUCKET = "bench-events"
EVENTS_PATH = "/api/v1/events/s3"
API_TOKEN = "bench-api-token-0123456789"  # noqa: S105 - the token of the serve started here


def s3_event(bucket: str, key: str) -> dict[str, object]:
    """An S3 ObjectCreated notification, as AWS and MinIO send it."""
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    return {"Records": [record]}


class _LogWatcher:
    """Reads `serve`'s JSON log lines: the API's URL, and when each item was done."""

    def __init__(self, stream: asyncio.StreamReader, copy: Path) -> None:
        self._stream = stream
        self._copy = copy
        self.api_url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.done_at_s: dict[str, float] = {}
        self.changed = asyncio.Condition()

    async def run(self) -> None:
        with self._copy.open("ab") as copy:
            while line := await self._stream.readline():
                copy.write(line)
                await self._line(line)
        if not self.api_url.done():
            self.api_url.set_exception(RuntimeError(f"serve ended before listening; see {self._copy}"))

    async def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if event.get("event") == "api.listening" and not self.api_url.done():
            self.api_url.set_result(str(event["url"]))
        elif event.get("event") == "item.done":
            async with self.changed:
                self.done_at_s.setdefault(str(event["key"]), time.monotonic())
                self.changed.notify_all()


async def upload_latencies(work: Path, *, uploads: int, interval_s: float) -> list[float]:
    """Seconds from upload to result, one per upload."""
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        storage = StorageSettings(
            endpoint_url=f"http://{host}:{port}",
            access_key_id=SecretStr("bench"),
            secret_access_key=SecretStr("bench"),
            addressing_style="path",
        )
        async with AsyncExitStack() as stack:
            client = await open_s3_client(storage, stack)
            await client.create_bucket(Bucket=BUCKET)
        async with emulator_process(
            work / "emulator.log",
            max_concurrent_calls=EMULATOR_CAP,
            latency_ms=LATENCY_MS,
            jitter_ms=JITTER_MS,
        ) as url:
            config = write_config(
                work / "ocrbatch.toml",
                {
                    "storage": {
                        "endpoint_url": storage.endpoint_url,
                        "access_key_id": "bench",
                        "secret_access_key": "bench",
                        "addressing_style": "path",
                        "control_path": f"s3://{BUCKET}/control",
                    },
                    "domains.receipts": general_domain(url, EMULATOR_CAP),
                    "worker": {"poll_interval_s": 3600.0},
                    "api": {"host": "127.0.0.1", "port": 0, "token": API_TOKEN},
                    "logging": {"format": "json", "level": "info"},
                },
            )
            await _create_batch(config, work / "cli.log")
            return await _measure(config, storage, work, uploads=uploads, interval_s=interval_s)
    finally:
        server.stop()


async def _create_batch(config: Path, log: Path) -> None:
    args = [PYTHON, "-m", "ocrbatch", "--config", str(config), "batch", "create", "--name", "events"]
    args += ["--domain", "receipts", "--input", f"s3://{BUCKET}/in", "--result", f"s3://{BUCKET}/out"]
    with log.open("ab") as output:
        async with child_process(args, stdout=output, stderr=output) as process:
            if await process.wait() != 0:
                raise RuntimeError(f"batch create failed; see {log}")


async def _measure(
    config: Path, storage: StorageSettings, work: Path, *, uploads: int, interval_s: float
) -> list[float]:
    args = [PYTHON, "-m", "ocrbatch", "--config", str(config), "serve"]
    with (work / "serve-stderr.log").open("ab") as errors:
        async with (
            child_process(args, stdout=asyncio.subprocess.PIPE, stderr=errors) as serve,
            StorageFactory(storage) as storages,
            aiohttp.ClientSession() as session,
        ):
            if serve.stdout is None:
                raise RuntimeError("serve's stdout is not a pipe")
            watcher = _LogWatcher(serve.stdout, work / "serve.log")
            reading = asyncio.create_task(watcher.run())
            try:
                api_url = await asyncio.wait_for(watcher.api_url, 60)
                inputs = await storages.open(Location.parse(f"s3://{BUCKET}/in"))
                uploaded_at_s: dict[str, float] = {}
                for index in range(uploads):
                    key = f"upload-{index:04}.png"
                    await inputs.write(key, png(200 + index, 150), content_type="image/png")
                    uploaded_at_s[key] = time.monotonic()
                    async with session.post(
                        api_url + EVENTS_PATH,
                        json=s3_event(BUCKET, "in/" + key),
                        headers={"Authorization": f"Bearer {API_TOKEN}"},
                    ) as answer:
                        answer.raise_for_status()
                    await asyncio.sleep(interval_s)
                async with watcher.changed:
                    await asyncio.wait_for(
                        watcher.changed.wait_for(lambda: set(uploaded_at_s) <= set(watcher.done_at_s)), 120
                    )
                return [watcher.done_at_s[key] - uploaded_at_s[key] for key in uploaded_at_s]
            finally:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
