"""Result files of PDFs: a PDF split into parts the API accepts, and the parts' answers merged back
into one answer with continuous page numbers."""

from __future__ import annotations

import io

import pytest
from fixtures.result_files import general_parts
from fixtures.samples import pdf, png
from pypdf import PdfReader, PdfWriter

from ocrbatch.clova.contract import ConvertedImageInfo, OcrImage, OcrResponse
from ocrbatch.clova.documents import UnreadableDocument
from ocrbatch.worker.result_files import merge_responses, split_pdf


def _pdf_of_widths(widths_pt: list[int]) -> bytes:
    """A PDF whose pages tell themselves apart by their widths."""
    writer = PdfWriter()
    for width in widths_pt:
        writer.add_blank_page(width=width, height=800)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _widths(data: bytes) -> list[int]:
    return [round(float(page.mediabox.width)) for page in PdfReader(io.BytesIO(data)).pages]


def _page_indexes(images: list[OcrImage]) -> list[int | None]:
    return [image.converted_image_info.page_index if image.converted_image_info else None for image in images]


# -- split ---------------------------------------------------------------------------------------


def test_a_23_page_pdf_is_split_into_10_10_3_pages_in_order() -> None:
    """Each part is a readable PDF of at most 10 pages, and the parts hold the pages in their order."""
    widths = [300 + 10 * page for page in range(23)]
    parts = split_pdf(_pdf_of_widths(widths))
    assert [len(PdfReader(io.BytesIO(part)).pages) for part in parts] == [10, 10, 3]
    assert [width for part in parts for width in _widths(part)] == widths


def test_the_part_size_can_be_chosen() -> None:
    """`pages_per_part` sets the cut: 5 pages by 2 give 2, 2 and 1 pages, still in order."""
    widths = [400, 410, 420, 430, 440]
    parts = split_pdf(_pdf_of_widths(widths), pages_per_part=2)
    assert [_widths(part) for part in parts] == [[400, 410], [420, 430], [440]]


@pytest.mark.parametrize("pages", [1, 10])
def test_a_pdf_within_the_limit_is_returned_as_is(pages: int) -> None:
    """A PDF of at most 10 pages is one part: the very bytes given, not a re-written copy."""
    data = pdf(pages)
    parts = split_pdf(data)
    assert parts == [data]
    assert parts[0] is data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(pdf(3, password="pw"), "encrypted PDF", id="encrypted-within-limit"),
        pytest.param(pdf(23, password="pw"), "encrypted PDF", id="encrypted-over-limit"),
        pytest.param(pdf(23)[:-200], "not a valid PDF document", id="truncated"),
        pytest.param(png(), "not a PDF document", id="png-bytes"),
        pytest.param(b"", "not a PDF document", id="zero-bytes"),
        pytest.param(pdf(0), "PDF has no pages", id="no-pages"),
    ],
)
def test_unreadable_pdfs_are_refused(data: bytes, reason: str) -> None:
    """Encrypted, corrupt or empty PDFs raise UnreadableDocument with a reason, before any split."""
    with pytest.raises(UnreadableDocument, match=reason):
        split_pdf(data)


# -- merge ---------------------------------------------------------------------------------------


def test_merged_parts_number_their_pages_continuously() -> None:
    """Three parts of a 23-page PDF merge into 23 images in part order with pageIndex 0..22, the
    first part's envelope and every unknown field kept; the parts themselves are untouched."""
    parts = general_parts(pdf(23))
    parts = [
        OcrResponse.model_validate(
            part.to_wire()
            | {"partExtra": number}
            | {
                "images": [
                    image.to_wire() | {"vendorNote": f"{number}/{index}"}
                    for index, image in enumerate(part.images)
                ]
            }
        )
        for number, part in enumerate(parts)
    ]
    before = [part.to_wire() for part in parts]
    assert [_page_indexes(part.images) for part in parts] == [
        list(range(10)),
        list(range(10)),
        list(range(3)),
    ]

    merged = merge_responses(parts)

    assert _page_indexes(merged.images) == list(range(23))
    assert [image.uid for image in merged.images] == [image.uid for part in parts for image in part.images]
    wire = merged.to_wire()
    assert [image["vendorNote"] for image in wire["images"]] == [
        f"{number}/{index}" for number, size in enumerate([10, 10, 3]) for index in range(size)
    ]
    assert (wire["version"], wire["requestId"], wire["timestamp"], wire["partExtra"]) == (
        "V2",
        "request-0",
        1_700_000_000_000,
        0,
    )
    assert [part.to_wire() for part in parts] == before


def test_images_without_page_info_still_count_as_a_page() -> None:
    """A page that failed (no convertedImageInfo) stays in place and the next page's index skips it."""
    info = ConvertedImageInfo(width=100, height=100, page_index=0)
    success = OcrImage(infer_result="SUCCESS", converted_image_info=info)
    failure = OcrImage(infer_result="FAILURE", message="broken page")
    merged = merge_responses(
        [OcrResponse(images=[success]), OcrResponse(images=[failure]), OcrResponse(images=[success])]
    )
    assert [image.infer_result for image in merged.images] == ["SUCCESS", "FAILURE", "SUCCESS"]
    assert _page_indexes(merged.images) == [0, None, 2]


def test_merging_nothing_is_an_error() -> None:
    """An empty list of parts is a caller's bug, not an empty document."""
    with pytest.raises(ValueError, match="no parts"):
        merge_responses([])
