"""What the benchmarks and the soak share: child processes that never outlive the run, the emulator
as a child process, sample inputs and settings files."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import IO, Any

import aiohttp
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The emulator's General secret; the worker's config and logs are checked for it.
OCR_SECRET = "bench-ocr-secret-7d1e93a4"  # noqa: S105 - the local emulator's, not a credential
ADMIN_TOKEN = "bench-admin-token-3b9f0c27"  # noqa: S105 - X-OCR-ADMIN-TOKEN of the emulators started here
StreamTarget = int | IO[Any]


@asynccontextmanager
async def child_process(
    args: Sequence[str],
    *,
    stdout: StreamTarget = asyncio.subprocess.DEVNULL,
    stderr: StreamTarget = asyncio.subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    stop_timeout_s: float = 15.0,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start a child process; on exit (also on failure) stop it with SIGTERM, then SIGKILL."""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        yield process
    finally:
        await stop_process(process, timeout_s=stop_timeout_s)


async def stop_process(process: asyncio.subprocess.Process, *, timeout_s: float = 15.0) -> None:
    """SIGTERM the child and wait; SIGKILL it if it is still there after `timeout_s`."""
    if process.returncode is not None:
        return
    with suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        with suppress(ProcessLookupError):
            process.kill()
        await process.wait()


@asynccontextmanager
async def emulator_process(
    log_path: Path,
    *,
    max_concurrent_calls: int = 5,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    seed: int = 1,
    extra: Sequence[str] = (),
) -> AsyncIterator[str]:
    """`ocrbatch emulator` as a child process (its own CPU, like the real service); yields its URL."""
    args = [
        PYTHON,
        "-m",
        "ocrbatch",
        "emulator",
        "--port",
        "0",
        "--max-concurrent-calls",
        str(max_concurrent_calls),
        "--latency-ms",
        str(latency_ms),
        "--latency-jitter-ms",
        str(jitter_ms),
        "--seed",
        str(seed),
        *extra,
    ]
    with log_path.open("ab") as log:
        async with child_process(
            args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={
                "OCRBATCH_EMULATOR_GENERAL_SECRET": OCR_SECRET,
                "OCRBATCH_EMULATOR_ADMIN_TOKEN": ADMIN_TOKEN,
            },
        ) as process:
            if process.stdout is None:
                raise RuntimeError("the emulator's stdout is not a pipe")
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            if not line.startswith(b"http"):
                raise RuntimeError(f"the emulator did not start (see {log_path})")
            yield line.decode().strip()


async def get_json(url: str, *, method: str = "GET", body: Any = None) -> Any:
    """One JSON request on loopback (emulator statistics, resets), with the emulators' admin token."""
    headers = {"X-OCR-ADMIN-TOKEN": ADMIN_TOKEN}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as response,
    ):
        response.raise_for_status()
        return await response.json()


def png(width: int, height: int, colour: int = 128) -> bytes:
    """A small grey PNG; different sizes make different documents."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def flat_key(index: int) -> str:
    return f"scan-{index:06}.png"


def write_inputs(directory: Path, count: int, *, key_of: Callable[[int], str] = flat_key) -> list[str]:
    """`count` distinct PNG inputs in `directory`, named by `key_of(index)`; returns their keys."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = []
    for index in range(count):
        key = key_of(index)
        (directory / key).parent.mkdir(parents=True, exist_ok=True)
        (directory / key).write_bytes(png(160 + index % 97, 120 + index // 97 % 89, 40 + index % 200))
        keys.append(key)
    return keys


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, sections: Mapping[str, Mapping[str, object]]) -> Path:
    """A TOML settings file of `{"section": {"key": value}}` (dotted section names for tables)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def general_domain(url: str, max_concurrent_calls: int) -> dict[str, object]:
    """The settings of a General domain on the emulator at `url`."""
    return {
        "kind": "general",
        "invoke_url": url + "/general",
        "secret": OCR_SECRET,
        "max_concurrent_calls": max_concurrent_calls,
        "request_timeout_s": 60.0,
    }


def percentile(values: Iterable[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` 0.5 for p50); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
