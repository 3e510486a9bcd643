"""The emulator's admin endpoints, beside the OCR ones: health, statistics and the fault controls.

`GET /healthz` (the container image's HEALTHCHECK), `GET /_emulator/stats`, `POST /_emulator/reset`,
`POST /_emulator/script` (a list of scripted faults), `POST /_emulator/faults` (change rates) and
`POST /_emulator/hold` (`{"hold": true}` keeps admitted calls waiting until `{"hold": false}`).
A body these cannot read is answered 400 with the reason. Every route but `/healthz` needs the
header `X-OCR-ADMIN-TOKEN` (`--admin-token`, or the one generated at start): without it, 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from pydantic import SecretStr, ValidationError

from ocrbatch.clova.recognition import Recogniser
from ocrbatch.emulator.faults import FaultPlan, FaultSettings, ScriptedFault

ADMIN_TOKEN_HEADER = "X-OCR-ADMIN-TOKEN"  # noqa: S105 - a header name, not a credential
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Controls(Protocol):
    """What the admin endpoints read and steer: the emulator, seen from its control panel."""

    @property
    def admin_token(self) -> SecretStr: ...

    @property
    def recogniser(self) -> Recogniser: ...

    @property
    def faults(self) -> FaultPlan: ...

    def stats(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def hold(self) -> None: ...

    def release(self) -> None: ...


def admin_routes(emulator: Controls) -> list[web.RouteDef]:
    """The admin routes of `emulator`, to be added before its catch-all OCR route."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "engine": emulator.recogniser.name})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(emulator.stats())

    async def reset(request: web.Request) -> web.Response:
        emulator.reset()
        return web.json_response(emulator.stats())

    async def script(request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            faults = [ScriptedFault.model_validate(item) for item in payload]
        except (ValueError, TypeError, ValidationError) as exc:
            return web.json_response({"error": f"expected a list of scripted faults: {exc}"}, status=400)
        emulator.faults.script(faults)
        return web.json_response({"scripted_faults_left": emulator.faults.scripted_left})

    async def faults(request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            settings = FaultSettings.model_validate({**emulator.faults.settings.model_dump(), **changes})
        except (ValueError, TypeError, ValidationError) as exc:
            return web.json_response({"error": f"invalid fault settings: {exc}"}, status=400)
        emulator.faults.configure(settings)
        return web.json_response(settings.model_dump())

    async def hold(request: web.Request) -> web.Response:
        try:
            held = bool((await request.json())["hold"])
        except (ValueError, TypeError, KeyError):
            return web.json_response({"error": 'expected {"hold": true|false}'}, status=400)
        if held:
            emulator.hold()
        else:
            emulator.release()
        return web.json_response({"hold": held})

    def guarded(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            given = request.headers.get(ADMIN_TOKEN_HEADER, "").encode()
            if not hmac.compare_digest(given, emulator.admin_token.get_secret_value().encode()):
                message = f"the emulator's control routes need the {ADMIN_TOKEN_HEADER} header"
                return web.json_response({"error": message}, status=401)
            return await handler(request)

        return checked

    return [
        web.get("/_emulator/stats", guarded(stats)),
        web.post("/_emulator/reset", guarded(reset)),
        web.post("/_emulator/script", guarded(script)),
        web.post("/_emulator/faults", guarded(faults)),
        web.post("/_emulator/hold", guarded(hold)),
        web.get("/healthz", health),
    ]
