"""One OCR domain's call slots, shared by every replica through Redis.

With Redis, a domain's `max_concurrent_calls` and `calls_per_second` are totals over all
replicas. `SharedSlots` is the cross-replica half of the worker's limiter (`worker/limiter.py`),
with the same rules, kept in Redis and changed only by short Lua scripts, each atomic:
- `{prefix}slots:{domain}`: a sorted set of lease tokens scored by when they expire. A slot is
  taken by adding a token while fewer than `cap` are live, and given back by removing it; a
  replica killed while holding slots loses them when their leases run out (`lease_s`), and
  `keep_alive` renews the leases of the live ones every `lease_s / 3`;
- `{prefix}cap:{domain}`: the shared cap (`cap`, a float so decreases compound), its `epoch`
  (bumped by every decrease) and the `successes` towards the next increase. It starts at
  `max_concurrent_calls`, and a deploy that lowers that clamps it (a raise is climbed to by
  successes). One replica's 0025 lowers it for all, once per epoch: a call started before the
  decrease reports a stale epoch and changes nothing. `recover_after_successes` (default: the
  cap) successes of calls that took the last slot of the current epoch add one;
- `{prefix}starts:{domain}`: the start times of the last window, for at most
  `floor(calls_per_second)` starts per `max(1, 1 / calls_per_second)` seconds;
- `{prefix}pause:{domain}`: until when no replica starts a call (0023; the longest pause wins);
- `{prefix}wake:{domain}`: a list with one entry per slot given back (at most `cap`), so that a
  waiter on another replica learns of it at once: it blocks on the list (BLPOP) instead of polling.

Time is wall-clock seconds from the injected `clock`, passed to every script, since replicas on
different machines compare it (and tests drive it). A refused `acquire` sleeps for what the script
says when a pause or the rate window holds starts. When every slot is taken it waits for a wake-up,
or `poll_s` at most: a slot that comes back because its lease ran out pushes none.

Why scripts and not a library: redis-py's `Lock` is a mutex, and its maintainers left counting
semaphores to applications (redis/redis-py#1355). Of the semaphores on PyPI, `redis-semaphore` is
synchronous and resets its count per instance, `aioredis-semaphore` is built on the retired
`aioredis`, `redsync` (BLPOP permits) lists recovery of a crashed holder's permits as to do, and
`asyncio-advanced-semaphores` says not to use it in production yet. None has a count that changes
at run time (AIMD), a rate window or a pause, which is most of what is needed here.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from ocrbatch.coordination.limits import SharedPermit, check_limits, rate_window
from ocrbatch.coordination.redis import Redis, redis_command, redis_password, redis_where
from ocrbatch.errors import StorageError
from ocrbatch.types import Clock, Sleep

log = structlog.get_logger("ocrbatch.slots")

T = TypeVar("T")


# The shared cap state, created at max_cap on first use and clamped to a lowered max_cap.
_LOAD_STATE = """
local function load_state(key, max_cap)
  local state = redis.call('HMGET', key, 'cap', 'epoch', 'successes')
  local cap, epoch, successes = tonumber(state[1]), tonumber(state[2]), tonumber(state[3])
  if cap == nil or epoch == nil or successes == nil then
    cap, epoch, successes = max_cap, 0, 0
    redis.call('HSET', key, 'cap', cap, 'epoch', epoch, 'successes', successes)
  elseif cap > max_cap then
    cap = max_cap
    redis.call('HSET', key, 'cap', cap)
  end
  return cap, epoch, successes
end
local function exact(x) return string.format('%.17g', x) end
"""

# KEYS: slots, wake. ARGV: cap, tokens. Removes the tokens and pushes one wake-up per slot given
# back (keeping at most `cap`). Returns how many were given back.
_RELEASE = """
local given_back = redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
if given_back > 0 then
  for _ = 1, given_back do redis.call('LPUSH', KEYS[2], 1) end
  redis.call('LTRIM', KEYS[2], 0, math.max(1, tonumber(ARGV[1])) - 1)
  redis.call('EXPIRE', KEYS[2], 60)  -- wake-ups nobody takes go away on their own
end
return given_back
"""

# KEYS: slots, starts, cap, pause. ARGV: now, token, expires_at, max_cap, starts per window
# (0: no rate limit), window_s. Returns granted, epoch, at_cap, in_flight, cap, paused_until,
# delay_s (until the pause or the rate window allows a start; 0 when only the cap refused).
_ACQUIRE = (
    _LOAD_STATE
    + """
local now = tonumber(ARGV[1])
local cap, epoch = load_state(KEYS[3], tonumber(ARGV[4]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local in_flight = redis.call('ZCARD', KEYS[1])
local paused_until = tonumber(redis.call('GET', KEYS[4])) or 0
local delay = paused_until - now
local limit = tonumber(ARGV[5])
if limit > 0 then
  local window = tonumber(ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    delay = math.max(delay, tonumber(oldest[2]) + window - now)
  end
end
local slots = math.max(1, math.floor(cap))
local granted, at_cap = 0, 0
if delay <= 0 and in_flight < slots then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  if limit > 0 then redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2]) end
  in_flight = in_flight + 1
  granted = 1
  if in_flight >= slots then at_cap = 1 end
end
return {granted, epoch, at_cap, in_flight, exact(cap), exact(paused_until), exact(math.max(0, delay))}
"""
)

# KEYS: cap. ARGV: epoch, max_cap, successes per increase (0: the cap). Returns epoch, cap.
_SUCCEEDED = (
    _LOAD_STATE
    + """
local max_cap = tonumber(ARGV[2])
local cap, epoch, successes = load_state(KEYS[1], max_cap)
if tonumber(ARGV[1]) == epoch then
  successes = successes + 1
  local needed = tonumber(ARGV[3])
  if needed <= 0 then needed = math.max(1, math.floor(cap)) end
  if successes >= needed then
    successes = 0
    cap = math.min(max_cap, cap + 1)
  end
  redis.call('HSET', KEYS[1], 'cap', cap, 'successes', successes)
end
return {epoch, exact(cap)}
"""
)

# KEYS: cap. ARGV: epoch, max_cap, decrease_factor. Returns epoch, cap.
_RATE_LIMITED = (
    _LOAD_STATE
    + """
local cap, epoch = load_state(KEYS[1], tonumber(ARGV[2]))
if tonumber(ARGV[1]) == epoch then
  cap = math.max(1, cap * tonumber(ARGV[3]))
  epoch = epoch + 1
  redis.call('HSET', KEYS[1], 'cap', cap, 'epoch', epoch, 'successes', 0)
end
return {epoch, exact(cap)}
"""
)

# KEYS: pause. ARGV: paused_until. Returns the pause in force (the longest).
_PAUSE = """
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return string.format('%.17g', current)
"""

# KEYS: slots. ARGV: now, expires_at, n, n tokens to renew, then tokens to drop.
# Returns the tokens to renew that were gone (expired, whoever noticed first).
_RENEW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = tonumber(ARGV[3])
local lost = {}
for i = 4, 3 + n do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
for i = 4 + n, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
return lost
"""


@dataclass(frozen=True)
class _Answer:
    granted: bool
    epoch: int
    at_cap: bool
    delay_s: float


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedSlots:
    """Call slots of one OCR domain, counted over every replica that shares the Redis database."""

    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str,
        domain: str,
        max_concurrent_calls: int,
        calls_per_second: float | None,
        lease_s: float = 30.0,
        decrease_factor: float = 0.5,
        recover_after_successes: int | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        poll_s: float = 0.5,
        where: str | None = None,
    ) -> None:
        """`redis` answers bytes (`decode_responses=False`); `where` names its server in errors
        (default: from the client, without credentials)."""
        check_limits(max_concurrent_calls, calls_per_second, decrease_factor, recover_after_successes)
        if not lease_s > 0 or not poll_s > 0:
            raise ValueError(f"lease_s and poll_s must be positive, not {lease_s} and {poll_s}")
        self.domain = domain
        self._redis = redis
        self._keys = [f"{key_prefix}{kind}:{domain}" for kind in ("slots", "starts", "cap", "pause")]
        self._wake_key = f"{key_prefix}wake:{domain}"
        self._where = where or redis_where(redis)
        self._password = redis_password(redis)
        self._max_cap = max_concurrent_calls
        self._lease_s = lease_s
        self._decrease_factor = decrease_factor
        self._recover_after = recover_after_successes or 0
        self._clock = clock
        self._sleep = sleep
        self._poll_s = poll_s
        # Same rule as the limiter: of the last `starts_per_window` starts, the oldest must be at
        # least `window_s` old.
        self._starts_per_window, self._window_s = rate_window(calls_per_second)
        self._acquire = redis.register_script(_ACQUIRE)
        self._succeeded = redis.register_script(_SUCCEEDED)
        self._rate_limited = redis.register_script(_RATE_LIMITED)
        self._pause = redis.register_script(_PAUSE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._held: set[str] = set()
        # Tokens whose grant may have happened unseen (cancelled or failed mid-call): removed with
        # the next release or renewal, or expired.
        self._abandoned: set[str] = set()
        # Last seen shared state.
        self._cap_f = float(max_concurrent_calls)
        self._epoch = 0
        self._in_flight = 0
        self._paused_until_s = -math.inf

    # -- state ----------------------------------------------------------------------------------

    @property
    def cap(self) -> int:
        """The shared cap, as last seen."""
        return max(1, math.floor(self._cap_f))

    @property
    def held(self) -> int:
        """Slots this object holds."""
        return len(self._held)

    def snapshot(self) -> dict[str, float | int | str]:
        """The last seen shared state, for metrics and logs."""
        return {
            "domain": self.domain,
            "cap": self.cap,
            "max_cap": self._max_cap,
            "epoch": self._epoch,
            "in_flight": self._in_flight,
            "held": len(self._held),
            "paused_for_s": round(max(0.0, self._paused_until_s - self._clock()), 3),
        }

    # -- slots ----------------------------------------------------------------------------------

    async def acquire(self) -> SharedPermit:
        """Wait until a shared slot is free and neither a pause nor the rate window holds starts."""
        token = secrets.token_hex(8)
        while True:
            answer = await self._attempt(token)
            if answer.granted:
                return SharedPermit(token, answer.epoch, answer.at_cap)
            if answer.delay_s > 0:
                await self._sleep(answer.delay_s)
            else:
                await self._wait_for_release()

    async def try_acquire(self) -> SharedPermit | None:
        """A shared slot if one can be had now; None otherwise."""
        token = secrets.token_hex(8)
        answer = await self._attempt(token)
        return SharedPermit(token, answer.epoch, answer.at_cap) if answer.granted else None

    async def release(self, permit: SharedPermit) -> None:
        """Give the slot back (a lease already lost is fine)."""
        self._held.discard(permit.token)
        tokens = [permit.token, *self._abandoned]
        try:
            await self._run(self._release(keys=[self._keys[0], self._wake_key], args=[self.cap, *tokens]))
        except BaseException:
            self._abandoned.add(permit.token)  # tried again with the next release or renewal
            raise
        self._abandoned.difference_update(tokens)

    async def _wait_for_release(self) -> None:
        """Until a replica gives a slot back (its wake-up, taken by one waiter), or `poll_s`."""
        await self._run(self._redis.blpop([self._wake_key], timeout=self._poll_s))

    async def _attempt(self, token: str) -> _Answer:
        now_s = self._clock()
        args: list[float | int | str] = [
            now_s,
            token,
            now_s + self._lease_s,
            self._max_cap,
            self._starts_per_window,
            self._window_s,
        ]
        try:
            reply = await self._run(self._acquire(keys=self._keys, args=args))
        except BaseException:
            # Cancelled or failed after sending: the script may have granted the slot unseen.
            self._abandoned.add(token)
            raise
        granted, epoch, at_cap, in_flight, cap, paused_until, delay_s = reply
        self._see(int(epoch), float(_text(cap)))
        self._in_flight = int(in_flight)
        self._paused_until_s = float(_text(paused_until))
        if granted:
            self._held.add(token)
        return _Answer(bool(granted), int(epoch), bool(at_cap), float(_text(delay_s)))

    # -- outcomes -------------------------------------------------------------------------------

    async def succeeded(self, permit: SharedPermit) -> None:
        """The service answered (not 0025): a call that took the last slot of the current epoch
        counts towards raising the shared cap by one."""
        if not permit.at_cap or permit.epoch < self._epoch:
            return  # slots to spare, or started under a cap lowered since: no evidence for more
        args = [permit.epoch, self._max_cap, self._recover_after]
        epoch, cap = await self._run(self._succeeded(keys=[self._keys[2]], args=args))
        self._see(int(epoch), float(_text(cap)))

    async def rate_limited(self, permit: SharedPermit) -> None:
        """0025: lower the shared cap by `decrease_factor` (floor 1) for every replica, unless it
        was lowered since this permit was granted."""
        if permit.epoch < self._epoch:
            return
        args = [permit.epoch, self._max_cap, self._decrease_factor]
        epoch, cap = await self._run(self._rate_limited(keys=[self._keys[2]], args=args))
        self._see(int(epoch), float(_text(cap)))

    async def pause(self, seconds: float) -> None:
        """0023: no replica starts a call for `seconds` from now, unless paused for longer already."""
        if seconds < 0:
            raise ValueError(f"a pause cannot be negative: {seconds}")
        paused_until = await self._run(self._pause(keys=[self._keys[3]], args=[self._clock() + seconds]))
        self._paused_until_s = float(_text(paused_until))

    # -- leases ---------------------------------------------------------------------------------

    async def renew(self) -> None:
        """Extend every lease held to `lease_s` from now; a lease found gone (it expired) is logged
        and forgotten."""
        held, dropped = sorted(self._held), sorted(self._abandoned)
        if not held and not dropped:
            return
        now_s = self._clock()
        args: list[float | int | str] = [now_s, now_s + self._lease_s, len(held), *held, *dropped]
        lost = await self._run(self._renew(keys=[self._keys[0]], args=args))
        self._abandoned.difference_update(dropped)
        for token in map(_text, lost):
            if token in self._held:  # not released in the meantime
                self._held.discard(token)
                log.warning("slots.lease_lost", domain=self.domain, token=token, lease_s=self._lease_s)

    async def keep_alive(self) -> None:
        """Renew the leases every `lease_s / 3` until cancelled. A failed renewal is logged and
        tried again at the next turn: a lease outlasts two failures."""
        while True:
            await self._sleep(self._lease_s / 3)
            try:
                await self.renew()
            except StorageError as error:
                log.warning("slots.renew_failed", domain=self.domain, error=str(error))

    # -- helpers --------------------------------------------------------------------------------

    def _see(self, epoch: int, cap: float) -> None:
        self._epoch, self._cap_f = epoch, cap

    async def _run(self, command: Awaitable[T]) -> T:
        """One command or script; redis-py sends floats as `repr`, which Lua's `tonumber` reads back
        exactly."""
        return await redis_command(command, self._where, self._keys[0], password=self._password)
