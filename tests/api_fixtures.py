"""Helpers for the HTTP API's tests: its token and domains, a valid batch as a client sends it, and
a client of the running API that records every response body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from ocrbatch.settings import DomainSettings

TOKEN = "api-token-0123456789abcdef"
DOMAINS = {
    "gen": DomainSettings(kind="general", invoke_url="http://ocr/general", secret="s1"),
    "tpl": DomainSettings(kind="template", invoke_url="http://ocr/infer", secret="s2"),
}


def spec(name: str = "forms", **overrides: Any) -> dict[str, Any]:
    """A valid template-domain batch as an API client sends it."""
    return {
        "name": name,
        "domain": "tpl",
        "template_ids": [1],
        "input_path": f"s3://data/{name}/in",
        "result_path": f"s3://data/{name}/out",
        **overrides,
    }


class Api:
    """A client of the running API that sends the token and records every response body."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.bodies: list[str] = []

    async def call(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> tuple[ClientResponse, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(method, path, headers=headers, **kwargs)
        text = await response.text()
        self.bodies.append(text)
        assert response.content_type == "application/json", text
        return response, await response.json()


StartApi = Callable[..., Awaitable[Api]]
