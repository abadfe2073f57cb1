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

from ._clock import FakeClock

__all__ = ["FakeClock", "wait_idle", "wait_until"]


async def wait_until(predicate: Callable[[], bool], what: str = "condition", limit: float = 15.0) -> None:
    """Wait until ``predicate()`` is true; ``AssertionError`` naming ``what`` after ``limit`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_idle(runtime: object, timeout: float = 30.0) -> None:
    """``await runtime.wait_idle(timeout)``, as a function."""
    await runtime.wait_idle(timeout)  # type: ignore[attr-defined]
