"""Helpers for tests that talk to the emulator over loopback."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable

import aiohttp
from PIL import Image
from pydantic import SecretStr

from ocrbatch.clova.client import OcrClient, TransferMode
from ocrbatch.emulator.server import Emulator

StartEmulator = Callable[..., Awaitable[Emulator]]


def png_bytes(width: int = 320, height: int = 200, colour: int = 200) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def client_for(
    session: aiohttp.ClientSession,
    emulator: Emulator,
    *,
    kind: str = "general",
    mode: TransferMode = "data",
    path: str | None = None,
    secret: str | None = None,
    timeout_s: float = 10.0,
) -> OcrClient:
    settings = emulator.settings
    default_secret = settings.general_secret if kind == "general" else settings.template_secret
    return OcrClient(
        session,
        invoke_url=emulator.url + (path or ("/general" if kind == "general" else "/infer")),
        secret=SecretStr(secret) if secret is not None else default_secret,
        transfer_mode=mode,
        request_timeout_s=timeout_s,
    )
