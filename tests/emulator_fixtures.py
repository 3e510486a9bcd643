"""Helpers for tests that talk to the emulator over loopback: clients, a burst of calls against its
cap, and `ocrbatch emulator` / `ocrbatch engine` as child processes."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from PIL import Image
from process_fixtures import OcrbatchProcess, start_ocrbatch
from pydantic import SecretStr
from waits import within

from ocrbatch.clova.client import OcrCall, OcrClient, TransferMode
from ocrbatch.clova.contract import OcrError, OcrResponse
from ocrbatch.emulator.server import Emulator

StartEmulator = Callable[..., Awaitable[Emulator]]
COMMAND_TIMEOUT_S = 30.0  # for a server command to print a line, or to exit once signalled


def png_bytes(width: int = 320, height: int = 200, colour: int = 200) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def client_for(
    session: aiohttp.ClientSession,
    emulator: Emulator,
    *,
    kind: str = "general",
    mode: TransferMode = "data",
    path: str | None = None,
    secret: str | None = None,
    timeout_s: float = 10.0,
) -> OcrClient:
    settings = emulator.settings
    default_secret = settings.general_secret if kind == "general" else settings.template_secret
    return OcrClient(
        session,
        invoke_url=emulator.url + (path or ("/general" if kind == "general" else "/infer")),
        secret=SecretStr(secret) if secret is not None else default_secret,
        transfer_mode=mode,
        request_timeout_s=timeout_s,
    )


# -- a burst of calls against the cap -------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """What the calls of `calls_at_once` got: the refusals, and the answers of the admitted ones."""

    refused: list[OcrError]
    answered: list[OcrResponse]


async def calls_at_once(
    emulator: Emulator, client: OcrClient, calls: Sequence[OcrCall], *, admitted: int, timeout_s: float = 60
) -> Burst:
    """Send `calls` at once while `emulator` holds the admitted ones, so that they stay in flight
    until every other call has been answered; then release them and collect every outcome."""
    emulator.hold()
    tasks = [asyncio.create_task(client.recognize(call)) for call in calls]
    refused: list[OcrError] = []

    async def refusals() -> None:
        for finished in asyncio.as_completed(tasks):
            try:
                await finished
            except OcrError as error:
                refused.append(error)
            if len(refused) == len(calls) - admitted:
                return

    try:
        await within(refusals(), timeout_s, f"{len(calls) - admitted} of {len(calls)} calls not refused")
        await within(emulator.wait_for_in_flight(admitted), timeout_s, f"{admitted} calls not in flight")
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    finally:
        emulator.release()
    outcomes = await within(
        asyncio.gather(*tasks, return_exceptions=True), timeout_s, "the admitted calls not answered"
    )
    return Burst(refused, [outcome for outcome in outcomes if isinstance(outcome, OcrResponse)])


# -- the server commands as child processes -------------------------------------------------------


@dataclass
class ServerCommand:
    """A running `ocrbatch emulator` or `ocrbatch engine`; `exit_code` is set once it has stopped."""

    name: str
    process: OcrbatchProcess
    url: str = ""
    exit_code: int | None = None
    _next_line: int = 0

    async def line(self) -> str:
        """The next line it prints on stdout; the test fails if none comes, with its output."""
        line = await self.process.line(self._next_line, timeout_s=COMMAND_TIMEOUT_S)
        self._next_line += 1
        return line.strip()

    async def errors(self) -> str:
        """What it wrote on stderr, once it has ended."""
        await self.process.wait(timeout_s=COMMAND_TIMEOUT_S)
        return "\n".join(self.process.error_lines)


@asynccontextmanager
async def server_command(name: str, *args: str) -> AsyncIterator[ServerCommand]:
    """`ocrbatch NAME ARGS...` as a child process, yielded once it has printed its URL (the first
    line); on leaving, stopped with SIGTERM, its exit code in `exit_code`."""
    server = ServerCommand(name, await start_ocrbatch(None, name, *args, stderr=asyncio.subprocess.PIPE))
    try:
        server.url = await server.line()
        yield server
    finally:
        server.exit_code = await server.process.stop(timeout_s=COMMAND_TIMEOUT_S)
