"""Reading documents: page sizes from the bytes, and a clear reason when they cannot be read."""

from __future__ import annotations

import io
import logging
import random
import re

import pytest
from fixtures.samples import jpeg, pdf, png, tiff
from PIL import Image
from pypdf import PdfWriter

from ocrbatch.clova.contract import MAX_PDF_PAGES_PER_CALL
from ocrbatch.clova.documents import (
    UnreadableDocument,
    check_decodable,
    count_pages,
    is_long_image,
    page_sizes,
)
from ocrbatch.clova.parts import tiff_parts


def test_raster_sizes_are_read_from_the_content() -> None:
    """PNG and JPEG give one page of their pixel size; a TIFF gives each frame, at most 10."""
    assert page_sizes(png(640, 480), "png") == [(640, 480)]
    assert page_sizes(png(640, 480), "PNG") == [(640, 480)]
    assert page_sizes(jpeg(320, 200), "jpg") == [(320, 200)]
    assert page_sizes(jpeg(200, 320), "jpeg") == [(200, 320)]
    frames = [(100 + 10 * index, 200) for index in range(12)]
    assert page_sizes(tiff(frames[:3]), "tif") == frames[:3]
    assert page_sizes(tiff(frames), "tiff") == frames
    assert page_sizes(tiff(frames), "tiff", max_pages=10) == frames[:10]


def test_pdf_pages_are_read_at_144_dpi_up_to_the_call_limit() -> None:
    """A 23-page A4 PDF gives its first 10 pages at 1190 x 1684 px when limited to one call's pages."""
    sizes = page_sizes(pdf(23), "pdf", max_pages=MAX_PDF_PAGES_PER_CALL)
    assert sizes == [(1190, 1684)] * MAX_PDF_PAGES_PER_CALL


def test_rotated_pdf_pages_swap_width_and_height() -> None:
    """A page turned by /Rotate 90 is recognised as it is displayed: landscape."""
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842).rotate(90)
    buffer = io.BytesIO()
    writer.write(buffer)
    assert page_sizes(buffer.getvalue(), "pdf") == [(1684, 1190)]


@pytest.mark.parametrize(
    ("data", "image_format", "reason"),
    [
        pytest.param(
            random.Random(7).randbytes(2000), "png", "not a valid PNG image", id="random-bytes-as-png"
        ),
        pytest.param(png()[:20], "png", "not a valid PNG image", id="truncated-png-header"),
        pytest.param(png(mode="RGB")[:-30], "png", "truncated PNG image", id="png-cut-before-its-end"),
        pytest.param(png(), "pdf", "not a PDF document", id="png-declared-as-pdf"),
        pytest.param(png(), "jpg", "not a valid JPEG image", id="png-declared-as-jpg"),
        pytest.param(jpeg(64, 64), "tiff", "not a valid TIFF image", id="jpeg-declared-as-tiff"),
        pytest.param(pdf(2, password="pw"), "pdf", "encrypted PDF", id="encrypted-pdf"),
        pytest.param(pdf(0), "pdf", "PDF has no pages", id="pdf-without-pages"),
        pytest.param(pdf(3)[:-200], "pdf", "not a valid PDF document", id="truncated-pdf"),
        pytest.param(png(), "gif", "unsupported format 'gif'", id="unsupported-format"),
        pytest.param(b"", "png", "not a valid PNG image", id="zero-bytes-as-png"),
        pytest.param(b"", "jpg", "not a valid JPEG image", id="zero-bytes-as-jpg"),
        pytest.param(b"", "tif", "not a valid TIFF image", id="zero-bytes-as-tif"),
        pytest.param(b"", "pdf", "not a PDF document", id="zero-bytes-as-pdf"),
    ],
)
def test_unreadable_inputs_are_refused_with_a_reason(data: bytes, image_format: str, reason: str) -> None:
    """Bytes the declared format's reader rejects raise UnreadableDocument saying why."""
    with pytest.raises(UnreadableDocument, match=re.escape(reason)):
        page_sizes(data, image_format)


def test_a_broken_pdf_logs_nothing_and_leaves_pypdf_logging_as_it_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pypdf's repair warnings for a truncated PDF are not logged; its logger level is restored after."""
    caplog.set_level(logging.DEBUG)
    level = logging.getLogger("pypdf").level
    with pytest.raises(UnreadableDocument):
        page_sizes(pdf(3)[: len(pdf(3)) // 2], "pdf")
    assert [record for record in caplog.records if record.name.startswith("pypdf")] == []
    assert logging.getLogger("pypdf").level == level


def test_all_pages_are_read_without_a_limit() -> None:
    """Without max_pages every page is read (the worker splits long PDFs by this count)."""
    assert len(page_sizes(pdf(23), "pdf")) == 23
    assert len(page_sizes(pdf(23), "pdf", max_pages=MAX_PDF_PAGES_PER_CALL)) == 10


@pytest.mark.parametrize(
    ("width", "height", "long_image"),
    [(2000, 8000, False), (1600, 8000, True), (8000, 1000, True), (1000, 7999, False), (2000, 9000, False)],
)
def test_long_image_rule(width: int, height: int, long_image: bool) -> None:
    """A long image has a long side of at least 8,000 px and an aspect ratio of at least 5."""
    assert is_long_image(width, height) is long_image


def test_pages_and_frames_are_counted_without_decoding() -> None:
    """A PDF counts its pages, a TIFF its frames, any other image one page."""
    assert count_pages(pdf(23), "pdf", limit=2000) == 23
    assert count_pages(tiff([(40, 30)] * 12), "tif", limit=2000) == 12
    assert count_pages(png(), "png", limit=2000) == 1
    with pytest.raises(UnreadableDocument, match="encrypted PDF"):
        count_pages(pdf(2, password="pw"), "pdf", limit=2000)
    with pytest.raises(UnreadableDocument, match="not a valid TIFF image"):
        count_pages(jpeg(64, 64), "tiff", limit=2000)


def test_tiff_parts_keep_frames_in_order_with_their_compression_and_resolution() -> None:
    """A 23-frame TIFF becomes TIFFs of 10, 10 and 3 frames holding the frames in order, with their
    pixels, each still compressed as it was and at its resolution; a TIFF of at most 10 frames is
    returned as is."""
    frames = [Image.new("1", (200 + index, 100), 1) for index in range(23)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, "TIFF", save_all=True, append_images=frames[1:], compression="group4", dpi=(300, 300)
    )
    parts = list(tiff_parts(buffer.getvalue()))
    assert [len(page_sizes(part, "tiff")) for part in parts] == [10, 10, 3]
    assert [size for part in parts for size in page_sizes(part, "tiff")] == [frame.size for frame in frames]
    with Image.open(io.BytesIO(parts[1])) as part:
        assert (part.info["compression"], part.info["dpi"]) == ("group4", (300, 300))
        part.seek(2)
        assert part.tobytes() == frames[12].tobytes()
    short = tiff([(40, 30)] * 10)
    assert list(tiff_parts(short)) == [short]


def test_the_decompression_bomb_limit_is_pillows_own_as_it_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    """`check_decodable` refuses pages over `Image.MAX_IMAGE_PIXELS`, read at each call."""
    check_decodable(9000, 9000)  # 81 megapixels: under Pillow's default limit
    with pytest.raises(UnreadableDocument, match=r"page 3 is 10000 x 10000 px \(100 megapixels\)"):
        check_decodable(10_000, 10_000, page_index=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnreadableDocument, match="over the decompression-bomb limit"):
        check_decodable(40, 40)
