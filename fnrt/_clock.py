"""Time as an object, so timing logic is testable without sleeping.

Pollers, pools and timeouts take a :class:`Clock`. Production uses :class:`SystemClock`;
tests pass a :class:`FakeClock` and move time with ``await clock.advance(seconds)``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps users see)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle: ...


class SystemClock:
    """The real clock: the event loop's monotonic time and the system wall clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


#: How close to an advance's target a FakeClock timer must be due to fire in it (seconds).
RESOLUTION = 1e-6


class FakeClock:
    """A clock that only moves when told to.

    ``await advance(s)`` fires every timer and wakes every sleeper due within ``s``
    seconds, in time order, letting the woken tasks run between steps, so a test reads
    as "an hour passes" and takes microseconds.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        timer = _FakeTimer(self._now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await fut
        finally:
            timer.cancel()

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing what falls due on the way. A timer due
        within :data:`RESOLUTION` of the target fires too: a delay computed from wall time
        (``due - time()``, where ``time()`` near 1.8e9 is coarser than ``monotonic()``)
        can land a few hundred nanoseconds past an exact target and would otherwise
        wait for the next advance, which a test never makes."""
        target = self._now + seconds
        await _settle()
        while self._timers and self._timers[0][0] <= target + RESOLUTION:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.callback()
            await _settle()
        self._now = max(self._now, target)  # never backwards
        await _settle()

    @property
    def pending_timers(self) -> int:
        return sum(1 for _, _, t in self._timers if not t.cancelled)


async def _settle(rounds: int = 20) -> None:
    """Let ready tasks run: a handful of loop turns, no real time."""
    for _ in range(rounds):
        await asyncio.sleep(0)
