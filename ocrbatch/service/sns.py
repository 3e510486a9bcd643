"""SNS HTTP messages: which ones are trusted, and confirming a subscription.

A message is trusted when its signature verifies, as AWS documents it ("Verifying the signatures
of Amazon SNS messages"): SignatureVersion 1 is SHA1withRSA and 2 SHA256withRSA, over the signed
fields as `Name\\nvalue\\n` in the documented order, with the certificate at `SigningCertURL`.
That certificate is trusted because it comes over https from SNS itself, so the URL must be https
on an SNS host (`sns.<region>.amazonaws.com` or `.amazonaws.com.cn`), without user info or a port
but 443, ending in `.pem`. A SubscribeURL is fetched only on such a host too, so a forged
confirmation cannot make the server fetch other URLs. Both fetches follow no redirect and read at
most `MAX_BODY_BYTES`; certificates are cached by URL (a bounded cache) and checked against the
clock on every use. Refusals are `SnsRefused`, whose message says why and never repeats the
message's content.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from yarl import URL

from ocrbatch.outbound import OutboundRefused
from ocrbatch.types import Clock

SNS_TYPE_HEADER: Final = "x-amz-sns-message-type"
AWS_SNS_HOST: Final = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
MAX_BODY_BYTES: Final = 64 * 1024
FETCH_TIMEOUT_S: Final = 10.0
CERTIFICATE_CACHE_SIZE: Final = 32

_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
# The fields each message type signs, in the order they are signed.
_SIGNED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
_OPTIONAL_FIELDS = frozenset({"Subject"})
_SIGNATURE_HASHES: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {"1": hashes.SHA1, "2": hashes.SHA256}


class SnsRefused(Exception):
    """An SNS message, or a URL it names, that is not trusted; the message says why."""


class SnsConfirmationFailed(Exception):
    """Fetching a (trusted) SubscribeURL did not confirm the subscription."""


def is_sns_message(body: Mapping[str, Any], type_header: str | None) -> bool:
    """Whether a request must verify as an SNS message: its `x-amz-sns-message-type` header says
    so, or its body has a `Type` (S3 and MinIO events have none), so that leaving the header or
    any field out never skips verification."""
    return type_header is not None or "Type" in body


def string_to_sign(message: Mapping[str, Any]) -> str:
    """The text an SNS message's signature covers; `SnsRefused` when a signed field is missing."""
    signed = _SIGNED_FIELDS.get(_text(message.get("Type")) or "")
    if signed is None:
        raise SnsRefused("its Type is not an SNS message type")
    lines = []
    for name in signed:
        value = message.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise SnsRefused(f"it has no {name}, which its signature must cover")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines)


class SnsVerifier:
    """Verifies SNS messages and confirms subscriptions through `session`.

    `trust` replaces the system's certificate authorities for the https fetches (a test's own CA);
    `hosts` is the host name SNS URLs must match (whole). With `check_signatures` off, messages
    are taken as they come (for emulated stores, which sign with certificates SNS never served);
    a SubscribeURL is still fetched only from an SNS host.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        trust: ssl.SSLContext | None = None,
        hosts: re.Pattern[str] = AWS_SNS_HOST,
        clock: Clock = time.time,
        timeout_s: float = FETCH_TIMEOUT_S,
        check_signatures: bool = True,
    ) -> None:
        self._session = session
        self._ssl: ssl.SSLContext | bool = trust if trust is not None else True
        self._hosts = hosts
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.check_signatures = check_signatures
        self._certificates: dict[URL, x509.Certificate] = {}

    async def verify(self, message: Mapping[str, Any], type_header: str | None = None) -> None:
        """Return when `message` is signed by SNS; `SnsRefused` saying why otherwise."""
        if not self.check_signatures:
            return
        if type_header is not None and type_header != message.get("Type"):
            raise SnsRefused(f"its Type does not match its {SNS_TYPE_HEADER} header")
        signed = string_to_sign(message)
        algorithm = _SIGNATURE_HASHES.get(_text(message.get("SignatureVersion")) or "")
        if algorithm is None:
            raise SnsRefused("it has no SignatureVersion 1 or 2")
        signature = _text(message.get("Signature"))
        if not signature:
            raise SnsRefused("it is not signed (no Signature)")
        try:
            signature_bytes = base64.b64decode(signature, validate=True)
        except binascii.Error:
            raise SnsRefused("its Signature is not base64") from None
        public_key = (await self._certificate(message.get("SigningCertURL"))).public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SnsRefused("its signing certificate does not hold an RSA key")
        try:
            public_key.verify(signature_bytes, signed.encode(), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise SnsRefused("its signature does not verify") from None

    async def confirm(self, subscribe_url: str) -> None:
        """Confirm a subscription by GETting its SubscribeURL, which must be on an SNS host
        (`SnsRefused` otherwise); `SnsConfirmationFailed` when SNS does not answer 200."""
        url = self._sns_url(subscribe_url, "SubscribeURL")
        try:
            status, _ = await self._get(url)
        except (aiohttp.ClientError, TimeoutError, OutboundRefused) as exc:
            raise SnsConfirmationFailed(f"confirming the SNS subscription failed: {_why(exc)}") from None
        if status != 200:
            raise SnsConfirmationFailed(f"confirming the SNS subscription failed: HTTP {status}")

    async def _certificate(self, text: object) -> x509.Certificate:
        url = self._sns_url(text, "SigningCertURL")
        if not url.path.endswith(".pem"):
            raise SnsRefused("its SigningCertURL does not name a .pem certificate")
        certificate = self._certificates.get(url)
        if certificate is None:
            certificate = self._remember(url, await self._fetch_certificate(url))
        now = self._clock()
        if not (
            certificate.not_valid_before_utc.timestamp() <= now <= certificate.not_valid_after_utc.timestamp()
        ):
            raise SnsRefused("its signing certificate is expired or not yet valid")
        return certificate

    async def _fetch_certificate(self, url: URL) -> x509.Certificate:
        try:
            status, pem = await self._get(url)
        except (aiohttp.ClientError, TimeoutError, OutboundRefused) as exc:
            raise SnsRefused(f"its signing certificate could not be fetched: {_why(exc)}") from None
        if status != 200:
            raise SnsRefused(f"its signing certificate could not be fetched: HTTP {status}")
        if len(pem) > MAX_BODY_BYTES:
            raise SnsRefused(f"its signing certificate is larger than {MAX_BODY_BYTES // 1024} KB")
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SnsRefused("its signing certificate is not a PEM certificate") from None

    def _remember(self, url: URL, certificate: x509.Certificate) -> x509.Certificate:
        if len(self._certificates) >= CERTIFICATE_CACHE_SIZE:
            del self._certificates[next(iter(self._certificates))]  # the oldest
        self._certificates[url] = certificate
        return certificate

    def _sns_url(self, text: object, field: str) -> URL:
        """`text` as the URL aiohttp will fetch (parsed once, by yarl, so that no other parser
        can read another host into it), if it is https on an SNS host on port 443."""
        try:
            url = URL(text) if isinstance(text, str) else None
        except ValueError:
            url = None
        if (
            url is None
            or url.scheme != "https"
            or url.user is not None
            or url.password is not None
            or url.explicit_port not in (None, 443)
            or not self._hosts.fullmatch(url.host or "")
        ):
            raise SnsRefused(
                f"its {field} is not an https URL on an SNS host (sns.<region>.amazonaws.com, port 443)"
            )
        return url

    async def _get(self, url: URL) -> tuple[int, bytes]:
        """The status and the body (its first `MAX_BODY_BYTES` + 1 bytes at most, so that a caller
        can tell a longer one) of a GET that follows no redirect."""
        async with self._session.get(
            url, ssl=self._ssl, allow_redirects=False, timeout=self._timeout
        ) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(16 * 1024):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    break
            return response.status, bytes(body[: MAX_BODY_BYTES + 1])


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
