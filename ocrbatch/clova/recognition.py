"""What answers a CLOVA call: the interface of a recogniser, one image in, the answer's images out.

The emulator serves every call through one `Recogniser`: the synthetic one (deterministic results
built from the bytes) or the local Tesseract engine. Both raise the same exceptions, so the server
turns an unreadable image into the same FAILURE/ERROR image whichever recognises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ocrbatch.clova.contract import OcrImage
from ocrbatch.types import DomainKind, FailedInferResult


class RecognitionFailed(Exception):
    """One image cannot be recognised; `infer_result` says whether a retry may help (ERROR)."""

    def __init__(self, infer_result: FailedInferResult, message: str) -> None:
        self.infer_result = infer_result
        super().__init__(message)


@dataclass(frozen=True)
class RecognitionCall:
    """One call's image, checked by the server: what a recogniser needs to answer it."""

    kind: DomainKind
    name: str
    data: bytes
    image_format: str
    lang: str | None = None  # General: the request's languages, comma-joined; None for the default
    table_detection: bool = False  # General: tables asked for (only sent to a recogniser that detects them)
    template_ids: tuple[int, ...] = ()  # Template: the candidates, the request's or else every deployed one


class Recogniser(Protocol):
    """Recognises the images of calls for the emulator. `start()` once before the first `recognise()`."""

    @property
    def name(self) -> str:
        """The engine's name, as `/healthz` and `/_emulator/stats` report it."""
        ...

    @property
    def kinds(self) -> frozenset[DomainKind]:
        """The contracts it serves; a call for another is answered 0022 (no such domain)."""
        ...

    @property
    def detects_tables(self) -> bool:
        """Whether it can answer `enableTableDetection`; if not, such calls are answered 0028."""
        ...

    async def start(self) -> None:
        """Find and load what recognition needs; raise if it cannot be had, before any call comes."""
        ...

    async def recognise(self, call: RecognitionCall) -> list[OcrImage]:
        """The answer's images, one per page. Raises `UnreadableDocument` for bytes that are not the
        declared format, `RecognitionFailed` for an image that cannot be recognised."""
        ...

    def stats(self) -> dict[str, Any]:
        """Its figures for `/_emulator/stats` (JSON values), `name` among them."""
        ...

    def description(self) -> str:
        """What recognises, for the startup banner; empty when there is nothing to add to the routes."""
        ...

    def warnings(self) -> list[str]:
        """What the operator should know at startup (missing language data), one line each."""
        ...
