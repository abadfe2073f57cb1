"""Time as an object, so timing logic is testable without sleeping.

Pollers, pools and timeouts take a :class:`Clock`. Production uses :class:`SystemClock`;
tests pass a :class:`FakeClock` and move time with ``await clock.advance(seconds)``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol


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

    # The builtins themselves: no Python frame per reading (the warm path reads both).
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

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


class Deadlines:
    """Many deadlines on one clock behind one timer.

    ``add(fut, timeout)`` fails ``fut`` with ``error()`` once ``timeout`` seconds have
    passed on the clock, unless ``discard(entry)`` came first or ``fut`` is done by then.
    What a deadline costs on the warm path is a list and two deque operations, not a timer
    armed and cancelled per request (and, on the system clock, no cancelled handle left in
    the event loop's heap for the whole timeout).

    Entries live in one deque per timeout value: deadlines of one timeout arrive in
    increasing order, and requests mostly finish in the order they started, so a finished
    entry is usually the head of its deque and leaves at once (one that finishes out of
    order is marked and leaves when it reaches the head). The earliest pending deadline is
    one of the heads; one clock timer stays armed for it, or for an earlier one whose
    request has finished since: when that fires it expires what is due, drops what is
    finished and re-arms for the next deadline. Expiry is exact to the clock: an entry
    expires when the clock reaches its deadline, as a timer of its own would.
    """

    __slots__ = ("_armed", "_clock", "_error", "_now", "_queues", "_timer")

    #: A deque this long is swept of finished entries (those behind a long-running head).
    SWEEP = 1024

    def __init__(self, clock: Clock, error: Callable[[], BaseException]) -> None:
        self._clock = clock
        self._now = clock.monotonic
        self._error = error
        self._queues: dict[float, deque[list[Any]]] = {}
        self._timer: TimerHandle | None = None
        self._armed = math.inf  # the deadline the timer is armed for

    def add(self, fut: asyncio.Future[Any], timeout: float) -> list[Any]:
        """Register ``fut``'s deadline, ``timeout`` seconds from now; the entry is for
        :meth:`discard`."""
        deadline = self._now() + timeout
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        entry = [deadline, fut, queue]
        queue.append(entry)
        if deadline < self._armed:
            self._arm(deadline)
        elif len(queue) % self.SWEEP == 0:
            self._sweep(queue)
        return entry

    @staticmethod
    def discard(entry: list[Any]) -> None:
        """The request is over (answered, failed or cancelled): its deadline no longer counts."""
        entry[1] = None
        queue = entry[2]
        while queue and queue[0][1] is None:
            queue.popleft()

    @property
    def pending(self) -> int:
        """Deadlines registered and neither discarded nor expired."""
        return sum(1 for queue in self._queues.values() for entry in queue if entry[1] is not None)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = deadline
        self._timer = self._clock.call_later(deadline - self._now(), self._fire)

    def _fire(self) -> None:
        # The timer armed for ``armed`` fired: that deadline has come, whatever rounding
        # the delay went through (the clock may read a hair earlier).
        reached = max(self._now(), self._armed)
        self._timer = None
        self._armed = math.inf
        expired: list[list[Any]] = []
        earliest = math.inf
        for timeout, queue in list(self._queues.items()):
            while queue:
                head = queue[0]
                if head[1] is None:
                    queue.popleft()
                elif head[0] <= reached:
                    expired.append(queue.popleft())
                else:
                    earliest = min(earliest, head[0])
                    break
            if not queue:
                del self._queues[timeout]
        if earliest < math.inf:
            self._arm(earliest)
        expired.sort(key=_first)  # in deadline order, as timers of their own would fire
        for entry in expired:
            fut, entry[1] = entry[1], None
            if not fut.done():
                fut.set_exception(self._error())

    @staticmethod
    def _sweep(queue: deque[list[Any]]) -> None:
        live = [entry for entry in queue if entry[1] is not None]
        if len(live) < len(queue):
            queue.clear()
            queue.extend(live)


def _first(entry: list[Any]) -> float:
    return float(entry[0])
