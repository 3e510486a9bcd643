"""The console's pages: each handler reads the request, calls the same operations as the API
(`RemoteEdits` for batch edits, `BatchOperations` for a batch's work) and renders a template.

Routes, under `/console`:
- `/login` (GET, POST), `/logout` (POST), `/lang?set=ko|en&next=`;
- `/batches` (CLOVA's batch list: search, refresh, create, delete), `/batches/new`, POST `/batches`,
  POST `/batches/delete` (asks for confirmation first), `/batches/{id}/settings` (GET, POST);
- `/batches/{id}`: status, live progress (the `/progress` fragment, polled by htmx), figures,
  webhook outbox, and POST `pause`, `resume`, `retry-failed`; `/estimate` (a fragment for htmx,
  a page without it);
- `/batches/{id}/failures?reason=&after=`, `/failure?key=`, POST `/retry` (one item);
- `/batches/{id}/results?after=`, `/result?key=&page=` (the viewer), `/image?key=&page=` (the
  input page as an image, read through the console), `/download?key=`.
Pages name batches by id (ids are `[a-z0-9]`, safe in a path); object keys travel in the query.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import structlog
from aiohttp import web
from multidict import MultiDictProxy

from ocrbatch.batches.remote import RemoteEdits
from ocrbatch.batches.spec import BatchStatus
from ocrbatch.batches.store import StoredBatch
from ocrbatch.console.forms import FILE_FORMATS, LANGUAGES, BatchForm, batch_input, domain_info
from ocrbatch.console.i18n import LANG_COOKIE, LANGS, Lang, Translate, translator
from ocrbatch.console.sessions import LOGIN_COOKIE, LOGIN_TTL_S, SESSION_COOKIE, Sessions, new_login_nonce
from ocrbatch.console.viewer import ImageUnavailable, PageNotFound, page_image, page_view
from ocrbatch.errors import BatchConflict, BatchNotFound, BatchRuleViolation
from ocrbatch.settings import DomainSettings
from ocrbatch.worker.operations import BatchOperations

log = structlog.get_logger("ocrbatch.console")
PREFIX: Final = "/console"
HOME: Final = f"{PREFIX}/batches"
STATIC_DIR: Final = Path(__file__).parent / "static"
LANG_COOKIE_MAX_AGE_S: Final = 365 * 24 * 3600
PAGE_ITEMS: Final = 50
BATCH_ID: Final = "{id:[a-z0-9]{8,32}}"
# What a redirect after a change may ask the next page to say (anything else is ignored).
FLASH_MESSAGES: Final = frozenset({"created", "saved", "paused", "resumed"})


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


def static_versions() -> dict[str, str]:
    """Each static file's content hash, appended to its URL so browsers never use a stale copy."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in STATIC_DIR.iterdir()
        if path.is_file()
    }


class ConsolePages:
    """The console's handlers over one worker's operations."""

    def __init__(
        self,
        *,
        operations: BatchOperations,
        edits: RemoteEdits,
        sessions: Sessions,
        domains: Mapping[str, DomainSettings],
    ) -> None:
        self._operations = operations
        self._edits = edits
        self._store = edits.store
        self._sessions = sessions
        self._domains = dict(domains)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        batch = f"/batches/{BATCH_ID}"
        router.add_get("/", self.home)
        router.add_get("/login", self.login_form)
        router.add_post("/login", self.login)
        router.add_post("/logout", self.logout)
        router.add_get("/lang", self.switch_lang)
        router.add_get("/batches", self.batch_list)
        router.add_get("/batches/new", self.new_batch)
        router.add_post("/batches", self.create_batch)
        router.add_post("/batches/delete", self.delete_batches)
        router.add_get(batch, self.batch_page)
        router.add_get(f"{batch}/settings", self.settings_form)
        router.add_post(f"{batch}/settings", self.edit_batch)
        router.add_get(f"{batch}/progress", self.progress)
        router.add_post(f"{batch}/pause", self.pause)
        router.add_post(f"{batch}/resume", self.resume)
        router.add_get(f"{batch}/estimate", self.estimate)
        router.add_post(f"{batch}/retry-failed", self.retry_failed)
        router.add_get(f"{batch}/failures", self.failures)
        router.add_get(f"{batch}/failure", self.failure)
        router.add_post(f"{batch}/retry", self.retry_one)
        router.add_get(f"{batch}/results", self.results)
        router.add_get(f"{batch}/result", self.result)
        router.add_get(f"{batch}/image", self.image)
        router.add_get(f"{batch}/download", self.download)

    # -- login ------------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther(HOME)

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        next_path = safe_next(request.query.get("next"))
        if context_of(request).session_id is not None:
            raise web.HTTPSeeOther(next_path)
        message = context_of(request).t("login.expired") if request.query.get("expired") else None
        return self._login_page(request, next_path, message, status=200)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """A login: the form's double-submit token first (no session yet to bind a CSRF token
        to), then the API token, compared in constant time. Refusals are logged without the token."""
        form = await request.post()
        next_path = safe_next(_text(form, "next"))
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not self._sessions.csrf_ok(f"login:{nonce}", _text(form, "csrf") or None):
            log.warning("console.login_refused", reason="login form token", remote=request.remote)
            return self._login_page(request, next_path, context_of(request).t("error.csrf"), status=403)
        if not self._sessions.token_matches(_text(form, "token")):
            log.warning("console.login_refused", reason="wrong token", remote=request.remote)
            return self._login_page(request, next_path, context_of(request).t("login.refused"), status=401)
        log.info("console.login", remote=request.remote)
        response = web.HTTPSeeOther(next_path)
        _set_cookie(
            request, response, SESSION_COOKIE, self._sessions.open(), max_age_s=int(self._sessions.ttl_s)
        )
        response.del_cookie(LOGIN_COOKIE, path=PREFIX)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self._sessions.forget(request.cookies.get(SESSION_COOKIE))
        response = web.HTTPSeeOther(f"{PREFIX}/login")
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        raise response

    async def switch_lang(self, request: web.Request) -> web.StreamResponse:
        wanted = request.query.get("set", "")
        response = web.HTTPSeeOther(safe_next(request.query.get("next")))
        if wanted in LANGS:
            _set_cookie(request, response, LANG_COOKIE, wanted, max_age_s=LANG_COOKIE_MAX_AGE_S)
        raise response

    def _login_page(
        self, request: web.Request, next_path: str, message: str | None, *, status: int
    ) -> web.Response:
        nonce = new_login_nonce()
        response = self._render(
            "login.html",
            request,
            {
                "next": next_path,
                "message": message,
                "login_csrf": self._sessions.csrf_token(f"login:{nonce}"),
            },
            status=status,
        )
        _set_cookie(request, response, LOGIN_COOKIE, nonce, max_age_s=LOGIN_TTL_S)
        return response

    # -- the list and the forms -------------------------------------------------------------

    async def batch_list(self, request: web.Request) -> web.StreamResponse:
        search = request.query.get("search", "").strip()
        catalog = await self._store.catalog(search or None)
        rows = [
            {"batch": item.batch, "info": domain_info(item.batch, self._domains.get(item.batch.domain))}
            for item in catalog.batches
        ]
        return self._render(
            "list.html",
            request,
            {
                "rows": rows,
                "broken": catalog.broken,
                "search": search,
                "deleted": _count(request, "deleted"),
                "none_selected": "none_selected" in request.query,
            },
        )

    async def new_batch(self, request: web.Request) -> web.StreamResponse:
        return self._form_page(request, BatchForm.blank(self._domains), editing=None)

    async def create_batch(self, request: web.Request) -> web.StreamResponse:
        posted = _posted(await request.post())
        form = BatchForm.posted(posted, BatchForm.blank(self._domains))
        body, unreadable = batch_input(posted, self._domains)
        if unreadable:
            form.refuse(unreadable)
            return self._form_page(request, form, editing=None, status=422)
        try:
            created = await self._edits.create(body, via="console")
        except BatchRuleViolation as refused:
            form.refuse(refused.violations)
            return self._form_page(request, form, editing=None, status=422)
        except BatchConflict as exc:
            form.general_errors.append(str(exc))
            return self._form_page(request, form, editing=None, status=409)
        raise web.HTTPSeeOther(_batch_url(created.batch.id, msg="created"))

    async def settings_form(self, request: web.Request) -> web.StreamResponse:
        stored = await self._store.get(request.match_info["id"])
        return self._form_page(request, BatchForm.of(stored.batch), editing=stored)

    async def edit_batch(self, request: web.Request) -> web.StreamResponse:
        """The edit, if the batch is still the version the form was opened on (its etag travels in
        the form); else the form again, showing the batch as it is now."""
        stored = await self._store.get(request.match_info["id"])
        posted = _posted(await request.post())
        form = BatchForm.posted(posted, BatchForm.of(stored.batch))
        if posted.get("etag") != stored.etag:
            return self._conflict(request, stored)
        body, unreadable = batch_input(posted, self._domains, editing=stored.batch)
        if unreadable:
            form.refuse(unreadable)
            return self._form_page(request, form, editing=stored, status=422)
        try:
            updated = await self._edits.update(stored.batch.id, body, via="console", if_match=stored.etag)
        except BatchRuleViolation as refused:
            form.refuse(refused.violations)
            return self._form_page(request, form, editing=stored, status=422)
        except BatchConflict:
            return self._conflict(request, await self._store.get(stored.batch.id))
        raise web.HTTPSeeOther(_batch_url(updated.batch.id, msg="saved"))

    def _conflict(self, request: web.Request, current: StoredBatch) -> web.Response:
        form = BatchForm.of(current.batch)
        form.general_errors.append(context_of(request).t("form.conflict"))
        return self._form_page(request, form, editing=current, status=409)

    def _form_page(
        self, request: web.Request, form: BatchForm, *, editing: StoredBatch | None, status: int = 200
    ) -> web.Response:
        domains = [{"name": name, "kind": domain.kind} for name, domain in self._domains.items()]
        return self._render(
            "form.html",
            request,
            {
                "form": form,
                "editing": editing,
                "domains": domains,
                "languages": LANGUAGES,
                "file_formats": FILE_FORMATS,
            },
            status=status,
        )

    async def delete_batches(self, request: web.Request) -> web.StreamResponse:
        """Delete the selected batches once confirmed (the list's pop-up confirms; without
        scripts a confirmation page asks). Results are never touched."""
        form = await request.post()
        ids = [value for value in form.getall("ids", []) if isinstance(value, str)]
        if not ids:
            raise web.HTTPSeeOther(f"{HOME}?none_selected=1")
        if _text(form, "confirmed") != "1":
            catalog = await self._store.catalog()
            chosen = [item.batch for item in catalog.batches if item.batch.id in ids]
            chosen_broken = [item for item in catalog.broken if item.batch_id in ids]
            return self._render("confirm_delete.html", request, {"batches": chosen, "broken": chosen_broken})
        deleted = 0
        for batch_id in ids:
            try:
                await self._edits.delete(batch_id, via="console")
            except BatchNotFound:
                continue
            deleted += 1
        raise web.HTTPSeeOther(f"{HOME}?{urlencode({'deleted': deleted})}")

    # -- the batch page ---------------------------------------------------------------------

    async def batch_page(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        progress = await self._operations.progress(batch_id)
        outbox = await self._operations.outbox(batch_id)
        return self._render(
            "batch.html",
            request,
            {
                "batch": progress.batch,
                "p": progress,
                "outbox": outbox,
                "info": domain_info(progress.batch, self._domains.get(progress.batch.domain)),
                "msg": _flash(request, "msg", FLASH_MESSAGES),
                "retried": _count(request, "retried"),
            },
        )

    async def progress(self, request: web.Request) -> web.StreamResponse:
        progress = await self._operations.progress(request.match_info["id"])
        return self._render("_progress.html", request, {"batch": progress.batch, "p": progress})

    async def pause(self, request: web.Request) -> web.StreamResponse:
        return await self._set_status(request, "paused")

    async def resume(self, request: web.Request) -> web.StreamResponse:
        return await self._set_status(request, "available")

    async def _set_status(self, request: web.Request, status: BatchStatus) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        await self._edits.update(batch_id, {}, via="console", status=status)
        raise web.HTTPSeeOther(_batch_url(batch_id, msg="paused" if status == "paused" else "resumed"))

    async def estimate(self, request: web.Request) -> web.StreamResponse:
        """The dry run's figures: a fragment for htmx (the batch page's [Estimate]), else a page."""
        batch_id = request.match_info["id"]
        batch = await self._operations.batch(batch_id)
        try:
            figures: dict[str, Any] | None = await self._operations.estimate(batch_id)
            refused = None
        except BatchRuleViolation as exc:
            figures, refused = None, str(exc)
        page = "_estimate.html" if request.headers.get("HX-Request") == "true" else "estimate.html"
        return self._render(page, request, {"batch": batch, "figures": figures, "refused": refused})

    async def retry_failed(self, request: web.Request) -> web.StreamResponse:
        batch, retried = await self._operations.retry_failed(request.match_info["id"])
        raise web.HTTPSeeOther(_batch_url(batch.id, retried=len(retried)))

    # -- failures and results ---------------------------------------------------------------

    async def failures(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        reason = request.query.get("reason", "").strip()
        after = request.query.get("after") or None
        batch = await self._operations.batch(batch_id)
        page = await self._operations.failures(batch_id, reason=reason or None, after=after, limit=PAGE_ITEMS)
        return self._render(
            "failures.html",
            request,
            {
                "batch": batch,
                "page": page,
                "reason": reason,
                "after": after,
                "retried": _count(request, "retried"),
            },
        )

    async def failure(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        key = _required_key(request)
        batch = await self._operations.batch(batch_id)
        record = await self._operations.failure(batch_id, key)
        return self._render("failure.html", request, {"batch": batch, "record": record})

    async def retry_one(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key = _text(form, "key")
        if not key:
            raise web.HTTPBadRequest(text="key is required")
        batch, retried = await self._operations.retry_failed(request.match_info["id"], [key])
        raise web.HTTPSeeOther(f"{PREFIX}/batches/{batch.id}/failures?{urlencode({'retried': len(retried)})}")

    async def results(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        after = request.query.get("after") or None
        batch = await self._operations.batch(batch_id)
        page = await self._operations.results(batch_id, after=after, limit=PAGE_ITEMS)
        return self._render("results.html", request, {"batch": batch, "page": page, "after": after})

    async def result(self, request: web.Request) -> web.StreamResponse:
        """The viewer: the page's image with every field's box over it, the text beside it, the
        tables; boxes are in the coordinates of the image CLOVA read (its `convertedImageInfo`),
        else of the input's own pixels."""
        batch_id = request.match_info["id"]
        key = _required_key(request)
        page_index = _page_index(request)
        batch = await self._operations.batch(batch_id)
        document = await self._operations.result(batch_id, key)
        try:
            view = page_view(document.response, page_index)
        except PageNotFound as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        width, height = view.width, view.height
        image_error = None
        if width is None or height is None:
            try:
                image = await asyncio.to_thread(
                    page_image, await self._operations.input_bytes(batch_id, key), key, page_index
                )
                width, height = image.width, image.height
            except ImageUnavailable as exc:
                image_error = str(exc)
        query = urlencode({"key": key, "page": page_index})
        return self._render(
            "result.html",
            request,
            {
                "batch": batch,
                "key": key,
                "view": view,
                "width": width or 1,
                "height": height or 1,
                "image_url": f"{PREFIX}/batches/{batch.id}/image?{query}",
                "image_error": image_error,
                "download_url": f"{PREFIX}/batches/{batch.id}/download?{urlencode({'key': key})}",
                "page_urls": [
                    f"{PREFIX}/batches/{batch.id}/result?{urlencode({'key': key, 'page': index})}"
                    for index in range(view.page_count)
                ],
            },
        )

    async def image(self, request: web.Request) -> web.StreamResponse:
        """The input's page as an image, read from the batch's input location by the console
        (with the session's authorisation), never by handing out a storage URL."""
        batch_id = request.match_info["id"]
        key = _required_key(request)
        data = await self._operations.input_bytes(batch_id, key)
        try:
            image = await asyncio.to_thread(page_image, data, key, _page_index(request))
        except ImageUnavailable as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        return web.Response(
            body=image.data,
            content_type=image.content_type,
            headers={"Cache-Control": "private, max-age=300"},
        )

    async def download(self, request: web.Request) -> web.StreamResponse:
        name, data, content_type = await self._operations.result_file(
            request.match_info["id"], _required_key(request)
        )
        return web.Response(
            body=data,
            content_type=content_type,
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"},
        )

    # -- rendering ---------------------------------------------------------------------------

    def _render(
        self, template: str, request: web.Request, values: Mapping[str, Any], *, status: int = 200
    ) -> web.Response:
        return aiohttp_jinja2.render_template(
            template, request, {"c": context_of(request), "path": request.path_qs, **values}, status=status
        )


def _batch_url(batch_id: str, **flash: object) -> str:
    query = urlencode({name: value for name, value in flash.items() if value is not None})
    return f"{PREFIX}/batches/{batch_id}" + (f"?{query}" if query else "")


def _set_cookie(
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


def _posted(form: MultiDictProxy[str | Any]) -> dict[str, str]:
    """The form's text fields (the first value of each); checkboxes are present or absent."""
    posted: dict[str, str] = {}
    for name, value in form.items():
        if isinstance(value, str) and name not in posted:
            posted[name] = value
    return posted


def _text(form: MultiDictProxy[str | Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _flash(request: web.Request, name: str, allowed: frozenset[str]) -> str | None:
    value = request.query.get(name)
    return value if value in allowed else None


def _count(request: web.Request, name: str) -> int | None:
    value = request.query.get(name, "")
    return int(value) if value.isdecimal() and len(value) <= 9 else None


def _required_key(request: web.Request) -> str:
    key = request.query.get("key", "")
    if not key:
        raise web.HTTPBadRequest(text="the query needs key=")
    return key


def _page_index(request: web.Request) -> int:
    text = request.query.get("page", "0")
    if not text.isdecimal() or len(text) > 6:
        raise web.HTTPBadRequest(text="page must be a page number from 0")
    return int(text)
