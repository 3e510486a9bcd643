"""The local backend stays inside its root: symbolic links that lead outside it (or into
`.ocrbatch/`, or to a directory) are listed but refused with `SymlinkRefused`, never followed, and
nothing outside the root is read, written or deleted. A link to a file inside the root is that
file; the root itself may be a link."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from fixtures.samples import png
from fixtures.storage import listed_keys
from fixtures.waits import within
from fixtures.worker import MakeSetup, create_batch, read_json

from ocrbatch.errors import ObjectNotFound, SymlinkRefused
from ocrbatch.locations import Location
from ocrbatch.service.lifecycle import run_worker
from ocrbatch.storage.base import Storage
from ocrbatch.storage.local import LocalStorage

LEADS_OUTSIDE = "is a symbolic link that leads outside the location's root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the storage root, which no operation may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes, to show that nothing there changed."""
    return {
        str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()
    }


# ---- links that lead outside the root ----


async def test_link_to_a_file_outside_is_listed_and_refused(
    local_storage: Storage, local_root: Path, outside: Path
) -> None:
    """A link to a file outside the root is listed (by the link's own stat), so it is never silently
    skipped, and reading or heading it raises SymlinkRefused naming the target, not ObjectNotFound."""
    (outside / "secret.png").write_bytes(b"not yours")
    os.symlink(outside / "secret.png", local_root / "evil.png")
    await local_storage.write("fine.png", b"x")

    [evil, fine] = [info async for info in local_storage.list()]

    assert (evil.key, fine.key) == ("evil.png", "fine.png")
    assert evil.size == len(str(outside / "secret.png"))  # the link's own size, not the target's
    with pytest.raises(
        SymlinkRefused, match=re.escape(f"evil.png: {LEADS_OUTSIDE} (to {outside}/secret.png)")
    ):
        await local_storage.read("evil.png")
    with pytest.raises(SymlinkRefused, match=LEADS_OUTSIDE):
        await local_storage.head("evil.png")


async def test_link_to_a_directory_outside_is_not_entered(
    local_storage: Storage, local_root: Path, outside: Path
) -> None:
    """A link to a directory outside is one refused object: its files are neither listed (with or
    without a prefix inside it) nor readable through it."""
    (outside / "a.png").write_bytes(b"not yours")
    os.symlink(outside, local_root / "elsewhere")

    assert await listed_keys(local_storage) == ["elsewhere"]
    assert await listed_keys(local_storage, "elsewhere/") == []
    with pytest.raises(SymlinkRefused, match=LEADS_OUTSIDE):
        await local_storage.head("elsewhere")
    with pytest.raises(SymlinkRefused, match="passes through elsewhere, which is a symbolic link that leads"):
        await local_storage.read("elsewhere/a.png")


async def test_writes_through_a_linked_directory_are_refused(
    local_storage: Storage, local_root: Path, outside: Path
) -> None:
    """In a result root whose subdirectory links outside, writes and deletes under it are refused and
    nothing outside is created, changed or removed, at any depth."""
    os.symlink(outside, local_root / "sub")

    for key in ("sub/a.png.json", "sub/deeper/b.png.json"):
        with pytest.raises(SymlinkRefused, match="passes through sub, which is a symbolic link that leads"):
            await local_storage.write(key, b"{}")
    assert os.listdir(outside) == []

    (outside / "kept.json").write_bytes(b"theirs")
    with pytest.raises(SymlinkRefused):
        await local_storage.delete("sub/kept.json")
    assert tree(outside) == {"kept.json": b"theirs"}


async def test_a_linked_private_directory_is_refused(local_root: Path, outside: Path) -> None:
    """A `.ocrbatch/` that links outside takes neither temp files, sidecars nor the lock."""
    os.symlink(outside, local_root / ".ocrbatch")
    storage = LocalStorage(Location.parse(str(local_root)))

    with pytest.raises(
        SymlinkRefused, match=re.escape("passes through .ocrbatch, which is a symbolic link that leads")
    ):
        await storage.write("a.png.json", b"{}")

    assert os.listdir(outside) == []
    assert sorted(os.listdir(local_root)) == [".ocrbatch"]


async def test_writes_and_deletes_replace_a_key_s_own_link(
    local_storage: Storage, local_root: Path, outside: Path
) -> None:
    """A key that is itself a link outside is overwritten as S3 would overwrite it: the link is
    replaced by a regular file, or removed by a delete, and its target is never written."""
    (outside / "target.json").write_bytes(b"theirs")
    os.symlink(outside / "target.json", local_root / "r.json")
    os.symlink(outside / "target.json", local_root / "gone.json")
    [listed, _] = [info async for info in local_storage.list()]

    await local_storage.write("r.json", b"ours", if_match=listed.etag)
    await local_storage.delete("gone.json")

    assert (local_root / "r.json").read_bytes() == b"ours"
    assert not (local_root / "r.json").is_symlink()
    assert await listed_keys(local_storage) == ["r.json"]
    assert tree(outside) == {"target.json": b"theirs"}


async def test_link_into_the_private_directory_is_refused(local_storage: Storage, local_root: Path) -> None:
    """A link into `.ocrbatch/` is listed but refused: ocrbatch's own files are not objects."""
    await local_storage.write("a", b"x", metadata={"k": "v"})
    os.symlink(local_root / ".ocrbatch" / "meta" / "a.json", local_root / "peek.json")

    assert await listed_keys(local_storage) == ["a", "peek.json"]
    with pytest.raises(
        SymlinkRefused, match=re.escape("is a symbolic link into .ocrbatch/, which ocrbatch reserves")
    ):
        await local_storage.read("peek.json")


# ---- links that stay inside ----


async def test_link_to_a_file_inside_is_that_file(local_storage: Storage, local_root: Path) -> None:
    """A link to a regular file inside the root (relative or absolute) is listed and read as that
    file; writing the link's key replaces the link and leaves the file alone."""
    await local_storage.write("scans/original.png", b"bytes")
    os.symlink("scans/original.png", local_root / "alias.png")
    os.symlink(local_root / "scans" / "original.png", local_root / "scans" / "absolute.png")

    listed = {info.key: info async for info in local_storage.list()}
    stored = await local_storage.read("alias.png")

    assert sorted(listed) == ["alias.png", "scans/absolute.png", "scans/original.png"]
    assert listed["alias.png"].size == listed["scans/absolute.png"].size == 5
    assert stored.data == (await local_storage.read("scans/absolute.png")).data == b"bytes"
    assert (await local_storage.head("alias.png")).size == 5

    await local_storage.write("alias.png", b"new")
    assert (await local_storage.read("scans/original.png")).data == b"bytes"
    assert (await local_storage.read("alias.png")).data == b"new"


async def test_link_to_a_directory_inside_is_refused_not_entered(
    local_storage: Storage, local_root: Path
) -> None:
    """A link to a directory inside the root is one refused object, so its files are listed once,
    under their real keys, and never twice; keys through it are refused."""
    await local_storage.write("real/a.png", b"x")
    os.symlink("real", local_root / "view")

    assert await listed_keys(local_storage) == ["real/a.png", "view"]
    with pytest.raises(SymlinkRefused, match="view: is a symbolic link to a directory"):
        await local_storage.read("view")
    with pytest.raises(SymlinkRefused, match="passes through view, which is a symbolic link to a directory"):
        await local_storage.read("view/a.png")
    with pytest.raises(SymlinkRefused):
        await local_storage.write("view/b.png", b"y")
    assert sorted(os.listdir(local_root / "real")) == ["a.png"]


async def test_cycles_end(local_storage: Storage, local_root: Path) -> None:
    """A directory link back to an ancestor is one refused object, and links that point at each other
    lead to no file (like a dangling link): the listing ends and reading says not found."""
    await local_storage.write("sub/a.png", b"x")
    os.symlink(local_root, local_root / "sub" / "up")
    os.symlink("ping", local_root / "pong")
    os.symlink("pong", local_root / "ping")

    keys = await within(listed_keys(local_storage), 10, "the listing did not end")

    assert keys == ["sub/a.png", "sub/up"]
    with pytest.raises(SymlinkRefused, match="symbolic link to a directory"):
        await local_storage.head("sub/up")
    with pytest.raises(ObjectNotFound):
        await local_storage.read("ping")
    with pytest.raises(ObjectNotFound):
        await local_storage.head("pong")


# ---- the root itself ----


async def test_a_root_that_is_a_link_works(tmp_path: Path) -> None:
    """A root given as a link (`/data/in -> /mnt/disk/in`) is resolved once when the storage is made;
    files and links inside it, even links written through the root's link path, are inside."""
    real = tmp_path / "disk" / "in"
    real.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    os.symlink(real, tmp_path / "data" / "in")
    linked = tmp_path / "data" / "in"
    # As built by hand, not by Location.parse (which resolves too): the storage resolves by itself.
    storage = LocalStorage(Location("file", "", str(linked)))
    await storage.write("dir/a.png", b"x")
    os.symlink(linked / "dir" / "a.png", real / "alias.png")

    assert await listed_keys(storage) == ["alias.png", "dir/a.png"]
    assert (await storage.read("alias.png")).data == b"x"
    await storage.delete("dir/a.png")
    assert sorted(os.listdir(real)) == [".ocrbatch", "alias.png"]


# ---- the worker ----


async def run_batch_with_a_link_outside(
    make_worker_setup: MakeSetup, tmp_path: Path, outside: Path
) -> tuple[dict[str, Any], list[str], int]:
    """One pass over local inputs `a.png`, `b.png` and `evil.png` (a link out of the input root):
    the link's failure record, the result keys, and the OCR calls made."""
    setup = await make_worker_setup()
    inputs, results = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(png(120, 100))
    (inputs / "b.png").write_bytes(png(130, 100))
    (outside / "secret.png").write_bytes(png(140, 100))
    os.symlink(outside / "secret.png", inputs / "evil.png")
    settings = setup.settings()
    storage = settings.storage.model_copy(update={"control_path": str(tmp_path / "control")})
    settings = settings.model_copy(update={"storage": storage})
    await create_batch(setup, settings, input_path=str(inputs), result_path=str(results))

    assert await within(run_worker(settings, once=True), 30, "the pass did not end") == 0

    result_storage = LocalStorage(Location.parse(str(results)))
    record = await read_json(result_storage, "_failed/evil.png.json")
    return record, await listed_keys(result_storage), setup.emulator.stats()["calls"]


async def test_worker_records_a_link_outside_as_that_input_s_failure(
    make_worker_setup: MakeSetup, tmp_path: Path, outside: Path
) -> None:
    """A batch on local directories with a link out of the input root: that input gets a failure
    record naming the reason, the other inputs get results, and the file outside is never sent."""
    record, result_keys, calls = await run_batch_with_a_link_outside(make_worker_setup, tmp_path, outside)

    assert LEADS_OUTSIDE in record["message"]
    assert {"a.png.json", "b.png.json"} <= set(result_keys)
    assert "evil.png.json" not in result_keys
    assert calls == 2


async def test_worker_failure_record_for_a_link_outside_is_final(
    make_worker_setup: MakeSetup, tmp_path: Path, outside: Path
) -> None:
    """The failure record of a link out of the input root is final: retrying cannot help."""
    record, _, _ = await run_batch_with_a_link_outside(make_worker_setup, tmp_path, outside)

    assert record["retryable"] is False
