"""What every console page shares: the request's context (language, session, CSRF token), where
pages may send the browser, cookies, reading forms and queries, and rendering a template."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from ocrbatch.console.i18n import Lang, Translate, translator

PREFIX: Final = "/console"
HOME: Final = f"{PREFIX}/batches"
# Pages name batches by id (ids are `[a-z0-9]`, safe in a path); object keys travel in the query.
BATCH_PATH: Final = "/batches/{id:[a-z0-9]{8,32}}"


@dataclass(frozen=True)
class RequestContext:
    """What every template gets as `c`: the language, its words and the session's CSRF token."""

    lang: Lang
    t: Translate
    session_id: str | None
    csrf: str

    @property
    def other_lang(self) -> Lang:
        return "en" if self.lang == "ko" else "ko"


CONTEXT: Final = web.RequestKey("console_context", RequestContext)


def context_of(request: web.Request) -> RequestContext:
    """The request's context; English and no session before the session middleware ran."""
    return request.get(CONTEXT) or RequestContext("en", translator("en"), None, "")


def safe_next(value: str | None) -> str:
    """Where to go after the login or a language switch: a console path, never another site."""
    if value and value.startswith(f"{PREFIX}/") and "\\" not in value and "//" not in value:
        return value
    return HOME


def render(
    template: str, request: web.Request, values: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    """`template` with `values`, the request's context as `c` and its path (for the language switch)."""
    return aiohttp_jinja2.render_template(
        template, request, {"c": context_of(request), "path": request.path_qs, **values}, status=status
    )


def batch_url(batch_id: str, **flash: object) -> str:
    query = urlencode({name: value for name, value in flash.items() if value is not None})
    return f"{PREFIX}/batches/{batch_id}" + (f"?{query}" if query else "")


def set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, *, max_age_s: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age_s,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def posted_text(form: MultiDictProxy[str | Any]) -> dict[str, str]:
    """The form's text fields (the first value of each); checkboxes are present or absent."""
    posted: dict[str, str] = {}
    for name, value in form.items():
        if isinstance(value, str) and name not in posted:
            posted[name] = value
    return posted


def form_text(form: MultiDictProxy[str | Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def flash(request: web.Request, name: str, allowed: frozenset[str]) -> str | None:
    value = request.query.get(name)
    return value if value in allowed else None


def count_query(request: web.Request, name: str) -> int | None:
    value = request.query.get(name, "")
    return int(value) if value.isdecimal() and len(value) <= 9 else None


def required_key(request: web.Request) -> str:
    key = request.query.get("key", "")
    if not key:
        raise web.HTTPBadRequest(text="the query needs key=")
    return key


def requested_page(request: web.Request) -> int:
    text = request.query.get("page", "0")
    if not text.isdecimal() or len(text) > 6:
        raise web.HTTPBadRequest(text="page must be a page number from 0")
    return int(text)
