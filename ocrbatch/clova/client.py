"""The CLOVA OCR client: one shared aiohttp session, three transfer modes, every answer classified.

A call returns the parsed `OcrResponse` (whose images may still say FAILURE or ERROR: that is a
per-image outcome, not a failed call), or raises `OcrError` with the class the worker acts on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from pydantic import SecretStr, ValidationError

from ocrbatch.clova.contract import (
    ErrorBody,
    ErrorClass,
    OcrError,
    OcrResponse,
    classify,
    parse_retry_after,
    request_message,
)
from ocrbatch.settings import DomainSettings

TransferMode = Literal["data", "multipart", "url"]
_CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "pdf": "application/pdf",
    "tif": "image/tiff",
    "tiff": "image/tiff",
}


@dataclass(frozen=True)
class OcrCall:
    """One image to recognise: its bytes (sent as the domain's mode says: base64 `data`, or
    `multipart`, which url-mode domains use for bytes too) or a URL the service fetches."""

    name: str
    image_format: str
    data: bytes | None = None
    url: str | None = None
    lang: str | None = None
    template_ids: tuple[int, ...] = ()
    table_detection: bool = False


def sending_overhead_bytes(data_bytes: int, transfer_mode: TransferMode) -> int:
    """Memory a call holds beside the image's own bytes while it is sent: in `data` mode the
    base64 text, the JSON text made of it and that text encoded as the body (each 4/3 of the
    image; all three at once at the peak). Multipart, which url-mode domains use for bytes too,
    sends the bytes as they are."""
    if transfer_mode != "data":
        return 0
    return 3 * 4 * math.ceil(data_bytes / 3)


def open_ocr_session(*, max_connections: int = 100, connect_timeout_s: float = 10.0) -> aiohttp.ClientSession:
    """The one HTTP session every OCR client shares (connection pool bounded by `max_connections`)."""
    connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)


class OcrClient:
    """Calls one OCR domain's invoke URL."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        invoke_url: str,
        secret: SecretStr,
        transfer_mode: TransferMode = "data",
        request_timeout_s: float = 120.0,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._session = session
        self._invoke_url = invoke_url
        self._secret = secret
        self.transfer_mode = transfer_mode
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._timeout_s = request_timeout_s
        self._clock_ms = clock_ms

    @classmethod
    def for_domain(cls, session: aiohttp.ClientSession, domain: DomainSettings) -> OcrClient:
        return cls(
            session,
            invoke_url=domain.invoke_url,
            secret=domain.secret,
            transfer_mode=domain.transfer_mode,
            request_timeout_s=domain.request_timeout_s,
        )

    async def recognize(self, call: OcrCall) -> OcrResponse:
        """Send one call in this domain's transfer mode; `OcrError` unless the service answered 200."""
        request = self._request_kwargs(call)
        try:
            async with self._session.post(
                self._invoke_url,
                headers={"X-OCR-SECRET": self._secret.get_secret_value()},
                allow_redirects=False,  # the secret goes to the configured URL and nowhere else
                **request,
            ) as response:
                if 300 <= response.status < 400:
                    raise OcrError(
                        ErrorClass.FATAL_DOMAIN,
                        f"the service answered HTTP {response.status} (a redirect to "
                        f"{response.headers.get('Location', 'nowhere')!r}); redirects are not followed, "
                        "so the OCR secret never leaves the configured invoke_url: configure the final URL",
                        http_status=response.status,
                    )
                body = await response.read()
                if response.status != 200:
                    raise _error_from_answer(response.status, body, response.headers.get("Retry-After"))
                return _parse_response(body)
        except TimeoutError:
            raise OcrError(ErrorClass.TRANSPORT, f"no answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise OcrError(ErrorClass.TRANSPORT, _describe_transport_error(exc)) from None

    def _request_kwargs(self, call: OcrCall) -> dict[str, Any]:
        timestamp_ms = self._clock_ms() if self._clock_ms else None
        common: dict[str, Any] = {
            "name": call.name,
            "image_format": call.image_format,
            "lang": call.lang,
            "template_ids": list(call.template_ids),
            "table_detection": call.table_detection,
            "timestamp_ms": timestamp_ms,
        }
        if call.url is not None and call.data is None:
            return {"json": request_message(url=call.url, **common), "timeout": self._timeout}
        if call.data is None:
            raise ValueError("an OcrCall needs data or a url")
        # In url mode, parts of a split PDF have no URL of their own: they travel as multipart.
        if self.transfer_mode == "data":
            data_b64 = base64.b64encode(call.data).decode("ascii")
            return {"json": request_message(data_b64=data_b64, **common), "timeout": self._timeout}
        form = aiohttp.FormData()
        form.add_field("message", json.dumps(request_message(**common)), content_type="application/json")
        form.add_field(
            "file",
            call.data,
            filename=call.name.rsplit("/", 1)[-1] or "image",
            content_type=_CONTENT_TYPES.get(call.image_format, "application/octet-stream"),
        )
        return {"data": form, "timeout": self._timeout}


def _parse_response(body: bytes) -> OcrResponse:
    try:
        return OcrResponse.model_validate_json(body)
    except ValidationError:
        # A 200 that is not a CLOVA answer (a proxy's page, a cut-off body): worth another try.
        message = "the answer was not a valid OCR response"
        raise OcrError(ErrorClass.SERVICE, message, http_status=200) from None


def _error_from_answer(status: int, body: bytes, retry_after: str | None) -> OcrError:
    """An `OcrError` from a non-200 answer, classified by the body's code when it has one."""
    error: ErrorBody | None = None
    with contextlib.suppress(ValidationError):
        error = ErrorBody.model_validate_json(body)
    code = error.code if error else None
    if error is not None and error.message:
        message = " ".join(error.message.split())
    else:
        message = f"HTTP {status} without an OCR error body"
    return OcrError(
        classify(status, code),
        message,
        code=code,
        http_status=status,
        trace_id=error.trace_id if error else None,
        retry_after_s=parse_retry_after(retry_after),
    )


def _describe_transport_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error ({exc.strerror or type(exc).__name__})"
    return f"connection error ({type(exc).__name__})"
