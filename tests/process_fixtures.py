"""`ocrbatch` as a real child process: started with a settings file, its JSON log lines collected as
they come, waited on with timeouts that say what did not happen, and stopped with a real signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

TOKEN = "api-token-for-tests-0123456789"  # the API token of the serve processes the tests start
_TAIL_LINES = 40


class OcrbatchProcess:
    """A running `ocrbatch` command whose stdout (with its stderr, unless that is a pipe of its own)
    is read into `lines`, and a stderr pipe into `error_lines`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        if process.stdout is None:
            raise ValueError("the process's stdout must be a pipe")
        self.process = process
        self.lines: list[str] = []
        self.error_lines: list[str] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(process.stdout, self.lines))
        self._readers = [self._reader]
        if process.stderr is not None:
            self._readers.append(asyncio.create_task(self._read(process.stderr, self.error_lines)))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The JSON log lines read so far with this event and these field values."""
        found = []
        for line in self.lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(entry, dict)
                and entry.get("event") == event
                and all(entry.get(name) == value for name, value in fields.items())
            ):
                found.append(entry)
        return found

    async def wait_for_log(self, event: str, *, timeout_s: float = 60, **fields: Any) -> dict[str, Any]:
        """The first log line with this event and these fields, read already or yet to come."""

        def seen() -> bool:
            return bool(self.events(event, **fields)) or self._reader.done()

        try:
            async with self._arrived:
                await asyncio.wait_for(self._arrived.wait_for(seen), timeout=timeout_s)
        except TimeoutError:
            raise AssertionError(self.explain(f"no {event!r} {fields} within {timeout_s} s")) from None
        found = self.events(event, **fields)
        if not found:
            raise AssertionError(self.explain(f"the process ended without logging {event!r} {fields}"))
        return found[0]

    async def line(self, index: int, *, timeout_s: float = 60) -> str:
        """Line `index` (from 0) of its stdout, once it has printed it."""

        def printed() -> bool:
            return len(self.lines) > index or self._reader.done()

        try:
            async with self._arrived:
                await asyncio.wait_for(self._arrived.wait_for(printed), timeout=timeout_s)
        except TimeoutError:
            raise AssertionError(self.explain(f"no line {index + 1} within {timeout_s} s")) from None
        if len(self.lines) <= index:
            raise AssertionError(self.explain(f"the process ended before line {index + 1}"))
        return self.lines[index]

    async def wait(self, *, timeout_s: float = 60) -> int:
        """The exit code, once the process has ended and its output is read; a process that does
        not end within `timeout_s` is killed and the test fails."""
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout=timeout_s)
            await asyncio.wait_for(asyncio.gather(*self._readers), timeout=timeout_s)
        except TimeoutError:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            raise AssertionError(self.explain(f"the process did not end within {timeout_s} s")) from None
        return code

    async def stop(self, signum: signal.Signals = signal.SIGTERM, *, timeout_s: float = 60) -> int:
        """Send `signum` (unless it has ended) and return the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signum)
        return await self.wait(timeout_s=timeout_s)

    def explain(self, what: str) -> str:
        """`what` went wrong, followed by the last lines of the process's output."""
        tail = (self.lines + self.error_lines)[-_TAIL_LINES:]
        return f"{what}; the output ends with:\n" + "\n".join(tail)

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        try:
            while line := await stream.readline():
                async with self._arrived:
                    into.append(line.decode(errors="replace").rstrip("\n"))
                    self._arrived.notify_all()
        finally:
            async with self._arrived:
                self._arrived.notify_all()  # waiters learn that no more lines will come


async def start_ocrbatch(
    config: Path | None,
    *args: str,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stderr: int = asyncio.subprocess.STDOUT,
) -> OcrbatchProcess:
    """`python -m ocrbatch --config CONFIG ARGS...` (or `command` with `ARGS`), its output read as
    it comes (stderr too, unless `stderr` says otherwise); `env` adds to this process's environment."""
    return OcrbatchProcess(await _spawn(config, args, command=command, env=env, stderr=stderr))


class ServedProcess(OcrbatchProcess):
    """`ocrbatch serve`, whose API listens at `url` once `serve_process` yields it."""

    url = ""


ServeProcess = Callable[..., AbstractAsyncContextManager[ServedProcess]]


@asynccontextmanager
async def serve_process(
    config: Path | None, *, command: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServedProcess]:
    """`ocrbatch serve` as a process: yields it once its API listens, then stops it with SIGTERM and
    expects exit code 0 (its log's tail is shown otherwise)."""
    served = ServedProcess(
        await _spawn(config, ("serve",), command=command, env=env, stderr=asyncio.subprocess.STDOUT)
    )
    try:
        served.url = str((await served.wait_for_log("api.listening"))["url"])
        yield served
    finally:
        code = await served.stop()
    assert code == 0, served.explain(f"serve exited {code}")


async def _spawn(
    config: Path | None,
    args: Sequence[str],
    *,
    command: Sequence[str] | None,
    env: Mapping[str, str] | None,
    stderr: int,
) -> asyncio.subprocess.Process:
    argv = [*(command or (sys.executable, "-m", "ocrbatch")), *(("--config", str(config)) if config else ())]
    return await asyncio.create_subprocess_exec(
        *argv,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
