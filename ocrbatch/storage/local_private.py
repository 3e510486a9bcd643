"""ocrbatch's own directory in a local root, `.ocrbatch/`, as the local backend's writes use it:
`tmp/`, where an object is written durably before it is renamed into place (temp files a crash
left behind are swept once they are stale), `meta/` for the sidecars, and `lock`, whose
exclusive `flock` orders every write and delete, across processes too. The directories are made
once per storage, and again when someone removed them, rather than looked for at every write."""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress

from ocrbatch.errors import StorageError
from ocrbatch.storage.local_root import PRIVATE_DIR, LocalRoot

STALE_TEMP_FILE_S = 3600.0  # a temp file this old was left by a write a crash cut short


def fsync_dir(fd: int) -> None:
    """Make a rename into the directory open as `fd` durable, where the filesystem allows it."""
    with suppress(OSError):
        os.fsync(fd)


class PrivateDir:
    """`.ocrbatch/` under `tree`; `root_error` says why the root itself is unusable, if it is."""

    def __init__(
        self, tree: LocalRoot, *, file_mode: int, root_error: Callable[[], StorageError | None]
    ) -> None:
        self._tree = tree
        self._file_mode = file_mode
        self._root_error = root_error
        self._ready = False  # `tmp/` and `meta/` made
        self._swept = False

    def ready(self) -> None:
        """Make the directories unless this storage made them already."""
        if not self._ready:
            self.make()

    def make(self) -> None:
        """Create `.ocrbatch/` and its dirs inside the existing root (never the root itself); the
        first time, remove temp files that writes cut short by a crash left behind."""
        for sub in ("tmp", "meta"):
            try:
                with self._tree.dirs(None, [PRIVATE_DIR, sub], create=True):
                    pass
            except (FileNotFoundError, NotADirectoryError):
                raise self._root_error() or self._tree.error(None, f"cannot create {PRIVATE_DIR}/") from None
        self._ready = True
        if not self._swept:
            self._swept = True
            self._remove_stale_temp_files()

    @contextmanager
    def tmp_dirs(self, key: str) -> Iterator[list[int]]:
        """The descriptors of the root, `.ocrbatch/` and `tmp/`, made first when needed."""
        self.ready()
        with ExitStack() as stack:
            try:
                fds = stack.enter_context(self._tree.dirs(key, [PRIVATE_DIR, "tmp"]))
            except (FileNotFoundError, NotADirectoryError):  # removed since: made again
                self.make()
                fds = stack.enter_context(self._tree.dirs(key, [PRIVATE_DIR, "tmp"]))
            yield fds

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive lock that orders every write and delete in this directory."""
        self.ready()
        try:
            fd = self._open_lock()
        except (FileNotFoundError, NotADirectoryError):  # removed since: made again
            self.make()
            fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _open_lock(self) -> int:
        with self._tree.dirs(None, [PRIVATE_DIR]) as fds:
            return os.open(
                "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=fds[-1]
            )  # ours alone

    def temp_file(self, data: bytes, tmp_fd: int, temp_names: list[str]) -> os.stat_result:
        """Write `data` durably to a new temp file in `tmp_fd` (its name added to `temp_names`);
        return its stat."""
        name = f"{secrets.token_hex(12)}.tmp"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self._file_mode, dir_fd=tmp_fd)
        temp_names.append(name)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(fd)
            return os.fstat(fd)  # a rename keeps inode, size and mtime: the sidecar's signature

    def _remove_stale_temp_files(self) -> None:
        """Temp files older than `STALE_TEMP_FILE_S` belong to no write still under way."""
        cutoff_s = time.time() - STALE_TEMP_FILE_S
        with (
            suppress(OSError),
            self._tree.dirs(None, [PRIVATE_DIR, "tmp"]) as fds,
            os.scandir(fds[-1]) as scan,
        ):
            for entry in scan:
                with suppress(OSError):
                    if entry.name.endswith(".tmp") and entry.stat(follow_symlinks=False).st_mtime < cutoff_s:
                        os.unlink(entry.name, dir_fd=fds[-1])
