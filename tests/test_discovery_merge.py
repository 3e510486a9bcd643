"""Discovery on both backends, the streaming merge of sorted listings: keys that extend other keys,
orphan results, UTF-8 byte order, reserved names in the result location, small LIST pages, and the
capped stash of results read ahead of their input.

Each test gets two storages on the same backend (`pair`): inputs, and a separate result location
holding results (`K + suffix`) and failure records (`_failed/K.json`).
"""

from __future__ import annotations

from fixtures.discovery import Pair, state_by_key

from ocrbatch.worker.cursors import DiscoveryStats, results_in_order


def _utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: key.encode())


# ---- the merge ----


async def test_keys_that_extend_other_keys_get_every_state_right(pair: Pair) -> None:
    """K -> K + ".json" does not keep key order ("a.png.jpg.json" < "a.png.json"): every input
    still gets its own result and failure record, whatever the inversions between them."""
    keys = [
        "a.pn.png",
        "a.png",
        "a.png-2.jpg",
        "a.png.jpg",
        "a.png.jpeg",
        "a.png.jpg.png",
        "a.png.gif",
        "a.pn/b.png",
        "a.png0.png",
        "a.pngz.png",
    ]
    await pair.put_result("a.pn/b.png", "an older version")  # made before the input was last uploaded
    etags = await pair.put_inputs(*keys)
    for key in ("a.pn.png", "a.png", "a.png-2.jpg", "a.png0.png", "a.png.jpg.png"):
        await pair.put_result(key, etags[key])
    await pair.put_failure("a.png.jpeg", etags["a.png.jpeg"], retryable=False)
    await pair.put_failure("a.pngz.png", etags["a.pngz.png"], retryable=True)
    await pair.put_failure("a.png-2.jpg", etags["a.png-2.jpg"], retryable=False)  # its result wins

    assert await pair.states() == {
        "a.pn.png": "done",
        "a.png": "done",
        "a.png-2.jpg": "done",
        "a.png.gif": "skipped (unsupported format .gif)",
        "a.png.jpeg": "failed",
        "a.png.jpg": "pending (new)",
        "a.png.jpg.png": "done",
        "a.pn/b.png": "pending (changed since its result)",
        "a.png0.png": "done",
        "a.pngz.png": "pending (retrying a failure) [retry]",
    }


async def test_orphan_results_and_records_are_ignored(pair: Pair) -> None:
    """Results and failure records whose input is gone, before, between and after the inputs,
    neither show up nor disturb the merge, and are not held in memory."""
    etags = await pair.put_inputs("b.png", "d.png", "f.png")
    for orphan in ("a.png", "c.png", "c.png.jpg", "d.png-1.jpg", "e/x.png", "z.png"):
        await pair.put_result(orphan, "gone")
        await pair.put_failure(orphan, "gone", retryable=False)
    await pair.put_result("b.png", etags["b.png"])
    await pair.put_failure("d.png", etags["d.png"], retryable=False)

    stats = DiscoveryStats()
    assert await pair.states(stats=stats) == {"b.png": "done", "d.png": "failed", "f.png": "pending (new)"}
    # Only "d.png-1.jpg" is read ahead (at "d.png"), and dropped at the next input.
    assert stats.max_stash == 1


async def test_non_ascii_keys_merge_in_utf8_byte_order(pair: Pair) -> None:
    """Korean, emoji and other non-ASCII keys come out in UTF-8 byte order with their own results."""
    keys = [
        "영수증/2024/01.png",
        "영수증.png",
        "영수증.png-사본.jpg",  # extends "영수증.png": its result sorts before that one's
        "😀.png",
        "\ue000.png",  # before the emoji by code point (and UTF-8), after it in UTF-16
        "ｚ.png",
        "z.png",
    ]
    etags = await pair.put_inputs(*keys)
    for key in keys:
        if key != "ｚ.png":
            await pair.put_result(key, etags[key])
    await pair.put_failure("ｚ.png", etags["ｚ.png"], retryable=True)

    items = await pair.discover()

    assert [item.key for item in items] == _utf8_sorted(keys)
    retrying = {"ｚ.png": "pending (retrying a failure) [retry]"}
    assert state_by_key(items) == dict.fromkeys(keys, "done") | retrying


async def test_reserved_names_in_the_result_location_are_never_results(pair: Pair) -> None:
    """`_failed/`, `_outbox/` and `_report.json` in the result location are skipped over, and
    results sorting before, between and after them are all found."""
    keys = ["Z.png", "_a.png", "_g.png", "_p.png", "a.png"]
    etags = await pair.put_inputs(*keys)
    for key in keys:
        await pair.put_result(key, etags[key])
    for i in range(5):
        await pair.results.write(f"_outbox/chunk-{i}.json", b"{}")
        await pair.put_failure(f"gone-{i}.png", "gone", retryable=True)
    await pair.results.write("_failed/\U0010ffff-edge.json", b"{}")
    await pair.results.write("_report.json", b"{}")

    assert await pair.states(page_size=2) == dict.fromkeys(keys, "done")
    listed = [info.key async for info in results_in_order(pair.results, 2)]
    assert listed == _utf8_sorted([key + ".json" for key in keys])


# ---- streaming ----


async def test_small_pages_give_the_same_states(pair: Pair) -> None:
    """With two objects per LIST page and fifty inputs every state is right, and as no key extends
    another, no result or record is ever held in memory ahead of its input."""
    expected: dict[str, str] = {}
    layout: list[tuple[str, str]] = []
    for i in range(50):
        ext = ("png", "jpg", "pdf", "tiff", "gif")[i % 5]
        key = f"d{i % 7}/f{i:02d}.{ext}"
        kind = "skipped" if ext == "gif" else ("done", "new", "failed", "retry")[i % 4]
        layout.append((key, kind))
        expected[key] = {
            "skipped": "skipped (unsupported format .gif)",
            "done": "done",
            "new": "pending (new)",
            "failed": "failed",
            "retry": "pending (retrying a failure) [retry]",
        }[kind]
    etags = await pair.put_inputs(*(key for key, _ in layout))
    for key, kind in layout:
        if kind == "done":
            await pair.put_result(key, etags[key])
        elif kind in ("failed", "retry"):
            await pair.put_failure(key, etags[key], retryable=kind == "retry")
    for i in range(10):
        await pair.put_result(f"d3/gone-{i}.png", "gone")

    stats = DiscoveryStats()
    assert await pair.states(page_size=2, stats=stats) == expected
    assert stats.max_stash == 0


async def test_stash_is_capped_and_falls_back_to_a_head(pair: Pair) -> None:
    """Results read ahead of their input (keys extending an earlier key) are held up to the cap;
    past it the earlier key's result is looked up directly, and every state is still right."""
    keys = ["p.pdf", *(f"p.pdf-{i:02d}.png" for i in range(20))]
    etags = await pair.put_inputs(*keys)
    for key in keys:
        await pair.put_result(key, etags[key])
        await pair.put_failure(key, etags[key], retryable=False)  # read ahead too, but never needed

    uncapped = DiscoveryStats()
    assert await pair.states(page_size=3, stats=uncapped) == dict.fromkeys(keys, "done")
    assert uncapped.max_stash == 20

    capped = DiscoveryStats()
    assert await pair.states(page_size=3, max_stash=3, stats=capped) == dict.fromkeys(keys, "done")
    assert capped.max_stash == 3
