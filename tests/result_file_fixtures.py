"""Helpers for the result file tests: the documented example answers under tests/data, and the
emulator's General answers for each part of a split PDF."""

from __future__ import annotations

from pathlib import Path

from ocrbatch.clova.contract import OcrResponse
from ocrbatch.emulator.results import general_images
from ocrbatch.worker.result_files import split_pdf

DATA = Path(__file__).parent / "data"


def example_response(name: str) -> OcrResponse:
    return OcrResponse.model_validate_json((DATA / name).read_bytes())


def general_parts(data: bytes) -> list[OcrResponse]:
    """The emulator's General answers for each part of a split PDF, as the worker would get them."""
    return [
        OcrResponse(
            version="V2",
            request_id=f"request-{number}",
            timestamp=1_700_000_000_000 + number,
            images=general_images(
                name="scan.pdf", data=part, image_format="pdf", lang="ko", table_detection=True
            ),
        )
        for number, part in enumerate(split_pdf(data))
    ]
