"""The soak's webhook receiver: an aiohttp server on loopback that verifies every chunk's signature,
answers a share of requests 500, can go down for a while and come back on the same port, and
records every request it answered."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

from aiohttp import web

from ocrbatch.webhooks.signing import InvalidSignature, verify


@dataclass(frozen=True)
class Delivery:
    """One request as the receiver saw it, and what it answered."""

    chunk_id: str
    status: int
    items: tuple[tuple[str, str], ...]  # (key, "succeeded" | "failed")
    signature_ok: bool

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class FlakyReceiver:
    """`url` after `start()`; `deliveries` lists every request answered."""

    secret: str
    failure_rate: float = 0.1
    seed: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    outages: int = 0
    url: str = ""
    _port: int = 0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    async def start(self) -> str:
        """Listen on loopback (the same port again after an outage)."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        self._port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self._port}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def outage(self, duration_s: float) -> None:
        """Go down (connections refused) for `duration_s`, then come back on the same port."""
        await self.stop()
        self.outages += 1
        await asyncio.sleep(duration_s)
        await self.start()

    async def next_request(self, timeout_s: float) -> None:
        """Return when a request arrives, or after `timeout_s`."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except TimeoutError:
            return

    def received_keys(self) -> set[str]:
        """Keys of every item in a chunk the receiver accepted."""
        return {key for delivery in self.deliveries if delivery.accepted for key, _ in delivery.items}

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(self.secret, request.headers, body, now_s=int(time.time()))
            signature_ok = True
        except InvalidSignature:
            signature_ok = False
        try:
            payload = json.loads(body)
            items = tuple((str(item["key"]), str(item["status"])) for item in payload["items"])
            chunk_id = request.headers.get("webhook-id", "")
        except (ValueError, KeyError, TypeError):
            items, chunk_id = (), ""
        status = 500 if self._rng.random() < self.failure_rate else 200
        self.deliveries.append(Delivery(chunk_id, status, items, signature_ok))
        self._arrived.set()
        return web.Response(status=status, text="ok" if status == 200 else "receiver failure (injected)")
