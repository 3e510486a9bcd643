"""SNS messages on the event endpoint are believed only when their signature verifies.

A fake SNS serves https on loopback as `sns.us-east-1.amazonaws.com`: a test CA signs its server
certificate, the verifier trusts that CA (an injected SSL context), and a resolver sends that one
host name to the fake (like `curl --resolve`) and refuses every other, so no request leaves
loopback. The fake serves a signing certificate at any `*.pem` path and answers SubscribeURLs; it
records every request, and the resolver every lookup, so a URL that must not be fetched can be
seen not to be.
"""

from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fixtures.api import TOKEN, Api, StartApi
from fixtures.receiver import Receiver
from fixtures.waits import within
from structlog.testing import capture_logs

from ocrbatch.batches.events import Upload
from ocrbatch.batches.store import BatchStore
from ocrbatch.errors import ConfigError
from ocrbatch.service.sns import SnsVerifier, string_to_sign
from ocrbatch.settings import Settings, StorageSettings, load_settings

SNS_HOST = "sns.us-east-1.amazonaws.com"
CERT_URL = f"https://{SNS_HOST}/SimpleNotificationService-0123456789abcdef.pem"
TOPIC = "arn:aws:sns:us-east-1:123456789012:uploads"
EVENTS = f"/api/v1/events/s3?token={TOKEN}"
NOW = datetime.datetime.now(datetime.UTC)


# -- the fake SNS ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """A CA, the fake's TLS certificate for SNS_HOST, and the signing key and certificate."""

    ca_pem: str
    server_cert: Path
    server_key: Path
    signing_key: rsa.RSAPrivateKey
    signing_pem: bytes
    signing_not_after: datetime.datetime


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Made once for the module: RSA key generation is the slow part."""
    ca_key, server_key, signing_key = _key(), _key(), _key()
    ca = (
        _certificate("ocrbatch test CA", ca_key, "ocrbatch test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        _certificate(SNS_HOST, server_key, "ocrbatch test CA", ca_key)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SNS_HOST)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signing = _certificate("sns.amazonaws.com", signing_key, "ocrbatch test CA", ca_key).sign(
        ca_key, hashes.SHA256()
    )
    directory = tmp_path_factory.mktemp("sns-tls")
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Keys(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM).decode(),
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        signing_key=signing_key,
        signing_pem=signing.public_bytes(serialization.Encoding.PEM),
        signing_not_after=signing.not_valid_after_utc,
    )


@dataclass
class FakeSns:
    """SNS_HOST over https (and plain http) on loopback: `*.pem` answers `pems` (the signing
    certificate by default), `/?Action=ConfirmSubscription` answers 200; every request recorded."""

    keys: Keys
    requests: list[str] = field(default_factory=list)
    pems: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> where a 302 sends it
    https_port: int = 0
    http_port: int = 0

    def sign(
        self, message: dict[str, Any], *, version: str = "2", cert_url: str = CERT_URL
    ) -> dict[str, Any]:
        """`message` with SignatureVersion, a valid Signature and SigningCertURL."""
        # SignatureVersion 1 is SHA1withRSA: SNS still signs with it, so it must be verified.
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
        signature = self.keys.signing_key.sign(aws_string_to_sign(message), padding.PKCS1v15(), algorithm)
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": cert_url,
        }

    def app(self) -> web.Application:
        async def pem(request: web.Request) -> web.Response:
            self.requests.append(request.path_qs)
            if request.path in self.redirects:
                raise web.HTTPFound(self.redirects[request.path])
            return web.Response(body=self.pems.get(request.path, self.keys.signing_pem))

        async def confirm(request: web.Request) -> web.Response:
            self.requests.append(request.path_qs)
            return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")

        app = web.Application()
        app.router.add_get("/{name}.pem", pem)
        app.router.add_get("/", confirm)
        return app


def aws_string_to_sign(message: dict[str, Any]) -> bytes:
    """The string to sign as AWS's documentation spells it, written apart from the verifier's."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{name}\n{message[name]}\n" for name in names if name in message).encode()


class LoopbackResolver(AbstractResolver):
    """Resolves SNS_HOST to the fake SNS (its https port for 443, its http port for 80) and
    refuses every other name; records each lookup."""

    def __init__(self, fake: FakeSns) -> None:
        self._fake = fake
        self.lookups: list[tuple[str, int]] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append((host, port))
        if host != SNS_HOST:
            raise OSError(f"{host} is not resolved in these tests")
        to_port = self._fake.https_port if port == 443 else self._fake.http_port
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=to_port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


@dataclass
class Sns:
    """What a test gets: the fake, its resolver, and an API whose event endpoint uses a verifier
    that reaches the fake; `announced` holds the uploads the endpoint passed on."""

    fake: FakeSns
    resolver: LoopbackResolver
    api: Api
    announced: list[list[Upload]]

    async def post(self, body: Any, **headers: str) -> tuple[int, Any]:
        response, answer = await self.api.call("POST", EVENTS, token=None, json=body, headers=headers)
        return response.status, answer


StartSns = Callable[..., Awaitable[Sns]]


@pytest.fixture
async def start_sns(keys: Keys, start_api: StartApi, store: BatchStore) -> AsyncIterator[StartSns]:
    """`await start_sns(**verifier_options)`: the fake SNS and an API verifying against it."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**options: Any) -> Sns:
        fake = FakeSns(keys)
        runner = web.AppRunner(fake.app(), access_log=None)
        await runner.setup()
        runners.append(runner)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(keys.server_cert, keys.server_key)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        fake.https_port, fake.http_port = (address[1] for address in runner.addresses)
        resolver = LoopbackResolver(fake)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver))
        sessions.append(session)
        trust = ssl.create_default_context(cadata=keys.ca_pem)
        announced: list[list[Upload]] = []

        async def on_uploads(uploads: list[Upload]) -> int:
            announced.append(uploads)
            return len(uploads)

        verifier = SnsVerifier(session, trust=trust, **options)
        api = await start_api(store, on_uploads=on_uploads, sns=verifier)
        return Sns(fake, resolver, api, announced)

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


def s3_event(key: str = "in/a.png") -> dict[str, Any]:
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "scans"}, "object": {"key": key}}}
    return {"Records": [record]}


def notification(**fields: Any) -> dict[str, Any]:
    """An unsigned SNS Notification carrying an S3 event, as SNS sends it."""
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": json.dumps(s3_event()),
        "Timestamp": "2024-05-01T12:00:00.000Z",
        "UnsubscribeURL": f"https://{SNS_HOST}/?Action=Unsubscribe&SubscriptionArn={TOPIC}:1",
        **fields,
    }


def confirmation(subscribe_url: str) -> dict[str, Any]:
    """An unsigned SNS SubscriptionConfirmation asking for `subscribe_url` to be fetched."""
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}. To confirm, visit the SubscribeURL.",
        "SubscribeURL": subscribe_url,
        "Timestamp": "2024-05-01T12:00:00.000Z",
    }


def refusals(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [entry["reason"] for entry in logs if entry["event"] == "events.sns_refused"]


# -- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "subject"), [("1", "Amazon S3 Notification"), ("2", None)], ids=["v1-sha1", "v2-sha256"]
)
async def test_a_validly_signed_notification_is_accepted(
    start_sns: StartSns, version: str, subject: str | None
) -> None:
    """A Notification signed with SignatureVersion 1 (SHA1, with a Subject) or 2 (SHA256, without)
    and sent with the token in the query (SNS cannot send headers) is accepted and its uploads
    passed on; the signing certificate is fetched once and then taken from the cache. A wrong
    token is 401 before anything is fetched."""
    sns = await start_sns()
    wrong_token = await sns.api.call("POST", "/api/v1/events/s3?token=wrong", token=None, json=notification())
    assert wrong_token[0].status == 401
    assert sns.fake.requests == []
    extra = {"Subject": subject} if subject is not None else {}
    for message_id in ("m-1", "m-2"):
        signed = sns.fake.sign(notification(MessageId=message_id, **extra), version=version)
        status, answer = await sns.post(signed, **{"x-amz-sns-message-type": "Notification"})
        assert (status, answer) == (200, {"uploads": 1, "for_batches": 1})
    assert sns.announced == [[Upload("scans", "in/a.png")]] * 2
    assert sns.fake.requests == ["/SimpleNotificationService-0123456789abcdef.pem"]


async def test_events_that_are_not_sns_messages_need_no_signature(start_sns: StartSns) -> None:
    """S3 and MinIO event notifications (authenticated by the API token) are taken as before:
    no signature asked for, nothing fetched."""
    sns = await start_sns()
    minio = {**s3_event("in/b.png"), "EventName": "s3:ObjectCreated:Put", "Key": "scans/in/b.png"}
    for body in (s3_event(), minio):
        assert await sns.post(body) == (200, {"uploads": 1, "for_batches": 1})
    assert sns.fake.requests == []
    assert sns.resolver.lookups == []


async def test_a_valid_subscription_confirmation_fetches_its_subscribe_url_once(start_sns: StartSns) -> None:
    """A signed SubscriptionConfirmation whose SubscribeURL is on the SNS host is confirmed by one
    GET of that URL (after the certificate fetch), and announces nothing."""
    sns = await start_sns()
    url = f"https://{SNS_HOST}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=abc"
    status, answer = await sns.post(sns.fake.sign(confirmation(url)))
    assert (status, answer) == (200, {"confirmed": TOPIC})
    assert sns.fake.requests == [
        "/SimpleNotificationService-0123456789abcdef.pem",
        f"/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=abc",
    ]
    assert sns.announced == []


# -- refused -----------------------------------------------------------------------------------


async def test_a_tampered_message_is_refused_without_echoing_it(start_sns: StartSns) -> None:
    """A Notification whose Message was changed after signing is refused with 403 `forbidden`
    saying the signature does not verify (the body is not repeated), and logged."""
    sns = await start_sns()
    signed = sns.fake.sign(notification())
    tampered = {**signed, "Message": json.dumps(s3_event("in/planted-by-attacker.png"))}
    with capture_logs() as logs:
        status, answer = await sns.post(tampered)
    assert status == 403
    assert answer["error"]["code"] == "forbidden"
    assert "signature does not verify" in answer["error"]["message"]
    assert "planted-by-attacker" not in json.dumps(answer)
    assert refusals(logs) == ["the SNS message is refused: its signature does not verify"]
    assert sns.announced == []


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.pop("Signature"), "not signed"),
        (lambda m: m.update(Signature=""), "not signed"),
        (lambda m: m.update(Signature="not base64!"), "not base64"),
        (lambda m: m.pop("SignatureVersion"), "SignatureVersion"),
        (lambda m: m.update(SignatureVersion="3"), "SignatureVersion"),
        (lambda m: m.pop("SigningCertURL"), "SigningCertURL"),
        (lambda m: m.pop("MessageId"), "no MessageId"),
        (lambda m: m.update(Type="notification"), "Type is not an SNS message type"),
    ],
    ids=[
        "no signature",
        "empty signature",
        "bad base64",
        "no version",
        "unknown version",
        "no certificate url",
        "signed field left out",
        "unknown type",
    ],
)
async def test_a_message_missing_what_its_signature_needs_is_refused(
    start_sns: StartSns, change: Callable[[dict[str, Any]], object], why: str
) -> None:
    """An SNS message (a body with a Type) with its signature, version, certificate URL or a
    signed field left out or mangled is refused with 403 and the reason; nothing is fetched."""
    sns = await start_sns()
    message = sns.fake.sign(notification())
    change(message)
    with capture_logs() as logs:
        status, answer = await sns.post(message)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert why in answer["error"]["message"]
    assert len(refusals(logs)) == 1
    assert sns.fake.requests == []
    assert sns.announced == []


async def test_the_sns_header_makes_a_body_an_sns_message(start_sns: StartSns) -> None:
    """With `x-amz-sns-message-type`, a body without Type (a bare S3 event) must verify too, and a
    header that contradicts the body's Type is refused: leaving fields out bypasses nothing."""
    sns = await start_sns()
    status, answer = await sns.post(s3_event(), **{"x-amz-sns-message-type": "Notification"})
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    signed = sns.fake.sign(notification())
    status, answer = await sns.post(signed, **{"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert status == 403
    assert "does not match its x-amz-sns-message-type header" in answer["error"]["message"]
    assert sns.announced == []


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://sns.us-east-1.amazonaws.com.attacker.example/cert.pem",
        "https://attacker.example/SimpleNotificationService-1.pem",
        f"http://{SNS_HOST}/SimpleNotificationService-1.pem",
        f"https://{SNS_HOST}:8443/SimpleNotificationService-1.pem",
        f"https://user@{SNS_HOST}/SimpleNotificationService-1.pem",
        f"https://{SNS_HOST}/SimpleNotificationService-1.txt",
        "https://127.0.0.1/SimpleNotificationService-1.pem",
    ],
    ids=["look-alike host", "another host", "http", "port", "userinfo", "not .pem", "ip address"],
)
async def test_a_certificate_url_off_the_sns_host_is_refused_and_never_fetched(
    start_sns: StartSns, cert_url: str
) -> None:
    """A message signed by a valid key but naming its certificate anywhere but https on the SNS
    host, port 443, as a .pem, is refused with 403; the URL is neither looked up nor fetched."""
    sns = await start_sns()
    with capture_logs() as logs:
        status, answer = await sns.post(sns.fake.sign(notification(), cert_url=cert_url))
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert "SigningCertURL" in answer["error"]["message"]
    assert len(refusals(logs)) == 1
    assert sns.resolver.lookups == []
    assert sns.fake.requests == []


@pytest.mark.parametrize(
    "subscribe_url",
    [
        "https://attacker.example/?Action=ConfirmSubscription&Token=abc",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:{http_port}/?Action=ConfirmSubscription&Token=abc",
        f"http://{SNS_HOST}/?Action=ConfirmSubscription&Token=abc",
        f"https://{SNS_HOST}:8443/?Action=ConfirmSubscription&Token=abc",
    ],
    ids=["another host", "metadata service", "loopback http", "http", "port"],
)
async def test_a_subscribe_url_off_the_sns_host_is_refused_and_never_fetched(
    start_sns: StartSns, subscribe_url: str
) -> None:
    """A validly signed SubscriptionConfirmation whose SubscribeURL is not https on the SNS host
    (loopback http included) is refused with 403 naming the SubscribeURL; only the certificate
    was fetched."""
    sns = await start_sns()
    url = subscribe_url.format(http_port=sns.fake.http_port)
    with capture_logs() as logs:
        status, answer = await sns.post(sns.fake.sign(confirmation(url)))
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert "SubscribeURL" in answer["error"]["message"]
    assert len(refusals(logs)) == 1
    assert sns.fake.requests == ["/SimpleNotificationService-0123456789abcdef.pem"]
    assert sns.resolver.lookups == [(SNS_HOST, 443)]


async def test_an_expired_signing_certificate_is_refused(start_sns: StartSns, keys: Keys) -> None:
    """Once the clock is past the signing certificate's not_valid_after, a message it signed is
    refused with 403 saying the certificate is expired."""
    after = keys.signing_not_after + datetime.timedelta(seconds=1)
    sns = await start_sns(clock=after.timestamp)
    status, answer = await sns.post(sns.fake.sign(notification()))
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert "expired" in answer["error"]["message"]
    assert sns.announced == []


@pytest.mark.parametrize(
    ("served", "why"),
    [
        (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", "not a PEM"),
        (b"x" * (64 * 1024 + 1), "larger than 64 KB"),
    ],
    ids=["unparseable", "too large"],
)
async def test_a_bad_signing_certificate_is_refused(start_sns: StartSns, served: bytes, why: str) -> None:
    """What the certificate URL serves must be a PEM certificate of at most 64 KB, else 403."""
    sns = await start_sns()
    sns.fake.pems["/SimpleNotificationService-0123456789abcdef.pem"] = served
    status, answer = await sns.post(sns.fake.sign(notification()))
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert why in answer["error"]["message"]


async def test_a_redirect_from_the_certificate_url_is_not_followed(start_sns: StartSns) -> None:
    """A certificate URL that answers with a redirect (even to a good certificate on the same
    host) is refused with 403 saying what it answered; the redirect is not followed."""
    sns = await start_sns()
    sns.fake.redirects["/SimpleNotificationService-0123456789abcdef.pem"] = "/elsewhere.pem"
    status, answer = await sns.post(sns.fake.sign(notification()))
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert "HTTP 302" in answer["error"]["message"]
    assert sns.fake.requests == ["/SimpleNotificationService-0123456789abcdef.pem"]


async def test_without_a_verifier_sns_messages_are_refused(start_api: StartApi, store: BatchStore) -> None:
    """An API made without an SNS verifier refuses every SNS message (403) and still takes S3 events."""
    announced: list[list[Upload]] = []

    async def on_uploads(uploads: list[Upload]) -> int:
        announced.append(uploads)
        return len(uploads)

    api = await start_api(store, on_uploads=on_uploads)
    response, answer = await api.call("POST", EVENTS, token=None, json=notification())
    assert (response.status, answer["error"]["code"]) == (403, "forbidden")
    response, answer = await api.call("POST", EVENTS, token=None, json=s3_event())
    assert (response.status, answer) == (200, {"uploads": 1, "for_batches": 1})
    assert announced == [[Upload("scans", "in/a.png")]]


# -- moto --------------------------------------------------------------------------------------


def _boto(storage: StorageSettings) -> aioboto3.Session:
    assert storage.access_key_id is not None
    assert storage.secret_access_key is not None
    return aioboto3.Session(
        aws_access_key_id=storage.access_key_id.get_secret_value(),
        aws_secret_access_key=storage.secret_access_key.get_secret_value(),
        region_name="us-east-1",
    )


# moto's server picks the service from a request's SigV4 credential scope; an unsigned GET would go to S3.
MOTO_SNS_ROUTE = {"Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/sns/aws4_request"}


@pytest.fixture
async def moto_notification(s3_settings: StorageSettings) -> AsyncIterator[dict[str, Any]]:
    """A Notification exactly as moto's SNS posts it to an HTTP subscription."""
    receiver = Receiver()
    await receiver.start()
    try:
        async with _boto(s3_settings).client("sns", endpoint_url=s3_settings.endpoint_url) as client:
            topic = (await client.create_topic(Name="signatures"))["TopicArn"]
            await client.subscribe(TopicArn=topic, Protocol="http", Endpoint=receiver.url)
            await client.publish(TopicArn=topic, Message=json.dumps(s3_event()))
        await within(receiver.wait_for(1), 10, "moto did not post the notification")
        yield receiver.received[0].payload
    finally:
        await receiver.stop()


async def test_a_moto_notification_is_refused_when_signatures_are_verified(
    start_sns: StartSns, moto_notification: dict[str, Any], s3_settings: StorageSettings
) -> None:
    """moto signs with a key of its own whose certificate only moto serves, under a
    SigningCertURL on the SNS host: with verification on, the certificate SNS serves there does
    not verify it, so the notification is refused (403), as it would be on AWS."""
    sns = await start_sns()
    status, answer = await sns.post(moto_notification)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert "signature does not verify" in answer["error"]["message"]
    assert sns.announced == []
    # What moto signs is the same string to sign: its own certificate (served by moto) verifies it.
    pem_path = moto_notification["SigningCertURL"].removeprefix(f"https://{SNS_HOST}")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{s3_settings.endpoint_url}{pem_path}", headers=MOTO_SNS_ROUTE) as got,
    ):
        moto_key = x509.load_pem_x509_certificate(await got.read()).public_key()
    assert isinstance(moto_key, rsa.RSAPublicKey)
    signature = base64.b64decode(moto_notification["Signature"])
    moto_key.verify(
        signature, string_to_sign(moto_notification).encode(), padding.PKCS1v15(), hashes.SHA256()
    )


def test_signatures_are_verified_unless_the_setting_turns_them_off(tmp_path: Path) -> None:
    """`[events] sns_signatures` defaults to "verify", takes "off", and refuses anything else
    naming the key."""
    assert Settings().events.sns_signatures == "verify"
    config = tmp_path / "ocrbatch.toml"
    config.write_text('[events]\nsns_signatures = "off"\n', encoding="utf-8")
    assert load_settings(config).events.sns_signatures == "off"
    config.write_text('[events]\nsns_signatures = "sometimes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"events\.sns_signatures"):
        load_settings(config)
