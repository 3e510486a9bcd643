"""Coordination documents in a Redis database, each compare-and-swap one short Lua script.

Layout under `key_prefix` (say "ocrbatch:"):
- `{prefix}doc:{key}`: a hash with fields `data` (the document's bytes) and `version`;
- `{prefix}index`: a sorted set of every key, all at score 0, so members sort by their UTF-8
  bytes and `keys(prefix)` is a ZRANGEBYLEX from `[prefix` to `(prefix + 0xFF` (0xFF never
  occurs in UTF-8, so it sorts after every key that starts with `prefix`), read a page at a
  time, each page starting just after the last key of the one before.

A script runs atomically on the server, so `create`, `replace` and `delete` check the version and
write the hash and the index as one step. A version is a fresh random token on every write, not a
counter: a document deleted and created again never comes back at a version a reader still
holds. The hash and the index must live on one server (no Redis Cluster).

Every Redis failure (refused, timed out, lost connection, error reply) becomes `StorageError`,
which callers already handle for the control path, naming the server by `where` (scheme, host,
port and database: never the credentials of the URL).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio
import redis.exceptions

from ocrbatch.coordination.base import Coordination, Versioned
from ocrbatch.errors import PreconditionFailed, StorageError

Redis = redis.asyncio.Redis

T = TypeVar("T")

_DEFAULT_PORT = 6379
_KEYS_PAGE = 500
_AFTER_EVERY_UTF8 = b"\xff"

# KEYS: document hash, index. ARGV: key, data, new version.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""

# KEYS: document hash. ARGV: expected version, data, new version. HGET gives false when missing.
_REPLACE = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', ARGV[3])
return 1
"""

# KEYS: document hash, index. ARGV: key, then the expected version when there is one.
_DELETE = """
if #ARGV > 1 and redis.call('HGET', KEYS[1], 'version') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def redacted_redis_url(url: str) -> str:
    """`scheme://host:port/db` (`unix:///path?db=N` for a socket) of a Redis URL, without user or
    password: how operators are shown the server."""
    parts = urlsplit(url)
    query_db = parse_qs(parts.query).get("db", [None])[0]
    if parts.scheme == "unix":
        return f"unix://{unquote(parts.path)}?db={query_db or 0}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port or _DEFAULT_PORT
    except ValueError:
        port = _DEFAULT_PORT  # from_url will refuse the URL; the message needs no port
    db = unquote(parts.path).strip("/") or query_db or "0"
    return f"{parts.scheme or 'redis'}://{host}:{port}/{db}"


def redis_where(client: Redis) -> str:
    """The server a client talks to, as `redacted_redis_url` shows it."""
    pool_kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    db = pool_kwargs.get("db", 0)
    if "path" in pool_kwargs:
        return f"unix://{pool_kwargs['path']}?db={db}"
    scheme = "rediss" if "ssl" in client.connection_pool.connection_class.__name__.lower() else "redis"
    host = str(pool_kwargs.get("host", "localhost"))
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{pool_kwargs.get('port', _DEFAULT_PORT)}/{db}"


def redis_password(client: Redis) -> str | None:
    """The password the client sends, to be kept out of every message."""
    password = client.connection_pool.connection_kwargs.get("password")
    return str(password) if password else None


@contextmanager
def redis_errors(where: str, key: str | None = None, *, password: str | None = None) -> Iterator[None]:
    """Turn what Redis raises into `StorageError` at `where` (and `key`). `password` is masked
    should a reason ever quote it."""
    try:
        yield
    except redis.exceptions.RedisError as error:
        reason = _reason(error)
        if password:
            reason = reason.replace(password, "***")
        raise StorageError(reason, location=where, key=key) from error


async def redis_command(
    command: Awaitable[T], where: str, key: str | None = None, *, password: str | None = None
) -> T:
    """Await one Redis command, its failures as `StorageError` (`redis_errors`).

    On Python 3.11, redis-py sends under `asyncio.wait_for` (the socket timeout), which drops a
    cancellation that arrives as the send completes (python/cpython#86296, fixed in 3.12): the
    command goes on as if nothing happened and the task never stops. A cancellation requested
    during the command is raised again here.
    """
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    with redis_errors(where, key, password=password):
        result = await command
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError
    return result


def _reason(error: redis.exceptions.RedisError) -> str:
    if isinstance(error, redis.exceptions.AuthenticationError):
        return "Redis refused the credentials (check the user and password of the URL)"
    if isinstance(error, redis.exceptions.TimeoutError):
        return "Redis did not answer in time"
    if isinstance(error, redis.exceptions.ConnectionError):
        return f"cannot reach Redis or lost the connection ({error})"
    return f"Redis answered with an error ({type(error).__name__}: {error})"


def _as_bytes(value: bytes | str) -> bytes:
    """Replies are bytes with `decode_responses=False`; redis-py types them as bytes or str."""
    return value if isinstance(value, bytes) else value.encode()


class RedisCoordination(Coordination):
    """Versioned documents in one Redis database, under `key_prefix`."""

    backend = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        where: str | None = None,
        keys_page: int = _KEYS_PAGE,
    ) -> None:
        """`client` must answer bytes (`decode_responses=False`). `where` defaults to the server
        the client talks to; `keys_page` is how many keys one ZRANGEBYLEX of `keys` reads."""
        if keys_page < 1:
            raise ValueError(f"keys_page must be at least 1, not {keys_page}")
        self._client = client
        self._prefix = key_prefix
        self._index = f"{key_prefix}index"
        self.where = where or redis_where(client)
        self._password = redis_password(client)
        self._keys_page = keys_page
        self._create = client.register_script(_CREATE)
        self._replace = client.register_script(_REPLACE)
        self._delete = client.register_script(_DELETE)

    @property
    def client(self) -> Redis:
        """The client, shared with the domains' call slots (`slots.py`)."""
        return self._client

    @property
    def key_prefix(self) -> str:
        return self._prefix

    async def _run(self, command: Awaitable[T], key: str) -> T:
        return await redis_command(command, self.where, key, password=self._password)

    def _doc(self, key: str) -> str:
        return f"{self._prefix}doc:{key}"

    def _refused(self, key: str, what: str) -> PreconditionFailed:
        return PreconditionFailed(what, location=self.where, key=key)

    async def read(self, key: str) -> Versioned | None:
        data, version = await self._run(self._client.hmget(self._doc(key), ["data", "version"]), key)
        if data is None or version is None:
            return None
        return Versioned(_as_bytes(data), _as_bytes(version).decode())

    async def create(self, key: str, data: bytes) -> str:
        version = secrets.token_hex(12)
        created = await self._run(
            self._create(keys=[self._doc(key), self._index], args=[key, data, version]), key
        )
        if not created:
            raise self._refused(key, "the document already exists")
        return version

    async def replace(self, key: str, data: bytes, *, version: str) -> str:
        new_version = secrets.token_hex(12)
        replaced = await self._run(
            self._replace(keys=[self._doc(key)], args=[version, data, new_version]), key
        )
        if not replaced:
            raise self._refused(key, f"the document is no longer at version {version} (changed or gone)")
        return new_version

    async def delete(self, key: str, *, version: str | None = None) -> None:
        args = [key] if version is None else [key, version]
        deleted = await self._run(self._delete(keys=[self._doc(key), self._index], args=args), key)
        if version is not None and not deleted:
            raise self._refused(key, f"the document is no longer at version {version} (changed or gone)")

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        encoded = prefix.encode()
        low, high = b"[" + encoded, b"(" + encoded + _AFTER_EVERY_UTF8
        while True:
            page = await self._run(
                self._client.zrangebylex(self._index, low, high, 0, self._keys_page), prefix
            )
            for member in page:
                yield _as_bytes(member).decode()
            if len(page) < self._keys_page:
                return
            low = b"(" + _as_bytes(page[-1])

    async def aclose(self) -> None:
        await self._client.aclose()


def open_redis_coordination(url: str, key_prefix: str, *, timeout_s: float = 10.0) -> RedisCoordination:
    """A `RedisCoordination` on its own client for `url` (`redis://[user:password@]host:port/db`,
    `rediss://` for TLS); `aclose()` closes it. Connecting and each command time out after
    `timeout_s`. Nothing is sent before the first call."""
    where = redacted_redis_url(url)
    try:
        client = redis.asyncio.from_url(
            url, decode_responses=False, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
    except ValueError as error:  # a URL redis-py cannot read; its message may quote the URL
        raise StorageError(f"not a Redis URL: {where} ({type(error).__name__})") from None
    return RedisCoordination(client, key_prefix=key_prefix, where=where)
