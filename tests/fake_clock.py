"""The one fake clock of the test suite: code under test reads it and sleeps on it, so no test
waits for real time to pass and every delay asked for can be checked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

WALL_CLOCK_START_S = 1_800_000_000.0  # a plausible time.time(), in 2027


class FakeClock:
    """Seconds that move only when a sleeper or the test moves them.

    - Calling it gives the current time, `now_s`.
    - `sleep(delay_s)` records the delay, waits at `gate` when one is set, then moves the clock by
      the delay and returns; with `advance_on_sleep=False` it only records (backoffs whose waits a
      test checks while time stands still).
    - `sleep_until_advanced(delay_s)` waits until `advance` has moved the clock to its deadline
      (timers that must fire only when the test says).
    """

    def __init__(self, now_s: float = WALL_CLOCK_START_S, *, advance_on_sleep: bool = True) -> None:
        self.now_s = now_s
        self.sleeps_s: list[float] = []
        self.sleeping = asyncio.Event()  # set whenever a `sleep` begins
        self.gate: asyncio.Event | None = None
        self.on_sleep: Callable[[], None] | None = None
        self._advance_on_sleep = advance_on_sleep
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.sleeps_s.append(delay_s)
        self.sleeping.set()
        if self.on_sleep is not None:
            self.on_sleep()
        if self.gate is not None:
            await self.gate.wait()
        if self._advance_on_sleep:
            self.now_s += delay_s
        await asyncio.sleep(0)

    async def sleep_until_advanced(self, delay_s: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now_s + delay_s, future))
        await future

    async def advance(self, delay_s: float) -> None:
        """Move the clock and wake the `sleep_until_advanced` sleepers whose deadline has come."""
        self.now_s += delay_s
        for deadline_s, future in list(self._sleepers):
            if deadline_s <= self.now_s:
                self._sleepers.remove((deadline_s, future))
                if not future.done():
                    future.set_result(None)
        await asyncio.sleep(0)
