"""Admission to one OCR domain: a fair, adaptive cap on concurrent calls, shared by its batches.

The service's real limit is a few calls in flight per domain (SPEC §3, §5). A `DomainLimiter`:
- keeps at most `cap` calls in flight. `cap` starts at `max_concurrent_calls` (`max_cap`) and
  adapts AIMD-style: 0025 multiplies it by `decrease_factor` (floor 1) once per round, as calls
  started before a decrease were sent under the old cap; each round of successes
  (`recover_after_successes`, default the cap) adds one, up to `max_cap`. Only calls that took
  the last free slot count (spare slots prove nothing), and each repeated 0025 at the level that
  failed before doubles the rounds needed to climb back to it (up to 64), so a cap configured too
  high costs a few 0025s, not one per round. A lower cap evicts no call;
- starts at most `calls_per_second` calls in any one-second window (below 1/s: one per
  `1 / calls_per_second` s), as the service and the emulator count;
- starts none while paused after 0023 (`pause`; the longest pause wins);
- serves waiters round-robin across batches, first come first served within a batch.

Outcomes are reported on the `Permit` a slot yields, which knows the cap its call started under:

    async with limiter.slot(batch_id) as permit:
        try:
            response = await client.recognize(call)
        except OcrError as error:
            if error.error_class is ErrorClass.RATE_LIMITED:
                permit.rate_limited()
            elif error.error_class is ErrorClass.QUOTA:
                limiter.pause(quota_backoff_s)
            elif error.error_class is not ErrorClass.TRANSPORT:
                permit.succeeded()  # the service answered: the concurrency was fine
            raise
        permit.succeeded()

Reporting is optional and only a permit's first report counts. No background task: the waiter
next in line sleeps out pauses and rate windows (injected `sleep`); the others wait on futures.

With Redis (`shared`), the domain's cap, AIMD, rate budget and pauses are one state for every
replica (`coordination/slots.py`): a call admitted here (fairly across this process's batches)
then takes a shared slot, and its outcome is reported there when the slot is given back. Local
AIMD and rate windows are off then, as the shared ones decide; the local cap follows the shared.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from ocrbatch.coordination.limits import SharedPermit, check_limits, rate_window
from ocrbatch.errors import StorageError
from ocrbatch.types import Clock, Sleep

if TYPE_CHECKING:
    from ocrbatch.coordination.slots import SharedSlots  # made by `coordination.factory` with Redis

log = structlog.get_logger("ocrbatch.worker")
_MAX_PROBE_ROUNDS = 64


class Permit:
    """One admitted call; report what the service answered with `succeeded()` or `rate_limited()`."""

    __slots__ = ("_limiter", "_reported", "at_cap", "batch_id", "epoch", "outcome", "shared")

    def __init__(self, limiter: DomainLimiter, batch_id: str, epoch: int, at_cap: bool) -> None:
        self._limiter = limiter
        self._reported = False
        self.shared: SharedPermit | None = None  # the replica-wide slot, with Redis
        self.outcome: str | None = None  # "succeeded" or "rate_limited", as reported
        self.batch_id = batch_id
        self.epoch = epoch  # how many times the cap had been lowered when this call was admitted
        self.at_cap = at_cap  # this call took the last free slot: the cap was what held calls back

    def succeeded(self) -> None:
        """The service answered anything but 0025/0023: the cap this call started under held."""
        if not self._reported:
            self._reported, self.outcome = True, "succeeded"
            self._limiter._call_succeeded(self.epoch, self.at_cap)

    def rate_limited(self) -> None:
        """The service answered 0025: lower the cap, unless it was lowered since this call started."""
        if not self._reported:
            self._reported, self.outcome = True, "rate_limited"
            self._limiter._call_rate_limited(self.epoch)


@dataclass(eq=False)
class _Waiter:
    batch_id: str
    wakeup: asyncio.Future[None]
    granted: bool = False
    abandoned: bool = False  # cancelled while queued; dropped lazily when its turn comes
    epoch: int = 0
    at_cap: bool = False


@dataclass(eq=False)
class _BatchQueue:
    waiters: deque[_Waiter] = field(default_factory=deque)
    live: int = 0  # waiters not abandoned; the queue is removed when this reaches 0


def _wake(waiter: _Waiter) -> None:
    if not waiter.wakeup.done():
        waiter.wakeup.set_result(None)


class DomainLimiter:
    """Admission to one OCR domain, shared by every batch on it."""

    def __init__(
        self,
        name: str,
        *,
        max_concurrent_calls: int,
        calls_per_second: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        decrease_factor: float = 0.5,
        recover_after_successes: int | None = None,
        shared: SharedSlots | None = None,
    ) -> None:
        check_limits(max_concurrent_calls, calls_per_second, decrease_factor, recover_after_successes)
        self.name = name
        self._max_cap = max_concurrent_calls
        self._cap_f = float(max_concurrent_calls)  # float so repeated decreases compound exactly
        self._clock = clock
        self._sleep = sleep
        self._decrease_factor = decrease_factor
        self._recover_after = recover_after_successes
        self._epoch = 0  # bumped by every decrease
        self._successes = 0  # successes of current-epoch calls since the cap last changed
        self._failed_cap: int | None = None  # the cap of the last 0025, until a round there succeeds
        self._probe_rounds = 1  # rounds needed to step back up to `_failed_cap`; doubles on repeats
        self._in_flight = 0
        self._paused_until_s = -math.inf
        # Rate: of the last `maxlen` starts, the oldest must be at least a window old.
        self._rate_window_s = 0.0
        self._recent_starts_s: deque[float] | None = None
        self._shared = shared
        self._shared_pause_s = 0.0  # a pause to pass on to the shared state when the slot is given back
        if calls_per_second is not None and shared is None:
            starts, self._rate_window_s = rate_window(calls_per_second)
            self._recent_starts_s = deque(maxlen=starts)
        self._queues: dict[str, _BatchQueue] = {}
        self._turns: deque[str] = deque()  # batch ids with waiters, in round-robin order
        self._queued = 0
        self._head: _Waiter | None = None  # taken from the queues, waiting for the time gate or a slot
        self._head_sleeping = False

    # -- state ----------------------------------------------------------------------------------

    @property
    def cap(self) -> int:
        """How many calls may be in flight now (with Redis: the shared cap, as last seen)."""
        if self._shared is not None:
            return self._shared.cap
        return max(1, math.floor(self._cap_f))

    @property
    def shared(self) -> SharedSlots | None:
        return self._shared

    @property
    def settled_cap(self) -> int:
        """The cap without a probe in progress: while the cap stands at or above a level that was
        refused with 0025 and has not yet held, the level below it (what is known to work)."""
        if self._failed_cap is not None and self.cap >= self._failed_cap:
            return max(1, self._failed_cap - 1)
        return self.cap

    @property
    def max_cap(self) -> int:
        """The configured cap, which `cap` never exceeds."""
        return self._max_cap

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._queued + (1 if self._head is not None else 0)

    @property
    def paused_for_s(self) -> float:
        """Seconds until calls may start again after `pause` (0 when not paused)."""
        return max(0.0, self._paused_until_s - self._clock())

    def snapshot(self) -> dict[str, float | int | str]:
        """The limiter's state for metrics and logs (with Redis, also the shared calls in flight)."""
        snapshot: dict[str, float | int | str] = {
            "name": self.name,
            "cap": self.cap,
            "settled_cap": self.settled_cap,
            "max_cap": self._max_cap,
            "in_flight": self._in_flight,
            "waiting": self.waiting,
            "paused_for_s": round(self.paused_for_s, 3),
        }
        if self._shared is not None:
            shared = self._shared.snapshot()
            snapshot |= {"shared_in_flight": shared["in_flight"], "shared": "redis"}
        return snapshot

    # -- calls ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, batch_id: str) -> AsyncIterator[Permit]:
        """Wait for a free call slot (fairly across batches), hold it for one API call, release it."""
        permit = await self._acquire(batch_id)
        try:
            if self._shared is not None:
                permit.shared = await self._shared.acquire()
            yield permit
        finally:
            if permit.shared is not None:
                # Shielded: a cancelled call still gives its replica-wide slot back.
                await asyncio.shield(self._settle_shared(permit.shared, permit.outcome))
            self._release()

    async def _settle_shared(self, shared: SharedPermit, outcome: str | None) -> None:
        """Report the call's outcome and any pause to the shared state, and give the slot back.
        A 0025 or a pause is reported before the slot is free, so no replica starts under the old
        state; a success after, so the next call waits for no report. A Redis failure is logged:
        the slot's lease then runs out on its own."""
        slots = self._shared
        if slots is None:
            return
        pause_s, self._shared_pause_s = self._shared_pause_s, 0.0
        with self._logged_failure("limiter.shared_report_failed"):
            if outcome == "rate_limited":
                await slots.rate_limited(shared)
            if pause_s > 0:
                await slots.pause(pause_s)
        with self._logged_failure("limiter.shared_release_failed"):
            await slots.release(shared)
        if outcome == "succeeded":
            with self._logged_failure("limiter.shared_report_failed"):
                await slots.succeeded(shared)

    @contextmanager
    def _logged_failure(self, event: str) -> Iterator[None]:
        try:
            yield
        except StorageError as exc:
            log.warning(event, domain=self.name, error=str(exc))

    def pause(self, seconds: float) -> None:
        """Start no call for `seconds` from now (0023), unless already paused for longer."""
        if seconds < 0:
            raise ValueError(f"a pause cannot be negative: {seconds}")
        self._paused_until_s = max(self._paused_until_s, self._clock() + seconds)
        if self._shared is not None:
            self._shared_pause_s = max(self._shared_pause_s, seconds)

    # -- admission ------------------------------------------------------------------------------

    async def _acquire(self, batch_id: str) -> Permit:
        waiter = _Waiter(batch_id, asyncio.get_running_loop().create_future())
        self._enqueue(waiter)
        try:
            while not waiter.granted:
                delay_s = self._gate_delay_s() if waiter is self._head else 0.0
                if delay_s > 0:
                    # Next in line, but paused or out of rate budget: do the timed wait for everyone.
                    self._head_sleeping = True
                    try:
                        await self._sleep(delay_s)
                    finally:
                        self._head_sleeping = False
                    continue
                self._dispatch()
                if waiter.granted or (waiter is self._head and self._gate_delay_s() > 0):
                    continue
                # Waiting for a release, a larger cap, or the turn of this batch: `_dispatch` wakes us.
                waiter.wakeup = asyncio.get_running_loop().create_future()
                await waiter.wakeup
        except BaseException:
            self._abandon(waiter)
            raise
        return Permit(self, batch_id, waiter.epoch, waiter.at_cap)

    def _dispatch(self) -> None:
        """Admit waiters while slots are free and the time gate is open, in their fair order."""
        while self._in_flight < self.cap and not self._head_sleeping:
            head = self._head or self._next_waiter()
            if head is None:
                return
            self._head = head
            if self._gate_delay_s() > 0:
                _wake(head)  # it does the timed wait, then dispatches again
                return
            self._head = None
            self._in_flight += 1
            if self._recent_starts_s is not None:
                self._recent_starts_s.append(self._clock())
            head.granted = True
            head.epoch = self._epoch
            head.at_cap = self._in_flight >= self.cap
            _wake(head)

    def _gate_delay_s(self) -> float:
        """Seconds until the pause ends and the rate budget allows another start."""
        now_s = self._clock()
        delay_s = self._paused_until_s - now_s
        starts = self._recent_starts_s
        if starts is not None and len(starts) == starts.maxlen:
            delay_s = max(delay_s, starts[0] + self._rate_window_s - now_s)
        return max(0.0, delay_s)

    def _release(self) -> None:
        self._in_flight -= 1
        self._dispatch()

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter stopped waiting (cancelled): free what it holds, so nothing leaks."""
        if waiter.granted:
            self._release()  # admitted in the same instant: the slot passes to the next waiter
        elif waiter is self._head:
            self._head = None
            self._dispatch()
        else:
            waiter.abandoned = True
            self._queued -= 1
            queue = self._queues[waiter.batch_id]
            queue.live -= 1
            if queue.live == 0:
                del self._queues[waiter.batch_id]
                self._turns.remove(waiter.batch_id)

    # -- fair queues ----------------------------------------------------------------------------

    def _enqueue(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.batch_id)
        if queue is None:
            queue = self._queues[waiter.batch_id] = _BatchQueue()
            self._turns.append(waiter.batch_id)
        queue.waiters.append(waiter)
        queue.live += 1
        self._queued += 1

    def _next_waiter(self) -> _Waiter | None:
        """The first live waiter of the batch whose turn it is; that batch goes to the back."""
        if not self._turns:
            return None
        batch_id = self._turns.popleft()
        queue = self._queues[batch_id]
        waiter = queue.waiters.popleft()
        while waiter.abandoned:
            waiter = queue.waiters.popleft()
        queue.live -= 1
        self._queued -= 1
        if queue.live:
            self._turns.append(batch_id)
        else:
            del self._queues[batch_id]
        return waiter

    # -- AIMD -----------------------------------------------------------------------------------

    def _call_succeeded(self, epoch: int, at_cap: bool) -> None:
        if self._shared is not None:
            return  # the shared state decides, when the slot is given back
        if epoch != self._epoch or not at_cap:
            return  # started under a cap lowered since, or with slots to spare: no evidence for more
        self._successes += 1
        probing = self._failed_cap is not None and self.cap + 1 >= self._failed_cap
        if self._successes < (self._recover_after or self.cap) * (self._probe_rounds if probing else 1):
            return
        self._successes = 0
        if self._failed_cap is not None and self.cap >= self._failed_cap:
            self._failed_cap, self._probe_rounds = None, 1  # the level that failed holds now
        if self.cap < self._max_cap:
            self._cap_f = min(float(self._max_cap), self._cap_f + 1.0)
            self._dispatch()

    def _call_rate_limited(self, epoch: int) -> None:
        if self._shared is not None:
            return
        if epoch != self._epoch:
            return  # started under a cap that has been lowered since
        if self._failed_cap is not None and self.cap <= self._failed_cap:
            self._probe_rounds = min(_MAX_PROBE_ROUNDS, self._probe_rounds * 2)
        self._failed_cap = self.cap
        self._cap_f = max(1.0, self._cap_f * self._decrease_factor)
        self._epoch += 1
        self._successes = 0
