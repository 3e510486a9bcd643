"""Every row of the CLOVA error table: the emulator produces it, the client classifies it (SPEC §3)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fixtures.emulator import StartEmulator, client_for, png_bytes
from pydantic import SecretStr

from ocrbatch.clova.client import OcrCall, OcrClient
from ocrbatch.clova.contract import ErrorClass, OcrError, classify, parse_retry_after
from ocrbatch.emulator.faults import ScriptedFault
from ocrbatch.settings import DomainSettings

IMAGE = png_bytes()
DATA = Path(__file__).parent / "data"


def call(name: str = "scan.png", **overrides: object) -> OcrCall:
    fields: dict[str, object] = {"name": name, "image_format": "png", "data": IMAGE}
    fields.update(overrides)
    return OcrCall(**fields)  # type: ignore[arg-type]  # test shorthand over a frozen dataclass


async def failure(client_call: object) -> OcrError:
    with pytest.raises(OcrError) as caught:
        await client_call  # type: ignore[misc]  # an awaitable of the client
    return caught.value


@pytest.mark.parametrize(
    ("path", "secret", "code", "status"),
    [
        ("/nowhere", None, "0001", 400),
        ("/custom/v1/9999/signature/general", None, "0022", 400),
        ("/general", "wrong-secret", "0002", 401),
    ],
)
async def test_domain_configuration_errors_are_fatal(
    start_emulator: StartEmulator,
    ocr_session: aiohttp.ClientSession,
    *,
    path: str,
    secret: str | None,
    code: str,
    status: int,
) -> None:
    """A wrong URL (0001), domain (0022) or secret (0002) is fatal for the domain, with its trace id."""
    emulator = await start_emulator()
    error = await failure(client_for(ocr_session, emulator, path=path, secret=secret).recognize(call()))
    assert (error.code, error.http_status, error.error_class) == (code, status, ErrorClass.FATAL_DOMAIN)
    assert error.error_class.fatal
    assert not error.error_class.retryable
    assert error.trace_id
    assert emulator.stats()["rejections"] == {code: 1}


async def test_service_path_shape_is_served(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """The invoke URL shape of the service, /custom/v1/{domain id}/{signature}/general, reaches the domain."""
    emulator = await start_emulator()
    client = client_for(ocr_session, emulator, path="/custom/v1/1001/abcdef0123/general")
    assert (await client.recognize(call())).images[0].infer_result == "SUCCESS"


@pytest.mark.parametrize(
    "bad_call",
    [call(image_format="gif"), call(data=b""), call(name="")],
    ids=["unknown format", "empty image", "no name"],
)
async def test_invalid_body_fails_the_item_only(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession, bad_call: OcrCall
) -> None:
    """A body the service refuses (0011) fails that item without retries."""
    emulator = await start_emulator()
    error = await failure(client_for(ocr_session, emulator).recognize(bad_call))
    assert (error.code, error.http_status, error.error_class) == ("0011", 400, ErrorClass.ITEM_INVALID)
    assert not error.error_class.retryable
    assert not error.error_class.fatal


async def test_unsupported_version_is_refused_and_fatal(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """The emulator refuses a version other than V1/V2 with 0021, which the client takes as fatal."""
    emulator = await start_emulator()
    body = {
        "version": "V9",
        "requestId": "r",
        "timestamp": 1,
        "images": [{"format": "png", "name": "a", "data": "AA=="}],
    }
    headers = {"X-OCR-SECRET": "emulator-general-secret"}
    async with ocr_session.post(emulator.url + "/general", json=body, headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "0021"
    emulator.faults.script([_scripted(code="0021")])
    error = await failure(client_for(ocr_session, emulator).recognize(call()))
    assert (error.code, error.error_class) == ("0021", ErrorClass.FATAL_DOMAIN)


async def test_quota_reached_is_0023_as_http_400(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """Past the quota the service answers 0023 with HTTP 400; the client pauses-and-retries it."""
    emulator = await start_emulator(quota=1)
    client = client_for(ocr_session, emulator)
    await client.recognize(call())
    error = await failure(client.recognize(call("second.png")))
    assert (error.code, error.http_status, error.error_class) == ("0023", 400, ErrorClass.QUOTA)
    assert error.error_class.retryable


async def test_rate_limit_is_0025_as_http_400_with_retry_after(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """Over the concurrency cap the call is answered 0025 (HTTP 400); Retry-After is carried along."""
    emulator = await start_emulator(max_concurrent_calls=1)
    client = client_for(ocr_session, emulator)
    emulator.hold()
    first = asyncio.create_task(client.recognize(call("first.png")))
    await emulator.wait_for_in_flight(1)
    error = await failure(client.recognize(call("second.png")))
    emulator.release()
    assert (await first).images[0].infer_result == "SUCCESS"
    assert (error.code, error.http_status, error.error_class) == ("0025", 400, ErrorClass.RATE_LIMITED)
    assert error.error_class.retryable
    emulator.faults.script([_scripted(code="0025", retry_after_s=7)])
    assert (await failure(client.recognize(call()))).retry_after_s == 7


async def test_calls_per_second_budget_is_0025(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """With a calls-per-second budget, calls beyond it within one second are answered 0025."""
    emulator = await start_emulator(calls_per_second=2, max_concurrent_calls=10)
    client = client_for(ocr_session, emulator)
    results = await asyncio.gather(
        *(client.recognize(call(f"{n}.png")) for n in range(5)), return_exceptions=True
    )
    refused = [result for result in results if isinstance(result, OcrError)]
    assert len(refused) == 3
    assert {error.code for error in refused} == {"0025"}


async def test_table_detection_on_a_domain_without_tables_is_0028(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """Asking for tables when the domain's switch is off is 0028, fatal for batches that ask for tables."""
    emulator = await start_emulator(table_extraction=False)
    error = await failure(client_for(ocr_session, emulator).recognize(call(table_detection=True)))
    assert (error.code, error.http_status, error.error_class) == ("0028", 400, ErrorClass.TABLES_DISABLED)
    assert error.error_class.fatal


async def test_undeployed_template_is_1021(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A template id that is not deployed is 1021 (HTTP 500), fatal for the domain's Template batches."""
    emulator = await start_emulator(template_ids=(101,))
    client = client_for(ocr_session, emulator, kind="template")
    error = await failure(client.recognize(call(template_ids=(999,))))
    assert (error.code, error.http_status, error.error_class) == (
        "1021",
        500,
        ErrorClass.TEMPLATE_NOT_DEPLOYED,
    )
    assert error.error_class.fatal


@pytest.mark.parametrize("code", ["0500", "0501"])
async def test_service_errors_are_retryable(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession, code: str
) -> None:
    """0500 and 0501 (HTTP 500) are retried with backoff."""
    emulator = await start_emulator()
    emulator.faults.script([_scripted(code=code)])
    error = await failure(client_for(ocr_session, emulator).recognize(call()))
    assert (error.code, error.http_status, error.error_class) == (code, 500, ErrorClass.SERVICE)
    assert error.error_class.retryable


async def test_random_service_errors_at_full_rate(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """The error-rate fault answers 0500 or 0501."""
    emulator = await start_emulator(faults={"error_rate": 1.0})
    error = await failure(client_for(ocr_session, emulator).recognize(call()))
    assert error.code in ("0500", "0501")


async def test_bare_5xx_is_a_retryable_transport_error(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A 5xx without a CLOVA body (a gateway's page) is a transport error, with its Retry-After."""
    emulator = await start_emulator()
    emulator.faults.script([_scripted(http_status=503, retry_after_s=4)])
    error = await failure(client_for(ocr_session, emulator).recognize(call()))
    assert (error.code, error.http_status, error.error_class) == (None, 503, ErrorClass.TRANSPORT)
    assert error.retry_after_s == 4
    assert error.error_class.retryable


async def test_dropped_connection_is_a_transport_error(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A connection closed without an answer is a retryable transport error."""
    emulator = await start_emulator()
    emulator.faults.script([_scripted(drop=True)])
    error = await failure(client_for(ocr_session, emulator).recognize(call()))
    assert error.error_class is ErrorClass.TRANSPORT
    assert "closed the connection" in str(error)
    assert emulator.stats()["answers"] == {"dropped": 1}


async def test_timeout_is_a_transport_error(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A call that gets no answer within the domain's timeout is a retryable transport error."""
    emulator = await start_emulator()
    emulator.hold()  # the call is admitted and then never answered
    error = await failure(client_for(ocr_session, emulator, timeout_s=0.2).recognize(call()))
    assert error.error_class is ErrorClass.TRANSPORT
    assert "no answer within 0.2 s" in str(error)


async def test_unreachable_endpoint_is_a_transport_error(ocr_session: aiohttp.ClientSession) -> None:
    """Nothing listening is a transport error naming the address, never the secret."""
    client = OcrClient(ocr_session, invoke_url="http://127.0.0.1:9/general", secret=SecretStr("SECRET-XYZ"))
    error = await failure(client.recognize(call()))
    assert error.error_class is ErrorClass.TRANSPORT
    assert "cannot connect to 127.0.0.1:9" in str(error)
    assert "SECRET-XYZ" not in str(error)


async def test_image_level_failure_is_an_answer_not_an_error(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """FAILURE and ERROR results arrive as HTTP 200 answers: a per-image outcome, not a failed call."""
    emulator = await start_emulator()
    emulator.faults.script([_scripted(infer_result="FAILURE"), _scripted(infer_result="ERROR")])
    client = client_for(ocr_session, emulator)
    assert (await client.recognize(call())).images[0].infer_result == "FAILURE"
    assert (await client.recognize(call())).images[0].infer_result == "ERROR"
    assert emulator.stats()["recognitions"] == {}


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "0023", ErrorClass.QUOTA),
        (400, "0025", ErrorClass.RATE_LIMITED),
        (429, None, ErrorClass.RATE_LIMITED),
        (403, None, ErrorClass.FATAL_DOMAIN),
        (404, None, ErrorClass.FATAL_DOMAIN),
        (413, None, ErrorClass.ITEM_INVALID),
        (500, "9999", ErrorClass.SERVICE),
        (502, None, ErrorClass.TRANSPORT),
    ],
)
def test_classification_reads_the_code_before_the_status(
    status: int, code: str | None, expected: ErrorClass
) -> None:
    """Known codes decide the class whatever the status; without one, the status does."""
    assert classify(status, code) is expected


def test_retry_after_accepts_seconds_and_dates() -> None:
    """Retry-After is read as delta-seconds or as an HTTP date relative to now."""
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now_s=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def _scripted(**fields: object) -> ScriptedFault:
    return ScriptedFault.model_validate(fields)


async def test_error_answers_have_the_service_body(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """The emulator's error answers carry exactly the fields of the service's error body example."""
    example = json.loads((DATA / "error-response.json").read_text(encoding="utf-8"))
    emulator = await start_emulator()
    async with ocr_session.post(
        emulator.url + "/general", json={}, headers={"X-OCR-SECRET": "x"}
    ) as response:
        body = await response.json()
    assert set(body) == set(example)
    assert (body["code"], body["message"], body["path"]) == (
        "0002",
        "Secret key validate failed.",
        "/general",
    )


async def test_client_for_a_configured_domain(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A client built from a domain's settings uses its URL, secret, transfer mode and language."""
    emulator = await start_emulator()
    domain = DomainSettings(
        kind="general",
        invoke_url=emulator.url + "/general",
        secret="emulator-general-secret",
        transfer_mode="multipart",
    )
    client = OcrClient.for_domain(ocr_session, domain)
    assert client.transfer_mode == "multipart"
    response = await client.recognize(call(lang="ja"))
    assert response.images[0].infer_result == "SUCCESS"
    wrong = OcrClient.for_domain(ocr_session, domain.model_copy(update={"secret": SecretStr("nope")}))
    assert (await failure(wrong.recognize(call()))).code == "0002"


async def test_the_ocr_secret_never_follows_a_redirect(ocr_session: aiohttp.ClientSession) -> None:
    """An invoke URL that answers 307 to another route: the call fails as a fatal domain error
    naming the redirect, and the route it points at never sees a request (nor the secret)."""
    captured: list[str | None] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/capture")

    async def capture(request: web.Request) -> web.Response:
        captured.append(request.headers.get("X-OCR-SECRET"))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/general", redirect)
    app.router.add_post("/capture", capture)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        client = OcrClient(
            ocr_session, invoke_url=str(server.make_url("/general")), secret=SecretStr("s3cret")
        )
        with pytest.raises(OcrError) as raised:
            await client.recognize(OcrCall(name="a.png", image_format="png", data=png_bytes()))
    assert raised.value.error_class is ErrorClass.FATAL_DOMAIN
    assert "redirects are not followed" in str(raised.value)
    assert "/capture" in str(raised.value)
    assert captured == []
