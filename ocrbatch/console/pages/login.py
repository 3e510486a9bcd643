"""Logging in with the API token, logging out, and the language switch."""

from __future__ import annotations

from typing import Final

import structlog
from aiohttp import web

from ocrbatch.console.context import HOME, PREFIX, context_of, form_text, render, safe_next, set_cookie
from ocrbatch.console.i18n import LANG_COOKIE, LANGS
from ocrbatch.console.sessions import LOGIN_COOKIE, LOGIN_TTL_S, SESSION_COOKIE, Sessions, new_login_nonce

log = structlog.get_logger("ocrbatch.console")
LANG_COOKIE_MAX_AGE_S: Final = 365 * 24 * 3600


class LoginPages:
    """`/` (to the list), `/login` (GET, POST), `/logout` (POST), `/lang?set=ko|en&next=`."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.home)
        router.add_get("/login", self.login_form)
        router.add_post("/login", self.login)
        router.add_post("/logout", self.logout)
        router.add_get("/lang", self.switch_lang)

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
        next_path = safe_next(form_text(form, "next"))
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not self._sessions.csrf_ok(f"login:{nonce}", form_text(form, "csrf") or None):
            log.warning("console.login_refused", reason="login form token", remote=request.remote)
            return self._login_page(request, next_path, context_of(request).t("error.csrf"), status=403)
        if not self._sessions.token_matches(form_text(form, "token")):
            log.warning("console.login_refused", reason="wrong token", remote=request.remote)
            return self._login_page(request, next_path, context_of(request).t("login.refused"), status=401)
        log.info("console.login", remote=request.remote)
        response = web.HTTPSeeOther(next_path)
        set_cookie(
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
            set_cookie(request, response, LANG_COOKIE, wanted, max_age_s=LANG_COOKIE_MAX_AGE_S)
        raise response

    def _login_page(
        self, request: web.Request, next_path: str, message: str | None, *, status: int
    ) -> web.Response:
        nonce = new_login_nonce()
        response = render(
            "login.html",
            request,
            {
                "next": next_path,
                "message": message,
                "login_csrf": self._sessions.csrf_token(f"login:{nonce}"),
            },
            status=status,
        )
        set_cookie(request, response, LOGIN_COOKIE, nonce, max_age_s=LOGIN_TTL_S)
        return response
