"""The emulator's recognition results (SPEC §9): well-formed, deterministic CLOVA answers.

Page sizes are read from the content itself (`documents.page_sizes`); the text is drawn
from a per-language vocabulary by an RNG seeded with the SHA-256 of the bytes, so the same upload
always gets the same answer and different uploads get different text. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from ocrbatch.clova.contract import (
    MAX_PDF_PAGES_PER_CALL,
    BoundingPoly,
    CellTextLine,
    CellWord,
    ConvertedImageInfo,
    MatchedTemplate,
    OcrField,
    OcrImage,
    SubField,
    Table,
    TableCell,
    Title,
    ValidationResult,
)
from ocrbatch.clova.documents import is_long_image, page_sizes

DEFAULT_FIELD_NAMES: tuple[str, ...] = (
    "Registration number",
    "Company name",
    "Representative",
    "Business start date",
    "Address",
)
# Even ids deploy an invoice instead, so two templates of a batch have different fields (one shared).
INVOICE_FIELD_NAMES: tuple[str, ...] = ("Invoice number", "Issue date", "Company name", "Total")
NOT_FOUND_MESSAGE = "NOT_FOUND: not found matched template"


def _split(text: str) -> tuple[str, ...]:
    """Vocabularies are written as space-separated text so that they stay a few lines long."""
    return tuple(text.split())


_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "en": _split(
        "invoice total amount date receipt customer order payment tax item quantity price address "
        "phone account balance delivery service company thank you"
    ),
    "ko": _split(
        "영수증 합계 금액 날짜 고객 주문 결제 세금 품목 수량 가격 주소 전화 계좌 잔액 배송 번호 "
        "서비스 회사 감사합니다"
    ),
    # Every Japanese word holds kana, as Japanese text does, so any line shows the language.
    "ja": _split(
        "お客様 お支払い ご注文 お届け先 ありがとう ございました レシート サービス カード ポイント "
        "お釣り 税込み お預かり お問い合わせ ください メニュー コーヒー ランチ セット 小計です"
    ),
    "zh-TW": _split(
        "發票 總計 金額 日期 客戶 訂單 付款 稅額 品項 數量 價格 地址 電話 帳戶 餘額 配送 號碼 服務 公司 收據"
    ),
}
_MONTHS = _split("January February March April May June July August September October November December")
_COMPANY_SUFFIXES = ("Inc.", "Co.", "Ltd.", "Corp.")

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


@dataclass(frozen=True)
class Template:
    """A deployed template the emulator can match: its id, name and field names."""

    id: int
    name: str
    field_names: tuple[str, ...]


def default_template(template_id: int) -> Template:
    """The template the emulator deploys under an id when the configuration names no fields: a
    business registration certificate's fields for an odd id, an invoice's for an even one."""
    fields = DEFAULT_FIELD_NAMES if template_id % 2 else INVOICE_FIELD_NAMES
    return Template(id=template_id, name=f"Template {template_id}", field_names=fields)


# -- results --------------------------------------------------------------------------------------


def general_images(
    *, name: str, data: bytes, image_format: str, lang: str | None, table_detection: bool
) -> list[OcrImage]:
    """General OCR of one upload: per page, a few lines of words (the first starting with
    `ID-<first 8 hex of the SHA-256>`) and, when asked, one table."""
    sizes = page_sizes(data, image_format, max_pages=MAX_PDF_PAGES_PER_CALL)
    digest = hashlib.sha256(data).hexdigest()
    vocabulary = _vocabulary(lang)
    images = []
    for page_index, (width, height) in enumerate(sizes):
        rng = random.Random(f"{digest}/{page_index}")
        text_bottom = 0.45 if table_detection else 0.9
        lines = [[f"ID-{digest[:8]}", *_words(rng, vocabulary, 2, 4)]]
        lines += [_words(rng, vocabulary, 2, 5) for _ in range(rng.randint(2, 5))]
        image = _page_image(name, digest, page_index, width, height)
        image.fields = _text_fields(rng, lines, width, height, text_bottom)
        if table_detection:
            image.tables = [_table(rng, vocabulary, (0.05 * width, 0.5 * height, 0.95 * width, 0.9 * height))]
        images.append(image)
    return images


def template_images(
    *, name: str, data: bytes, image_format: str, candidates: list[Template]
) -> list[OcrImage]:
    """Template OCR of one upload: per page, a template picked among `candidates`, its title and
    one value per field; FAILURE ("not found matched template") when there is no candidate."""
    sizes = page_sizes(data, image_format, max_pages=MAX_PDF_PAGES_PER_CALL)
    digest = hashlib.sha256(data).hexdigest()
    if not candidates:
        return [_not_matched_image(name, digest, page_index) for page_index in range(len(sizes))]
    images = []
    for page_index, (width, height) in enumerate(sizes):
        rng = random.Random(f"{digest}/{page_index}")
        template = candidates[rng.randrange(len(candidates))]
        image = _page_image(name, digest, page_index, width, height)
        image.matched_template = MatchedTemplate(id=template.id, name=template.name)
        image.title = _title(rng, template.name, width, height)
        image.fields = _template_fields(rng, template.field_names, width, height)
        images.append(image)
    return images


def _page_image(name: str, digest: str, page_index: int, width: int, height: int) -> OcrImage:
    return OcrImage(
        uid=_uid(digest, page_index),
        name=name,
        infer_result="SUCCESS",
        message="SUCCESS",
        validation_result=ValidationResult(result="NO_REQUESTED"),
        converted_image_info=ConvertedImageInfo(
            width=width,
            height=height,
            page_index=page_index,
            long_image=is_long_image(width, height),
        ),
    )


def _not_matched_image(name: str, digest: str, page_index: int) -> OcrImage:
    return OcrImage(
        uid=_uid(digest, page_index),
        name=name,
        infer_result="FAILURE",
        message=NOT_FOUND_MESSAGE,
        validation_result=ValidationResult(result="NO_REQUESTED"),
    )


def _uid(digest: str, page_index: int) -> str:
    return hashlib.sha256(f"{digest}/{page_index}".encode()).hexdigest()[:32]


def _vocabulary(lang: str | None) -> tuple[str, ...]:
    """The first of comma-joined languages; English without one (or for one we have no words for)."""
    first = (lang or "").split(",")[0].strip()
    return _VOCABULARIES.get(first, _VOCABULARIES["en"])


def _words(rng: random.Random, vocabulary: tuple[str, ...], low: int, high: int) -> list[str]:
    return [rng.choice(vocabulary) for _ in range(rng.randint(low, high))]


def _confidence(rng: random.Random) -> float:
    return round(rng.uniform(0.9, 1.0), 4)


def _poly(box: Box) -> BoundingPoly:
    left, top, right, bottom = (round(value, 1) for value in box)
    corners = ((left, top), (right, top), (right, bottom), (left, bottom))
    # One validation of plain dicts is a third faster than five model constructors, and boxes are
    # most of the models in a result.
    return BoundingPoly.model_validate({"vertices": [{"x": x, "y": y} for x, y in corners]})


def _layout_line(words: list[str], area: Box) -> list[Box]:
    """Word boxes left to right inside `area`, each as wide as its text (CJK glyphs count double)."""
    left, top, right, bottom = area
    units = [len(word) if word.isascii() else 2 * len(word) for word in words]
    unit_px = min(0.55 * (bottom - top), (right - left) / max(1, sum(units) + len(words) - 1))
    boxes = []
    for word_units in units:
        boxes.append((left, top, left + word_units * unit_px, bottom))
        left += (word_units + 1) * unit_px
    return boxes


def _union(boxes: list[Box]) -> Box:
    lefts, tops, rights, bottoms = zip(*boxes, strict=True)
    return min(lefts), min(tops), max(rights), max(bottoms)


def _rows(count: int, area: Box, max_height_px: float) -> list[Box]:
    """`count` stacked line areas filling `area` top to bottom, each at most `max_height_px` tall."""
    left, top, right, bottom = area
    pitch = (bottom - top) / max(1, count)
    height = min(0.7 * pitch, max_height_px)
    return [(left, top + row * pitch, right, top + row * pitch + height) for row in range(count)]


def _text_fields(
    rng: random.Random, lines: list[list[str]], width: int, height: int, bottom_fraction: float
) -> list[OcrField]:
    fields = []
    areas = _rows(
        len(lines), (0.05 * width, 0.05 * height, 0.95 * width, bottom_fraction * height), 0.04 * width
    )
    for words, area in zip(lines, areas, strict=True):
        boxes = _layout_line(words, area)
        for index, (word, box) in enumerate(zip(words, boxes, strict=True)):
            fields.append(
                OcrField(
                    value_type="ALL",
                    bounding_poly=_poly(box),
                    infer_text=word,
                    infer_confidence=_confidence(rng),
                    type="NORMAL",
                    line_break=index == len(words) - 1,
                )
            )
    return fields


def _table(rng: random.Random, vocabulary: tuple[str, ...], area: Box) -> Table:
    """A rows x columns grid whose header spans two columns and whose first column has a cell
    spanning two rows; every grid position is covered by exactly one cell."""
    rows, columns = rng.randint(3, 4), rng.randint(2, 3)
    spans = {(0, 0): (1, 2), (1, 0): (2, 1)}  # (row, column) -> (row span, column span)
    covered = {(0, 1), (2, 0)}
    cells = []
    left, top, right, bottom = area
    row_px, column_px = (bottom - top) / rows, (right - left) / columns
    for row in range(rows):
        for column in range(columns):
            if (row, column) in covered:
                continue
            row_span, column_span = spans.get((row, column), (1, 1))
            box = (
                left + column * column_px,
                top + row * row_px,
                left + (column + column_span) * column_px,
                top + (row + row_span) * row_px,
            )
            # The header always holds text, other cells are sometimes empty, as real tables are.
            empty = (row, column) != (0, 0) and rng.random() < 0.2
            cells.append(
                TableCell(
                    row_index=row,
                    column_index=column,
                    row_span=row_span,
                    column_span=column_span,
                    infer_confidence=_confidence(rng),
                    bounding_poly=_poly(box),
                    cell_text_lines=[] if empty else [_cell_line(rng, vocabulary, box)],
                )
            )
    return Table(infer_confidence=_confidence(rng), bounding_poly=_poly(area), cells=cells)


def _cell_line(rng: random.Random, vocabulary: tuple[str, ...], cell: Box) -> CellTextLine:
    left, top, right, bottom = cell
    pad_x, pad_y = 0.05 * (right - left), 0.15 * (bottom - top)
    words = [rng.choice(vocabulary)] if rng.random() < 0.6 else [f"{rng.randint(1, 999) * 100:,}"]
    boxes = _layout_line(
        words, (left + pad_x, top + pad_y, right - pad_x, min(bottom - pad_y, top + pad_y + 40))
    )
    cell_words = [
        CellWord(infer_text=word, infer_confidence=_confidence(rng), bounding_poly=_poly(box))
        for word, box in zip(words, boxes, strict=True)
    ]
    return CellTextLine(
        infer_confidence=_confidence(rng), bounding_poly=_poly(_union(boxes)), cell_words=cell_words
    )


def _title(rng: random.Random, text: str, width: int, height: int) -> Title:
    words = text.split() or [text]
    boxes = _layout_line(words, (0.25 * width, 0.05 * height, 0.75 * width, 0.05 * height + 0.05 * width))
    return Title(
        name=text,
        bounding_poly=_poly(_union(boxes)),
        infer_text=text,
        infer_confidence=_confidence(rng),
        sub_fields=_sub_fields(rng, words, boxes),
    )


def _template_fields(rng: random.Random, names: tuple[str, ...], width: int, height: int) -> list[OcrField]:
    fields = []
    areas = _rows(len(names), (0.3 * width, 0.2 * height, 0.95 * width, 0.9 * height), 0.035 * width)
    for field_name, area in zip(names, areas, strict=True):
        words = _field_value(rng, field_name)
        boxes = _layout_line(words, area)
        sub_fields = _sub_fields(rng, words, boxes)
        fields.append(
            OcrField(
                name=field_name,
                value_type="ALL",
                bounding_poly=_poly(_union(boxes)),
                infer_text=" ".join(words),
                infer_confidence=min(sub.infer_confidence or 0.0 for sub in sub_fields),
                type="NORMAL",
                sub_fields=sub_fields,
            )
        )
    return fields


def _field_value(rng: random.Random, field_name: str) -> list[str]:
    """Plausible words for a field, by what its name says it holds."""
    lowered = field_name.lower()
    if "number" in lowered:
        return [f"{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(10000, 99999)}"]
    if "date" in lowered:
        return [rng.choice(_MONTHS), f"{rng.randint(1, 28):02d},", str(rng.randint(1950, 2025))]
    words = [word.title() for word in _words(rng, _VOCABULARIES["en"], 1, 3)]
    if "company" in lowered:
        words.append(rng.choice(_COMPANY_SUFFIXES))
    return words


def _sub_fields(rng: random.Random, words: list[str], boxes: list[Box]) -> list[SubField]:
    return [
        SubField(
            bounding_poly=_poly(box),
            infer_text=word,
            infer_confidence=_confidence(rng),
            line_break=index == len(words) - 1,
        )
        for index, (word, box) in enumerate(zip(words, boxes, strict=True))
    ]
