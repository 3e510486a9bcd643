"""The local engine's parts that need no real Tesseract: language mapping, TSV to CLOVA fields,
page decoding, settings, and the process it runs (a fake `tesseract` executable stands in)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from fixtures.emulator import StartEmulator, client_for, png_bytes, server_command
from fixtures.engine import fake_tesseract
from PIL import Image
from pydantic import ValidationError

from ocrbatch.cli.servers import engine_command
from ocrbatch.clova.client import OcrCall
from ocrbatch.clova.documents import MAX_DECODED_PAGE_PIXELS, UnreadableDocument, page_sizes
from ocrbatch.clova.recognition import RecognitionFailed
from ocrbatch.emulator.settings import EmulatorSettings, recogniser_for
from ocrbatch.emulator.synthetic import SyntheticRecogniser
from ocrbatch.engine.pages import page_image
from ocrbatch.engine.recogniser import TesseractRecogniser
from ocrbatch.engine.tesseract import (
    EngineUnavailable,
    detect_tesseract,
    fields_from_tsv,
    missing_languages,
    tesseract_languages,
)

DEBIAN = frozenset({"eng", "kor", "Hangul", "jpn", "chi_tra", "osd"})
HOMEBREW = frozenset({"eng", "kor", "script/Hangul", "jpn", "chi_tra"})
TSV_HEADER = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"


@pytest.mark.parametrize(
    ("lang", "installed", "expected"),
    [
        (None, DEBIAN, "kor+Hangul+eng"),  # no lang: Korean, the service's default
        ("ko", DEBIAN, "kor+Hangul+eng"),
        ("ko", HOMEBREW, "kor+script/Hangul+eng"),
        ("ko", frozenset({"kor", "eng"}), "kor+eng"),
        ("ja", DEBIAN, "jpn+eng"),
        ("zh-TW", DEBIAN, "chi_tra+eng"),
        ("ko,ja", DEBIAN, "kor+Hangul+jpn+eng"),
        ("ja,ko,ja", DEBIAN, "jpn+kor+Hangul+eng"),
        ("zh-TW", frozenset({"chi_tra"}), "chi_tra"),
    ],
)
def test_request_languages_map_to_tesseract_models(
    lang: str | None, installed: frozenset[str], expected: str
) -> None:
    """Each CLOVA language picks its installed models; English is added for Latin text."""
    assert tesseract_languages(lang, installed) == expected


def test_a_language_without_data_names_the_package_to_install() -> None:
    """Asking for Japanese without jpn data fails the image with the package that adds it."""
    with pytest.raises(RecognitionFailed, match="tesseract-ocr-jpn") as raised:
        tesseract_languages("ja", frozenset({"eng", "kor"}))
    assert raised.value.infer_result == "FAILURE"
    assert missing_languages(frozenset({"eng", "kor"})) == [
        "ja (tesseract-ocr-jpn)",
        "zh-TW (tesseract-ocr-chi-tra)",
    ]
    assert missing_languages(DEBIAN) == []


def test_tsv_words_become_fields_with_line_breaks_and_boxes_inside_the_page() -> None:
    """Word rows become fields in order; the last word of each line breaks it; confidences are
    0..1; boxes that overshoot the page are cut to it; empty words and other levels are dropped."""
    rows = [
        TSV_HEADER,
        "1\t1\t0\t0\t0\t0\t0\t0\t200\t100\t-1\t",
        "4\t1\t1\t1\t1\t0\t5\t5\t150\t20\t-1\t",
        "5\t1\t1\t1\t1\t1\t5\t5\t40\t20\t96.5\t합계",
        "5\t1\t1\t1\t1\t2\t50\t5\t40\t20\t12\t금액",
        "5\t1\t1\t1\t1\t3\t95\t5\t10\t20\t95\t ",
        "5\t1\t1\t1\t2\t1\t-3\t40\t400\t70\t101\t18,500",
        "5\t1\t2\t1\t1\t1\t10\t80\t40\t10\t88\tend",
    ]
    fields = fields_from_tsv("\n".join(rows) + "\n", 200, 100)
    assert [field.infer_text for field in fields] == ["합계", "금액", "18,500", "end"]
    assert [field.line_break for field in fields] == [False, True, True, True]
    assert [field.infer_confidence for field in fields] == [0.965, 0.12, 1.0, 0.88]
    assert {(field.type, field.value_type) for field in fields} == {("NORMAL", "ALL")}
    wide = fields[2].bounding_poly
    assert wide is not None
    assert [(v.x, v.y) for v in wide.vertices] == [(0, 40), (200, 40), (200, 100), (0, 100)]
    assert fields_from_tsv("", 10, 10) == []
    assert fields_from_tsv(TSV_HEADER + "\n", 10, 10) == []


def test_the_engine_settings_never_promise_tables() -> None:
    """With the Tesseract engine the table switch defaults to off, and cannot be turned on."""
    assert EmulatorSettings(engine="tesseract").table_extraction is False
    assert EmulatorSettings().table_extraction is True
    with pytest.raises(ValidationError, match="does not detect tables"):
        EmulatorSettings(engine="tesseract", table_extraction=True)


def test_the_settings_pick_the_recogniser_and_what_it_serves() -> None:
    """`engine` picks the recogniser: the synthetic one serves both contracts and detects tables,
    the Tesseract one serves General calls only and detects no tables."""
    synthetic = recogniser_for(EmulatorSettings())
    assert isinstance(synthetic, SyntheticRecogniser)
    assert (synthetic.name, synthetic.kinds, synthetic.detects_tables) == (
        "synthetic",
        frozenset({"general", "template"}),
        True,
    )
    tesseract = recogniser_for(EmulatorSettings(engine="tesseract", tesseract={"processes": 3}))
    assert isinstance(tesseract, TesseractRecogniser)
    assert (tesseract.name, tesseract.kinds, tesseract.detects_tables) == (
        "tesseract",
        frozenset({"general"}),
        False,
    )
    assert tesseract.settings.processes == 3
    assert tesseract.stats() == {"name": "tesseract"}  # nothing detected before start()


def test_pdf_pages_are_rendered_at_the_size_the_emulator_reports() -> None:
    """A PDF page becomes grayscale pixels at 144 dpi, the size `documents.page_sizes` gives."""
    pages = [Image.new("L", (595, 842), 255), Image.new("L", (842, 595), 255)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    data = buffer.getvalue()
    for index, size in enumerate(page_sizes(data, "pdf")):
        page = page_image(data, "pdf", index)
        assert (page.width, page.height) == size
        assert page.dpi == 144
        assert page.pgm.startswith(f"P5\n{size[0]} {size[1]}\n255\n".encode())


def test_transparent_images_are_read_on_white_paper() -> None:
    """Transparent pixels become white, not black, so that they do not read as ink."""
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 20), (0, 0, 0, 0)).save(buffer, format="PNG", dpi=(300, 300))
    page = page_image(buffer.getvalue(), "png", 0)
    assert (page.width, page.height, page.dpi) == (40, 20, 300)
    assert set(page.pgm[-40 * 20 :]) == {255}


def test_oversized_pages_fail_before_their_pixels_are_decoded() -> None:
    """A header claiming more pixels than the engine decodes fails with the reason, cheaply."""
    png = png_bytes(10, 10)
    header = struct.pack(">II", 30_000, 30_000) + png[24:29]  # IHDR: width, height, then 5 bytes
    patched = png[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + png[33:]
    assert MAX_DECODED_PAGE_PIXELS < 30_000 * 30_000
    with pytest.raises(UnreadableDocument, match="too large to recognise"):
        page_image(patched, "png", 0)


def test_a_missing_tesseract_is_reported_with_how_to_install_it(tmp_path: Path) -> None:
    """`detect_tesseract` and `ocrbatch engine` say what to install when Tesseract is absent."""
    missing = str(tmp_path / "no-such-tesseract")
    with pytest.raises(EngineUnavailable, match="apt-get install tesseract-ocr"):
        detect_tesseract(missing)
    result = CliRunner().invoke(engine_command, ["--tesseract", missing])
    assert result.exit_code == 1
    assert "brew install tesseract" in result.output


async def test_each_page_runs_one_single_threaded_process_with_the_mapped_languages(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The engine runs `tesseract` once per page with OMP_THREAD_LIMIT=1, the languages for the
    request's lang, the page segmentation mode and the page's resolution, and reads its TSV."""
    command = fake_tesseract(tmp_path, languages=("eng", "jpn"))
    engine = await start_emulator(engine="tesseract", tesseract={"command": command})
    buffer = io.BytesIO()
    Image.new("L", (640, 480), 255).save(buffer, format="PNG", dpi=(200, 200))
    response = await client_for(ocr_session, engine).recognize(
        OcrCall(name="a.png", image_format="png", data=buffer.getvalue(), lang="ja")
    )
    (image,) = response.images
    words = [field.infer_text for field in image.fields or []]
    assert words[:4] == ["OMP=1", "l=jpn+eng", "psm=4", "dpi=200"]
    pgm_header = b"P5\n640 480\n255\n"
    assert words[4] == f"bytes={len(pgm_header) + 640 * 480}"
    assert [field.line_break for field in image.fields or []] == [False, True, False, False, True]
    assert engine.stats()["engine"]["version"] == "tesseract 5.0.0-fake"


async def test_a_page_tesseract_cannot_read_fails_with_its_reason(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """When Tesseract exits non-zero the image is answered FAILURE with its last message."""
    engine = await start_emulator(
        engine="tesseract", tesseract={"command": fake_tesseract(tmp_path, fail=True)}
    )
    response = await client_for(ocr_session, engine).recognize(
        OcrCall(name="a.png", image_format="png", data=png_bytes())
    )
    (image,) = response.images
    assert image.infer_result == "FAILURE"
    assert image.message == "Tesseract could not read page 1: Error in pixReadMem: Unknown format"
    assert engine.stats()["recognitions"] == {}


async def test_engine_command_prints_its_url_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`ocrbatch engine --port 0` prints its URL, answers General calls and exits 0 on SIGTERM."""
    command = fake_tesseract(tmp_path)
    async with server_command(
        "engine", "--port", "0", "--secret", "s3cret", "--tesseract", command
    ) as server:
        url = server.url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        description = await server.line()
        assert "tesseract 5.0.0-fake" in description
        message = {
            "version": "V2",
            "requestId": "r",
            "timestamp": 1,
            "images": [{"format": "png", "name": "a.png", "data": "iVBORw0KGgo="}],
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(
                url + "/general", json=message, headers={"X-OCR-SECRET": "wrong"}
            ) as answer:
                assert (await answer.json())["code"] == "0002"
            async with session.get(url + "/healthz") as health:
                assert (health.status, await health.json()) == (200, {"status": "ok", "engine": "tesseract"})
    assert server.exit_code == 0
    assert "no Tesseract data for ja (tesseract-ocr-jpn)" in await server.errors()


def test_chinese_and_japanese_pieces_of_a_line_are_one_field() -> None:
    """Tesseract's cuts between two Han/Kana characters are undone (boxes united, lowest
    confidence); Korean words, Latin words and line ends stay apart."""
    rows = [
        TSV_HEADER,
        "5\t1\t1\t1\t1\t1\t10\t10\t40\t20\t90\t請求",
        "5\t1\t1\t1\t1\t2\t52\t8\t20\t24\t80\t書、",
        "5\t1\t1\t1\t1\t3\t75\t10\t20\t20\t95\tです",
        "5\t1\t1\t1\t1\t4\t100\t10\t60\t20\t99\t2026",
        "5\t1\t1\t1\t2\t1\t10\t40\t20\t20\t99\t丁目",
        "5\t1\t1\t1\t3\t1\t10\t70\t20\t20\t99\t감",
        "5\t1\t1\t1\t3\t2\t32\t70\t40\t20\t99\t사합니다",
    ]
    fields = fields_from_tsv("\n".join(rows), 300, 100)
    assert [field.infer_text for field in fields] == ["請求書、です", "2026", "丁目", "감", "사합니다"]
    assert [field.line_break for field in fields] == [False, True, True, False, True]
    joined = fields[0].bounding_poly
    assert joined is not None
    assert [(v.x, v.y) for v in joined.vertices] == [(10, 8), (95, 8), (95, 32), (10, 32)]
    assert fields[0].infer_confidence == 0.8
