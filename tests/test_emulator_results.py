"""The emulator's results: page sizes from the content, deterministic text derived from the bytes,
boxes inside the page, tables, and the General/Template shapes of the public examples."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fixtures.samples import pdf, png

from ocrbatch.clova.contract import OcrImage
from ocrbatch.clova.documents import UnreadableDocument
from ocrbatch.emulator.results import (
    DEFAULT_FIELD_NAMES,
    INVOICE_FIELD_NAMES,
    Template,
    default_template,
    general_images,
    template_images,
)

DATA = Path(__file__).parent / "data"
GENERAL_EXAMPLE = DATA / "general-ocr-response.json"

HANGUL = re.compile(r"[\uac00-\ud7a3]")
KANA = re.compile(r"[\u3040-\u30ff]")
CJK = re.compile(r"[\u4e00-\u9fff]")


# -- inputs -------------------------------------------------------------------------------------


def general(
    data: bytes, image_format: str = "png", *, lang: str | None = None, tables: bool = False
) -> list[OcrImage]:
    return general_images(
        name="scan", data=data, image_format=image_format, lang=lang, table_detection=tables
    )


def text_of(image: OcrImage) -> str:
    return " ".join(field.infer_text for field in image.fields or [])


# -- shapes -------------------------------------------------------------------------------------


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path in a JSON value (`images[].fields[].boundingPoly.vertices[].x`), list items merged."""
    if isinstance(value, dict):
        paths: set[str] = set()
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths |= {path, *key_paths(item, path)}
        return paths
    if isinstance(value, list):
        return set().union(*(key_paths(item, f"{prefix}[]") for item in value))
    return set()


def seed_example(heading: str) -> Any:
    """The Template API reference's example answer: "Succeeded" or "Failure" (see tests/data)."""
    name = "template-ocr-response.json" if heading == "Succeeded" else "template-ocr-failure.json"
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def image_paths(images: list[OcrImage]) -> set[str]:
    return key_paths({"images": [image.to_wire() for image in images]})


def all_vertices(value: Any) -> list[tuple[float, float]]:
    """The vertices of every boundingPoly anywhere in a wire value."""
    if isinstance(value, dict):
        found = [(vertex["x"], vertex["y"]) for vertex in value.get("boundingPoly", {}).get("vertices", [])]
        return found + [vertex for item in value.values() for vertex in all_vertices(item)]
    if isinstance(value, list):
        return [vertex for item in value for vertex in all_vertices(item)]
    return []


def test_unreadable_inputs_fail_recognition_too() -> None:
    """Both result builders refuse bytes the declared format's reader rejects."""
    with pytest.raises(UnreadableDocument, match="encrypted PDF"):
        general(pdf(2, password="pw"), "pdf")
    with pytest.raises(UnreadableDocument, match="not a valid PNG image"):
        template_images(name="scan", data=b"junk", image_format="png", candidates=[default_template(1)])


# -- General text -------------------------------------------------------------------------------


def test_the_same_bytes_give_the_same_result() -> None:
    """Results depend on the bytes and arguments only: two calls dump to the same JSON."""
    data = pdf(3)
    for tables in (False, True):
        first = [image.to_wire() for image in general(data, "pdf", lang="ko", tables=tables)]
        assert first == [image.to_wire() for image in general(data, "pdf", lang="ko", tables=tables)]
    candidates = [default_template(1), default_template(2)]
    first = [
        image.to_wire()
        for image in template_images(name="a", data=data, image_format="pdf", candidates=candidates)
    ]
    again = template_images(name="a", data=data, image_format="pdf", candidates=candidates)
    assert first == [image.to_wire() for image in again]


def test_text_is_derived_from_the_content() -> None:
    """Different bytes give different text, and each page's first line starts with ID-<sha256 prefix>."""
    first, second = png(colour=1), png(colour=2)
    assert text_of(general(first)[0]) != text_of(general(second)[0])
    for data, image_format in ((first, "png"), (pdf(2), "pdf")):
        token = f"ID-{hashlib.sha256(data).hexdigest()[:8]}"
        assert all((image.fields or [])[0].infer_text == token for image in general(data, image_format))


def test_pages_of_one_document_have_their_own_text_and_uid() -> None:
    """Each page is recognised separately: distinct 32-hex uids, different words, the given name."""
    images = general(pdf(4), "pdf")
    uids = [image.uid or "" for image in images]
    assert len(set(uids)) == 4
    assert all(re.fullmatch(r"[0-9a-f]{32}", uid) for uid in uids)
    assert len({text_of(image) for image in images}) == 4
    assert {image.name for image in images} == {"scan"}


@pytest.mark.parametrize(
    ("lang", "script"),
    [("ko", HANGUL), ("ja", KANA), ("zh-TW", CJK), ("ko,ja", HANGUL), ("ja,ko", KANA)],
)
def test_words_come_from_the_first_requested_language(lang: str, script: re.Pattern[str]) -> None:
    """ko text holds Hangul, ja kana, zh-TW CJK ideographs; of comma-joined languages the first wins."""
    for colour in range(5):
        text = text_of(general(png(colour=colour), lang=lang)[0])
        assert script.search(text), text
        if lang == "zh-TW":
            assert not HANGUL.search(text)
            assert not KANA.search(text)


def test_without_a_language_the_words_are_english() -> None:
    """No lang gives ASCII words."""
    assert text_of(general(png())[0]).isascii()


def test_words_are_well_formed_and_laid_out_in_lines() -> None:
    """Each word is NORMAL/ALL with a confidence in [0.9, 1]; words run left to right and lines top to
    bottom; lineBreak is true exactly on the last word of each line."""
    for colour in range(5):
        fields = general(png(1190, 1682, colour=colour), lang="ja")[0].fields or []
        assert fields[-1].line_break is True
        for field, following in itertools.pairwise(fields):
            assert (field.value_type, field.type) == ("ALL", "NORMAL")
            assert field.infer_confidence is not None
            assert 0.9 <= field.infer_confidence <= 1.0
            assert field.bounding_poly is not None
            assert following.bounding_poly is not None
            here, there = field.bounding_poly.vertices, following.bounding_poly.vertices
            if field.line_break:
                assert there[0].y > here[2].y  # the next line starts below this one
            else:
                assert (there[0].y, there[0].x > here[1].x) == (here[0].y, True)


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1190, 1682), (1000, 9000), (9000, 1000), (3, 2)])
def test_every_box_lies_inside_the_page(width: int, height: int) -> None:
    """Every vertex of words, tables, cells, cell lines and words, titles and template fields is
    within the page: x in [0, width], y in [0, height]."""
    data = png(width, height, mode="1", colour=1)
    images = [
        *general(data, lang="ko", tables=True),
        *template_images(name="scan", data=data, image_format="png", candidates=[default_template(7)]),
    ]
    for image in images:
        vertices = all_vertices(image.to_wire())
        assert len(vertices) > 20
        assert all(0 <= x <= width and 0 <= y <= height for x, y in vertices)


@pytest.mark.parametrize(
    ("width", "height", "long_image"),
    [
        (1000, 9000, True),
        (9000, 1000, True),
        (1600, 8000, True),
        (1601, 8000, False),
        (1000, 7999, False),
        (1000, 1000, False),
    ],
)
def test_long_images_are_flagged(width: int, height: int, long_image: bool) -> None:
    """longImage is true when the long side is at least 8000 px and at least 5 times the short side."""
    info = general(png(width, height, mode="1"))[0].converted_image_info
    assert info is not None
    assert (info.width, info.height, info.page_index, info.long_image) == (width, height, 0, long_image)


# -- tables -------------------------------------------------------------------------------------


def test_tables_appear_only_when_asked() -> None:
    """Without table detection no `tables` key is sent; with it each page has one table."""
    data = pdf(2)
    assert all("tables" not in image.to_wire() for image in general(data, "pdf"))
    assert all(len(image.tables or []) == 1 for image in general(data, "pdf", tables=True))


def test_table_cells_cover_the_grid_exactly_once() -> None:
    """Every grid position is covered by exactly one cell; some cells span two columns or two rows;
    some cells hold text; the grid's size depends on the content."""
    grid_sizes = set()
    for colour in range(12):
        (table,) = general(png(colour=colour), lang="ko", tables=True)[0].tables or []
        rows = max(cell.row_index + cell.row_span for cell in table.cells)
        columns = max(cell.column_index + cell.column_span for cell in table.cells)
        covered = Counter(
            (cell.row_index + row, cell.column_index + column)
            for cell in table.cells
            for row in range(cell.row_span)
            for column in range(cell.column_span)
        )
        assert covered == Counter({(row, column): 1 for row in range(rows) for column in range(columns)})
        assert any(cell.column_span == 2 for cell in table.cells)
        assert any(cell.row_span == 2 for cell in table.cells)
        words = [
            word.infer_text
            for cell in table.cells
            for line in cell.cell_text_lines
            for word in line.cell_words
        ]
        assert words
        assert all(words)
        grid_sizes.add((rows, columns))
    assert len(grid_sizes) > 1


def test_general_result_has_the_shape_of_the_public_example() -> None:
    """With tables on, the General result has exactly the key paths of the composed public example."""
    example = json.loads(GENERAL_EXAMPLE.read_text(encoding="utf-8"))
    images = general(png(), lang="ko", tables=True)
    assert image_paths(images) == key_paths({"images": example["images"]})


# -- Template -----------------------------------------------------------------------------------


def test_template_result_has_the_shape_of_the_seed_example() -> None:
    """A Template result has exactly the key paths of the seed's "Succeeded" example."""
    example = seed_example("Succeeded")
    images = template_images(
        name="scan", data=png(), image_format="png", candidates=[default_template(31677)]
    )
    assert image_paths(images) == key_paths({"images": example["images"]})


def test_template_fields_follow_the_matched_template() -> None:
    """Each page matches one of the candidates and has one field per template field, in order, whose
    text is its sub-fields' text; the title names the template."""
    candidates = [
        Template(id=1, name="Business registration certificate", field_names=("Registration number", "CEO")),
        Template(id=2, name="Invoice", field_names=("Invoice number", "Issue date", "Company name", "Total")),
        default_template(3),
    ]
    by_id = {template.id: template for template in candidates}
    matched = set()
    for colour in range(20):
        for image in template_images(
            name="scan", data=png(colour=colour), image_format="png", candidates=candidates
        ):
            assert image.matched_template is not None
            template = by_id[image.matched_template.id]
            matched.add(template.id)
            assert image.matched_template.name == template.name
            assert tuple(field.name for field in image.fields or []) == template.field_names
            for field in image.fields or []:
                assert field.infer_text == " ".join(sub.infer_text for sub in field.sub_fields or [])
                assert [sub.line_break for sub in field.sub_fields or []][-1] is True
            assert image.title is not None
            assert (image.title.name, image.title.infer_text) == (template.name, template.name)
    assert matched == {1, 2, 3}


def test_template_pages_are_recognised_one_by_one() -> None:
    """A PDF gives one Template image per page (up to 10), with its page index."""
    images = template_images(name="scan", data=pdf(12), image_format="pdf", candidates=[default_template(5)])
    assert [image.converted_image_info.page_index for image in images if image.converted_image_info] == list(
        range(10)
    )


def test_no_candidate_template_is_a_failure_like_the_seed_example() -> None:
    """Without a candidate template each page fails with NOT_FOUND, shaped like the seed's "Failure"."""
    example = seed_example("Failure")
    images = template_images(name="hello", data=png(), image_format="png", candidates=[])
    assert image_paths(images) == key_paths({"images": example["images"]})
    assert (images[0].infer_result, images[0].message) == ("FAILURE", "NOT_FOUND: not found matched template")
    assert len(template_images(name="hello", data=pdf(3), image_format="pdf", candidates=[])) == 3


def test_default_template() -> None:
    """An id without configured fields deploys "Template <id>": a business registration
    certificate's fields for an odd id, an invoice's for an even one."""
    assert default_template(41) == Template(id=41, name="Template 41", field_names=DEFAULT_FIELD_NAMES)
    assert default_template(42) == Template(id=42, name="Template 42", field_names=INVOICE_FIELD_NAMES)
