"""The export's table: its columns and the rows of each document, for each layout.

Every row starts with `source_key` (the input), `result_key` (the result or failure record the
row comes from) and `status` (succeeded | failed | unreadable), then `reason` when failed items
are included (a result that cannot be parsed is always shown, with its reason).

- General, one row per document: `pages`, `text` (each line's words joined by spaces, lines by a
  line break, pages by an empty line), `confidence` (the mean of the words', to 6 places).
- General with lines: one row per recognised line: `page`, `line`, `text`, `confidence` (the
  lowest of the line's words', as in the result workbooks), `left`, `top`, `right`, `bottom` (px).
- Template, one row per document: `pages`, `template_id`, `template_name`, then one column per
  field name: the union over the batch, the batch's templates in its `template_ids` order (others
  after, by id), each template's fields in the order its results give them, a title as `(title)`
  first. A name two templates share is one column. A document's value is its field's text (a name
  found on several pages: the values joined by line breaks); with confidence, a
  `<name> confidence` column follows each field (the lowest of the values'). A field whose name
  is one of the fixed columns' is named `field:<name>`. A document whose pages matched different
  templates lists their ids and names joined by "; ".
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ocrbatch.clova.contract import OcrImage, OcrResponse
from ocrbatch.exports.walk import ExportedDocument
from ocrbatch.worker.result_files import TITLE_FIELD, text_line_rows, word_lines

Cell = str | int | float | None
Row = list[Cell]

BASE_COLUMNS = ("source_key", "result_key", "status")
REASON_COLUMN = "reason"
GENERAL_COLUMNS = ("pages", "text", "confidence")
LINE_COLUMNS = ("page", "line", "text", "confidence", "left", "top", "right", "bottom")
TEMPLATE_COLUMNS = ("pages", "template_id", "template_name")
CONFIDENCE_SUFFIX = " confidence"
FIELD_PREFIX = "field:"
PAGE_SEPARATOR = "\n\n"
MEAN_PLACES = 6  # a mean confidence to 6 decimal places, not a float's 17 digits


def _base(document: ExportedDocument, *, include_failed: bool) -> Row:
    row: Row = [document.key, document.source, document.status]
    if include_failed:
        row.append(document.reason)
    return row


def _blank(count: int) -> Row:
    return [None] * count


def base_columns(*, include_failed: bool) -> list[str]:
    return [*BASE_COLUMNS, *([REASON_COLUMN] if include_failed else [])]


# -- General -------------------------------------------------------------------------------------


def general_columns(*, lines: bool, include_failed: bool) -> list[str]:
    return [*base_columns(include_failed=include_failed), *(LINE_COLUMNS if lines else GENERAL_COLUMNS)]


def general_rows(document: ExportedDocument, *, lines: bool, include_failed: bool) -> Iterator[Row]:
    """The rows of one document of a General batch (a document without a response: one row)."""
    base = _base(document, include_failed=include_failed)
    response = document.response
    if response is None:
        yield base + _blank(len(LINE_COLUMNS if lines else GENERAL_COLUMNS))
        return
    if lines:
        for line in text_line_rows(response.images):
            yield base + list(line)
        return
    confidences = [
        word.infer_confidence
        for image in response.images
        for word in image.fields or []
        if word.infer_confidence is not None
    ]
    mean = round(statistics.fmean(confidences), MEAN_PLACES) if confidences else None
    yield [*base, len(response.images), document_text(response), mean]


def document_text(response: OcrResponse) -> str:
    """The document's text: words joined by spaces, lines by line breaks, pages by an empty line."""
    return PAGE_SEPARATOR.join(_page_text(image) for image in response.images)


def _page_text(image: OcrImage) -> str:
    return "\n".join(
        " ".join(word.infer_text for word in line if word.infer_text)
        for line in word_lines(image.fields or [])
    )


# -- Template ------------------------------------------------------------------------------------


@dataclass
class TemplateDocument:
    """One Template document's cells before the batch's columns are known."""

    base: Row
    pages: int | None = None
    template_ids: list[int] = field(default_factory=list)
    template_names: list[str] = field(default_factory=list)
    values: dict[str, tuple[str, float | None]] = field(default_factory=dict)

    def to_json(self) -> list[Any]:
        return [self.base, self.pages, self.template_ids, self.template_names, self.values]

    @classmethod
    def from_json(cls, data: list[Any]) -> TemplateDocument:
        base, pages, ids, names, values = data
        return cls(base, pages, ids, names, {name: (value, conf) for name, (value, conf) in values.items()})


def template_document(
    document: ExportedDocument, *, include_failed: bool
) -> tuple[TemplateDocument, list[tuple[int | None, list[str]]]]:
    """The document's cells, and the field names each matched template gave it, in order."""
    out = TemplateDocument(_base(document, include_failed=include_failed))
    seen: list[tuple[int | None, list[str]]] = []
    response = document.response
    if response is None:
        return out, seen
    out.pages = len(response.images)
    for image in response.images:
        template_id = image.matched_template.id if image.matched_template is not None else None
        if image.matched_template is not None and template_id not in out.template_ids:
            out.template_ids.append(image.matched_template.id)
            out.template_names.append(image.matched_template.name or "")
        names: list[str] = []
        for name, value, confidence in _page_fields(image):
            names.append(name)
            old_value, old_confidence = out.values.get(name, ("", None))
            joined = f"{old_value}\n{value}" if old_value and value else old_value or value
            out.values[name] = (joined, _lowest(old_confidence, confidence))
        seen.append((template_id, names))
    return out, seen


def _page_fields(image: OcrImage) -> Iterator[tuple[str, str, float | None]]:
    if image.title is not None:
        yield TITLE_FIELD, image.title.infer_text, image.title.infer_confidence
    for item in image.fields or []:
        yield item.name or "", item.infer_text, item.infer_confidence


def _lowest(a: float | None, b: float | None) -> float | None:
    present = [value for value in (a, b) if value is not None]
    return min(present) if present else None


class TemplateColumns:
    """The field names of a batch's templates, as its documents show them (see the module's rules)."""

    def __init__(self, template_order: Sequence[int]) -> None:
        self._order = list(template_order)
        self._names: dict[int | None, dict[str, None]] = {}

    def observe(self, seen: Iterable[tuple[int | None, list[str]]]) -> None:
        for template_id, names in seen:
            known = self._names.setdefault(template_id, {})
            for name in names:
                known.setdefault(name)

    def field_names(self) -> list[str]:
        listed = [template for template in self._order if template in self._names]
        others = sorted(
            template for template in self._names if template is not None and template not in listed
        )
        ordered: list[int | None] = [*listed, *others, *([None] if None in self._names else [])]
        union: dict[str, None] = {}
        for template in ordered:
            union.update(self._names[template])
        return list(union)

    def columns(self, names: Sequence[str], *, confidence: bool, include_failed: bool) -> list[str]:
        fixed = [*base_columns(include_failed=include_failed), *TEMPLATE_COLUMNS]
        columns = list(fixed)
        for name in names:
            header = FIELD_PREFIX + name if name in fixed else name
            columns.append(header)
            if confidence:
                columns.append(header + CONFIDENCE_SUFFIX)
        return columns


def template_row(document: TemplateDocument, names: Sequence[str], *, confidence: bool) -> Row:
    ids: Cell = None
    if len(document.template_ids) == 1:
        ids = document.template_ids[0]
    elif document.template_ids:
        ids = "; ".join(str(template_id) for template_id in document.template_ids)
    template_names = "; ".join(document.template_names) if document.template_ids else None
    row = [*document.base, document.pages, ids, template_names]
    for name in names:
        value, field_confidence = document.values.get(name, (None, None))
        row.append(value)
        if confidence:
            row.append(field_confidence)
    return row
