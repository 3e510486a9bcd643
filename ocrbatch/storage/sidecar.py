"""What the local backend keeps beside a file in `.ocrbatch/meta/`: what S3 keeps with an object
(its MD5 etag, content type and user metadata), valid only for the exact file it was written for,
so a file replaced from outside is never paired with stale metadata."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

_SIDECAR_VERSION = 1
_SIDECAR_FIELDS: dict[str, Any] = {
    "etag": str,
    "ino": int,
    "size": int,
    "mtime_ns": int,
    "content_type": (str, type(None)),
    "metadata": dict,
}


@dataclass(frozen=True)
class Sidecar:
    """What ocrbatch recorded when it wrote a file, valid only for that exact file."""

    etag: str
    ino: int
    size: int
    mtime_ns: int
    content_type: str | None
    metadata: dict[str, str]

    def describes(self, st: os.stat_result) -> bool:
        """True when `st` is the file this sidecar was written for (a rename keeps all three)."""
        return (self.ino, self.size, self.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)

    def to_json(self) -> bytes:
        return json.dumps({"version": _SIDECAR_VERSION, **asdict(self)}, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, text: bytes) -> Sidecar | None:
        """The sidecar in `text`, or None when this version did not write it (treated as absent)."""
        try:
            doc = json.loads(text)
            fields = {name: doc[name] for name in _SIDECAR_FIELDS}
        except (ValueError, KeyError, TypeError):
            return None
        valid = doc.get("version") == _SIDECAR_VERSION and all(
            isinstance(fields[name], kind) for name, kind in _SIDECAR_FIELDS.items()
        )
        if not valid or not all(isinstance(value, str) for value in fields["metadata"].values()):
            return None
        return cls(**fields)


def stat_etag(st: os.stat_result) -> str:
    """The etag of a file ocrbatch did not write: changes whenever its mtime or size does."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def file_mtime(st: os.stat_result) -> datetime:
    """The file's mtime as an aware UTC datetime, to the nanosecond the filesystem gives."""
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)
