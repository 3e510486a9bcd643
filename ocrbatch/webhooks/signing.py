"""Sign webhook deliveries with the Standard Webhooks scheme (https://www.standardwebhooks.com/).

Every delivery carries ``webhook-id`` (unique per message; a retry reuses it, so receivers
de-duplicate by it) and ``webhook-timestamp`` (Unix seconds of this attempt). With a secret set,
it also carries ``webhook-signature: v1,<sig>``, where ``<sig>`` is the standard-alphabet,
padded base64 of HMAC-SHA256 over the bytes ``{webhook-id}.{webhook-timestamp}.{raw body}``.
Receivers verify over the raw body exactly as received, before any JSON parsing.

The HMAC key: a secret of the form ``whsec_<base64>`` means the base64-decoded part; any other
secret means its UTF-8 bytes. The header may hold several space-separated entries (key rotation);
accept if any ``v1`` entry matches, compare in constant time, and refuse timestamps more than
5 minutes (300 s) from your clock, which limits replays. A receiver check with the stdlib only
(``headers`` being your framework's case-insensitive header mapping)::

    import base64, hashlib, hmac

    def is_authentic(secret: str, headers, body: bytes, now_s: int) -> bool:
        key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
        msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
        if abs(now_s - int(ts)) > 300:
            return False
        mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())

``verify`` below does the same with reasons for each refusal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

WHSEC_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


class InvalidSignature(Exception):
    """A delivery failed verification; the message says why."""


def signing_key(secret: str) -> bytes:
    """The HMAC key: the decoded base64 of a ``whsec_<base64>`` secret, else the secret's UTF-8 bytes.

    Raises ValueError for an empty secret or a ``whsec_`` secret that is not valid base64, since
    silently signing with a different key than receivers derive would fail every delivery.
    """
    if secret.startswith(WHSEC_PREFIX):
        try:
            key = base64.b64decode(secret.removeprefix(WHSEC_PREFIX), validate=True)
        except binascii.Error as exc:
            raise ValueError("webhook secret starts with 'whsec_' but the rest is not base64") from exc
    else:
        key = secret.encode()
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _signature(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def sign(secret: str, *, message_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery: ``v1,<base64 HMAC-SHA256>``."""
    return f"{SIGNATURE_VERSION},{_signature(signing_key(secret), message_id, str(timestamp_s), body)}"


def signed_headers(secret: str | None, *, message_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """Id and timestamp headers always (receivers de-duplicate by id); the signature only with a secret."""
    headers = {ID_HEADER: message_id, TIMESTAMP_HEADER: str(timestamp_s)}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, message_id=message_id, timestamp_s=timestamp_s, body=body)
    return headers


def _v1_signatures(header: str) -> list[str]:
    """The ``<sig>`` parts of well-formed ``v1,<sig>`` entries; other versions are ignored per the spec."""
    signatures: list[str] = []
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version == SIGNATURE_VERSION and value:
            signatures.append(value)
    return signatures


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now_s: int, tolerance_s: int = 300
) -> None:
    """Check a delivery as a receiver would; raises InvalidSignature saying why it is refused.

    Header names are case-insensitive; any matching ``v1`` entry passes (key rotation); the
    timestamp must lie within ``now_s ± tolerance_s``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [name for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if name not in lowered]
    if missing:
        raise InvalidSignature(f"missing header {', '.join(missing)}")
    message_id, timestamp = lowered[ID_HEADER], lowered[TIMESTAMP_HEADER]
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise InvalidSignature(f"bad format: {TIMESTAMP_HEADER} is not whole Unix seconds")
    age_s = now_s - int(timestamp)
    if age_s > tolerance_s:
        raise InvalidSignature(f"timestamp too old: {age_s} s before now, tolerance {tolerance_s} s")
    if -age_s > tolerance_s:
        raise InvalidSignature(f"timestamp too new: {-age_s} s after now, tolerance {tolerance_s} s")
    candidates = _v1_signatures(lowered[SIGNATURE_HEADER])
    if not candidates:
        raise InvalidSignature(f"bad format: no 'v1,<base64>' entry in {SIGNATURE_HEADER}")
    expected = _signature(signing_key(secret), message_id, timestamp, body).encode()
    # Check every entry rather than stopping at the first match, so timing reveals nothing either.
    matches = [hmac.compare_digest(expected, candidate.encode()) for candidate in candidates]
    if not any(matches):
        raise InvalidSignature("no signature matches")
