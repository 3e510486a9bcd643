"""The local OCR engine with real Tesseract: rendered text in four languages is read back, the
answers have the shape of SPEC §3, and the emulator's cap holds for real recognitions."""

from __future__ import annotations

import base64
import io
from typing import Any

import aiohttp
import pytest
from fixtures.emulator import StartEmulator, calls_at_once, client_for
from fixtures.engine import character_error_rate, require_tesseract_and_fonts, text_lines
from PIL import Image

from ocrbatch.clova.client import OcrCall
from ocrbatch.clova.contract import OcrResponse
from ocrbatch.demo import samples
from ocrbatch.emulator.server import Emulator
from ocrbatch.engine.tesseract import TesseractSettings

MAX_CER = 0.05
SECRET = "engine-test-secret"


@pytest.fixture(autouse=True)
def _tesseract_installed() -> None:
    require_tesseract_and_fonts()


async def _engine(start_emulator: StartEmulator, **settings: Any) -> Emulator:
    return await start_emulator(engine="tesseract", general_secret=SECRET, **settings)


async def _post(session: aiohttp.ClientSession, url: str, message: dict[str, Any]) -> tuple[int, Any]:
    headers = {"X-OCR-SECRET": SECRET}
    async with session.post(url, json=message, headers=headers) as response:
        return response.status, await response.json()


def _message(name: str, image_format: str, data: bytes, **extra: Any) -> dict[str, Any]:
    image = {"format": image_format, "name": name, "data": base64.b64encode(data).decode()}
    return {"version": "V2", "requestId": "r-1", "timestamp": 1, "images": [image], **extra}


@pytest.mark.parametrize("lang", samples.LANGUAGES)
async def test_rendered_text_is_read_back_in_the_clova_shape(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession, lang: str
) -> None:
    """A clean render of known text comes back with a character error rate of at most 5 %, one
    line per rendered line, every box inside the page, and every field SPEC §3 names."""
    engine = await _engine(start_emulator)
    lines = samples.SAMPLE_TEXT[lang]
    page = samples.text_page(lines, lang)
    message = _message(f"{lang}.png", "png", samples.encode(page, "PNG"))
    if lang != "en":
        message["lang"] = lang
    status, body = await _post(ocr_session, engine.url + "/general", message)

    assert status == 200
    assert OcrResponse.model_validate(body).to_wire() == body  # round-trips through the models
    assert {"version", "requestId", "timestamp", "images"} <= body.keys()
    (image,) = body["images"]
    assert image["inferResult"] == "SUCCESS"
    assert image["name"] == f"{lang}.png"
    assert {"uid", "message", "validationResult"} <= image.keys()
    assert image["convertedImageInfo"] == {
        "width": page.width,
        "height": page.height,
        "pageIndex": 0,
        "longImage": False,
    }
    for field in image["fields"]:
        assert field["type"] == "NORMAL"
        assert field["valueType"] == "ALL"
        assert field["inferText"].strip()
        assert 0 <= field["inferConfidence"] <= 1
        assert isinstance(field["lineBreak"], bool)
        vertices = field["boundingPoly"]["vertices"]
        assert len(vertices) == 4
        assert all(0 <= v["x"] <= page.width and 0 <= v["y"] <= page.height for v in vertices)
        assert vertices[0]["x"] <= vertices[2]["x"]
        assert vertices[0]["y"] <= vertices[2]["y"]

    recognised = text_lines(OcrResponse.model_validate(body).images[0])
    cer = character_error_rate("".join(lines), "".join(recognised))
    assert cer <= MAX_CER, (cer, recognised)
    assert len(recognised) == len(lines)
    assert image["fields"][-1]["lineBreak"] is True


@pytest.mark.timeout(120)
async def test_a_pdf_is_read_page_by_page_up_to_ten_pages(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A 12-page scanned PDF is answered with its first 10 pages (pageIndex 0-9, as the service
    reads per call), each holding its own page's text."""
    engine = await _engine(start_emulator)
    response = await client_for(ocr_session, engine, mode="multipart").recognize(
        OcrCall(name="contract.pdf", image_format="pdf", data=samples.contract_pdf(12), lang="ko")
    )
    assert len(response.images) == 10
    for number, image in enumerate(response.images, start=1):
        assert image.converted_image_info is not None
        assert image.converted_image_info.page_index == number - 1
        assert (image.converted_image_info.width, image.converted_image_info.height) == (1190, 1684)
        expected = "".join(samples.contract_page_lines(number, 12))
        assert character_error_rate(expected, "".join(text_lines(image))) <= MAX_CER, number
    assert engine.stats()["engine"]["pages"] == 10


async def test_a_multi_page_tiff_is_read_frame_by_frame(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """Each TIFF frame is a page of its own."""
    engine = await _engine(start_emulator)
    frames = [samples.text_page(samples.SAMPLE_TEXT[lang], lang).convert("L") for lang in ("ja", "en")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    response = await client_for(ocr_session, engine).recognize(
        OcrCall(name="scan.tiff", image_format="tiff", data=buffer.getvalue(), lang="ja")
    )
    assert [
        image.converted_image_info.page_index for image in response.images if image.converted_image_info
    ] == [
        0,
        1,
    ]
    for image, lang in zip(response.images, ("ja", "en"), strict=True):
        expected = "".join(samples.SAMPLE_TEXT[lang])
        assert character_error_rate(expected, "".join(text_lines(image))) <= MAX_CER, lang


async def test_a_long_receipt_is_read_to_the_bottom(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A receipt 8,400 px long is one page, flagged as a long image, read from header to total."""
    engine = await _engine(start_emulator)
    receipt = samples.long_receipt()
    response = await client_for(ocr_session, engine).recognize(
        OcrCall(name="receipt.png", image_format="png", data=samples.encode(receipt, "PNG"), lang="ko")
    )
    (image,) = response.images
    assert image.converted_image_info is not None
    assert image.converted_image_info.long_image is True
    lines = text_lines(image)
    assert "한빛마트" in lines[0].replace(" ", "")
    assert lines[-1].replace(" ", "").startswith("합계")


async def test_unreadable_bytes_fail_as_in_the_emulator(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A truncated PNG gets the emulator's FAILURE answer, reason included; nothing is recognised."""
    engine = await _engine(start_emulator)
    synthetic = await start_emulator(general_secret=SECRET)
    page = samples.encode(Image.new("L", (200, 100), 255), "PNG")
    call = OcrCall(name="cut.png", image_format="png", data=page[: len(page) // 2])
    answers = [
        (await client_for(ocr_session, server, secret=SECRET).recognize(call)).images[0]
        for server in (engine, synthetic)
    ]
    assert answers[0].infer_result == answers[1].infer_result == "FAILURE"
    assert answers[0].message == answers[1].message
    assert "could not be read" in (answers[0].message or "")
    assert engine.stats()["engine"]["pages"] == 0


async def test_tables_are_refused_and_templates_are_not_served(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """No table model: asking for tables is answered 0028, never with invented tables; the
    Template route answers 0022, since the engine serves only the General contract."""
    engine = await _engine(start_emulator)
    page = samples.encode(samples.table_page(), "PNG")
    status, body = await _post(
        ocr_session, engine.url + "/general", _message("t.png", "png", page, enableTableDetection=True)
    )
    assert (status, body["code"]) == (400, "0028")
    status, body = await _post(
        ocr_session, engine.url + "/infer", _message("t.png", "png", page, templateIds=[101])
    )
    assert (status, body["code"]) == (400, "0022")
    status, body = await _post(ocr_session, engine.url + "/general", _message("t.png", "png", page))
    assert status == 200
    assert "tables" not in body["images"][0]
    words = "".join(text_lines(OcrResponse.model_validate(body).images[0]))
    assert "18,500" in words


@pytest.mark.timeout(120)
async def test_twenty_concurrent_calls_at_a_cap_of_two(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """20 calls at once against a cap of 2: 18 are answered 0025, never more than 2 are in flight,
    never more than 2 Tesseract processes run, and the 2 admitted calls are really recognised."""
    # More processes than the cap, so that only the cap can keep recognitions to two.
    engine = await _engine(start_emulator, max_concurrent_calls=2, tesseract=TesseractSettings(processes=4))
    client = client_for(ocr_session, engine, secret=SECRET)
    page = samples.encode(samples.text_page(samples.SAMPLE_TEXT["en"], "en"), "PNG")
    calls = [OcrCall(name=f"p-{n:02}.png", image_format="png", data=page) for n in range(20)]
    burst = await calls_at_once(engine, client, calls, admitted=2)
    stats = engine.stats()

    assert {error.code for error in burst.refused} == {"0025"}
    assert len(burst.answered) == 2
    assert stats["answers"] == {"200": 2, "0025": 18}
    assert stats["peak_in_flight"] == 2
    assert stats["engine"]["peak_running"] <= 2
    assert stats["engine"]["pages"] == 2
    for response in burst.answered:
        text = "".join(text_lines(response.images[0]))
        assert character_error_rate("".join(samples.SAMPLE_TEXT["en"]), text) <= MAX_CER
