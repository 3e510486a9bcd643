"""Console sessions: a login with the API token gives an HttpOnly, SameSite=Strict cookie, and
every form carries a CSRF token bound to that session.

The cookie is a Fernet token (the `cryptography` library: AES-CBC with HMAC-SHA256, and a
timestamp checked against `ttl_s`) holding a random session id, under a key derived from the API
token with HKDF. Nothing is kept on the server, so every replica with the same token accepts the
same sessions, and changing the token ends them all. The CSRF token is an HMAC of the session id
under a second derived key: it cannot be made without the session, and it changes with it. Logging
out forgets the session id in this process (a bounded set) and clears the cookie.

Before a login there is no session: the login form is protected by a double-submit token (a
random value in a short-lived SameSite=Strict cookie, repeated in the form).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

SESSION_COOKIE: Final = "ocrbatch_session"
LOGIN_COOKIE: Final = "ocrbatch_login"
LOGIN_TTL_S: Final = 3600
MAX_FORGOTTEN: Final = 10_000


def _derive(token: SecretStr, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"ocrbatch console", info=purpose).derive(
        token.get_secret_value().encode()
    )


class Sessions:
    """Issues and checks console sessions for one API token."""

    def __init__(self, token: SecretStr, *, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._token = token.get_secret_value().encode()
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(token, b"session")))
        self._csrf_key = _derive(token, b"csrf")
        self.ttl_s = ttl_s
        self._clock = clock
        self._forgotten: OrderedDict[str, None] = OrderedDict()

    def token_matches(self, given: str) -> bool:
        """Whether `given` is the API token (constant-time)."""
        return hmac.compare_digest(given.strip().encode(), self._token)

    def open(self) -> str:
        """A new session: the cookie's value."""
        session_id = secrets.token_urlsafe(18)
        return self._fernet.encrypt_at_time(session_id.encode(), int(self._clock())).decode()

    def session_id(self, cookie: str | None) -> str | None:
        """The session the cookie holds, if it is one of ours, not expired and not logged out."""
        if not cookie:
            return None
        try:
            session_id = self._fernet.decrypt_at_time(
                cookie.encode(), ttl=int(self.ttl_s), current_time=int(self._clock())
            ).decode()
        except (InvalidToken, ValueError):
            return None
        return None if session_id in self._forgotten else session_id

    def forget(self, cookie: str | None) -> None:
        """Log the session out (in this process; the cookie is cleared as well)."""
        session_id = self.session_id(cookie)
        if session_id is None:
            return
        self._forgotten[session_id] = None
        while len(self._forgotten) > MAX_FORGOTTEN:
            self._forgotten.popitem(last=False)

    def csrf_token(self, session_id: str) -> str:
        """The CSRF token of a session (or of a login form's random value)."""
        digest = hmac.new(self._csrf_key, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def csrf_ok(self, session_id: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf_token(session_id).encode())


def new_login_nonce() -> str:
    return secrets.token_urlsafe(18)
