"""Type aliases and constants that several layers share, defined once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Literal, get_args

Clock = Callable[[], float]  # seconds: time.monotonic for durations, time.time for wall-clock times
Sleep = Callable[[float], Awaitable[None]]  # asyncio.sleep, or a test's recording or fake sleep

DomainKind = Literal["general", "template"]  # an OCR domain's contract: General or Template
Language = Literal["ko", "ja", "zh-TW"]  # the languages CLOVA General OCR recognises
LANGUAGES: Final[tuple[Language, ...]] = get_args(Language)
FailedInferResult = Literal["FAILURE", "ERROR"]  # an image the service could not recognise
