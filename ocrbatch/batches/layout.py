"""What ocrbatch writes in a batch's result location, and where: every key is built, and read
back, here.

For input key K: its result is `K` + the file format's suffix (a pdf batch's `K.pdf` beside its
`K.json`), its failure record
`_failed/K.json` (K's natural names). `_report.json` holds the batch's figures, `_outbox/` its
webhook outbox (whose inner layout is `webhooks.outbox`'s). An input whose own result or record
would land on these names, or under `_keys/`, is reserved: it is skipped, never processed.

Any legal key has a result. A key whose natural names no result storage could hold
(`has_natural_names` says which) gets fallback names instead: `_keys/{readable}-{hash}{suffix}`
and `_failed/_keys/{readable}-{hash}.json`, where `hash` is the first 32 hex digits of the
SHA-256 of K's UTF-8 bytes and `readable` the start of K's last segment (at most 60 UTF-8
bytes, cut on a character boundary, control, format and separator characters replaced by `_`,
leading dots dropped). The same key always gets the same names. Fallback objects carry K in their
`source-key` metadata as unpadded base64url (RFC 4648 §5) of its UTF-8 bytes: S3 user metadata
is ASCII and limited to 2 KB in all, and base64 keeps even a 1,024-byte key within that
(percent-encoding can triple it). Failure records also hold K in their `key` field. Natural
results keep `source-key` as the plain key (the S3 backend percent-encodes every value on the
wire); natural failure records have no `source-key`, their name says it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from typing import Final

from ocrbatch.locations import Location
from ocrbatch.storage.base import check_key
from ocrbatch.storage.local_root import PRIVATE_DIR
from ocrbatch.storage.s3_names import SIDECAR_PREFIX

FAILED_PREFIX: Final = "_failed/"
FAILURE_SUFFIX: Final = ".json"
OUTBOX_PREFIX: Final = "_outbox/"
REPORT_KEY: Final = "_report.json"
# Results of keys without natural names; their failure records are under `FAILED_FALLBACK_PREFIX`.
FALLBACK_PREFIX: Final = "_keys/"
FAILED_FALLBACK_PREFIX: Final = FAILED_PREFIX + FALLBACK_PREFIX
# The subtrees of ocrbatch's own objects, beside the results.
OWN_PREFIXES: Final = (FAILED_PREFIX, OUTBOX_PREFIX, FALLBACK_PREFIX)
# A batch's `file_format` -> the suffix of its results: the object whose metadata says which
# version of the input it was made from, and whose presence marks the input done.
RESULT_SUFFIX: Final[dict[str, str]] = {"json": ".json", "xls": ".xlsx", "pdf": ".json"}
# What a format writes beside its result, first (a pdf batch's searchable PDF: the JSON kept
# beside it is written last, so a result always has its PDF), and what a download gives.
COMPANION_SUFFIX: Final[dict[str, str]] = {"pdf": ".pdf"}
DOWNLOAD_SUFFIX: Final[dict[str, str]] = {"json": ".json", "xls": ".xlsx", "pdf": ".pdf"}
SOURCE_KEY: Final = "source-key"  # the metadata naming the input an object was made for

NAME_MAX_BYTES: Final = 255  # one path component on local filesystems (ext4, XFS, APFS, …)
KEY_MAX_BYTES: Final = 1024  # a whole S3 key, the location's prefix included
# Bytes of the result location's prefix a key must leave room for, at least: a rule that does not
# depend on the prefix below this gives every caller the same names, told the location or not.
PREFIX_MARGIN_BYTES: Final = 256
READABLE_MAX_BYTES: Final = 60
HASH_HEX_DIGITS: Final = 32
# What the backends add to a name: a local sidecar is `.ocrbatch/meta/{key}.json` (its last
# component 5 bytes longer than the object's); on an S3 store without user metadata it is the key
# `{prefix}.ocrbatch/meta/{key}.json`.
_SIDECAR_SUFFIX: Final = ".json"
_S3_SIDECAR_BYTES: Final = len(SIDECAR_PREFIX.encode()) + len(_SIDECAR_SUFFIX)
_LONGEST_RESULT_SUFFIX: Final = max(DOWNLOAD_SUFFIX.values(), key=len)
_CONTROL_CHARS: Final = re.compile("[\x00-\x1f\x7f]")
# Keys this short have no segment near NAME_MAX_BYTES, whatever suffix and sidecar follow.
_PLAIN_KEY_CHARS: Final = NAME_MAX_BYTES - len(_LONGEST_RESULT_SUFFIX) - len(_SIDECAR_SUFFIX) - 16
_LONGEST_DERIVED_EXTRA: Final = max(len(_LONGEST_RESULT_SUFFIX), len(FAILED_PREFIX) + len(FAILURE_SUFFIX))
_BASE64URL: Final = re.compile("[A-Za-z0-9_-]*")


def has_natural_names(key: str, *, location: Location | None = None) -> bool:
    """Whether input `key`'s result (in either format) and failure record can have their natural
    names in every storage ocrbatch writes to.

    They cannot when a name would have an empty, `.` or `..` segment (`a//b.png`, `./x.png`, a
    leading `/`), a control character (U+0000-U+001F, U+007F), `.ocrbatch` as its first segment
    (the backends' private directory), a segment over 255 UTF-8 bytes (the last one, with its
    suffix and the local sidecar's `.json`), or a length past S3's 1,024 bytes once the result
    location's prefix (`location`'s, counted as at least 256 bytes) and an S3 sidecar's 20 are
    added. Not knowing `location` is the same as a prefix of at most 256 bytes.
    """
    budget = KEY_MAX_BYTES - _S3_SIDECAR_BYTES - max(_prefix_bytes(location), PREFIX_MARGIN_BYTES)
    if _plainly_natural(key, budget):
        return True
    names = (key + _LONGEST_RESULT_SUFFIX, FAILED_PREFIX + key + FAILURE_SUFFIX)
    return all(_storable(name, budget) for name in names)


def _plainly_natural(key: str, budget_bytes: int) -> bool:
    """A quick yes for the common key (printable ASCII, short, plain segments), which `_storable`
    would pass for both names; False means "ask `_storable`", not "no"."""
    if len(key) > _PLAIN_KEY_CHARS or len(key) + _LONGEST_DERIVED_EXTRA > budget_bytes:
        return False
    if not (key.isascii() and key.isprintable()) or key.startswith("/") or key.endswith("/"):
        return False
    segments = key.split("/")
    return segments[0] != PRIVATE_DIR and not any(part in ("", ".", "..") for part in segments)


def result_key(key: str, suffix: str, *, location: Location | None = None) -> str:
    """Where the result of input `key` lives, for results ending in `suffix`, in a result location
    `location` (see `has_natural_names`)."""
    if has_natural_names(key, location=location):
        return key + suffix
    return FALLBACK_PREFIX + _fallback_stem(key) + suffix


def failure_record_key(key: str, *, location: Location | None = None) -> str:
    """Where the failure record of input `key` lives, in a result location `location`."""
    if has_natural_names(key, location=location):
        return FAILED_PREFIX + key + FAILURE_SUFFIX
    return FAILED_FALLBACK_PREFIX + _fallback_stem(key) + FAILURE_SUFFIX


def is_fallback_name(object_key: str) -> bool:
    """True for the result or failure record of a key without natural names."""
    return object_key.startswith((FALLBACK_PREFIX, FAILED_FALLBACK_PREFIX))


def source_key_metadata(object_key: str, key: str) -> dict[str, str]:
    """The `source-key` metadata of `object_key`, made for input `key`: base64url for a fallback
    name, else the key itself."""
    return {SOURCE_KEY: encode_source_key(key) if is_fallback_name(object_key) else key}


def encode_source_key(key: str) -> str:
    """`key` as unpadded base64url of its UTF-8 bytes: ASCII, and at most 4/3 of its size."""
    return base64.urlsafe_b64encode(key.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def decode_source_key(value: str | None) -> str | None:
    """The key `encode_source_key` made `value` from; None when `value` is not one."""
    if value is None or not _BASE64URL.fullmatch(value):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, ValueError):
        return None


def failed_input_key(record_key: str) -> str | None:
    """The input a failure record is about, from its name; None when `record_key` is not a failure
    record's, or is a fallback record's (whose input is in its `source-key` and `key`)."""
    if not record_key.startswith(FAILED_PREFIX) or not record_key.endswith(FAILURE_SUFFIX):
        return None
    if record_key.startswith(FAILED_FALLBACK_PREFIX):
        return None
    key = record_key[len(FAILED_PREFIX) : len(record_key) - len(FAILURE_SUFFIX)]
    return key or None


def is_own_object(key: str) -> bool:
    """True for ocrbatch's own objects (report, failure records, outbox, fallback names), which are
    not the natural results of any input."""
    return key == REPORT_KEY or key.startswith(OWN_PREFIXES)


def is_reserved(key: str) -> bool:
    """True for input keys whose result or failure record would land on ocrbatch's own names."""
    return key == REPORT_KEY or any(key.split("/", 1)[0] == prefix[:-1] for prefix in OWN_PREFIXES)


def _prefix_bytes(location: Location | None) -> int:
    """The bytes the location puts before every key in an S3 bucket (0 for a local directory)."""
    return len(location.prefix.encode()) if location is not None and location.is_s3 else 0


def _storable(name: str, budget_bytes: int) -> bool:
    """Whether both backends can hold an object named `name` (and its sidecar), in at most
    `budget_bytes` of key."""
    try:
        check_key(name)
        encoded = name.encode()
    except (ValueError, UnicodeEncodeError):
        return False
    if _CONTROL_CHARS.search(name):
        return False
    segments = encoded.split(b"/")
    if segments[0] == PRIVATE_DIR.encode():
        return False
    if any(len(segment) > NAME_MAX_BYTES for segment in segments[:-1]):
        return False
    return len(segments[-1]) + len(_SIDECAR_SUFFIX) <= NAME_MAX_BYTES and len(encoded) <= budget_bytes


def _fallback_stem(key: str) -> str:
    """`{readable}-{hash}` for `key` (only `{hash}` when nothing of it is readable)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX_DIGITS]
    readable = _readable(key)
    return f"{readable}-{digest}" if readable else digest


def _readable(key: str) -> str:
    """The start of the key's last non-empty segment, safe in any name: control, format,
    unassigned and separator characters (but the space) become `_`, leading dots and spaces go
    (no hidden files), at most 60 UTF-8 bytes cut on a character boundary."""
    last = next((segment for segment in reversed(key.split("/")) if segment), "")
    text = "".join("_" if unicodedata.category(char)[0] in "CZ" and char != " " else char for char in last)
    text = text.lstrip(". ")
    return text.encode()[:READABLE_MAX_BYTES].decode(errors="ignore").rstrip(" ")
