"""Standard Webhooks signing: signatures receivers can recompute, and verification that refuses forgeries."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest

from ocrbatch.webhooks.signing import InvalidSignature, sign, signed_headers, signing_key, verify

KEY = b"ocrbatch test key, 32 bytes long"
WHSEC_SECRET = "whsec_" + base64.b64encode(KEY).decode()
PLAIN_SECRET = "correct horse battery staple"
MESSAGE_ID = "chunk_01HZX3A9.7"
TIMESTAMP_S = 1_700_000_000
BODY = b'{"batch_id": "b1", "items": [{"key": "scan/0001.pdf", "status": "succeeded"}]}'

# The example published by Standard Webhooks (and used by the svix libraries' tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MESSAGE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP_S = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def independent_signature(key: bytes, message_id: str, timestamp_s: int, body: bytes) -> str:
    """The signature written out from the specification, sharing no code with the module."""
    mac = hmac.new(key, f"{message_id}.{timestamp_s}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def delivery(secret: str = WHSEC_SECRET) -> dict[str, str]:
    """Headers of a signed delivery of BODY."""
    return signed_headers(secret, message_id=MESSAGE_ID, timestamp_s=TIMESTAMP_S, body=BODY)


def test_whsec_secret_signs_with_the_decoded_key() -> None:
    """A whsec_ secret signs with its base64-decoded key over "id.timestamp.body"."""
    signature = sign(WHSEC_SECRET, message_id=MESSAGE_ID, timestamp_s=TIMESTAMP_S, body=BODY)

    assert signature == independent_signature(KEY, MESSAGE_ID, TIMESTAMP_S, BODY)


def test_plain_secret_signs_with_its_utf8_bytes() -> None:
    """Any other secret signs with its UTF-8 bytes as the key."""
    secret = PLAIN_SECRET + " ü"
    signature = sign(secret, message_id=MESSAGE_ID, timestamp_s=TIMESTAMP_S, body=BODY)

    assert signature == independent_signature(secret.encode("utf-8"), MESSAGE_ID, TIMESTAMP_S, BODY)
    assert signing_key(secret) == secret.encode("utf-8")


def test_published_standard_webhooks_example() -> None:
    """The Standard Webhooks example signs and verifies to its published signature."""
    key = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))
    stdlib = independent_signature(key, SPEC_MESSAGE_ID, SPEC_TIMESTAMP_S, SPEC_BODY)
    signature = sign(SPEC_SECRET, message_id=SPEC_MESSAGE_ID, timestamp_s=SPEC_TIMESTAMP_S, body=SPEC_BODY)
    headers = {
        "webhook-id": SPEC_MESSAGE_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP_S),
        "webhook-signature": SPEC_SIGNATURE,
    }

    assert signature == stdlib == SPEC_SIGNATURE
    verify(SPEC_SECRET, headers, SPEC_BODY, now_s=SPEC_TIMESTAMP_S)


@pytest.mark.parametrize("secret", [WHSEC_SECRET, PLAIN_SECRET])
def test_verify_accepts_the_signed_delivery(secret: str) -> None:
    """A delivery verifies with the secret that signed it, within the tolerance either side of now."""
    verify(secret, delivery(secret), BODY, now_s=TIMESTAMP_S)
    verify(secret, delivery(secret), BODY, now_s=TIMESTAMP_S + 300)
    verify(secret, delivery(secret), BODY, now_s=TIMESTAMP_S - 300)


def test_verify_refuses_a_tampered_body() -> None:
    """Changing one byte of the body makes verification fail."""
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify(WHSEC_SECRET, delivery(), BODY.replace(b"succeeded", b"succeedeD"), now_s=TIMESTAMP_S)


@pytest.mark.parametrize(
    ("header", "value"),
    [("webhook-id", MESSAGE_ID + "x"), ("webhook-timestamp", str(TIMESTAMP_S + 1))],
    ids=["id", "timestamp"],
)
def test_verify_refuses_a_tampered_id_or_timestamp(header: str, value: str) -> None:
    """The id and the timestamp are signed: changing either makes verification fail."""
    headers = delivery() | {header: value}

    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify(WHSEC_SECRET, headers, BODY, now_s=TIMESTAMP_S)


@pytest.mark.parametrize("wrong", ["whsec_" + base64.b64encode(b"another key").decode(), PLAIN_SECRET])
def test_verify_refuses_a_wrong_secret(wrong: str) -> None:
    """A delivery signed with one secret does not verify with another."""
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify(wrong, delivery(), BODY, now_s=TIMESTAMP_S)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_refuses_a_missing_header(header: str) -> None:
    """Each of the three headers is required, and the error names the missing one."""
    headers = delivery()
    del headers[header]

    with pytest.raises(InvalidSignature, match=f"missing header {header}"):
        verify(WHSEC_SECRET, headers, BODY, now_s=TIMESTAMP_S)


@pytest.mark.parametrize(
    "value",
    ["", "garbage", "v1,", "v1", "v2,{sig}", "{sig}", "V1,{sig}"],
    ids=["empty", "garbage", "v1-empty", "no-comma", "other-version", "no-version", "upper-version"],
)
def test_verify_refuses_a_malformed_signature(value: str) -> None:
    """A signature header without a well-formed "v1,<base64>" entry is refused as bad format."""
    sig = delivery()["webhook-signature"].removeprefix("v1,")
    headers = delivery() | {"webhook-signature": value.format(sig=sig)}

    with pytest.raises(InvalidSignature, match="bad format"):
        verify(WHSEC_SECRET, headers, BODY, now_s=TIMESTAMP_S)


@pytest.mark.parametrize(
    "value",
    ["", "17e8", "-1700000000", " 1700000000", "1_700_000_000", "\u0661\u0667\u0660\u0660" + "\u0660" * 6],
    ids=["empty", "exponent", "negative", "space", "underscores", "arabic-indic-digits"],
)
def test_verify_refuses_a_malformed_timestamp(value: str) -> None:
    """A timestamp that is not plain decimal Unix seconds is refused as bad format."""
    headers = delivery() | {"webhook-timestamp": value}

    with pytest.raises(InvalidSignature, match="bad format"):
        verify(WHSEC_SECRET, headers, BODY, now_s=TIMESTAMP_S)


@pytest.mark.parametrize(
    ("now_s", "tolerance_s", "reason"),
    [
        (TIMESTAMP_S + 301, 300, "too old"),
        (TIMESTAMP_S - 301, 300, "too new"),
        (TIMESTAMP_S + 61, 60, "too old"),
    ],
    ids=["old", "future", "custom-tolerance"],
)
def test_verify_refuses_a_timestamp_outside_the_tolerance(now_s: int, tolerance_s: int, reason: str) -> None:
    """A correctly signed delivery more than tolerance_s away from now is refused (replay limit)."""
    with pytest.raises(InvalidSignature, match=reason):
        verify(WHSEC_SECRET, delivery(), BODY, now_s=now_s, tolerance_s=tolerance_s)


def test_verify_accepts_any_matching_signature_among_several() -> None:
    """During key rotation one valid entry among several passes, whatever its position."""
    valid = delivery()["webhook-signature"]
    other = sign(PLAIN_SECRET, message_id=MESSAGE_ID, timestamp_s=TIMESTAMP_S, body=BODY)

    for value in (f"{other} {valid}", f"{valid} {other}", f"v2,abc {other}  {valid}"):
        verify(WHSEC_SECRET, delivery() | {"webhook-signature": value}, BODY, now_s=TIMESTAMP_S)
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify(WHSEC_SECRET, delivery() | {"webhook-signature": f"{other} {other}"}, BODY, now_s=TIMESTAMP_S)


@pytest.mark.parametrize("rename", [str.upper, str.title, lambda name: name.replace("webhook", "Webhook")])
def test_verify_reads_header_names_in_any_case(rename: Callable[[str], str]) -> None:
    """Header names match case-insensitively, as HTTP requires."""
    headers = {rename(name): value for name, value in delivery().items()}

    verify(WHSEC_SECRET, headers, BODY, now_s=TIMESTAMP_S)


def test_signed_headers_without_secret_have_no_signature() -> None:
    """Without a secret only webhook-id and webhook-timestamp are sent, for de-duplication."""
    headers = signed_headers(None, message_id=MESSAGE_ID, timestamp_s=TIMESTAMP_S, body=BODY)

    assert headers == {"webhook-id": MESSAGE_ID, "webhook-timestamp": str(TIMESTAMP_S)}


def test_signed_headers_with_secret_carry_the_signature() -> None:
    """With a secret the three headers are sent and the signature is the one sign() computes."""
    assert delivery() == {
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": str(TIMESTAMP_S),
        "webhook-signature": independent_signature(KEY, MESSAGE_ID, TIMESTAMP_S, BODY),
    }


@pytest.mark.parametrize(
    ("secret", "reason"),
    # "c2VjcmV0" is base64 for "secret": lenient decoding would drop the "!" and sign with that.
    [
        ("", "empty"),
        ("whsec_", "empty"),
        ("whsec_not base64!", "not base64"),
        ("whsec_c2VjcmV0!", "not base64"),
    ],
)
def test_signing_key_refuses_unusable_secrets(secret: str, reason: str) -> None:
    """An empty secret or a whsec_ secret that is not base64 is a configuration error, not a weak key."""
    with pytest.raises(ValueError, match=reason):
        signing_key(secret)
