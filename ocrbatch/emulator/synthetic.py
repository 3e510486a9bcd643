"""The emulator's own recogniser: the deterministic results of `emulator.results`, for General
calls (with tables when asked) and Template calls (a template picked among the candidates)."""

from __future__ import annotations

from typing import Any

from ocrbatch.clova.contract import OcrImage
from ocrbatch.clova.recognition import RecognitionCall
from ocrbatch.emulator.results import default_template, general_images, template_images
from ocrbatch.types import DomainKind


class SyntheticRecogniser:
    """Answers every call from its bytes alone: the same image always gets the same answer."""

    name = "synthetic"
    kinds: frozenset[DomainKind] = frozenset({"general", "template"})
    detects_tables = True

    async def start(self) -> None:
        """Nothing to find or load."""

    async def recognise(self, call: RecognitionCall) -> list[OcrImage]:
        # Pure and quick (no I/O, a few models per page), so it runs on the event loop.
        if call.kind == "general":
            return general_images(
                name=call.name,
                data=call.data,
                image_format=call.image_format,
                lang=call.lang,
                table_detection=call.table_detection,
            )
        return template_images(
            name=call.name,
            data=call.data,
            image_format=call.image_format,
            candidates=[default_template(template_id) for template_id in call.template_ids],
        )

    def stats(self) -> dict[str, Any]:
        return {"name": self.name}

    def description(self) -> str:
        return ""  # the routes say it all

    def warnings(self) -> list[str]:
        return []
