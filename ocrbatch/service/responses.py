"""The API's errors as responses: JSON `{"error": {"code", "message", "violations"?}}`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    421: "misdirected_request",
}


class ApiError(Exception):
    """An error response: HTTP status, machine-readable code and an operator-safe message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        violations: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.violations = violations
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.violations is not None:
            error["violations"] = [{"field": field, "rule": rule} for field, rule in self.violations]
        return json_response({"error": error}, status=self.status, headers=self.headers)


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        data, status=status, headers=headers, dumps=lambda value: json.dumps(value, ensure_ascii=False)
    )
