"""Tokens a server makes for itself when none is configured, kept in a file only this user can read.

The file's path is printed, never the token (the convention notebook servers follow), so the
operator reads it with the same rights as the server and nothing else on the machine can.
"""

from __future__ import annotations

import os
import secrets
import tempfile


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token_file(token: str, *, prefix: str) -> str:
    """A new file holding `token`, readable by this user alone (mkstemp makes it 0600)."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".token")
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    return path
