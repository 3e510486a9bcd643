"""The files under a local directory in S3's key order (UTF-8 bytes of the full key), read one
directory at a time in flat memory: a directory of more names than fit a sorting run is sorted in
runs spilled to temporary files and merged."""

from __future__ import annotations

import heapq
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from typing import IO

SORT_RUN_ENTRIES = 10_000  # names of one directory sorted in memory; more are merged from runs
SORT_READ_BYTES = 16 * 1024


def walk_files(
    root: str, prefix: str, start_after: str | None, *, hidden: str, run_entries: int = SORT_RUN_ENTRIES
) -> Iterator[tuple[str, os.stat_result]]:
    """The key and `lstat` of every regular file and symbolic link under `root` whose key starts
    with `prefix` and sorts after `start_after`, in S3's key order, reading one directory at a time.

    No symbolic link is followed, so the walk never leaves `root` and never loops: links are
    yielded as links, for the caller to judge, and a prefix naming a directory through a link
    holds no keys. The walk starts in the deepest directory the prefix names and filters its
    entries by the rest of the prefix. Subtrees sorting entirely before `start_after` are never
    read. The directory `hidden` at the root is not part of the key space.
    """
    dir_key, _, name_prefix = prefix.rpartition("/")
    segments = dir_key.split("/") if dir_key else []
    if any(seg in ("", ".", "..") or "\0" in seg for seg in segments) or segments[:1] == [hidden]:
        return  # no key can lie under such a prefix
    after = start_after.encode() if start_after is not None else None
    start = os.path.join(root, *segments)
    if segments and os.path.realpath(start) != os.path.join(os.path.realpath(root), *segments):
        return  # a directory of the prefix is a symbolic link, which the walk never enters
    base = dir_key + "/" if dir_key else ""
    stack = [(base, start, iter(_entries(start, name_prefix, hidden if not segments else None, run_entries)))]
    while stack:
        dir_key, dir_path, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name, is_dir = entry
        key, path = dir_key + name, os.path.join(dir_path, name)
        if is_dir:
            sub = (key + "/").encode()
            if after is None or sub > after or after.startswith(sub):
                stack.append((key + "/", path, iter(_entries(path, "", None, run_entries))))
            continue
        if after is not None and key.encode() <= after:
            continue
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # deleted since its directory was read
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            yield key, st


def _entries(path: str, name_prefix: str, hidden: str | None, run_entries: int) -> Iterator[tuple[str, bool]]:
    """The directory's (name, is_dir) entries in key order; none when it is gone.

    A symbolic link is an entry like a file, whatever it points to: directories are entered only
    when they are real, so a cycle cannot form.
    Names that are not UTF-8 (os gives them with surrogates) cannot be keys and are skipped.
    A directory of more than `run_entries` names is sorted in runs spilled to temporary
    files and merged, so memory stays flat however many files one directory holds.
    """
    runs: list[IO[bytes]] = []
    run: list[bytes] = []
    try:
        with os.scandir(path) as scan:
            for entry in scan:
                name = entry.name
                if name == hidden or not name.startswith(name_prefix):
                    continue
                with suppress(UnicodeEncodeError):
                    run.append(_sort_key((name, entry.is_dir(follow_symlinks=False))))
                if len(run) >= run_entries:
                    runs.append(_spill(sorted(run)))
                    run = []
    except (FileNotFoundError, NotADirectoryError):
        for spilled in runs:
            spilled.close()
        return
    run.sort()
    if not runs:
        yield from (_entry(key) for key in run)
        return
    runs.append(_spill(run))
    del run
    try:
        yield from (_entry(key) for key in heapq.merge(*(_records(spilled) for spilled in runs)))
    finally:
        for spilled in runs:
            spilled.close()


def _sort_key(entry: tuple[str, bool]) -> bytes:
    """Sibling order that yields S3's key order: directory `d` holds keys starting with `d/`."""
    name, is_dir = entry
    return (name + "/" if is_dir else name).encode()


def _entry(sort_key: bytes) -> tuple[str, bool]:
    """The (name, is_dir) entry back from its sort key (names cannot hold "/")."""
    text = sort_key.decode()
    return (text[:-1], True) if text.endswith("/") else (text, False)


def _spill(sorted_keys: list[bytes]) -> IO[bytes]:
    """A sorted run of sort keys in an anonymous temporary file, NUL-separated (names hold no NUL)."""
    spilled = tempfile.TemporaryFile()  # noqa: SIM115  # closed by the merge that reads it
    for key in sorted_keys:
        spilled.write(key + b"\0")
    spilled.seek(0)
    return spilled


def _records(spilled: IO[bytes]) -> Iterator[bytes]:
    pending = b""
    while block := spilled.read(SORT_READ_BYTES):
        *complete, pending = (pending + block).split(b"\0")
        yield from complete
