"""Result files as searchable PDFs: the input's own pages under invisible text that pypdf and
pdftotext read back in reading order, each word at its box; the pixels, pages and boxes of the
input kept; real Tesseract answers in Korean, Japanese, Traditional Chinese and English."""

from __future__ import annotations

import html
import io
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures.emulator import StartEmulator, client_for
from fixtures.engine import character_error_rate, require_tesseract_and_fonts, text_lines
from fixtures.samples import pdf as blank_pdf
from fontTools.ttLib import TTFont
from fpdf import FPDF
from PIL import Image, ImageChops, ImageOps, ImageStat
from pypdf import PageObject, PdfReader, PdfWriter, Transformation
from pypdf.generic import RectangleObject

from ocrbatch.clova.client import OcrCall
from ocrbatch.clova.contract import (
    BoundingPoly,
    ConvertedImageInfo,
    OcrField,
    OcrImage,
    OcrResponse,
    SubField,
    Title,
    Vertex,
)
from ocrbatch.clova.documents import UnreadableDocument
from ocrbatch.demo import samples
from ocrbatch.worker.result_pdf import PDF_DATE, render_searchable_pdf

Box = tuple[float, float, float, float]  # left, top, right, bottom
Lines = Sequence[Sequence[tuple[str, Box]]]  # words and their boxes, a sequence per line
TOLERANCE_PX = 0.5  # positions are written with two decimals of a point
# Poppler interpolates images drawn at less than 4x their pixels, so pages are rendered at 4x
# (each pixel an exact 4 x 4 block) and reduced back to compare pixels.
RENDER_FACTOR = 4


@dataclass(frozen=True)
class _Extracted:
    """One word as pdftotext -bbox reads it: its text and box in pt, y down from the page's top."""

    text: str
    box: Box


# -- helpers ------------------------------------------------------------------------------------


def _poppler(tool: str) -> str:
    """The poppler-utils command, or a skip (a failure in CI, where `.ci/run` installs it)."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{tool} is not on PATH (CI installs poppler-utils in .ci/run)")
        pytest.skip(f"{tool} is not on PATH: install poppler-utils")
    return path


def _poly(box: Box) -> BoundingPoly:
    left, top, right, bottom = box
    corners = [(left, top), (right, top), (right, bottom), (left, bottom)]
    return BoundingPoly(vertices=[Vertex(x=x, y=y) for x, y in corners])


def _word(text: str, box: Box | None, *, line_break: bool = False) -> OcrField:
    return OcrField(
        infer_text=text, bounding_poly=_poly(box) if box else None, line_break=line_break, type="NORMAL"
    )


def _image(fields: list[OcrField], size_px: tuple[int, int] | None, **extra: Any) -> OcrImage:
    info = ConvertedImageInfo(width=size_px[0], height=size_px[1]) if size_px else None
    return OcrImage(infer_result="SUCCESS", converted_image_info=info, fields=fields, **extra)


def _lines_text(lines: Lines) -> str:
    return "\n".join(" ".join(text for text, _ in line) for line in lines)


def _general(lines: Lines, size_px: tuple[int, int] | None) -> OcrImage:
    """A General page of words, `lineBreak` on each line's last."""
    return _image(
        [
            _word(text, box, line_break=index == len(line) - 1)
            for line in lines
            for index, (text, box) in enumerate(line)
        ],
        size_px,
    )


def _png(image: Image.Image, *, dpi: int | None = None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **({"dpi": (dpi, dpi)} if dpi else {}))
    return buffer.getvalue()


def _pdftotext(data: bytes, tmp_path: Path, *options: str) -> str:
    path = tmp_path / "searchable.pdf"
    path.write_bytes(data)
    command = [_poppler("pdftotext"), *options, str(path), "-"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _extracted_words(data: bytes, tmp_path: Path) -> list[list[_Extracted]]:
    """Each page's words as pdftotext -bbox finds them (it reads coordinates as the page is shown)."""
    pages = _pdftotext(data, tmp_path, "-bbox").split("<page ")[1:]
    pattern = re.compile(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>'
    )
    return [
        [
            _Extracted(html.unescape(text), (float(x0), float(y0), float(x1), float(y1)))
            for x0, y0, x1, y1, text in pattern.findall(page)
        ]
        for page in pages
    ]


def _rendered(data: bytes, tmp_path: Path, *, dpi: int) -> list[Image.Image]:
    """Each page as pdftoppm draws it at `dpi`, in RGB."""
    path = tmp_path / "render.pdf"
    path.write_bytes(data)
    prefix = tmp_path / "page"
    command = [_poppler("pdftoppm"), "-r", str(dpi * RENDER_FACTOR), "-png", str(path), str(prefix)]
    subprocess.run(command, check=True)
    return [
        Image.open(page).convert("RGB").reduce(RENDER_FACTOR) for page in sorted(tmp_path.glob("page-*.png"))
    ]


def _origins(page: PageObject) -> list[tuple[str, float, float]]:
    """Each text chunk pypdf reads with where it starts: x, and y down from the page's top, in pt."""
    height = float(page.mediabox.height)
    found: list[tuple[str, float, float]] = []

    def visit(text: str, cm: list[float], tm: list[float], font: object, size: float) -> None:
        if text.strip():
            x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
            y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
            found.append((text.strip(), x, height - y))

    page.extract_text(visitor_text=visit)
    return found


def _lookup(node: Any, *keys: str | int) -> Any:
    """The PDF object reached from `node` through dictionary keys and array indexes."""
    for key in keys:
        node = node.get_object()[key]
    return node.get_object()


def _within(x: float, y: float, box: Box, tolerance: float = TOLERANCE_PX) -> bool:
    left, top, right, bottom = box
    return left - tolerance <= x <= right + tolerance and top - tolerance <= y <= bottom + tolerance


def _close(found: Box, expected: Box, tolerance: float = TOLERANCE_PX) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(found, expected, strict=True))


def _scaled(box: Box, factor: float) -> Box:
    left, top, right, bottom = box
    return left * factor, top * factor, right * factor, bottom * factor


def _squeezed(text: str) -> str:
    return "".join(text.split())


# -- General words over an image ------------------------------------------------------------------

LINES: Lines = [
    [("Searchable", (40, 40, 240, 80)), ("PDF", (250, 40, 330, 80)), ("𠀋字", (352, 40, 420, 80))],
    [("한국어", (40, 120, 200, 160)), ("日本語", (200, 120, 330, 160)), ("繁體中文", (345, 120, 560, 160))],
    [("end.", (40, 200, 120, 240))],
]


def test_words_are_extracted_in_order_each_at_its_box(tmp_path: Path) -> None:
    """pypdf reads the words of a General answer in the answer's order, a space between the words
    of a line (even where boxes touch) and a line break after each line, astral characters
    included; each word starts inside its box, and pdftotext finds each word covering its box."""
    response = OcrResponse(images=[_general(LINES, (640, 480))])
    data = render_searchable_pdf(response, _png(Image.new("L", (640, 480), 255)), image_format="png")

    (page,) = PdfReader(io.BytesIO(data)).pages
    assert page.extract_text() == _lines_text(LINES)
    words = [word for line in LINES for word in line]
    origins = _origins(page)
    assert [text for text, _, _ in origins] == [text for text, _ in words]
    for (text, x, y), (_, box) in zip(origins, words, strict=True):
        assert _within(x, y, box), (text, x, y, box)  # 72 dpi: a px is a pt
    (extracted,) = _extracted_words(data, tmp_path)
    assert [word.text for word in extracted] == [text for text, _ in words]
    for word, (_, box) in zip(extracted, words, strict=True):
        assert _close(word.box, box), (word, box)


def test_each_character_is_a_glyph_of_its_own_in_the_embedded_font() -> None:
    """The font embedded for the text maps each character the text uses to a glyph of its own (so
    that its ToUnicode map is one code per character), all of one width, none with an outline."""
    response = OcrResponse(images=[_general(LINES, (640, 480))])
    data = render_searchable_pdf(response, _png(Image.new("L", (640, 480), 255)), image_format="png")

    (page,) = PdfReader(io.BytesIO(data)).pages
    (font,) = _lookup(page, "/Resources", "/Font").values()
    file = _lookup(font, "/DescendantFonts", 0, "/FontDescriptor", "/FontFile2")
    embedded = TTFont(io.BytesIO(file.get_data()))
    characters = set(_lines_text(LINES).replace("\n", "")) | {" "}
    glyphs = [name for name in embedded.getGlyphOrder() if name != ".notdef"]
    assert len(glyphs) == len(characters)
    assert {embedded["hmtx"][name][0] for name in glyphs} == {500}
    assert all(embedded["glyf"][name].numberOfContours == 0 for name in glyphs)
    cmap = _lookup(font, "/ToUnicode").get_data().decode("latin-1")
    mappings = "".join(re.findall(r"beginbfchar(.*?)endbfchar", cmap, flags=re.DOTALL))
    pairs = re.findall(r"<([0-9A-F]{4})> <([0-9A-F]+)>", mappings)
    decoded = [bytes.fromhex(unicode).decode("utf-16-be") for code, unicode in pairs if code != "0000"]
    assert sorted(decoded) == sorted(characters)  # code 0 is .notdef's
    assert len({code for code, _ in pairs}) == len(pairs)


async def _recognised(
    start_emulator: StartEmulator, session: aiohttp.ClientSession, lang: str
) -> tuple[OcrResponse, bytes]:
    engine = await start_emulator(engine="tesseract", general_secret="searchable-pdf-secret")
    png = samples.encode(samples.text_page(samples.SAMPLE_TEXT[lang], lang), "PNG")
    call = OcrCall(name=f"{lang}.png", image_format="png", data=png, lang=None if lang == "en" else lang)
    return await client_for(session, engine).recognize(call), png


@pytest.mark.parametrize("lang", samples.LANGUAGES)
async def test_the_engines_words_are_extracted_in_reading_order_at_their_boxes(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession, tmp_path: Path, lang: str
) -> None:
    """Over a render recognised by the real engine, pypdf reads back exactly the recognised lines
    (Hangul, Kana, Traditional Chinese ideographs, Latin), each word starting inside its box, and
    pdftotext, plain and -layout, reads the same characters in the same order."""
    require_tesseract_and_fonts()
    response, png = await _recognised(start_emulator, ocr_session, lang)
    (image,) = response.images
    lines = text_lines(image)
    assert character_error_rate("".join(samples.SAMPLE_TEXT[lang]), "".join(lines)) <= 0.05, lines

    data = render_searchable_pdf(response, png, image_format="png")
    (page,) = PdfReader(io.BytesIO(data)).pages
    assert page.extract_text().split("\n") == lines
    fields = image.fields or []
    origins = _origins(page)
    assert [text for text, _, _ in origins] == [field.infer_text for field in fields]
    for (text, x, y), field in zip(origins, fields, strict=True):
        assert field.bounding_poly is not None
        xs = [vertex.x for vertex in field.bounding_poly.vertices]
        ys = [vertex.y for vertex in field.bounding_poly.vertices]
        assert _within(x, y, (min(xs), min(ys), max(xs), max(ys))), (text, x, y, field.bounding_poly)
    for options in ([], ["-layout"]):
        assert _squeezed(_pdftotext(data, tmp_path, *options)) == _squeezed("".join(lines)), options


# -- pixels and pages ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "dpi"), [("L", None), ("RGB", 144)])
def test_the_page_shows_the_images_own_pixels_and_no_text(mode: str, dpi: int | None, tmp_path: Path) -> None:
    """The page is the image at its declared resolution (72 dpi when it declares none), and
    pdftoppm draws it pixel for pixel as the image: the text over it is invisible."""
    page = samples.text_page(samples.SAMPLE_TEXT["en"], "en")
    if mode == "RGB":
        page = ImageOps.colorize(page, black="navy", white="lightyellow")
    lines = [[("INVOICE", (60, 60, 260, 100)), ("No.", (280, 60, 340, 100))], [("Acme", (60, 130, 180, 170))]]
    response = OcrResponse(images=[_general(lines, page.size)])
    data = render_searchable_pdf(response, _png(page, dpi=dpi), image_format="png")

    (pdf_page,) = PdfReader(io.BytesIO(data)).pages
    points_per_px = 72 / (dpi or 72)
    assert (float(pdf_page.mediabox.width), float(pdf_page.mediabox.height)) == pytest.approx(
        (page.width * points_per_px, page.height * points_per_px)
    )
    assert pdf_page.extract_text() == _lines_text(lines)
    (rendered,) = _rendered(data, tmp_path, dpi=dpi or 72)
    assert rendered.size == page.size
    assert ImageChops.difference(rendered, page.convert("RGB")).getbbox() is None


def test_a_page_longer_than_pdf_allows_is_scaled_down_with_its_words(tmp_path: Path) -> None:
    """A 20,000 px long image at 72 dpi would be a page beyond PDF's 14,400 pt: it becomes exactly
    14,400 pt long, and its words are scaled with it."""
    words = [[("far", (19_000, 10, 19_600, 40))]]
    response = OcrResponse(images=[_general(words, None)])
    data = render_searchable_pdf(response, _png(Image.new("L", (20_000, 50), 255)), image_format="png")

    (page,) = PdfReader(io.BytesIO(data)).pages
    assert (float(page.mediabox.width), float(page.mediabox.height)) == pytest.approx((14_400, 36))
    ((word,),) = _extracted_words(data, tmp_path)
    assert word.text == "far"
    assert _close(word.box, _scaled((19_000, 10, 19_600, 40), 0.72))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_the_exif_orientation_is_applied_and_the_boxes_line_up(image_format: str, tmp_path: Path) -> None:
    """An image stored on its side with EXIF orientation 6 becomes an upright page, as the engine
    reads it: the page draws the upright pixels (a JPEG's own bytes, turned by the page, within
    decoding noise), and a word boxed in upright pixels is found at that box."""
    upright = Image.new("RGB", (120, 200), "white")
    upright.paste((200, 0, 0), (10, 10, 110, 40))
    upright.paste((0, 0, 200), (10, 150, 60, 190))
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored pixels must be turned 90° clockwise
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format=image_format, exif=exif.tobytes())
    source = buffer.getvalue()
    response = OcrResponse(images=[_general([[("top", (10, 10, 110, 40))]], (120, 200))])
    data = render_searchable_pdf(response, source, image_format=image_format.lower())

    (rendered,) = _rendered(data, tmp_path, dpi=72)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(source))).convert("RGB")
    assert rendered.size == expected.size == (120, 200)
    difference = ImageChops.difference(rendered, expected)
    if image_format == "PNG":
        assert difference.getbbox() is None
    else:
        assert max(ImageStat.Stat(difference).mean) < 4  # a wrong turn differs by ~50
        (page,) = PdfReader(io.BytesIO(data)).pages
        (xobject,) = _lookup(page, "/Resources", "/XObject").values()
        assert _lookup(xobject, "/Filter") == "/DCTDecode"
        assert xobject.get_object().get_data() == source
    ((word,),) = _extracted_words(data, tmp_path)
    assert (word.text, _close(word.box, (10, 10, 110, 40))) == ("top", True)


def test_each_tiff_frame_is_a_page_with_its_own_words() -> None:
    """A three-frame TIFF gives three pages of the frames' sizes, each with the words of its own
    image of the answer."""
    sizes = [(300, 200), (200, 300), (400, 100)]
    frames = [Image.new("L", size, 255) for size in sizes]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    response = OcrResponse(
        images=[_general([[(f"frame{number}", (10, 10, 90, 30))]], size) for number, size in enumerate(sizes)]
    )
    data = render_searchable_pdf(response, buffer.getvalue(), image_format="tif")

    pages = PdfReader(io.BytesIO(data)).pages
    assert [(float(page.mediabox.width), float(page.mediabox.height)) for page in pages] == sizes
    assert [page.extract_text() for page in pages] == ["frame0", "frame1", "frame2"]


def test_pages_and_images_that_do_not_pair_up_are_kept_without_text() -> None:
    """Images of the answer beyond the input's pages are left out, and pages with no image of the
    answer are kept without text; boxes are scaled from `convertedImageInfo` to the page."""
    two_images = OcrResponse(
        images=[
            _general([[("first", (20, 20, 200, 60))]], (1280, 960)),
            _general([[("extra", (1, 1, 9, 9))]], None),
        ]
    )
    data = render_searchable_pdf(two_images, _png(Image.new("L", (640, 480), 255)), image_format="png")
    (page,) = PdfReader(io.BytesIO(data)).pages
    assert page.extract_text() == "first"
    ((_, x, y),) = _origins(page)
    assert _within(x, y, _scaled((20, 20, 200, 60), 0.5))

    no_image = OcrResponse(images=[])
    data = render_searchable_pdf(no_image, _png(Image.new("L", (640, 480), 255)), image_format="png")
    (page,) = PdfReader(io.BytesIO(data)).pages
    assert page.extract_text() == ""


# -- PDFs -------------------------------------------------------------------------------------------


def _original_pdf() -> bytes:
    """Four pages with visible text: A4-like, one whose MediaBox starts at (100, 200), one turned
    by /Rotate 90, and a last one the answer will not cover."""
    document = FPDF(unit="pt", format=(600, 800))
    document.set_font("helvetica", size=20)
    for number in range(1, 5):
        document.add_page()
        document.text(50, 100, f"Original page {number}")
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(document.output())))
    writer.pages[1].add_transformation(Transformation().translate(100, 200))
    writer.pages[1].mediabox = RectangleObject([100, 200, 700, 1000])
    writer.pages[2].rotate(90)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_a_pdf_keeps_its_pages_and_gets_the_words_on_the_right_page(tmp_path: Path) -> None:
    """A PDF's own pages come out in number, boxes, rotation, drawing and visible text; each
    image's words land on its page where its box says, in px of `convertedImageInfo` (144 dpi
    here) mapped onto the page as shown, whether its MediaBox starts at the origin or not and when
    it is turned; the page the answer does not cover has no added text."""
    source = _original_pdf()
    first = [[("alpha", (100, 100, 300, 140)), ("beta", (320, 100, 420, 140))]]
    response = OcrResponse(
        images=[
            _general(first, (1200, 1600)),
            _general([[("gamma", (100, 400, 300, 440))]], (1200, 1600)),
            _general([[("delta", (100, 100, 300, 140))]], (1600, 1200)),  # the turned page, as shown
        ]
    )
    data = render_searchable_pdf(response, source, image_format="pdf")

    before, after = PdfReader(io.BytesIO(source)).pages, PdfReader(io.BytesIO(data)).pages
    assert len(after) == len(before) == 4
    assert [(page.mediabox, page.cropbox, page.rotation) for page in after] == [
        (page.mediabox, page.cropbox, page.rotation) for page in before
    ]
    for original, merged in zip(before, after, strict=True):
        original_content, merged_content = original.get_contents(), merged.get_contents()
        assert original_content is not None
        assert merged_content is not None
        assert original_content.get_data() in merged_content.get_data()  # the page's own drawing, as it was
    pages = _extracted_words(data, tmp_path)
    for number, words in enumerate(pages, start=1):
        assert " ".join(word.text for word in words if word.text in ("Original", "page", str(number))) == (
            f"Original page {number}"
        )
    added = [
        [word for word in words if word.text not in ("Original", "page", str(number))]
        for number, words in enumerate(pages, start=1)
    ]
    expected = [
        [("alpha", (100, 100, 300, 140)), ("beta", (320, 100, 420, 140))],
        [("gamma", (100, 400, 300, 440))],
        [("delta", (100, 100, 300, 140))],
        [],
    ]
    for words, wanted in zip(added, expected, strict=True):
        assert [word.text for word in words] == [text for text, _ in wanted]
        for word, (_, box) in zip(words, wanted, strict=True):
            assert _close(word.box, _scaled(box, 0.5)), (word, box)
    assert after[0].extract_text().endswith("alpha beta")


def test_a_pdf_without_convertedimageinfo_is_measured_at_144_dpi(tmp_path: Path) -> None:
    """Without `convertedImageInfo`, a PDF page's px are those the service counts: 2 per point."""
    response = OcrResponse(images=[_general([[("word", (200, 300, 400, 340))]], None)])
    data = render_searchable_pdf(response, blank_pdf(1), image_format="pdf")

    ((word,),) = _extracted_words(data, tmp_path)
    assert (word.text, _close(word.box, (100, 150, 200, 170))) == ("word", True)


# -- Template answers ---------------------------------------------------------------------------


def test_a_template_answer_puts_the_title_and_each_field_on_lines_of_their_own(tmp_path: Path) -> None:
    """The title comes first, then each field in order, each on its own line at its box; a field
    with only sub-fields is placed over their union, a field with neither is left out, and a value
    of two lines fills its box in two bands."""
    fields = [
        OcrField(name="name", infer_text="홍길동", bounding_poly=_poly((100, 100, 220, 130))),
        OcrField(
            name="amount",
            infer_text="18,500원",
            sub_fields=[
                SubField(infer_text="18,500", bounding_poly=_poly((100, 150, 200, 180))),
                SubField(infer_text="원", bounding_poly=_poly((205, 150, 230, 180))),
            ],
        ),
        OcrField(name="missing", infer_text="nowhere"),
        OcrField(name="address", infer_text="서울특별시\n강남구", bounding_poly=_poly((100, 200, 300, 260))),
    ]
    title = Title(name="title", infer_text="거래명세서", bounding_poly=_poly((100, 40, 300, 80)))
    response = OcrResponse(images=[_image(fields, (640, 480), title=title)])
    data = render_searchable_pdf(response, _png(Image.new("L", (640, 480), 255)), image_format="png")

    (page,) = PdfReader(io.BytesIO(data)).pages
    assert page.extract_text() == "거래명세서\n홍길동\n18,500원\n서울특별시\n강남구"
    (words,) = _extracted_words(data, tmp_path)
    expected: list[tuple[str, Box]] = [
        ("거래명세서", (100, 40, 300, 80)),
        ("홍길동", (100, 100, 220, 130)),
        ("18,500원", (100, 150, 230, 180)),
        ("서울특별시", (100, 200, 300, 230)),
        ("강남구", (100, 230, 300, 260)),
    ]
    assert [word.text for word in words] == [text for text, _ in expected]
    for word, (_, box) in zip(words, expected, strict=True):
        assert _close(word.box, box), (word, box)


# -- bytes, empty answers, unreadable inputs ----------------------------------------------------


@pytest.mark.parametrize("image_format", ["png", "pdf"])
def test_equal_input_gives_equal_bytes(image_format: str) -> None:
    """Two renders of the same answer over the same input are the same bytes, dated `PDF_DATE`."""
    source = _png(Image.new("L", (640, 480), 255)) if image_format == "png" else _original_pdf()
    response = OcrResponse(images=[_general(LINES, (640, 480))])
    first = render_searchable_pdf(response, source, image_format=image_format)
    assert render_searchable_pdf(response, source, image_format=image_format) == first
    if image_format == "png":
        metadata = PdfReader(io.BytesIO(first)).metadata
        assert metadata is not None
        assert metadata.creation_date == PDF_DATE


def test_words_without_a_box_or_text_leave_the_page_without_text() -> None:
    """Words without a box, or with empty text, are skipped; the page is still the image."""
    fields = [
        _word("unplaced", None, line_break=True),
        _word("", (10, 10, 50, 30)),
        _word(" \t", (10, 40, 50, 60)),
    ]
    response = OcrResponse(images=[_image(fields, (640, 480))])
    data = render_searchable_pdf(response, _png(Image.new("L", (640, 480), 255)), image_format="png")

    (page,) = PdfReader(io.BytesIO(data)).pages
    assert page.extract_text() == ""
    assert (float(page.mediabox.width), float(page.mediabox.height)) == (640, 480)
    assert list(_lookup(page, "/Resources", "/XObject"))


@pytest.mark.parametrize(
    ("image_format", "source"),
    [
        ("png", b"\x89PNG\r\n\x1a\n not really"),
        ("png", _png(Image.new("L", (640, 480), 128))[:200]),
        ("jpg", b"\xff\xd8 not a jpeg"),
        ("tiff", b"not a tiff"),
        ("pdf", b"%PDF-1.7 not a pdf"),
        ("pdf", blank_pdf(1, password="secret")),
        ("bmp", b"BM"),
    ],
)
def test_an_undecodable_input_raises_unreadable_document(image_format: str, source: bytes) -> None:
    """Bytes that are not the declared format, cut short, an encrypted PDF or an unsupported
    format raise `UnreadableDocument`, not a library's own error."""
    response = OcrResponse(images=[_general(LINES, (640, 480))])
    with pytest.raises(UnreadableDocument):
        render_searchable_pdf(response, source, image_format=image_format)
