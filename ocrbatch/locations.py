"""Where inputs, results and control documents live: `s3://bucket/prefix` or a local directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# S3 bucket naming rules (the strict, DNS-compatible form every S3-compatible store accepts).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, order=True)
class Location:
    """A parsed location.

    For S3, `prefix` is the key prefix inside `bucket`: empty or ending in "/". For a local
    directory, `bucket` is empty and `prefix` is the absolute, normalised directory path.
    """

    scheme: Literal["s3", "file"]
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str, *, base_dir: Path | None = None) -> Location:
        """Parse `s3://bucket[/prefix]` or a directory path (relative paths use `base_dir`/cwd).

        Raises ValueError with the reason when the text is not a usable location.
        """
        text = text.strip()
        if not text:
            raise ValueError("must not be empty")
        if text.startswith("s3://"):
            bucket, _, prefix = text[len("s3://") :].partition("/")
            if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
                raise ValueError(
                    f"S3 bucket name {bucket!r} is invalid: 3-63 lowercase letters, digits, '.' or '-'"
                )
            prefix = prefix.strip("/")
            if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
                raise ValueError("S3 prefix must not contain empty, '.' or '..' segments")
            return cls("s3", bucket, f"{prefix}/" if prefix else "")
        if text.startswith("file://"):
            text = text[len("file://") :]
        elif _SCHEME_RE.match(text):
            raise ValueError("must be s3://bucket/prefix or a local directory path")
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return cls("file", "", os.path.normpath(path.resolve()))

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    def contains(self, other: Location) -> bool:
        """True when `other` is this location or lies inside it."""
        if self.scheme != other.scheme or self.bucket != other.bucket:
            return False
        if self.is_s3:
            return other.prefix.startswith(self.prefix)
        return Path(other.prefix).is_relative_to(self.prefix)

    def overlaps(self, other: Location) -> bool:
        """True when either location lies inside the other."""
        return self.contains(other) or other.contains(self)

    def join(self, key: str) -> str:
        """The location of object `key` (relative to this location) as a string."""
        return f"{self}{key}" if self.is_s3 else f"{self}/{key}".replace("//", "/")

    def __str__(self) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self.prefix}"
        return self.prefix


def masked_url(url: str) -> str:
    """`url` as it may be shown (API, CLI, statuses, logs): credentials in its user part replaced by
    `***` (`https://***@hooks.example/…`). The stored URL keeps them: deliveries need them."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"
