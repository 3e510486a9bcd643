"""The root directory of a local storage, walked by descriptor: every operation below the root
opens a key's directories one at a time without following a symbolic link (`dirs`), so nothing
outside the root is read or written, not even through a link put in place meanwhile. A key's own
link is followed only to a non-directory inside the root (`followed`); any other link raises
`SymlinkRefused` saying why."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Final

from ocrbatch.errors import StorageError, SymlinkRefused
from ocrbatch.locations import Location
from ocrbatch.storage.base import check_key

PRIVATE_DIR: Final = ".ocrbatch"
# O_NOFOLLOW everywhere below the root: a link is judged by `dirs` or `followed`, never followed.
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
# O_NONBLOCK: opening a FIFO someone left here must not hang the reader.
READ_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
_NEVER_FOLLOWED: Final = "those are never followed"


def _within(path: str, base: str) -> bool:
    """True when the resolved `path` is the resolved `base` or lies inside it."""
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


class LocalRoot:
    """A local location's root, resolved once (it may itself be a symbolic link)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.path = os.path.realpath(location.prefix)
        self.private_dir = os.path.join(self.path, PRIVATE_DIR)

    def error(self, key: str | None, reason: str, kind: type[StorageError] = StorageError) -> StorageError:
        return kind(reason, location=str(self.location), key=key)

    def path_of(self, key: str) -> str:
        """The path that `key` names (for judging links: files are reached through `dirs`)."""
        check_key(key)
        if key.split("/", 1)[0] == PRIVATE_DIR:
            raise ValueError(f"object key {key!r} is inside {PRIVATE_DIR}/, which ocrbatch reserves")
        if "\0" in key:
            raise ValueError(f"object key {key!r} must not contain NUL")
        return os.path.join(self.path, *key.split("/"))

    @contextmanager
    def dirs(self, key: str | None, segments: Sequence[str], *, create: bool = False) -> Iterator[list[int]]:
        """Descriptors on the root and on each directory of `segments` below it, opened one at a
        time without following a symbolic link (one there raises `SymlinkRefused`); with `create`,
        missing directories are made. Acting on these descriptors, nothing can be redirected
        outside the root by a link, not even one put in place while the operation runs."""
        fds = [os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)]
        try:
            for depth, name in enumerate(segments):
                try:
                    fds.append(self._open_dir(key, segments, depth, fds[-1]))
                except FileNotFoundError:
                    if not create:
                        raise
                    # Made only when missing: most writes go to directories that exist already.
                    with suppress(FileExistsError):
                        os.mkdir(name, dir_fd=fds[-1])
                    fds.append(self._open_dir(key, segments, depth, fds[-1]))
            yield fds
        finally:
            for fd in fds:
                os.close(fd)

    def _open_dir(self, key: str | None, segments: Sequence[str], depth: int, parent_fd: int) -> int:
        """The directory `segments[depth]` in `parent_fd`, opened without following a link."""
        name = segments[depth]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:  # Linux answers a link with ENOTDIR, like a file
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                raise self._dir_link_error(key, segments[: depth + 1]) from None
            raise

    def open_at(self, key: str, segments: Sequence[str]) -> int:
        """Open the file at `segments` under the root for reading, following no link (ELOOP)."""
        with self.dirs(key, segments[:-1]) as fds:
            return os.open(segments[-1], READ_FLAGS, dir_fd=fds[-1])

    def stat_at(self, key: str, segments: Sequence[str]) -> os.stat_result:
        """The `lstat` of the file at `segments` under the root, following no link."""
        with self.dirs(key, segments[:-1]) as fds:
            return os.stat(segments[-1], dir_fd=fds[-1], follow_symlinks=False)

    def _link_target(self, key: str | None, path: str, what: str) -> str:
        """The resolved target of the link at `path` when it stays among the objects, else
        `SymlinkRefused` (nothing outside is even looked at). `what` starts the reason."""
        target = os.path.realpath(path)
        if _within(target, self.private_dir):
            reason = f"{what} a symbolic link into {PRIVATE_DIR}/, which ocrbatch reserves"
            raise self.error(key, reason, SymlinkRefused)
        if not _within(target, self.path):
            reason = f"{what} a symbolic link that leads outside the location's root (to {target})"
            raise self.error(key, reason, SymlinkRefused)
        return target

    def _dir_link_error(self, key: str | None, segments: Sequence[str]) -> StorageError:
        """The error for a key whose directory `segments` (under the root) is a symbolic link."""
        what = f"passes through {'/'.join(segments)}, which is"
        self._link_target(key, os.path.join(self.path, *segments), what)
        return self.error(key, f"{what} a symbolic link to a directory ({_NEVER_FOLLOWED})", SymlinkRefused)

    def followed(self, key: str) -> list[str]:
        """The segments under the root of the file that `key`'s own link leads to, when it may be
        followed: to a non-directory inside the root. Else `SymlinkRefused`."""
        target = self._link_target(key, self.path_of(key), "is")
        if os.path.isdir(target):
            raise self.error(key, f"is a symbolic link to a directory ({_NEVER_FOLLOWED})", SymlinkRefused)
        return os.path.relpath(target, self.path).split(os.sep)
