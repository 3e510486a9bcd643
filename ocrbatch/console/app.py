"""The console as an aiohttp application, mounted by the API at `/console/`.

Pages are rendered on the server with Jinja2 (aiohttp-jinja2, autoescaped, undefined names are
errors); htmx, vendored in `static/`, refreshes the batch page's progress and fetches the estimate
without a reload. Its middlewares, outermost first:
- `_headers`: a strict Content-Security-Policy (scripts and styles from this console only, no
  framing) and `Server-Timing: app;dur=<ms>` on every answer, so the time a page took on the
  server shows in the browser (the browser tests log it);
- `_errors`: failures as HTML pages with the reason (not found, storage down, broken document);
- `_session`: the language, then the login: every page but the login form and the static files
  needs a session cookie, and every POST its CSRF token.
The API's own middlewares run first: the Host check and the Origin check apply here too.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from pydantic import SecretStr

from ocrbatch.batches.broken import BrokenBatchDocument
from ocrbatch.batches.remote import RemoteEdits
from ocrbatch.console.context import CONTEXT, RequestContext, context_of
from ocrbatch.console.i18n import LANG_COOKIE, choose_lang, translator
from ocrbatch.console.pages import add_routes
from ocrbatch.console.sessions import SESSION_COOKIE, Sessions
from ocrbatch.errors import BatchNotFound, ExportRefused, ObjectNotFound, StorageError
from ocrbatch.settings import DomainSettings
from ocrbatch.worker.operations import BatchOperations
from ocrbatch.worker.views import NotViewable

log = structlog.get_logger("ocrbatch.console")
PACKAGE_DIR: Final = Path(__file__).parent
# Pages reachable without a session: the login form and what it needs.
_OPEN_PATHS: Final = ("/console/login", "/console/lang")
_STATIC_PREFIX: Final = "/console/static/"
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_versions() -> dict[str, str]:
    """Each static file's content hash, appended to its URL so browsers never use a stale copy."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in (PACKAGE_DIR / "static").iterdir()
        if path.is_file()
    }


def create_console(
    *,
    operations: BatchOperations,
    edits: RemoteEdits,
    token: SecretStr,
    domains: Mapping[str, DomainSettings],
    session_ttl_s: float,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The console over the same operations and edits as the API; sessions last `session_ttl_s`."""
    sessions = Sessions(token, ttl_s=session_ttl_s, clock=clock)
    app = web.Application(middlewares=[_headers, _errors, _session(sessions)])
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    versions = static_versions()

    def static(name: str) -> str:
        return f"{_STATIC_PREFIX}{name}?v={versions.get(name, '0')}"

    environment.globals["static"] = static
    for name in environment.list_templates():  # compiled now, not on a first visit
        environment.get_template(name)
    add_routes(app.router, operations=operations, edits=edits, sessions=sessions, domains=domains)
    app.router.add_static("/static/", PACKAGE_DIR / "static")
    return app


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    started_s = time.perf_counter()
    response: web.StreamResponse = await handler(request)
    duration_ms = (time.perf_counter() - started_s) * 1000
    response.headers["Server-Timing"] = f"app;dur={duration_ms:.1f}"
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith(_STATIC_PREFIX):
        response.headers.setdefault("Cache-Control", "no-store")
    log.debug("console.page", method=request.method, path=request.path, duration_ms=round(duration_ms, 1))
    return response


# Failures shown as pages, by their status; first match wins.
_ERROR_STATUS: Final[tuple[tuple[type[Exception], int], ...]] = (
    (BatchNotFound, 404),
    (ObjectNotFound, 404),
    (NotViewable, 404),
    (BrokenBatchDocument, 409),
    (ExportRefused, 422),
    (StorageError, 503),
)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Failures as pages: 404 for what is not there, 409 for a broken batch document, 503 when
    storage does not answer, the status of an HTTP error; anything else is logged and shown as a
    bare 500."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_page(request, exc.status, exc.text or exc.reason)
    except Exception as exc:
        status = next((status for kind, status in _ERROR_STATUS if isinstance(exc, kind)), None)
        if status is None:
            log.exception("console.internal_error", method=request.method, path=request.path)
            return _error_page(request, 500, "internal error")
        if status == 503:
            log.warning("console.storage_error", path=request.path, error=str(exc))
            return _error_page(request, 503, context_of(request).t("error.storage", reason=str(exc)))
        return _error_page(request, status, exc.reason if isinstance(exc, NotViewable) else str(exc))


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return aiohttp_jinja2.render_template(
        "error.html",
        request,
        {"c": context_of(request), "path": request.path_qs, "message": message},
        status=status,
    )


def _session(sessions: Sessions) -> Any:
    @web.middleware
    async def session(request: web.Request, handler: Handler) -> web.StreamResponse:
        """The request's language and session; pages need a session (else the login form), and
        every POST needs the session's CSRF token (else 403)."""
        lang = choose_lang(request.cookies.get(LANG_COOKIE), request.headers.get("Accept-Language"))
        session_id = sessions.session_id(request.cookies.get(SESSION_COOKIE))
        csrf = sessions.csrf_token(session_id) if session_id is not None else ""
        request[CONTEXT] = RequestContext(lang, translator(lang), session_id, csrf)
        path = request.path
        if path.startswith(_STATIC_PREFIX) or path in _OPEN_PATHS:
            return await handler(request)
        if session_id is None:
            if request.method == "GET":
                expired = "&expired=1" if SESSION_COOKIE in request.cookies else ""
                raise web.HTTPSeeOther(f"/console/login?next={quote(request.path_qs, safe='')}{expired}")
            return _error_page(request, 401, translator(lang)("login.expired"))
        if request.method == "POST":
            form = await request.post()
            given = form.get("csrf")
            if not sessions.csrf_ok(session_id, given if isinstance(given, str) else None):
                log.warning("console.csrf_refused", path=path, remote=request.remote)
                return _error_page(request, 403, translator(lang)("error.csrf"))
        return await handler(request)

    return session
