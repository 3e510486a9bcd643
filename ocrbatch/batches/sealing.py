"""Secrets sealed at rest: what a batch document keeps of a webhook's secret, and of a webhook URL
that carries credentials, is a Fernet token under the `[security] secret_key` keys.

A sealed value is stored as `{"fernet": "gAAAA..."}` in place of the clear string, so a stored
string is always clear (a document written before sealing existed) and a stored object always
sealed. With several keys (rotation), the first seals and every one opens.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ocrbatch.settings import SecuritySettings

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

SEALED_FIELD = "fernet"
KEY_SETTING = "security.secret_key (OCRBATCH_SECURITY__SECRET_KEY or security.secret_key_file)"


class Sealer:
    """Seals and opens values with the configured keys: the first seals, every one opens."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a sealer needs at least one key")
        # Loaded with the first sealer: a worker without keys never needs it.
        self._fernet_module = importlib.import_module("cryptography.fernet")
        fernets = [self._fernet_module.Fernet(key) for key in keys]
        self._fernet: MultiFernet = self._fernet_module.MultiFernet(fernets)

    @classmethod
    def from_settings(cls, security: SecuritySettings) -> Sealer | None:
        """The sealer of the configured keys; None when no key is configured."""
        keys = security.secret_keys()
        return cls(keys) if keys else None

    def seal(self, value: str) -> dict[str, str]:
        """`value` as it is stored: a Fernet token under the first key."""
        return {SEALED_FIELD: self._fernet.encrypt(value.encode("utf-8")).decode("ascii")}

    def open(self, sealed: object) -> str:
        """The clear value of a stored `{"fernet": token}`; ValueError (worded for operators,
        never holding the token) when it is not one or no configured key opens it."""
        token = sealed.get(SEALED_FIELD) if isinstance(sealed, dict) else None
        if not isinstance(sealed, dict) or set(sealed) != {SEALED_FIELD} or not isinstance(token, str):
            raise ValueError(f'a sealed value must be {{"{SEALED_FIELD}": "<token>"}}')
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except (self._fernet_module.InvalidToken, ValueError):  # ValueError: not ASCII, or not UTF-8
            raise ValueError(
                "no key of security.secret_key opens it (sealed with another key, or damaged): "
                "configure the key that sealed it, after the current one"
            ) from None


def is_sealed(value: object) -> bool:
    """Whether a stored value is sealed (`{"fernet": ...}`) rather than clear."""
    return isinstance(value, dict) and SEALED_FIELD in value


def open_stored(value: Any, sealer: Sealer | None) -> Any:
    """A stored value made clear: unchanged when it is not sealed; ValueError when it is sealed
    and no key is configured or none opens it."""
    if not is_sealed(value):
        return value
    if sealer is None:
        raise ValueError(f"is sealed and no key is configured to open it: set {KEY_SETTING}")
    return sealer.open(value)
