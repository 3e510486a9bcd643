"""The HTTP API as a real server on loopback: health and readiness, the bearer token, and which
hosts it may bind without one."""

from __future__ import annotations

import pytest
from fixtures.api import TOKEN, Api, StartApi
from pydantic import SecretStr

from ocrbatch.batches.store import BatchStore
from ocrbatch.errors import ConfigError, StorageError
from ocrbatch.service.access import check_bind

ALL_INTERFACES = "0.0.0.0"


async def test_health_and_readiness_need_no_token(start_api: StartApi, store: BatchStore) -> None:
    """/healthz and /readyz answer without a token; readyz awaits the readiness check."""
    checks: list[bool] = []

    async def ready() -> None:
        checks.append(True)

    api = await start_api(store, ready=ready)
    response, body = await api.call("GET", "/healthz", token=None)
    assert (response.status, body) == (200, {"status": "ok"})
    response, body = await api.call("GET", "/readyz", token=None)
    assert (response.status, body) == (200, {"status": "ready"})
    assert checks == [True]


async def test_readyz_is_503_when_storage_fails(start_api: StartApi, store: BatchStore) -> None:
    """A readiness check that raises StorageError makes /readyz 503 not_ready with its message."""

    async def ready() -> None:
        raise StorageError("bucket unreachable", location="s3://data/control")

    api = await start_api(store, ready=ready)
    response, body = await api.call("GET", "/readyz", token=None)
    assert response.status == 503
    assert body["error"]["code"] == "not_ready"
    assert "bucket unreachable" in body["error"]["message"]


async def test_missing_or_wrong_token_is_401(api: Api) -> None:
    """Without a token, with a wrong one or another scheme, /api/v1 answers 401 with WWW-Authenticate."""
    wrong = "guess-9f8e7d6c"
    for headers, token in (
        ({}, None),
        ({}, wrong),
        ({"Authorization": f"Basic {TOKEN}"}, None),
        ({}, ""),
    ):
        for method, path in (("GET", "/api/v1/batches"), ("POST", "/api/v1/batches"), ("GET", "/nope")):
            response, body = await api.call(method, path, token=token, headers=headers)
            assert response.status == 401, (method, path, headers, token)
            assert body["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not any(wrong in body for body in api.bodies)


async def test_auth_is_off_without_a_token(start_api: StartApi, store: BatchStore) -> None:
    """With token=None (loopback only), requests need no Authorization header."""
    api = await start_api(store, token=None)
    response, body = await api.call("GET", "/api/v1/batches", token=None)
    assert (response.status, body) == (200, {"batches": []})


@pytest.mark.parametrize("host", [ALL_INTERFACES, "::", "192.168.1.10", "example.com", ""])
def test_check_bind_refuses_public_hosts_without_a_token(host: str) -> None:
    """Binding beyond loopback without a token is a ConfigError that says what to set."""
    with pytest.raises(ConfigError, match=r"api\.token"):
        check_bind(host, None)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_check_bind_accepts_loopback_without_a_token(host: str) -> None:
    """Loopback addresses may serve without a token."""
    check_bind(host, None)


def test_check_bind_accepts_any_host_with_a_token() -> None:
    """With a token set, any host is allowed."""
    check_bind(ALL_INTERFACES, SecretStr(TOKEN))
