"""`file_format = "pdf"` through the real worker on S3 (moto) and the emulator: each input gets its
searchable PDF and, written after it, its JSON, which the export and the console read; the PDF is
what a download gives."""

from __future__ import annotations

import io

import pypdf
from fixtures.samples import pdf, png
from fixtures.waits import within
from fixtures.worker import MakeSetup, create_batch, keys, open_worker, read_json

from ocrbatch.batches.store import batch_store_in
from ocrbatch.clova.contract import OcrResponse
from ocrbatch.exports.export import ExportOptions, open_export
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.worker.operations import BatchOperations


def _words(response: OcrResponse, page: int) -> list[str]:
    return [field.infer_text for field in response.images[page].fields or [] if field.infer_text]


def _in_order(words: list[str], text: str) -> bool:
    """Whether each word is found in `text` after the one before it."""
    position = 0
    for word in words:
        found = text.find(word, position)
        if found < 0:
            return False
        position = found + len(word)
    return True


async def test_pdf_batch_writes_a_searchable_pdf_beside_each_json(make_worker_setup: MakeSetup) -> None:
    """A PNG and a 12-page PDF (cut into two parts): `{key}.pdf` holds the input's pages with each
    page's recognised words as text, in order; `{key}.json` is the merged response with the same
    metadata; the export reads the JSON, and the download is the PDF; a second pass sends nothing."""
    setup = await make_worker_setup(max_concurrent_calls=4)
    await setup.inputs.write("scan.png", png(640, 480))
    await setup.inputs.write("contract.pdf", pdf(12))
    settings = setup.settings()
    await create_batch(setup, settings, file_format="pdf")
    async with open_worker(settings) as (worker, _):
        outcome = await within(worker.run_pass(), 60, "the pass did not end")
    assert outcome.errors == {}

    assert sorted(key for key in await keys(setup.results) if not key.startswith("_")) == [
        "contract.pdf.json",
        "contract.pdf.pdf",
        "scan.png.json",
        "scan.png.pdf",
    ]
    for key, pages in (("scan.png", 1), ("contract.pdf", 12)):
        response = OcrResponse.model_validate(await read_json(setup.results, key + ".json"))
        stored = await setup.results.read(key + ".pdf")
        assert stored.info.content_type == "application/pdf"
        json_metadata = (await setup.results.head(key + ".json")).metadata
        assert stored.info.metadata["source-etag"] == json_metadata["source-etag"]
        reader = pypdf.PdfReader(io.BytesIO(stored.data))
        assert len(reader.pages) == pages == len(response.images)
        for page in range(pages):
            text = reader.pages[page].extract_text()
            words = _words(response, page)
            assert words, page
            assert _in_order(words, text), (page, words, text)

    async with StorageFactory(settings.storage) as storages:
        operations = BatchOperations(settings, await batch_store_in(settings, storages), storages)
        export = await open_export(operations, "receipts", ExportOptions(export_format="jsonl"))
        rows = b"".join([chunk async for chunk in export.chunks()]).decode().splitlines()
        assert len(rows) == 2
        name, data, content_type = await operations.result_file("receipts", "scan.png")
        assert (name, content_type) == ("scan.png.pdf", "application/pdf")
        assert data.startswith(b"%PDF-")
        viewed = await operations.result("receipts", "scan.png")
        assert viewed.result_key == "scan.png.json"

    calls = setup.emulator.stats()["calls"]
    async with open_worker(settings) as (worker, _):
        await within(worker.run_pass(), 60, "the second pass did not end")
    assert setup.emulator.stats()["calls"] == calls


async def test_template_pdf_batch_places_each_field_value(make_worker_setup: MakeSetup) -> None:
    """A Template batch may write PDFs too: the title and each field's value are the page's text."""
    setup = await make_worker_setup()
    await setup.inputs.write("form.png", png(800, 600))
    settings = setup.settings()
    await create_batch(setup, settings, name="forms", domain="forms", template_ids=[101], file_format="pdf")
    async with open_worker(settings) as (worker, _):
        outcome = await within(worker.run_pass(), 60, "the pass did not end")
    assert outcome.errors == {}

    (image,) = OcrResponse.model_validate(await read_json(setup.results, "form.png.json")).images
    text = (
        pypdf.PdfReader(io.BytesIO((await setup.results.read("form.png.pdf")).data)).pages[0].extract_text()
    )
    assert image.title is not None
    values = [image.title.infer_text, *(field.infer_text for field in image.fields or [])]
    assert _in_order([word for value in values for word in value.split()], text), (values, text)
