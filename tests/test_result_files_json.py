"""Result files' names and content types, and the JSON rendering of an answer."""

from __future__ import annotations

import json

import pytest
from fixtures.result_files import example_response, general_parts
from fixtures.samples import pdf

from ocrbatch.batches.layout import COMPANION_SUFFIX, DOWNLOAD_SUFFIX, RESULT_SUFFIX
from ocrbatch.clova.contract import OcrResponse
from ocrbatch.worker.result_files import CONTENT_TYPES, merge_responses, render_json

# -- names ---------------------------------------------------------------------------------------


def test_result_suffixes_and_content_types_match() -> None:
    """Each file format has a suffix, and each suffix the content type its object is stored with;
    a pdf batch's result is its JSON, with the PDF beside it and given on download."""
    assert RESULT_SUFFIX == {"json": ".json", "xls": ".xlsx", "pdf": ".json"}
    assert COMPANION_SUFFIX == {"pdf": ".pdf"}
    assert DOWNLOAD_SUFFIX == {"json": ".json", "xls": ".xlsx", "pdf": ".pdf"}
    assert CONTENT_TYPES[RESULT_SUFFIX["json"]] == "application/json"
    assert CONTENT_TYPES[RESULT_SUFFIX["xls"]] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert CONTENT_TYPES[COMPANION_SUFFIX["pdf"]] == "application/pdf"


# -- JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(example_response("general-ocr-response.json"), id="general"),
        pytest.param(example_response("template-ocr-response.json"), id="template"),
        pytest.param(example_response("template-ocr-failure.json"), id="failure"),
        pytest.param(merge_responses(general_parts(pdf(12))), id="merged"),
    ],
)
def test_json_round_trips_to_the_same_response(response: OcrResponse) -> None:
    """The JSON file parses back to the same wire form: nothing is lost or renamed; and it is byte
    for byte the compact dump of that wire form (pydantic-core's serialiser, standard json's text)."""
    data = render_json(response)
    assert OcrResponse.model_validate_json(data).to_wire() == response.to_wire()
    assert data == json.dumps(response.to_wire(), ensure_ascii=False, separators=(",", ":")).encode()


def test_json_is_compact_utf8_with_text_as_is() -> None:
    """Korean text is written as UTF-8, not \\u escapes, and without indentation."""
    data = render_json(example_response("general-ocr-response.json"))
    assert "합계".encode() in data
    assert b"\\u" not in data
    assert b"\n" not in data
