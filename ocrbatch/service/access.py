"""Who may use the API: the bind check, and the Host, cross-site and token middlewares."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import SecretStr

from ocrbatch.errors import ConfigError
from ocrbatch.service.responses import ApiError

EVENTS_PATH = "/api/v1/events/s3"
# The web console's pages: it checks its own session cookie and CSRF tokens (`ocrbatch.console`).
CONSOLE_PREFIX = "/console"
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_bind(host: str, token: SecretStr | None) -> None:
    """Refuse to serve without a token on anything but loopback; `ConfigError` says why."""
    if token is not None or _is_loopback(host):
        return
    raise ConfigError(
        f"api.host is {host!r}, which is not a loopback address, and no api.token is set: "
        "set api.token (OCRBATCH_API__TOKEN or api.token_file) or bind to 127.0.0.1"
    )


def _is_loopback(host: str) -> bool:
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_console_path(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_middleware(public_hosts: Sequence[str]) -> Middleware:
    served = [_host_and_port(host) for host in public_hosts]

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        """421 unless the Host header names this server: a loopback name, an IP address (which no
        other site's page can be served from) or one of `public_hosts` (with its port, if it
        names one). A page whose name an attacker re-pointed at this address (DNS rebinding)
        sends its own name. Health and metrics answer any name, for probes."""
        if request.path not in UNAUTHENTICATED_PATHS and not _served_host(request.host, served):
            raise ApiError(
                421,
                "misdirected_request",
                f"this server does not answer to the host name {request.host!r}; add it to api.public_hosts",
            )
        return await handler(request)

    return host_check


def _served_host(header: str, served: Sequence[tuple[str, int | None]]) -> bool:
    host, port = _host_and_port(header)
    if _is_loopback(host) or host.endswith(".localhost") or _is_ip(host):
        return True
    return any(host == name and wanted in (None, port) for name, wanted in served)


def _host_and_port(text: str) -> tuple[str, int | None]:
    """`name[:port]` or `[v6][:port]`, the name lowercased; the port None when absent or bad."""
    text = text.strip().casefold()
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        name, _, port_text = text.partition(":") if text.count(":") == 1 else (text, "", "")
    return name.rstrip("."), int(port_text) if port_text.isdigit() else None


@web.middleware
async def cross_site_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a web page in a browser cannot do to this API: a state-changing request must carry
    JSON (`Content-Type: application/json`, which a page can send cross-site only after a CORS
    preflight this API never answers; else 415), and one carrying an `Origin` must come from this
    API's own origin (else 403). S3 event notifications are exempt from the first (SNS sends them
    as text/plain), and so are the console's forms, which carry a CSRF token instead."""
    if request.method not in _CHANGING:
        return await handler(request)
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise ApiError(403, "forbidden", f"requests from the origin {origin!r} are not accepted")
    if is_console_path(request.path):
        return await handler(request)  # its forms are posted as forms, with a CSRF token each
    if request.path != EVENTS_PATH and request.can_read_body and request.content_type != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "state-changing requests need Content-Type: application/json"
        )
    return await handler(request)


def auth_middleware(token: SecretStr | None) -> Middleware:
    expected = token.get_secret_value().encode() if token is not None else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bearer-token check on everything but health and the console, whose session cookie is
        given for the same token (constant-time comparison)."""
        if expected is None or request.path in UNAUTHENTICATED_PATHS or is_console_path(request.path):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if request.path == EVENTS_PATH and "token" in request.query:
            scheme, given = "bearer", request.query["token"]  # SNS cannot send headers: ?token=
        if scheme.casefold() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(
                401,
                "unauthorized",
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="ocrbatch"'},
            )
        return await handler(request)

    return auth
