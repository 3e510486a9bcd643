"""Sample documents with real text, for `ocrbatch demo` and the local engine's tests.

Text is rendered with the Noto Sans CJK fonts (Debian: `fonts-noto-cjk`), found by `fc-match`
or in the usual install paths; without them (`find_font` returns None) Pillow's own Latin font
is used and CJK characters come out as empty boxes. Every sample is built from the constants
below, so a test knows the exact text a page holds.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ocrbatch.types import LANGUAGES as CLOVA_LANGUAGES

LANGUAGES = (*CLOVA_LANGUAGES, "en")
SAMPLE_TEXT: dict[str, tuple[str, ...]] = {
    "ko": (
        "거래명세서 No. 2026-0142",
        "공급자: 주식회사 한빛상사 (Hanbit Trading)",
        "주소: 서울특별시 강남구 테헤란로 123",
        "담당자: 김민수 minsu@hanbit.co.kr",
        "합계 금액: 18,500원 (VAT 포함)",
        "감사합니다. 또 방문해 주세요.",
    ),
    "ja": (
        "請求書 番号 2026-0142",
        "東京都千代田区丸の内一丁目",
        "お支払い期限は来月末日です",
        "合計金額 一万八千五百円",
        "ご利用ありがとうございました",
    ),
    "zh-TW": (
        "統一發票 號碼 2026-0142",
        "臺北市信義區市府路一號",
        "本公司提供專業的服務",
        "總計金額 新臺幣一萬八千元",
        "謝謝惠顧 歡迎再度光臨",
    ),
    "en": (
        "INVOICE No. 2026-0142",
        "Acme Trading Company Ltd.",
        "Delivery address: 12 Harbour Road, Busan",
        "Total amount due: KRW 18,500",
        "Thank you for your business.",
    ),
}
TABLE_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("품목 Item", "수량 Qty", "단가 Price", "금액 Amount"),
    ("아메리카노", "2", "4,500", "9,000"),
    ("카페라테", "1", "5,000", "5,000"),
    ("치즈케이크", "1", "4,500", "4,500"),
    ("합계 Total", "", "", "18,500"),
)
CONTRACT_ARTICLES = (
    "목적",
    "정의",
    "계약 기간",
    "용역의 범위",
    "대금 지급",
    "비밀 유지",
    "지식재산권",
    "손해 배상",
    "계약 해지",
    "분쟁 해결",
    "통지",
    "기타",
)
RECEIPT_ITEMS = (("아메리카노", 4500), ("카페라테", 5000), ("녹차", 4000), ("생수", 1000), ("샌드위치", 6500))
LONG_RECEIPT_SIZE_PX = (640, 8400)  # a long image: long side >= 8,000 px and ratio >= 5

# Noto Sans CJK is one collection file; these are its faces for each language.
_FAMILIES = {"ko": "Noto Sans CJK KR", "ja": "Noto Sans CJK JP", "zh-TW": "Noto Sans CJK TC"}
_COLLECTION_FACES = {"ja": 0, "ko": 1, "zh-TW": 3}
_COLLECTION_PATHS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # Debian, Ubuntu: fonts-noto-cjk
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",  # Arch: noto-fonts-cjk
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",  # Fedora: google-noto-sans-cjk-fonts
)
_FC_MATCH_TIMEOUT_S = 10


@dataclass(frozen=True)
class FontFace:
    """A font file and the face to use in it."""

    path: str
    index: int


@functools.cache
def find_font(lang: str) -> FontFace | None:
    """A Noto Sans CJK face for `lang` (English text uses the Korean face, which has Latin too)."""
    lang = "ko" if lang == "en" else lang
    fc_match = shutil.which("fc-match")
    if fc_match is not None:
        try:
            found = subprocess.run(
                [fc_match, "--format=%{file}\n%{index}\n%{family}", _FAMILIES[lang]],
                capture_output=True,
                text=True,
                timeout=_FC_MATCH_TIMEOUT_S,
                check=True,
            ).stdout.split("\n")
        except (OSError, subprocess.SubprocessError):
            found = []
        # fc-match always answers with some font; only a CJK family will do.
        if len(found) == 3 and "CJK" in found[2] and found[1].isdigit():
            return FontFace(found[0], int(found[1]))
    for path in _COLLECTION_PATHS:
        if Path(path).is_file():
            return FontFace(path, _COLLECTION_FACES[lang])
    return None


def _font(lang: str, size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The CJK face, or Pillow's own font when none is installed (Latin only: CJK text shows as
    empty boxes, which the demo says)."""
    face = find_font(lang)
    if face is None:
        return ImageFont.load_default(size_px)
    return ImageFont.truetype(face.path, size_px, index=face.index)


def text_page(
    lines: tuple[str, ...], lang: str, *, width_px: int = 1240, font_px: int = 40, margin_px: int = 60
) -> Image.Image:
    """A white page with `lines` in black, one per row."""
    font = _font(lang, font_px)
    pitch = round(font_px * 1.8)
    image = Image.new("L", (width_px, 2 * margin_px + pitch * len(lines)), 255)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((margin_px, margin_px + row * pitch), line, font=font, fill=0)
    return image


def table_page(*, font_px: int = 32) -> Image.Image:
    """A quotation: a title over a ruled table of `TABLE_ROWS`."""
    font = _font("ko", font_px)
    column_px, row_px, left, top = (360, 200, 200, 240), round(font_px * 2.2), 60, 160
    width = left * 2 + sum(column_px)
    image = Image.new("L", (width, top + row_px * len(TABLE_ROWS) + 120), 255)
    draw = ImageDraw.Draw(image)
    draw.text((left, 60), "견적서 Quotation 2026-0142", font=font, fill=0)
    edges = [left + sum(column_px[:index]) for index in range(len(column_px) + 1)]
    bottom = top + row_px * len(TABLE_ROWS)
    for row, cells in enumerate(TABLE_ROWS):
        y = top + row * row_px
        draw.line((edges[0], y, edges[-1], y), fill=0, width=2)
        for column, text in enumerate(cells):
            draw.text((edges[column] + 16, y + (row_px - font_px) // 2 - 4), text, font=font, fill=0)
    draw.line((edges[0], bottom, edges[-1], bottom), fill=0, width=2)
    for x in edges:
        draw.line((x, top, x, bottom), fill=0, width=2)
    return image


def contract_page_lines(page_number: int, pages: int) -> tuple[str, ...]:
    """The text of page `page_number` (1-based) of the sample contract."""
    return (
        f"용역 계약서 {page_number} / {pages}",
        f"제{page_number}조 ({CONTRACT_ARTICLES[(page_number - 1) % len(CONTRACT_ARTICLES)]})",
        "갑과 을은 이 계약의 내용을 성실히 이행한다.",
        f"Page {page_number} of {pages}",
    )


def contract_pdf(pages: int = 12) -> bytes:
    """A scanned-looking A4 contract (one image per page, 144 dpi), as a PDF of `pages` pages."""
    images = []
    for number in range(1, pages + 1):
        text = text_page(contract_page_lines(number, pages), "ko", width_px=1190, font_px=36)
        page = Image.new("L", (1190, 1684), 255)
        page.paste(text, (0, 80))
        images.append(page)
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=144)
    return buffer.getvalue()


def receipt_lines(count: int) -> tuple[str, ...]:
    """A store receipt: header, `count` item lines, total."""
    items = [RECEIPT_ITEMS[index % len(RECEIPT_ITEMS)] for index in range(count)]
    total = sum(price for _, price in items)
    return (
        "한빛마트 영수증 2026-03-14",
        *(f"{index + 1:03} {name} {price:,}원" for index, (name, price) in enumerate(items)),
        f"합계 {total:,}원",
    )


def long_receipt() -> Image.Image:
    """A receipt as long as a till roll: `LONG_RECEIPT_SIZE_PX`, a long image for the service."""
    width, height = LONG_RECEIPT_SIZE_PX
    font_px, margin = 28, 40
    lines = receipt_lines((height - 2 * margin) // round(font_px * 1.8) - 2)
    page = Image.new("L", (width, height), 255)
    page.paste(text_page(lines, "ko", width_px=width, font_px=font_px, margin_px=margin), (0, 0))
    return page


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()
