"""Documents within bounds: a page cap per document with no call beyond it, PDF parts made one at a
time and holding only what their pages use, multi-frame TIFFs cut into parts like PDFs and never
cut short, decompression bombs refused by the worker and by the engine, and a memory budget that
counts what an item really holds."""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from fixtures.emulator import StartEmulator, png_bytes
from fixtures.engine import fake_tesseract
from fixtures.samples import pdf, tiff
from fixtures.waits import within
from fixtures.worker import FAST_WORKER
from PIL import Image
from pypdf import PageObject, PdfReader, PdfWriter
from pypdf.generic import (
    ArrayObject,
    DecodedStreamObject,
    DictionaryObject,
    NameObject,
    NumberObject,
    RectangleObject,
)

from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import batch_store_in
from ocrbatch.clova.client import sending_overhead_bytes
from ocrbatch.clova.documents import MAX_DECODED_PAGE_PIXELS, count_pages
from ocrbatch.clova.parts import pdf_parts
from ocrbatch.emulator.server import Emulator
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.settings import DEFAULT_MAX_PAGES_PER_DOCUMENT, Settings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.discovery import REASON_NEW, DiscoveredItem
from ocrbatch.worker.prepare import ItemRefused, MemoryBudget, PreparedItem, Reservation, prepare_item

SHARED_IMAGE_BYTES = 1_000_000
PAGE_IMAGE_BYTES = 8_192
SHARED_PAGES = 1_000
PAGE_OVERHEAD_BYTES = 1_024  # a page's dictionary, content stream and cross-reference entries


# -- documents built for these tests ---------------------------------------------------------------


def raw_tiff(sizes: list[tuple[int, int]]) -> bytes:
    """A little-endian TIFF written by hand: one 8-bit gray frame per size, every frame's directory
    pointing at the same single byte of pixels. Thousands of frames take milliseconds, and a
    header may claim any size (nothing here decodes the pixels)."""
    entry_count = 9
    ifd_bytes = 2 + 12 * entry_count + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 10) + b"\x80\x00")  # header, pixel byte at 8
    for index, (width, height) in enumerate(sizes):
        offset = 10 + index * ifd_bytes
        next_ifd = offset + ifd_bytes if index + 1 < len(sizes) else 0
        entries = [
            (256, 4, width),  # ImageWidth
            (257, 4, height),  # ImageLength
            (258, 3, 8),  # BitsPerSample
            (259, 3, 1),  # Compression: none
            (262, 3, 1),  # PhotometricInterpretation: black is zero
            (273, 4, 8),  # StripOffsets
            (277, 3, 1),  # SamplesPerPixel
            (278, 4, height),  # RowsPerStrip
            (279, 4, 1),  # StripByteCounts
        ]
        out += struct.pack("<H", entry_count)
        for tag, kind, value in entries:
            packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, kind, 1) + packed
        out += struct.pack("<I", next_ifd)
    return bytes(out)


def _image(writer: PdfWriter, data: bytes, width: int) -> DecodedStreamObject:
    image = DecodedStreamObject()
    image.set_data(data)
    image.update(
        {
            NameObject("/Type"): NameObject("/XObject"),
            NameObject("/Subtype"): NameObject("/Image"),
            NameObject("/Width"): NumberObject(width),
            NameObject("/Height"): NumberObject(len(data) // width),
            NameObject("/ColorSpace"): NameObject("/DeviceGray"),
            NameObject("/BitsPerComponent"): NumberObject(8),
        }
    )
    return image


def shared_image_pdf(pages: int = SHARED_PAGES) -> bytes:
    """`pages` pages that all draw one large image (`SHARED_IMAGE_BYTES`) and one small image of
    their own (`PAGE_IMAGE_BYTES`), every image listed in one resource dictionary that the pages
    inherit from the page tree: what generators of scanned documents write, and what made each
    part as large as the whole document."""
    rng = random.Random(14)
    writer = PdfWriter()
    images = DictionaryObject(
        {NameObject("/Shared"): writer._add_object(_image(writer, rng.randbytes(SHARED_IMAGE_BYTES), 1000))}
    )
    for index in range(pages):
        page = writer.add_blank_page(595, 842)
        del page["/Resources"]  # inherited from the page tree
        images[NameObject(f"/Page{index}")] = writer._add_object(
            _image(writer, rng.randbytes(PAGE_IMAGE_BYTES), 64)
        )
        content = DecodedStreamObject()
        content.set_data(
            f"q 595 0 0 842 0 0 cm /Shared Do Q q 64 0 0 128 10 10 cm /Page{index} Do Q".encode()
        )
        page[NameObject("/Contents")] = writer._add_object(content)
    tree = cast(DictionaryObject, writer.root_object["/Pages"])
    tree[NameObject("/Resources")] = writer._add_object(DictionaryObject({NameObject("/XObject"): images}))
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _xobject_names(page: PageObject) -> list[str]:
    resources = cast(DictionaryObject, page["/Resources"])
    return sorted(cast(DictionaryObject, resources["/XObject"]))


@pytest.fixture(scope="module")
def shared_pdf() -> bytes:
    return shared_image_pdf()


# -- the worker on local directories ---------------------------------------------------------------


@dataclass
class LocalRun:
    """A batch reading `inputs/` and writing `results/` under a temporary directory, on the
    emulator (or engine) given."""

    root: Path
    emulator: Emulator
    settings: Settings

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def result(self, key: str) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.results / f"{key}.json").read_text(encoding="utf-8"))
        return loaded

    def failure(self, key: str) -> dict[str, object]:
        return self.result(f"_failed/{key}")


RunLocal = Callable[..., Awaitable[LocalRun]]


@pytest.fixture
def run_local(tmp_path: Path, start_emulator: StartEmulator) -> RunLocal:
    """`await run_local({"a.tif": data}, engine=...)`: write the inputs, create a General batch on a
    fresh emulator (its settings as keywords), run `ocrbatch run --once` in-process."""

    async def run(inputs: dict[str, bytes], **emulator_settings: object) -> LocalRun:
        emulator = await start_emulator(**emulator_settings)
        settings = Settings(
            storage={"control_path": str(tmp_path / "control")},
            domains={
                "receipts": {
                    "kind": "general",
                    "invoke_url": emulator.url + "/general",
                    "secret": emulator.settings.general_secret.get_secret_value(),
                    "max_concurrent_calls": emulator.settings.max_concurrent_calls,
                    "request_timeout_s": 30,
                }
            },
            worker=FAST_WORKER,
            logging={"format": "json", "level": "warning"},
        )
        world = LocalRun(tmp_path, emulator, settings)
        for key, data in inputs.items():
            (world.inputs / key).parent.mkdir(parents=True, exist_ok=True)
            (world.inputs / key).write_bytes(data)
        world.results.mkdir(exist_ok=True)
        spec = {"name": "bounds", "domain": "receipts"}
        spec |= {"input_path": str(world.inputs), "result_path": str(world.results)}
        async with StorageFactory(settings.storage) as storages:
            await (await batch_store_in(settings, storages)).create(parse_spec(spec))
        assert await within(run_worker(settings, once=True), 60, "the pass did not end") == 0
        return world

    return run


async def _prepared(
    inputs: Storage,
    key: str,
    data: bytes,
    *,
    max_pages: int = DEFAULT_MAX_PAGES_PER_DOCUMENT,
    reservation: Reservation | None = None,
) -> PreparedItem:
    """`prepare_item` on `data` stored under `key`, in data mode."""
    info = await inputs.write(key, data)
    item = DiscoveredItem(key, len(data), info.etag, datetime.now(UTC), "pending", REASON_NEW)
    return await prepare_item(
        item,
        image_format=key.rsplit(".", 1)[1],
        inputs=inputs,
        transfer_mode="data",
        long_image=False,
        max_pages=max_pages,
        reservation=reservation,
    )


# -- the page cap -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "data", "count"),
    [
        pytest.param("long.pdf", pdf(25), 25, id="pdf"),
        pytest.param("long.tif", raw_tiff([(1, 1)] * 25), 25, id="tiff"),
    ],
)
async def test_a_document_over_the_page_cap_is_refused_naming_its_count(
    local_storage: Storage, key: str, data: bytes, count: int
) -> None:
    """A PDF or TIFF with more pages or frames than `max_pages` is refused (ItemRefused, so a final
    failure record) with its count and the limit; one at the limit is cut into parts as usual."""
    with pytest.raises(ItemRefused, match=rf"the document has {count} pages; at most 20 are recognised"):
        await _prepared(local_storage, key, data, max_pages=20)
    prepared = await _prepared(local_storage, key, data, max_pages=count)
    assert prepared.parts.count == 3


async def test_over_the_default_cap_the_worker_writes_a_failure_record_and_makes_no_call(
    run_local: RunLocal,
) -> None:
    """With the default cap (2,000), a 2,001-page PDF and a 2,001-frame TIFF each get a final failure
    record naming their count and the limit, and the API is not called for either."""
    over = DEFAULT_MAX_PAGES_PER_DOCUMENT + 1
    world = await run_local({"long.pdf": pdf(over), "long.tif": raw_tiff([(1, 1)] * over)})
    for key in ("long.pdf", "long.tif"):
        record = world.failure(key)
        assert record["message"] == (
            f"the document has {over:,} pages; at most 2,000 are recognised per document "
            "([worker] max_pages_per_document)"
        )
        assert record["retryable"] is False
    assert world.emulator.stats()["calls"] == 0


def test_pages_are_counted_from_the_page_tree_up_to_the_limit() -> None:
    """A PDF's page tree is walked only up to the limit; past it, the count the document declares
    is given (a 100,000-page PDF is refused after a walk of 2,001 pages), and a tree holding more
    pages than declared still counts as over the limit. A TIFF's frames are counted exactly."""
    data = pdf(60)
    assert count_pages(data, "pdf", limit=100) == 60
    assert count_pages(data, "pdf", limit=10) == 60
    lying = data.replace(b"/Count 60", b"/Count 6 ")
    assert lying != data
    assert count_pages(lying, "pdf", limit=100) == 60
    assert count_pages(lying, "pdf", limit=10) == 11  # at least this many: more than the limit
    assert count_pages(raw_tiff([(1, 1)] * 3000), "tiff", limit=10) == 3000


# -- multi-frame TIFFs ------------------------------------------------------------------------------


async def test_a_30_frame_tiff_gives_30_pages_from_3_calls(run_local: RunLocal) -> None:
    """A 30-frame TIFF is sent as three TIFFs of 10 frames and its result holds all 30 pages, in
    order (each frame's own width), with pageIndex 0-29: never the first 10 only."""
    widths = [100 + index for index in range(30)]
    world = await run_local({"scan.tif": tiff([(width, 80) for width in widths])})
    images = world.result("scan.tif")["images"]
    assert isinstance(images, list)
    assert [image["convertedImageInfo"]["pageIndex"] for image in images] == list(range(30))
    assert [image["convertedImageInfo"]["width"] for image in images] == widths
    assert world.emulator.stats()["calls"] == 3
    assert world.emulator.stats()["recognitions"] == {
        "scan.tif#pages=1-10": 1,
        "scan.tif#pages=11-20": 1,
        "scan.tif#pages=21-30": 1,
    }


# -- PDF parts --------------------------------------------------------------------------------------


def test_parts_of_a_pdf_sharing_one_large_image_track_their_pages(shared_pdf: bytes) -> None:
    """Each 10-page part of the 1,000-page PDF holds the shared image once and its own pages' images,
    not every image of the shared resource dictionary: it stays under
    2 x (shared image + 10 x (page image + 1 KB)), about 2.2 MB, against about 9 MB for the whole.
    Every page of a part still names the images it draws."""
    bound = 2 * (SHARED_IMAGE_BYTES + 10 * (PAGE_IMAGE_BYTES + PAGE_OVERHEAD_BYTES))
    sizes = []
    for number, part in enumerate(pdf_parts(shared_pdf)):
        sizes.append(len(part))
        if number == 42:
            reader = PdfReader(io.BytesIO(part))
            names = [_xobject_names(page) for page in reader.pages]
            assert names == [["/Page" + str(index), "/Shared"] for index in range(420, 430)]
    assert len(shared_pdf) > SHARED_PAGES * PAGE_IMAGE_BYTES
    assert len(sizes) == 100
    assert max(sizes) < bound, (max(sizes), bound)
    assert max(sizes) < len(shared_pdf) / 4


def test_splitting_the_shared_image_pdf_holds_one_part_at_a_time(shared_pdf: bytes) -> None:
    """Cutting the 1,000-page PDF into its 100 parts, one after the other, allocates at most 100 MB
    at its peak (traced by tracemalloc, above what was allocated before), whatever the part count:
    parts are made as they are asked for, and the reader keeps no decoded page content."""
    tracemalloc.start()
    try:
        start_bytes = tracemalloc.get_traced_memory()[0]
        parts = sum(1 for _ in pdf_parts(shared_pdf))
        peak_bytes = tracemalloc.get_traced_memory()[1] - start_bytes
    finally:
        tracemalloc.stop()
    assert parts == 100
    assert peak_bytes < 100 * 1024 * 1024, f"peak {peak_bytes / 1024 / 1024:.1f} MB"


def test_links_between_pages_do_not_pull_other_pages_into_a_part() -> None:
    """A PDF whose every page links to the next one (and whose annotations point at their page)
    is cut into parts of their own pages only; the annotations stay, without their links."""
    rng = random.Random(3)
    writer = PdfWriter()
    for _ in range(100):
        page = writer.add_blank_page(595, 842)
        image = writer._add_object(_image(writer, rng.randbytes(PAGE_IMAGE_BYTES), 64))
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/XObject"): DictionaryObject({NameObject("/Im"): image})}
        )
        content = DecodedStreamObject()
        content.set_data(b"q 64 0 0 128 0 0 cm /Im Do Q")
        page[NameObject("/Contents")] = writer._add_object(content)
    pages = list(writer.pages)
    for index, page in enumerate(pages):
        link = DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Annot"),
                NameObject("/Subtype"): NameObject("/Link"),
                NameObject("/Rect"): RectangleObject([0, 0, 10, 10]),
                NameObject("/P"): page.indirect_reference,
                NameObject("/Dest"): ArrayObject(
                    [pages[(index + 1) % 100].indirect_reference, NameObject("/Fit")]
                ),
            }
        )
        page[NameObject("/Annots")] = ArrayObject([writer._add_object(link)])
    buffer = io.BytesIO()
    writer.write(buffer)
    whole = buffer.getvalue()

    parts = list(pdf_parts(whole))

    assert len(parts) == 10
    assert max(len(part) for part in parts) < len(whole) / 5
    annotations = [
        cast(ArrayObject, page["/Annots"])[0].get_object() for page in PdfReader(io.BytesIO(parts[0])).pages
    ]
    assert [sorted(annotation) for annotation in annotations] == [["/Rect", "/Subtype", "/Type"]] * 10


# -- decompression bombs ----------------------------------------------------------------------------


async def test_a_tiff_with_a_bomb_frame_gets_a_failure_record_without_a_call(run_local: RunLocal) -> None:
    """A 12-frame TIFF (cut into parts, so decoded by the worker) whose 5th frame claims
    12,000 x 12,000 px, over Pillow's decompression-bomb limit (which stays on), is refused before
    any call with the frame, its size and the limit. A 3-frame TIFF with the same frame is sent
    as it is: the worker decodes nothing of it."""
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # importing ocrbatch left Pillow's limit as it is
    frames = [(100, 100)] * 12
    frames[4] = (12_000, 12_000)
    world = await run_local({"bomb.tif": raw_tiff(frames), "short.tif": raw_tiff(frames[2:5])})
    record = world.failure("bomb.tif")
    assert record["message"] == (
        "page 5 is 12000 x 12000 px (144 megapixels), over the decompression-bomb limit of 89 megapixels "
        "(a TIFF of more than 10 frames is cut into parts, which decodes them)"
    )
    assert record["retryable"] is False
    assert world.emulator.stats()["recognitions"] == {"short.tif": 1}


def _png_claiming(width: int, height: int) -> bytes:
    """A 10 x 10 PNG whose header claims `width` x `height` px (a decompression bomb's header)."""
    png = png_bytes(10, 10)
    header = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + png[33:]


async def test_the_engine_refuses_a_page_over_its_pixel_bound_and_the_worker_records_why(
    run_local: RunLocal, tmp_path: Path
) -> None:
    """A PNG claiming 20,000 x 20,000 px is within the API's limits, so the worker sends it; the local
    engine refuses it before decoding a pixel (over its 125 megapixels), and the worker writes that
    reason into a final failure record. Tesseract is never run."""
    assert MAX_DECODED_PAGE_PIXELS < 20_000 * 20_000
    command = fake_tesseract(tmp_path)
    world = await run_local(
        {"huge.png": _png_claiming(20_000, 20_000)}, engine="tesseract", tesseract={"command": command}
    )
    record = world.failure("huge.png")
    assert record["message"] == (
        "recognition FAILURE: image could not be read: page 1 is too large to recognise "
        "(20000 x 20000 px; at most 125 megapixels)"
    )
    assert record["retryable"] is False
    assert world.emulator.stats()["engine"]["pages"] == 0


# -- the memory budget ------------------------------------------------------------------------------


async def test_the_reservation_follows_the_input_and_the_part_being_sent(local_storage: Storage) -> None:
    """While a 23-page PDF's parts are sent in data mode, its reservation is the input, plus the
    part, plus the client's base64 and JSON copies of it; between parts, the input only."""
    data = pdf(23)
    budget = MemoryBudget(1024 * 1024 * 1024)
    seen: list[tuple[int, int]] = []
    async with budget.reserve(len(data)) as reservation:
        prepared = await _prepared(local_storage, "doc.pdf", data, reservation=reservation)
        async for part in prepared.parts:
            assert part.data is not None
            seen.append((budget.held_bytes, len(part.data)))
        assert budget.held_bytes == len(data)
    assert budget.held_bytes == 0
    assert len(seen) == 3
    for held, size in seen:
        assert held == len(data) + size + sending_overhead_bytes(size, "data")


async def test_a_growing_reservation_waits_for_room_and_new_ones_wait_behind_it() -> None:
    """A reservation that grows beyond the budget waits until another is released, and a new
    reservation asked for meanwhile is let in only after the growth, even one that would fit."""
    budget = MemoryBudget(100)
    order: list[str] = []
    first_held, second_growing, release_first = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with budget.reserve(60):
            first_held.set()
            await release_first.wait()
        order.append("first released")

    async def second() -> None:
        await first_held.wait()
        async with budget.reserve(30) as reservation:
            second_growing.set()
            await reservation.resize(70)  # 60 + 70 > 100: waits for the first
            order.append(f"second grown, {budget.held_bytes} held")

    async def third() -> None:
        await second_growing.wait()
        release_first.set()
        async with budget.reserve(10):  # 60 + 30 + 10 would fit, but the growth goes first
            order.append("third in")

    jobs = asyncio.gather(first(), second(), third())
    await within(jobs, 5, "the reservations did not all end")
    assert order == ["first released", "second grown, 70 held", "third in"]


async def test_reservations_waiting_to_grow_with_nothing_else_held_do_not_deadlock() -> None:
    """When every held byte belongs to reservations waiting to grow, the first of them grows anyway
    (the budget is exceeded rather than stuck), and the other follows once it is done."""
    budget = MemoryBudget(100)
    both_held = asyncio.Barrier(2)

    async def item() -> int:
        async with budget.reserve(40) as reservation:
            await both_held.wait()
            await reservation.resize(80)
            grown = budget.held_bytes
            await reservation.resize(40)
        return grown

    grown = await within(asyncio.gather(item(), item()), 5, "two growing reservations deadlocked")
    # The first grows with the other's 40 still held (120); the second once the first has ended.
    assert sorted(grown) == [80, 120]
    assert budget.held_bytes == 0
