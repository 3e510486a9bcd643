"""A real aiohttp webhook receiver on loopback for tests: records requests, answers as scripted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each POST with the next scripted (status, headers), then 200; `gate` can hold answers."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        self.gate.set()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self.url

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, *, timeout_s: float = 30) -> None:
        """Until `count` requests have been answered 2xx; fails after `timeout_s` saying how many were."""
        await self._wait(lambda: len(self.accepted) >= count, timeout_s, f"{count} accepted requests")

    @property
    def accepted(self) -> list[Received]:
        return [
            request for request, status in zip(self.received, self._statuses, strict=True) if status < 300
        ]

    _statuses: list[int] = field(default_factory=list)
    held: list[Received] = field(default_factory=list)

    async def wait_for_held(self, count: int, *, timeout_s: float = 30) -> None:
        """Until `count` requests have arrived while the gate was closed (they are not answered yet)."""
        await self._wait(lambda: len(self.held) >= count, timeout_s, f"{count} held requests")

    async def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        try:
            async with self.arrived:
                await asyncio.wait_for(self.arrived.wait_for(done), timeout=timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {timeout_s} s: {len(self.received)} answered "
                f"({len(self.accepted)} with 2xx), {len(self.held)} held"
            ) from None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.gate.is_set():
            async with self.arrived:
                self.held.append(Received(dict(request.headers), body))
                self.arrived.notify_all()
        await self.gate.wait()
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        async with self.arrived:
            self.received.append(Received(dict(request.headers), body))
            self._statuses.append(status)
            self.arrived.notify_all()
        return web.Response(status=status, headers=headers, text="ok")
