"""`Storage` on a local directory that behaves like an S3 bucket.

Keys map to files under the root (`a/b.png` is `<root>/a/b.png`); directories are implicit, like
S3 prefixes, and are removed again when a delete leaves them empty. ocrbatch keeps its own state
in `<root>/.ocrbatch/`: `tmp/` for files being written, `meta/<key>.json` sidecars and a `lock`
file. A sidecar holds what S3 keeps with an object (MD5 etag, metadata, content type) plus the
stat signature of the file it describes, so a file replaced from outside is never paired with
stale metadata: such files, and files put here by hand, get an etag made of mtime and size.
Writes go to a temp file renamed into place, so readers never see partial bytes; preconditions
are checked under an exclusive `flock` on the lock file, which also orders other processes
(`local_private.py` keeps `.ocrbatch/`: its temp files and its lock).
Blocking work runs in a thread, one call per operation or listing page.

Nothing outside the root is ever read or written. The root is resolved once, when the storage is
made (it may itself be a symbolic link), and every operation below it walks the key's directories
by descriptor, never following a link (`local_root.py`). A key naming a symbolic link to a regular file
inside the root is that file; any other link (one leading outside the root or into `.ocrbatch/`,
or to a directory, which is never entered, so listings cannot loop or repeat) is still listed, by
its own stat, but reading it raises `SymlinkRefused` saying why: it is never silently skipped.
Writes and deletes act on a key's own link, never on its target.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from itertools import islice
from typing import Any

from ocrbatch.errors import (
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    SymlinkRefused,
    UnsupportedOperation,
)
from ocrbatch.locations import Location
from ocrbatch.storage.base import (
    DEFAULT_PAGE_SIZE,
    ObjectInfo,
    Storage,
    StoredObject,
    check_key,
    check_metadata,
)
from ocrbatch.storage.local_private import PrivateDir, fsync_dir
from ocrbatch.storage.local_root import PRIVATE_DIR, READ_FLAGS, LocalRoot
from ocrbatch.storage.sidecar import Sidecar, file_mtime, stat_etag
from ocrbatch.storage.walk import SORT_RUN_ENTRIES, walk_files

SIDECAR_READ_BYTES = 16 * 1024  # a sidecar is read in one call, as a rule
# Same default as the S3 backend, so an object written without a type reads back alike.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class LocalStorage(Storage):
    """The files under one local directory, seen as objects."""

    listed_metadata = True  # a listing reads each sidecar for the etag: its metadata comes along

    def __init__(
        self, location: Location, *, sort_run_entries: int = SORT_RUN_ENTRIES, private: bool = False
    ) -> None:
        """`private`: files only their owner can read (0600), for the control path, whose batch
        documents hold webhook secrets; else the umask decides, as for any file a user creates."""
        if location.is_s3:
            raise ValueError(f"{location} is not a local directory")
        self.location = location
        self._sort_run_entries = sort_run_entries
        self._tree = LocalRoot(location)  # resolved once: the root may be a symlink
        file_mode = 0o600 if private else 0o666
        self._private = PrivateDir(self._tree, file_mode=file_mode, root_error=self._root_error)
        self._root = self._tree.path
        self._meta_dir = os.path.join(self._tree.private_dir, "meta")

    async def list_pages(
        self, prefix: str = "", *, start_after: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[list[ObjectInfo]]:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        walker = self._walk(prefix, start_after)
        while True:
            page = await asyncio.to_thread(self._next_page, walker, page_size)
            if page:
                yield page
            if len(page) < page_size:
                return

    async def read(self, key: str) -> StoredObject:
        self._tree.path_of(key)
        return await asyncio.to_thread(self._read_sync, key)

    async def head(self, key: str) -> ObjectInfo:
        self._tree.path_of(key)
        return await asyncio.to_thread(self._head_sync, key)

    async def write(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        self._tree.path_of(key)
        metadata = dict(metadata or {})
        check_metadata(metadata)
        if if_match is not None and if_none_match:
            raise ValueError("pass if_match or if_none_match, not both")
        sidecar_part = {"content_type": content_type or DEFAULT_CONTENT_TYPE, "metadata": metadata}
        return await asyncio.to_thread(
            self._write_sync, key, data, sidecar_part, if_match=if_match, if_none_match=if_none_match
        )

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._tree.path_of(key)
        await asyncio.to_thread(self._delete_sync, key, if_match)

    async def presigned_get_url(self, key: str, *, expires_s: int) -> str:
        check_key(key)
        raise UnsupportedOperation(
            "presigned URLs need S3 storage; use transfer mode data or multipart",
            location=str(self.location),
            key=key,
        )

    # ---- errors, sidecars ----

    def _meta_path(self, key: str) -> str:
        return f"{self._meta_dir}/{key}.json"  # keys are checked: no empty, "." or ".." segment

    def _error(self, key: str | None, reason: str, kind: type[StorageError] = StorageError) -> StorageError:
        return self._tree.error(key, reason, kind)

    def _root_error(self) -> StorageError | None:
        """The error to raise when the root itself is unusable, else None."""
        try:
            st = os.stat(self._root)
        except FileNotFoundError:
            return self._error(None, "directory does not exist")
        except OSError as exc:
            return self._os_error(None, exc)
        return None if stat.S_ISDIR(st.st_mode) else self._error(None, "not a directory")

    def _not_found(self, key: str) -> StorageError:
        """ObjectNotFound, unless the whole directory is missing (an error, as a missing bucket is)."""
        return self._root_error() or self._error(key, "object does not exist", ObjectNotFound)

    def _os_error(self, key: str | None, exc: OSError) -> StorageError:
        """Name the failure by its errno text only: paths inside `.ocrbatch/` would be noise."""
        if isinstance(exc, PermissionError):
            return self._error(key, "permission denied")
        if isinstance(exc, IsADirectoryError):
            return self._error(key, "a directory has this key's name")
        return self._error(key, (exc.strerror or type(exc).__name__).lower())

    @contextmanager
    def _os_errors(self, key: str | None) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._os_error(key, exc) from exc

    def _info(self, key: str, st: os.stat_result, *, details: bool, sidecars: bool = True) -> ObjectInfo:
        """The object's info, from its sidecar when that describes exactly the file behind `st`
        (none is looked for when the caller knows `.ocrbatch/meta/` does not exist: not `sidecars`)."""
        sidecar = None
        if sidecars:
            with suppress(OSError):
                sidecar = Sidecar.from_json(_read_small(self._meta_path(key)))
        if sidecar is not None and not sidecar.describes(st):
            sidecar = None
        if sidecar is None:
            return ObjectInfo(key=key, size=st.st_size, etag=stat_etag(st), last_modified=file_mtime(st))
        if not details:
            return ObjectInfo(key=key, size=st.st_size, etag=sidecar.etag, last_modified=file_mtime(st))
        return ObjectInfo(
            key, st.st_size, sidecar.etag, file_mtime(st), dict(sidecar.metadata), sidecar.content_type
        )

    def _current_etag(self, key: str) -> str | None:
        """The etag a listing would show for `key` now, or None when it would show none."""
        try:
            st = self._tree.stat_at(key, key.split("/"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        info = self._listed(key, st)
        return info.etag if info is not None else None

    def _listed(
        self, key: str, st: os.stat_result, *, details: bool = False, sidecars: bool = True
    ) -> ObjectInfo | None:
        """What a listing shows for `key`, whose `lstat` is `st`: a file as itself, a followed link
        as its target, a refused link by its own stat (reading it says why), else nothing (a
        special file, a link to one or to nothing)."""
        if stat.S_ISLNK(st.st_mode):
            try:
                segments = self._tree.followed(key)
            except SymlinkRefused:
                return ObjectInfo(key, st.st_size, stat_etag(st), file_mtime(st))
            try:
                st = os.stat(os.path.join(self._root, *segments))
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return None  # a loop of links leads to no file
                raise
        return self._info(key, st, details=details, sidecars=sidecars) if stat.S_ISREG(st.st_mode) else None

    # ---- listing ----

    def _next_page(self, walker: Iterator[ObjectInfo], page_size: int) -> list[ObjectInfo]:
        with self._os_errors(None):
            return list(islice(walker, page_size))

    def _walk(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """The objects under `prefix` after `start_after`, in key order (`walk.py`), with the
        metadata of their sidecars (`listed_metadata`)."""
        if root_error := self._root_error():
            raise root_error
        # A directory ocrbatch never wrote to (the inputs, as a rule) has no sidecars to look for;
        # checked again every page, in case a write makes them meanwhile.
        sidecars = os.path.isdir(self._meta_dir)
        for count, (key, st) in enumerate(
            walk_files(
                self._root, prefix, start_after, hidden=PRIVATE_DIR, run_entries=self._sort_run_entries
            )
        ):
            if not sidecars and count % DEFAULT_PAGE_SIZE == 0:
                sidecars = os.path.isdir(self._meta_dir)
            if (info := self._listed(key, st, details=True, sidecars=sidecars)) is not None:
                yield info

    # ---- read, head ----

    def _open_object(self, key: str) -> int:
        """A descriptor on what `key` names, or on its own link's target when that is followed."""
        try:
            return self._tree.open_at(key, key.split("/"))
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        try:
            return self._tree.open_at(key, self._tree.followed(key))
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise self._not_found(key) from None  # a loop of links, or made a link meanwhile

    def _stat_object(self, key: str) -> os.stat_result:
        """The stat of what `key` names, or of its own link's target when that is followed."""
        st = self._tree.stat_at(key, key.split("/"))
        return self._tree.stat_at(key, self._tree.followed(key)) if stat.S_ISLNK(st.st_mode) else st

    def _read_sync(self, key: str) -> StoredObject:
        with self._os_errors(key):
            try:
                fd = self._open_object(key)
            except (FileNotFoundError, NotADirectoryError):
                raise self._not_found(key) from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise self._not_found(key)
                with os.fdopen(fd, "rb", closefd=False) as file:
                    data = file.read()
                st = os.fstat(fd)  # after reading: the sidecar must describe these bytes
            finally:
                os.close(fd)
            return StoredObject(info=self._info(key, st, details=True), data=data)

    def _head_sync(self, key: str) -> ObjectInfo:
        with self._os_errors(key):
            try:
                st = self._stat_object(key)
            except (FileNotFoundError, NotADirectoryError):
                raise self._not_found(key) from None
            if not stat.S_ISREG(st.st_mode):
                raise self._not_found(key)
            return self._info(key, st, details=True)

    # ---- write, delete ----

    def _check_precondition(
        self, key: str, current: str | None, if_match: str | None, if_none_match: bool
    ) -> None:
        if if_none_match and current is not None:
            raise self._error(key, "object already exists", PreconditionFailed)
        if if_match is not None and current != if_match:
            reason = "object does not exist" if current is None else "object changed"
            raise self._error(key, f"{reason} (if-match)", PreconditionFailed)

    def _write_sync(
        self,
        key: str,
        data: bytes,
        sidecar_part: dict[str, Any],
        *,
        if_match: str | None,
        if_none_match: bool,
    ) -> ObjectInfo:
        *dirs, name = key.split("/")
        temp_names: list[str] = []
        with self._os_errors(key), self._private.tmp_dirs(key) as tmp_fds, ExitStack() as held:
            tmp_fd = tmp_fds[-1]
            try:
                st = self._private.temp_file(data, tmp_fd, temp_names)
                etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
                sidecar = Sidecar(etag, st.st_ino, st.st_size, st.st_mtime_ns, **sidecar_part)
                self._private.temp_file(sidecar.to_json(), tmp_fd, temp_names)
                data_temp, meta_temp = temp_names
                with self._private.locked():
                    self._check_precondition(key, self._current_etag(key), if_match, if_none_match)
                    # Under the lock: a concurrent delete prunes empty directories under it too.
                    try:
                        dir_fd = held.enter_context(self._tree.dirs(key, dirs, create=True))[-1]
                    except NotADirectoryError:
                        raise self._error(key, "a file has the name of one of its directories") from None
                    meta_fd = held.enter_context(
                        self._tree.dirs(key, [PRIVATE_DIR, "meta", *dirs], create=True)
                    )[-1]
                    # Sidecar first: until the data lands it describes no file, so it is ignored.
                    os.replace(meta_temp, f"{name}.json", src_dir_fd=tmp_fd, dst_dir_fd=meta_fd)
                    try:  # a rename replaces a link at `name`, never writes through it
                        os.replace(data_temp, name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd)
                    except OSError:
                        with suppress(OSError):
                            os.unlink(f"{name}.json", dir_fd=meta_fd)
                        raise
                    temp_names.clear()
            finally:
                for temp in temp_names:
                    with suppress(OSError):
                        os.unlink(temp, dir_fd=tmp_fd)
            fsync_dir(dir_fd)
        return ObjectInfo(key, len(data), etag, file_mtime(st), sidecar.metadata, sidecar.content_type)

    def _delete_sync(self, key: str, if_match: str | None) -> None:
        *dirs, name = key.split("/")
        with self._os_errors(key), self._private.locked():
            current = self._current_etag(key)
            if if_match is not None:
                self._check_precondition(key, current, if_match, False)
            # The key's own link, if it is one, is removed; its target never is.
            self._remove(key, dirs, name if current is not None else None, keep=0)
            self._remove(key, [PRIVATE_DIR, "meta", *dirs], f"{name}.json", keep=2)

    def _remove(self, key: str, dirs: list[str], name: str | None, *, keep: int) -> None:
        """Unlink `name` (if given) from the directory at `dirs`, then remove the directories of
        `dirs` that this leaves empty, deepest first, keeping the first `keep` of them."""
        try:
            with self._tree.dirs(key, dirs) as fds:
                if name is not None:
                    with suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fds[-1])
                for depth in range(len(dirs) - 1, keep - 1, -1):
                    try:
                        os.rmdir(dirs[depth], dir_fd=fds[depth])  # fds[depth] is its parent
                    except OSError:
                        return  # not empty (or gone): its parents are not empty either
        except (FileNotFoundError, NotADirectoryError):
            return  # no such directory: nothing to remove


def _read_small(path: str) -> bytes:
    """The bytes of a small file at `path` (a sidecar), not following a final symbolic link."""
    fd = os.open(path, READ_FLAGS)
    try:
        chunks = [os.read(fd, SIDECAR_READ_BYTES)]
        while len(chunks[-1]) == SIDECAR_READ_BYTES:
            chunks.append(os.read(fd, SIDECAR_READ_BYTES))
    finally:
        os.close(fd)
    return b"".join(chunks)
