"""Type aliases and constants that several layers share, defined once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Literal, get_args

Clock = Callable[[], float]  # seconds: time.monotonic for durations, time.time for wall-clock times
Sleep = Callable[[float], Awaitable[None]]  # asyncio.sleep, or a test's recording or fake sleep


async def sleep_unless(stopping: asyncio.Event, sleep: Sleep, delay_s: float) -> None:
    """`sleep(delay_s)`, cut short once `stopping` is set (shutdown never waits out a backoff)."""
    sleeper = asyncio.ensure_future(sleep(delay_s))
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({sleeper, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stop):
            task.cancel()
        await asyncio.gather(sleeper, stop, return_exceptions=True)


DomainKind = Literal["general", "template"]  # an OCR domain's contract: General or Template
Language = Literal["ko", "ja", "zh-TW"]  # the languages CLOVA General OCR recognises
LANGUAGES: Final[tuple[Language, ...]] = get_args(Language)
FailedInferResult = Literal["FAILURE", "ERROR"]  # an image the service could not recognise
