"""What a store can do, found out rather than assumed (SPEC §11).

Stores differ: NAVER Object Storage documents no ListObjectsV2 and no conditional PutObject
headers, AWS S3 and MinIO have both, and a local directory has what the local backend builds. Each
endpoint (one S3 endpoint, or the local file system) gets one `Endpoint`, shared by every storage
view on it, that records:
- `list_api`: "v2" or "v1" for S3 (found by the first listing when `[storage] list_api = "auto"`),
  "walk" for local directories;
- `conditional_writes`: whether create-only writes, if-match writes and if-match deletes are
  enforced, probed once with an object in a writable location, or stated by
  `[storage] conditional_writes`;
- `metadata`: whether user metadata is kept (when not, the S3 backend keeps it in sidecars).

`Endpoint.ensure_probed` writes a `probes/{random}.probe` object in a writable location and removes it again,
once per endpoint (the first conditional write probes where it writes, if start-up has not).
Conditional writes the store is not known to enforce are refused (`UnsupportedOperation`) rather
than sent to a store that would ignore them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from ocrbatch.errors import ObjectNotFound, PreconditionFailed, StorageError, UnsupportedOperation
from ocrbatch.storage.base import Storage

log = structlog.get_logger("ocrbatch.storage")
# On S3 under the private prefix that listings never show; local directories have no such prefix.
PROBE_PREFIX = {"s3": ".ocrbatch/probes/", "local": "probes/"}
_PROBE_VALUE = "ocrbatch 프로브 ✓"  # non-ASCII on purpose: metadata must survive encoding
_WRONG_ETAG = '"00000000000000000000000000000000"'

ListApi = Literal["v2", "v1", "walk"]
# Set in the probing task only: its own conditional writes are the question, not yet the answer.
_PROBING: ContextVar[bool] = ContextVar("ocrbatch_probing", default=False)


@dataclass
class Endpoint:
    """What one endpoint was found or configured to do; None: not known yet."""

    name: str  # "local" or scheme://host[:port]
    list_api: ListApi | None = None
    list_api_source: str = "probe"  # "probe" or "configured"
    create_only: bool | None = None
    if_match_write: bool | None = None
    if_match_delete: bool | None = None
    conditional_source: str = "probe"
    metadata: bool | None = None
    probed_in: str | None = None  # the location the probe object was written to
    conditional_setting: str = "auto"  # [storage] conditional_writes
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def configured(cls, name: str, *, list_api: str = "auto", conditional_writes: str = "auto") -> Endpoint:
        """An endpoint with what `[storage]` states filled in; the rest is probed."""
        endpoint = cls(name, conditional_setting=conditional_writes)
        if list_api in ("v1", "v2"):
            endpoint.list_api = "v1" if list_api == "v1" else "v2"
            endpoint.list_api_source = "configured"
        if conditional_writes != "auto":
            stated = conditional_writes == "yes"
            endpoint.create_only = endpoint.if_match_write = endpoint.if_match_delete = stated
            endpoint.conditional_source = "configured"
        return endpoint

    @property
    def conditional_writes(self) -> bool | None:
        """All three conditional operations enforced (None until probed or configured)."""
        found = (self.create_only, self.if_match_write, self.if_match_delete)
        if None in found:
            return None
        return all(found)

    @property
    def probed(self) -> bool:
        return self.conditional_writes is not None and self.metadata is not None

    def as_dict(self) -> dict[str, Any]:
        """For `config check`, /readyz and logs."""
        return {
            "endpoint": self.name,
            "list_api": self.list_api or "not yet listed",
            "list_api_source": self.list_api_source,
            "conditional_writes": self.conditional_writes,
            "create_only_writes": self.create_only,
            "if_match_writes": self.if_match_write,
            "if_match_deletes": self.if_match_delete,
            "conditional_writes_source": self.conditional_source,
            "user_metadata": self.metadata,
            "probed_in": self.probed_in,
        }

    async def ensure_probed(self, storage: Storage) -> None:
        """Probe in `storage` (writable) unless done already; concurrent callers wait for one probe."""
        if self.probed or _PROBING.get():
            return
        async with self._lock:
            if not self.probed:
                await probe(storage, self)

    def check_conditional(self, location: str, key: str) -> None:
        """Refuse a conditional write the store is not known to enforce (it might ignore it)."""
        if _PROBING.get():
            return
        if self.conditional_writes is not True:
            state = "not probed yet" if self.conditional_writes is None else "not enforced by this store"
            raise UnsupportedOperation(
                f"conditional writes are {state} ({self.name})", location=location, key=key
            )


async def probe(storage: Storage, endpoint: Endpoint) -> Endpoint:
    """Find out, in `storage` (a writable location), what `endpoint` does; fills it in and returns it.

    Conditional writes stated by `[storage] conditional_writes` are not probed. The probe object is
    removed afterwards, whatever happened.
    """
    key = f"{PROBE_PREFIX['s3' if storage.location.is_s3 else 'local']}{secrets.token_hex(8)}.probe"
    token = _PROBING.set(True)
    try:
        await storage.write(key, b"1", metadata={"probe": _PROBE_VALUE}, content_type="text/plain")
        endpoint.metadata = (await storage.head(key)).metadata.get("probe") == _PROBE_VALUE
        if endpoint.conditional_setting == "auto":
            endpoint.create_only = await _refused(storage.write(key, b"2", if_none_match=True))
            endpoint.if_match_write = await _refused(storage.write(key, b"3", if_match=_WRONG_ETAG))
            endpoint.if_match_delete = await _refused(storage.delete(key, if_match=_WRONG_ETAG))
        endpoint.probed_in = str(storage.location)
    finally:
        with contextlib.suppress(StorageError):
            await storage.delete(key)
        _PROBING.reset(token)
    log.info("storage.capabilities", **endpoint.as_dict())
    return endpoint


async def _refused(operation: Coroutine[Any, Any, Any]) -> bool:
    """True when the conditional operation was refused, as a store enforcing it must."""
    try:
        await operation
    except (PreconditionFailed, ObjectNotFound):
        return True
    return False
