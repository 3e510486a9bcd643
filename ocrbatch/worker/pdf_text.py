"""The text layer of a searchable PDF (`result_pdf`): the recognised words of each page as lines
to draw in invisible ink, and the font they are drawn in.

- Text: render mode 3 (invisible), in the response's order, which is reading order. General
  words make lines ending at a `lineBreak` (and where a word misses the previous one's height, for
  answers without line breaks); a Template page puts its title, then each field, on lines of
  their own, at the field's box or else the union of its sub-fields' boxes. The words of a line
  share one font size and baseline: the median height and bottom of their boxes, so that the
  glyphs' cell (descent to ascent) covers the line's band; pdftotext builds lines from words of
  one baseline and size, and splits a line whose words are each sized to their own box. Each word
  starts at its box's left and is stretched (`Tz`) to its box's width.
- Spaces: each word but a line's last is followed by a space character, drawn past its box.
  pdftotext ignores space characters and finds words by the gaps between glyphs, so the glyphs
  must end where the box ends (a space squeezed into the box would widen every gap until
  pdftotext reads neighbouring words as columns); pypdf and PDFium read the space character, and
  without it pypdf joins words whose boxes touch. A line needs no newline character: it starts
  lower on the page, which every extractor reads as a new line.
- Font: the glyphs are never seen, so the text needs only their Unicode values and widths, as
  in Tesseract's and OCRmyPDF's GlyphLessFont. Each document gets a TrueType font built for it
  with one empty glyph per character its text uses, each of one fixed width: every script is
  covered, astral characters included, and there is no font file to ship. fpdf2 embeds the
  subset it uses with a ToUnicode map, which distinct glyphs keep unambiguous.
"""

from __future__ import annotations

import statistics
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO

from fontTools.fontBuilder import FontBuilder
from fontTools.misc.timeTools import timestampSinceEpoch
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fpdf import FPDF

from ocrbatch.clova.contract import OcrField, OcrImage, Title
from ocrbatch.worker.result_files import Box, field_box, union_box, word_lines

FONT_FAMILY = "GlyphLessFont"
# The font's metrics, in units of its em: every glyph as wide as half an em, and a cell that
# reaches from the descent, a fifth of the em below the baseline, to the ascent above it.
UNITS_PER_EM = 1000
GLYPH_ADVANCE = 500
ASCENT, DESCENT = 800, -200
_MIN_BOX_PX = 1.0  # a box without height or width still places its text


@dataclass(frozen=True)
class Word:
    text: str
    box: Box  # left, top, right, bottom in px


@dataclass(frozen=True)
class Line:
    """Words drawn on one baseline at one font size (px, from the top of the page)."""

    words: list[Word]
    size_px: float
    baseline_px: float


@dataclass(frozen=True)
class PageText:
    """What is written on one page: its lines, and the size in px its boxes are measured in."""

    lines: list[Line]
    size_px: tuple[int, int] | None


# -- lines --------------------------------------------------------------------------------------


def page_text(image: OcrImage) -> PageText:
    info = image.converted_image_info
    size_px = (info.width, info.height) if info is not None and min(info.width, info.height) > 0 else None
    return PageText([_line(words) for words in _word_lines(image)], size_px)


def _word_lines(image: OcrImage) -> Iterator[list[Word]]:
    """The page's words in reading order, a list per line: a Template page's title and fields each
    on lines of their own; General words up to each `lineBreak`, split where a word misses the
    previous one's height."""
    fields = image.fields or []
    if image.title is not None or any(field.name is not None for field in fields):
        named: list[OcrField | Title] = [image.title] if image.title is not None else []
        for field in [*named, *fields]:
            yield from _field_lines(field.infer_text, field_box(field))
        return
    for line in word_lines(fields):
        words = [(union_box([word.bounding_poly]), _drawable(word.infer_text)) for word in line]
        yield from _same_height([Word(text, box) for box, text in words if box is not None and text])


def _field_lines(text: str, box: Box | None) -> Iterator[list[Word]]:
    """A field's text, a line per line of it, each in its own band of the box."""
    lines = [line for line in map(_drawable, text.splitlines()) if line]
    if box is None or not lines:
        return
    left, top, right, bottom = box
    band = (bottom - top) / len(lines)
    for index, line in enumerate(lines):
        yield [Word(line, (left, top + index * band, right, top + (index + 1) * band))]


def _same_height(words: list[Word]) -> Iterator[list[Word]]:
    """The words split where one does not overlap the previous one vertically: a new line, even
    when the answer did not mark it."""
    line: list[Word] = []
    for word in words:
        if line and (word.box[1] >= line[-1].box[3] or word.box[3] <= line[-1].box[1]):
            yield line
            line = []
        line.append(word)
    if line:
        yield line


def _line(words: list[Word]) -> Line:
    """The words on one baseline at one size, the medians of their boxes' so that one odd box (a
    comma, a word that fused with the next) moves none of the others."""
    size_px = statistics.median(max(_MIN_BOX_PX, word.box[3] - word.box[1]) for word in words)
    bottom_px = statistics.median(word.box[3] for word in words)
    return Line(words, size_px, bottom_px + size_px * DESCENT / UNITS_PER_EM)


def _drawable(text: str) -> str:
    """The text as one line (runs of whitespace as one space), without what no font can map:
    control characters, lone surrogates and noncharacters."""
    return "".join(
        character
        for character in " ".join(text.split())
        if unicodedata.category(character) not in ("Cc", "Cs")
        and not (ord(character) & 0xFFFE == 0xFFFE or 0xFDD0 <= ord(character) <= 0xFDEF)
    )


def draw_lines(pdf: FPDF, lines: Sequence[Line], *, scale_x: float, scale_y: float) -> None:
    """The lines on the current page, px scaled to pt (`scale_x`, `scale_y`), y down from its top."""
    for line in lines:
        size_pt = line.size_px * scale_y
        pdf.set_font(FONT_FAMILY, size=size_pt)
        for index, word in enumerate(line.words):
            left, _, right, _ = word.box
            natural_width_pt = len(word.text) * size_pt * GLYPH_ADVANCE / UNITS_PER_EM
            pdf.set_stretching(100 * max(_MIN_BOX_PX, right - left) * scale_x / natural_width_pt)
            text = word.text if index == len(line.words) - 1 else word.text + " "
            pdf.text(left * scale_x, line.baseline_px * scale_y, text)


# -- font ---------------------------------------------------------------------------------------


def glyphless_font(characters: Iterable[str], *, created: datetime) -> bytes:
    """A TrueType font with an empty glyph of its own for each character (and the space), each
    `GLYPH_ADVANCE` wide, named as the Adobe Glyph List names unknown glyphs; dated `created`."""
    names = {ord(character): _glyph_name(ord(character)) for character in sorted({*characters, " "})}
    order = [".notdef", *names.values()]
    timestamp = timestampSinceEpoch(int(created.timestamp()))
    builder = FontBuilder(UNITS_PER_EM, isTTF=True)
    builder.updateHead(created=timestamp, modified=timestamp)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap(names)
    builder.setupGlyf({name: TTGlyphPen(None).glyph() for name in order})
    builder.setupHorizontalMetrics(dict.fromkeys(order, (GLYPH_ADVANCE, 0)))
    builder.setupHorizontalHeader(ascent=ASCENT, descent=DESCENT)
    builder.setupNameTable({"familyName": FONT_FAMILY, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=ASCENT, sTypoDescender=DESCENT, usWinAscent=ASCENT, usWinDescent=-DESCENT)
    builder.setupPost()
    buffer = BytesIO()
    builder.save(buffer)
    return buffer.getvalue()


def _glyph_name(code: int) -> str:
    return f"uni{code:04X}" if code <= 0xFFFF else f"u{code:X}"
