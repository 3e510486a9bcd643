"""The local engine as a `Recogniser`: Tesseract answers General calls, and detects no tables.

Tesseract is looked for in `start()`, so a server that cannot run it fails before it listens,
with `EngineUnavailable` saying what to install. It has no table model and does not match
templates: the emulator answers 0028 to calls asking for tables and 0022 on the Template route.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ocrbatch.clova.contract import OcrImage
from ocrbatch.clova.recognition import RecognitionCall, RecognitionFailed
from ocrbatch.engine.tesseract import TesseractEngine, TesseractSettings, detect_tesseract, missing_languages
from ocrbatch.types import DomainKind


class TesseractRecogniser:
    """General OCR by Tesseract, at most `settings.processes` pages at once."""

    name = "tesseract"
    kinds: frozenset[DomainKind] = frozenset({"general"})
    detects_tables = False

    def __init__(self, settings: TesseractSettings) -> None:
        self.settings = settings
        self.engine: TesseractEngine | None = None

    async def start(self) -> None:
        """Find Tesseract and its language data (once); `EngineUnavailable` if it cannot be run."""
        if self.engine is None:
            install = await asyncio.to_thread(detect_tesseract, self.settings.command)
            self.engine = TesseractEngine(install, self.settings)

    async def recognise(self, call: RecognitionCall) -> list[OcrImage]:
        if call.kind not in self.kinds:
            raise RecognitionFailed("FAILURE", "the engine serves the General contract only")
        return await self._started().recognise(
            name=call.name, data=call.data, image_format=call.image_format, lang=call.lang
        )

    def stats(self) -> dict[str, Any]:
        return self.engine.stats() if self.engine is not None else {"name": self.name}

    def description(self) -> str:
        engine = self._started()
        languages = ", ".join(sorted(engine.install.languages))
        return f"{engine.install.version}, {engine.processes} processes, languages: {languages}"

    def warnings(self) -> list[str]:
        missing = missing_languages(self._started().install.languages)
        return [f"no Tesseract data for {', '.join(missing)}: such requests fail"] if missing else []

    def _started(self) -> TesseractEngine:
        if self.engine is None:
            raise RuntimeError("the Tesseract recogniser is used before start()")
        return self.engine
