"""`ocrbatch emulator`: a CLOVA OCR compatible server with limits, faults and usage statistics.

It serves one General domain (`POST /general`) and one Template domain (`POST /infer`), also under
the service's path shape `/custom/v1/{domain id}/{signature}/general|infer`. Each call goes through
the checks of the real service in order: URL (0001), domain (0022), secret (0002), quota (0023)
and rate (0025), body (0011), version (0021), templates (1021), table switch (0028); then the
fault plan (0500/0501, bare 5xx, dropped connections, FAILURE/ERROR results, latency); then the
images of the recogniser.

The recogniser is the one the settings pick (`settings.recogniser_for`), seen only through its
interface (`clova.recognition.Recogniser`): deterministic results built from the image itself, or
with `engine="tesseract"` the local OCR engine (real recognition, the same checks, limits and
faults). A route for a contract it does not serve answers 0022; a request for tables it cannot
detect answers 0028.

The admin endpoints (`admin`) report statistics and steer the faults; `hold()` keeps admitted
calls waiting, to hold slots busy in tests.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from ocrbatch.clova.contract import ERROR_CODES, OcrImage, OcrResponse
from ocrbatch.clova.documents import UnreadableDocument
from ocrbatch.clova.recognition import RecognitionCall, RecognitionFailed
from ocrbatch.emulator.admin import admin_routes
from ocrbatch.emulator.faults import Decision, FaultPlan
from ocrbatch.emulator.limits import DomainMeter
from ocrbatch.emulator.requests import BadCall, ParsedCall, parse_call
from ocrbatch.emulator.settings import EmulatorSettings, recogniser_for
from ocrbatch.types import Clock, DomainKind

STOP_GRACE_S = 0.5
MAX_BODY_BYTES = 80 * 1024 * 1024  # a 50 MB image, base64-encoded, plus the message
ROUTES: dict[DomainKind, str] = {"general": "/general", "template": "/infer"}


@dataclass(frozen=True)
class _Answer(Exception):
    """Stops a call with a CLOVA error answer."""

    code: str
    retry_after_s: int | None = None


class Emulator:
    """The server: `async with Emulator(settings) as emulator: emulator.url`."""

    def __init__(self, settings: EmulatorSettings, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.faults = FaultPlan(settings.faults)
        self._released = asyncio.Event()
        self._released.set()
        self._in_flight_changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._fetch_session: aiohttp.ClientSession | None = None
        self.recogniser = recogniser_for(settings)
        self.admin_token = settings.admin_token or SecretStr(secrets.token_urlsafe(24))
        self.url = ""
        self.reset()

    # -- lifecycle --------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes(admin_routes(self))
        app.router.add_route("*", "/{path:.*}", self._ocr_handler)
        return app

    async def start(self) -> str:
        """Start the recogniser, listen (port 0 picks a free one) and return the base URL. A
        recogniser that cannot start (`EngineUnavailable`: no Tesseract) stops it before it listens."""
        await self.recogniser.start()
        self._fetch_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        # A stopping emulator drops calls still waiting out an injected latency after a moment.
        self._runner = web.AppRunner(
            self.app(), handle_signals=False, access_log=None, shutdown_timeout=STOP_GRACE_S
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._fetch_session is not None:
            await self._fetch_session.close()
            self._fetch_session = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- control ----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every statistic, quota use and scripted fault."""
        settings = self.settings
        self.meters = {
            kind: DomainMeter(settings.max_concurrent_calls, settings.calls_per_second, settings.quota)
            for kind in ("general", "template")
        }
        self.calls = 0
        self.answers: Counter[str] = Counter()
        self.recognitions: Counter[str] = Counter()
        self.names_in_flight: Counter[str] = Counter()
        self.faults.clear_script()

    def hold(self) -> None:
        """Keep admitted calls waiting (their slots stay busy) until `release()`."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def wait_for_in_flight(self, count: int) -> None:
        """Return once `count` calls are in flight across both domains (for tests, with `hold`)."""
        await self.wait_until(lambda: sum(meter.in_flight for meter in self.meters.values()) >= count)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; it is checked whenever a call is admitted or finishes."""
        async with self._in_flight_changed:
            await self._in_flight_changed.wait_for(predicate)

    async def _notify_in_flight(self) -> None:
        async with self._in_flight_changed:
            self._in_flight_changed.notify_all()

    def stats(self) -> dict[str, Any]:
        now_s = self._clock()
        rejections = {key: count for key, count in sorted(self.answers.items()) if key != "200"}
        return {
            "calls": self.calls,
            "answers": dict(sorted(self.answers.items())),
            "rejections": rejections,
            "successes": sum(self.recognitions.values()),
            "in_flight": sum(meter.in_flight for meter in self.meters.values()),
            "peak_in_flight": max(meter.peak_in_flight for meter in self.meters.values()),
            "domains": {kind: meter.snapshot(now_s) for kind, meter in self.meters.items()},
            "recognitions": dict(sorted(self.recognitions.items())),
            "recognised_more_than_once": {
                name: count for name, count in sorted(self.recognitions.items()) if count > 1
            },
            "scripted_faults_left": self.faults.scripted_left,
            "engine": self.recogniser.stats(),
        }

    def banner(self) -> str:
        """The startup line after the URL: the route of each contract served, and what recognises."""
        routes = "  ".join(
            f"{kind}: {self.url}{ROUTES[kind]}" for kind in ROUTES if kind in self.recogniser.kinds
        )
        description = self.recogniser.description()
        return f"{routes}  ({description})" if description else routes

    # -- the OCR endpoints ------------------------------------------------------------------------

    async def _ocr_handler(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        try:
            kind = self._route(request)
            self._check_secret(request, kind)
            return await self._admitted_call(request, kind)
        except _Answer as answer:
            return self._error_answer(request, answer)

    def _route(self, request: web.Request) -> DomainKind:
        parts = [part for part in request.path.split("/") if part]
        if request.method != "POST" or not parts or parts[-1] not in ("general", "infer"):
            raise _Answer("0001")
        kind: DomainKind = "general" if parts[-1] == "general" else "template"
        if kind not in self.recogniser.kinds:
            raise _Answer("0022")  # as for a domain that does not exist (the engine: General only)
        if len(parts) == 1:
            return kind
        expected = self.settings.general_domain_id if kind == "general" else self.settings.template_domain_id
        if len(parts) == 5 and parts[:2] == ["custom", "v1"]:
            if parts[2] != expected:
                raise _Answer("0022")
            return kind
        raise _Answer("0001")

    def _check_secret(self, request: web.Request, kind: DomainKind) -> None:
        secret = self.settings.general_secret if kind == "general" else self.settings.template_secret
        if request.headers.get("X-OCR-SECRET") != secret.get_secret_value():
            raise _Answer("0002")

    async def _admitted_call(self, request: web.Request, kind: DomainKind) -> web.StreamResponse:
        meter = self.meters[kind]
        refused = meter.try_admit(self._clock())
        if refused is not None:
            raise _Answer(refused)
        admitted_at_s = self._clock()
        await self._notify_in_flight()
        try:
            await self._released.wait()
            call = await self._parse(request, kind)
            self.names_in_flight[call.name] += 1
            try:
                decision = self.faults.decide(call.name)
                if decision.latency_s > 0:
                    await asyncio.sleep(decision.latency_s)
                return await self._answer(request, kind, call, decision)
            finally:
                self.names_in_flight[call.name] -= 1
                if not self.names_in_flight[call.name]:
                    del self.names_in_flight[call.name]
        finally:
            meter.release(admitted_at_s, self._clock())
            await self._notify_in_flight()

    async def _parse(self, request: web.Request, kind: DomainKind) -> ParsedCall:
        try:
            return await parse_call(
                request,
                kind=kind,
                deployed_template_ids=self.settings.template_ids,
                table_extraction=self.settings.table_extraction and self.recogniser.detects_tables,
            )
        except BadCall as bad:
            raise _Answer(bad.code) from None

    async def _answer(
        self, request: web.Request, kind: DomainKind, call: ParsedCall, decision: Decision
    ) -> web.StreamResponse:
        if decision.drop:
            self.answers["dropped"] += 1
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable  # never delivered: the connection is gone
        if decision.code is not None:
            raise _Answer(decision.code, decision.retry_after_s)
        if decision.http_status is not None:
            self.answers[str(decision.http_status)] += 1
            headers = (
                {"Retry-After": str(decision.retry_after_s)} if decision.retry_after_s is not None else {}
            )
            return web.Response(
                status=decision.http_status,
                text="<html>gateway error</html>",
                content_type="text/html",
                headers=headers,
            )
        images = await self._images(kind, call, decision)
        if all(image.infer_result == "SUCCESS" for image in images):
            self.recognitions[call.name] += 1
        self.answers["200"] += 1
        response = OcrResponse(
            version=call.version,
            request_id=call.request_id,
            timestamp=int(time.time() * 1000),
            images=images,
        )
        return web.json_response(response.to_wire())

    async def _images(self, kind: DomainKind, call: ParsedCall, decision: Decision) -> list[OcrImage]:
        if decision.infer_result is not None:
            return [
                _failed_image(
                    call.name, decision.infer_result, f"{decision.infer_result}: injected by the emulator"
                )
            ]
        if call.data is not None:
            data = call.data
        else:  # parse_call guarantees a URL when there are no bytes
            try:
                data = await self._fetch(call.url or "")
            except _FetchError as exc:
                return [_failed_image(call.name, "FAILURE", f"image download failed: {exc}")]
        try:
            return await self._recognise(kind, call, data)
        except UnreadableDocument as exc:
            return [_failed_image(call.name, "FAILURE", f"image could not be read: {exc}")]
        except RecognitionFailed as exc:
            return [_failed_image(call.name, exc.infer_result, str(exc))]

    async def _recognise(self, kind: DomainKind, call: ParsedCall, data: bytes) -> list[OcrImage]:
        recognition = RecognitionCall(
            kind=kind,
            name=call.name,
            data=data,
            image_format=call.image_format,
            lang=call.lang,
            table_detection=call.table_detection,
            template_ids=call.template_ids or self.settings.template_ids,
        )
        return await self.recogniser.recognise(recognition)

    async def _fetch(self, url: str) -> bytes:
        if self._fetch_session is None:
            raise _FetchError("the emulator is not started")
        try:
            async with self._fetch_session.get(url) as response:
                if response.status != 200:
                    raise _FetchError(f"HTTP {response.status}")
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _FetchError(type(exc).__name__) from None

    def _error_answer(self, request: web.Request, answer: _Answer) -> web.Response:
        self.answers[answer.code] += 1
        error = ERROR_CODES[answer.code]
        body = {
            "code": error.code,
            "message": error.message,
            "path": request.path,
            "traceId": uuid.uuid4().hex,
            "timestamp": int(time.time() * 1000),
        }
        headers = {"Retry-After": str(answer.retry_after_s)} if answer.retry_after_s is not None else None
        return web.json_response(body, status=error.http_status, headers=headers)


class _FetchError(Exception):
    pass


def _failed_image(name: str, infer_result: str, message: str) -> OcrImage:
    return OcrImage.model_validate(
        {
            "uid": uuid.uuid4().hex,
            "name": name,
            "inferResult": infer_result,
            "message": message,
            "validationResult": {"result": "NO_REQUESTED"},
        }
    )
