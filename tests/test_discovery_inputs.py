"""Discovery on both backends, the inputs alone: which names are images the OCR API reads, new
inputs pending, and unsupported or reserved names skipped with their reason.

Each test gets two storages on the same backend (`pair`): inputs, and a separate result location.
"""

from __future__ import annotations

import pytest
from fixtures.discovery import Pair, state_by_key

from ocrbatch.worker.discovery import REASON_RESERVED, image_format

# ---- formats and names ----


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a.png", "png"),
        ("dir/scan.JPEG", "jpeg"),
        ("x.Tif", "tif"),
        ("x.tiff", "tiff"),
        ("doc.pdf", "pdf"),
        ("photo.jpg", "jpg"),
        ("anim.gif", None),
        ("README", None),
        ("dir.png/README", None),
        ("archive.png.zip", None),
        ("dir/.png", "png"),
    ],
)
def test_image_format_is_the_supported_lowercased_extension(key: str, expected: str | None) -> None:
    """The format is the last segment's extension, case-insensitively, when the OCR API reads it."""
    assert image_format(key) == expected


async def test_new_inputs_are_pending(pair: Pair) -> None:
    """Supported inputs without any result are pending "new", with the listing's size, etag and time."""
    await pair.put_inputs("a.png", "b/c.PDF", "d.tiff")

    items = await pair.discover()

    assert state_by_key(items) == dict.fromkeys(["a.png", "b/c.PDF", "d.tiff"], "pending (new)")
    listed = {info.key: info async for info in pair.inputs.list()}
    for item in items:
        info = listed[item.key]
        assert (item.size, item.etag, item.last_modified) == (info.size, info.etag, info.last_modified)
        assert not item.retry_of_failure


async def test_unsupported_and_reserved_inputs_are_skipped_with_reasons(pair: Pair) -> None:
    """Other formats are skipped naming the extension; inputs whose result would land on a reserved
    name (first segment `_failed`/`_outbox`, or `_report.json`) are skipped as reserved."""
    await pair.put_inputs(
        "notes.txt",
        "README",
        "anim.GIF",
        "_failed/x.png",
        "_outbox/y.jpg",
        "_report.json",
        "_failed.png",
        "sub/_failed/z.png",
    )

    assert await pair.states() == {
        "README": "skipped (unsupported format (no extension))",
        "_failed.png": "pending (new)",
        "_failed/x.png": f"skipped ({REASON_RESERVED})",
        "_outbox/y.jpg": f"skipped ({REASON_RESERVED})",
        "_report.json": f"skipped ({REASON_RESERVED})",
        "anim.GIF": "skipped (unsupported format .gif)",
        "notes.txt": "skipped (unsupported format .txt)",
        "sub/_failed/z.png": "pending (new)",
    }
