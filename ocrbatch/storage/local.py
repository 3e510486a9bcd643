"""`Storage` on a local directory that behaves like an S3 bucket.

Keys map to files under the root (`a/b.png` is `<root>/a/b.png`); directories are implicit, like
S3 prefixes, and are removed again when a delete leaves them empty. ocrbatch keeps its own state
in `<root>/.ocrbatch/`: `tmp/` for files being written, `meta/<key>.json` sidecars and a `lock`
file. A sidecar holds what S3 keeps with an object (MD5 etag, metadata, content type) plus the
stat signature of the file it describes, so a file replaced from outside is never paired with
stale metadata: such files, and files put here by hand, get an etag made of mtime and size.
Writes go to a temp file renamed into place, so readers never see partial bytes; preconditions
are checked under an exclusive `flock` on the lock file, which also orders other processes.
Blocking work runs in a thread, one call per operation or listing page.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager, suppress
from itertools import islice
from typing import Any

from ocrbatch.errors import ObjectNotFound, PreconditionFailed, StorageError, UnsupportedOperation
from ocrbatch.locations import Location
from ocrbatch.storage.base import (
    DEFAULT_PAGE_SIZE,
    ObjectInfo,
    Storage,
    StoredObject,
    check_key,
    check_metadata,
)
from ocrbatch.storage.sidecar import Sidecar, file_mtime, stat_etag
from ocrbatch.storage.walk import SORT_RUN_ENTRIES, walk_files

PRIVATE_DIR = ".ocrbatch"
STALE_TEMP_FILE_S = 3600.0  # a temp file this old was left by a write a crash cut short
# Same default as the S3 backend, so an object written without a type reads back alike.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def _fsync_dir(path: str) -> None:
    """Make a rename in `path` durable, where the filesystem lets directories be opened."""
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalStorage(Storage):
    """The files under one local directory, seen as objects."""

    def __init__(self, location: Location, *, sort_run_entries: int = SORT_RUN_ENTRIES) -> None:
        if location.is_s3:
            raise ValueError(f"{location} is not a local directory")
        self.location = location
        self._sort_run_entries = sort_run_entries
        self._swept = False
        self._root = location.prefix
        self._private_dir = os.path.join(self._root, PRIVATE_DIR)
        self._tmp_dir = os.path.join(self._private_dir, "tmp")
        self._meta_dir = os.path.join(self._private_dir, "meta")
        self._lock_path = os.path.join(self._private_dir, "lock")

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
        return await asyncio.to_thread(self._read_sync, key, self._path(key))

    async def head(self, key: str) -> ObjectInfo:
        return await asyncio.to_thread(self._head_sync, key, self._path(key))

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
        path = self._path(key)
        metadata = dict(metadata or {})
        check_metadata(metadata)
        if if_match is not None and if_none_match:
            raise ValueError("pass if_match or if_none_match, not both")
        sidecar_part = {"content_type": content_type or DEFAULT_CONTENT_TYPE, "metadata": metadata}
        return await asyncio.to_thread(
            self._write_sync, key, path, data, sidecar_part, if_match=if_match, if_none_match=if_none_match
        )

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        await asyncio.to_thread(self._delete_sync, key, self._path(key), if_match)

    async def presigned_get_url(self, key: str, *, expires_s: int) -> str:
        check_key(key)
        raise UnsupportedOperation(
            "presigned URLs need S3 storage; use transfer mode data or multipart",
            location=str(self.location),
            key=key,
        )

    # ---- paths, errors, sidecars ----

    def _path(self, key: str) -> str:
        check_key(key)
        if key.split("/", 1)[0] == PRIVATE_DIR:
            raise ValueError(f"object key {key!r} is inside {PRIVATE_DIR}/, which ocrbatch reserves")
        if "\0" in key:
            raise ValueError(f"object key {key!r} must not contain NUL")
        return os.path.join(self._root, *key.split("/"))

    def _meta_path(self, key: str) -> str:
        return os.path.join(self._meta_dir, *key.split("/")) + ".json"

    def _error(self, key: str | None, reason: str, kind: type[StorageError] = StorageError) -> StorageError:
        return kind(reason, location=str(self.location), key=key)

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

    def _info(self, key: str, st: os.stat_result, *, details: bool) -> ObjectInfo:
        """The object's info, from its sidecar when that describes exactly the file behind `st`."""
        sidecar = None
        with suppress(OSError), open(self._meta_path(key), "rb") as file:
            sidecar = Sidecar.from_json(file.read())
        if sidecar is not None and not sidecar.describes(st):
            sidecar = None
        etag = sidecar.etag if sidecar else stat_etag(st)
        info = ObjectInfo(key=key, size=st.st_size, etag=etag, last_modified=file_mtime(st))
        if not details or sidecar is None:
            return info
        return ObjectInfo(
            key, st.st_size, etag, info.last_modified, dict(sidecar.metadata), sidecar.content_type
        )

    def _current_etag(self, key: str, path: str) -> str | None:
        """The etag of the object at `path` now, or None when there is none."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._info(key, st, details=False).etag if stat.S_ISREG(st.st_mode) else None

    # ---- listing ----

    def _next_page(self, walker: Iterator[ObjectInfo], page_size: int) -> list[ObjectInfo]:
        with self._os_errors(None):
            return list(islice(walker, page_size))

    def _walk(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """The objects under `prefix` after `start_after`, in key order (`walk.py`), without their
        metadata (listings on S3 cannot see it either)."""
        if root_error := self._root_error():
            raise root_error
        for key, st in walk_files(
            self._root, prefix, start_after, hidden=PRIVATE_DIR, run_entries=self._sort_run_entries
        ):
            yield self._info(key, st, details=False)

    # ---- read, head ----

    def _read_sync(self, key: str, path: str) -> StoredObject:
        with self._os_errors(key):
            try:
                # O_NONBLOCK: opening a FIFO someone left here must not hang the reader.
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
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

    def _head_sync(self, key: str, path: str) -> ObjectInfo:
        with self._os_errors(key):
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise self._not_found(key) from None
            if not stat.S_ISREG(st.st_mode):
                raise self._not_found(key)
            return self._info(key, st, details=True)

    # ---- write, delete ----

    def _ensure_private_dirs(self) -> None:
        """Create `.ocrbatch/` and its dirs inside the existing root (never the root itself); the
        first time, remove temp files that writes cut short by a crash left behind."""
        for path in (self._private_dir, self._tmp_dir, self._meta_dir):
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            except (FileNotFoundError, NotADirectoryError):
                raise self._root_error() or self._error(None, f"cannot create {PRIVATE_DIR}/") from None
        if not self._swept:
            self._swept = True
            self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        """Temp files older than `STALE_TEMP_FILE_S` belong to no write still under way."""
        cutoff_s = time.time() - STALE_TEMP_FILE_S
        with suppress(OSError), os.scandir(self._tmp_dir) as scan:
            for entry in scan:
                with suppress(OSError):
                    if entry.name.endswith(".tmp") and entry.stat().st_mtime < cutoff_s:
                        os.unlink(entry.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive lock that orders every write and delete in this directory."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _temp_file(self, data: bytes, temp_paths: list[str]) -> os.stat_result:
        """Write `data` durably to a new temp file (added to `temp_paths`); return its stat."""
        path = os.path.join(self._tmp_dir, f"{secrets.token_hex(12)}.tmp")
        # Mode 0o666 so the umask decides, as for any file a user creates.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        temp_paths.append(path)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(fd)
            return os.fstat(fd)  # a rename keeps inode, size and mtime: the sidecar's signature

    def _check_precondition(self, key: str, path: str, if_match: str | None, if_none_match: bool) -> None:
        current = self._current_etag(key, path)
        if if_none_match and current is not None:
            raise self._error(key, "object already exists", PreconditionFailed)
        if if_match is not None and current != if_match:
            reason = "object does not exist" if current is None else "object changed"
            raise self._error(key, f"{reason} (if-match)", PreconditionFailed)

    def _write_sync(
        self,
        key: str,
        path: str,
        data: bytes,
        sidecar_part: dict[str, Any],
        *,
        if_match: str | None,
        if_none_match: bool,
    ) -> ObjectInfo:
        temp_paths: list[str] = []
        meta_path = self._meta_path(key)
        with self._os_errors(key):
            self._ensure_private_dirs()
            try:
                st = self._temp_file(data, temp_paths)
                etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
                sidecar = Sidecar(etag, st.st_ino, st.st_size, st.st_mtime_ns, **sidecar_part)
                self._temp_file(sidecar.to_json(), temp_paths)
                data_temp, meta_temp = temp_paths
                with self._locked():
                    self._check_precondition(key, path, if_match, if_none_match)
                    # Under the lock: a concurrent delete prunes empty directories under it too.
                    try:
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                    except (FileExistsError, NotADirectoryError):
                        raise self._error(key, "a file has the name of one of its directories") from None
                    os.makedirs(os.path.dirname(meta_path), exist_ok=True)
                    # Sidecar first: until the data lands it describes no file, so it is ignored.
                    os.replace(meta_temp, meta_path)
                    try:
                        os.replace(data_temp, path)
                    except OSError:
                        with suppress(OSError):
                            os.unlink(meta_path)
                        raise
                    temp_paths.clear()
            finally:
                for temp in temp_paths:
                    with suppress(OSError):
                        os.unlink(temp)
            _fsync_dir(os.path.dirname(path))
        return ObjectInfo(key, len(data), etag, file_mtime(st), sidecar.metadata, sidecar.content_type)

    def _delete_sync(self, key: str, path: str, if_match: str | None) -> None:
        meta_path = self._meta_path(key)
        with self._os_errors(key):
            self._ensure_private_dirs()
            with self._locked():
                if if_match is not None:
                    self._check_precondition(key, path, if_match, False)
                if self._current_etag(key, path) is not None:
                    os.unlink(path)
                with suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(meta_path)
                self._prune_empty_dirs(os.path.dirname(path), self._root)
                self._prune_empty_dirs(os.path.dirname(meta_path), self._meta_dir)

    @staticmethod
    def _prune_empty_dirs(path: str, stop: str) -> None:
        """Remove `path` and its parents while they are empty, up to but not including `stop`."""
        while path.startswith(stop + os.sep):
            try:
                os.rmdir(path)
            except OSError:
                return  # not empty (or gone): its parents are not empty either
            path = os.path.dirname(path)
