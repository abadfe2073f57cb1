"""Tools for testing code that uses fnrt (and for fnrt's own tests).

- :class:`FakeClock`: time that moves only when told (``await clock.advance(s)``), for
  retry delays, event age, leases and idle retirement without sleeping. Pass it as
  ``Runtime(clock=clock)``.
- ``await rt.wait_idle()``: wait until queues, mappings and retries have settled (nothing
  left to do without new input or the clock moving).
- :func:`wait_until`: wait for another task or process to reach a state (synchronization,
  not timing: it polls a predicate and fails after ``limit`` real seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ._clock import FakeClock

__all__ = ["FakeClock", "wait_idle", "wait_until"]


async def wait_until(
    predicate: Callable[[], Any],
    what: str = "condition",
    limit: float = 15.0,
    *,
    clock: FakeClock | tuple[FakeClock, ...] | None = None,
    step: float = 0.25,
    poll: float = 0.005,
) -> Any:
    """Wait until ``predicate()`` (a function or a coroutine function) is truthy and return
    its value; ``AssertionError`` naming ``what`` after ``limit`` real seconds (a coroutine
    predicate still running then is cancelled). With
    ``clock`` (one :class:`FakeClock` or several), fake time moves by ``step`` between looks,
    for what waits on a retry delay or a lease."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    clocks = (clock,) if isinstance(clock, FakeClock) else clock or ()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):  # bounded too: a predicate that hangs is a timeout
            try:
                value = await asyncio.wait_for(value, max(deadline - loop.time(), 0.05))
            except TimeoutError:
                raise AssertionError(f"timed out after {limit} s waiting for {what}") from None
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        for each in clocks:
            await each.advance(step)
        await asyncio.sleep(poll)


async def wait_idle(runtime: object, timeout: float = 30.0) -> None:
    """``await runtime.wait_idle(timeout)``, as a function."""
    await runtime.wait_idle(timeout)  # type: ignore[attr-defined]
