"""Supervised background work: one task group, and a policy for every loop iteration.

Every background task of a runtime (the async poller and its attempts, each stream
mapping's coordinator and shard pollers, maintenance, provisioning) runs in the one
:class:`asyncio.TaskGroup` that ``async with Runtime()`` opens. A loop does not die
silently:

- an *infrastructure* error (the store is unavailable, a sandbox could not be created, an
  ``OSError``) is logged with its traceback and the iteration is retried with backoff, so
  the queue keeps draining once the store is back;
- anything else is a programming error: it propagates, the task group cancels the block
  that opened the runtime, and ``async with Runtime()`` raises it. Loud, not lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ._clock import Clock
from ._lambda import backoff
from .errors import RuntimeClosed, ServiceError

__all__ = ["INFRASTRUCTURE", "Supervisor"]

#: Seconds between two tracebacks of one loop's streak of failures (the others: one line).
TRACEBACK_EVERY = 60.0

#: Errors that mean "the world is broken right now", not "the code is wrong".
INFRASTRUCTURE: tuple[type[BaseException], ...] = (ServiceError, OSError, sqlite3.Error)


class Supervisor:
    """Owns the runtime's task group; spawns tasks and supervised loops in it."""

    def __init__(self, clock: Clock, log: Any, *, retry: tuple[float, float] = (0.05, 30.0)) -> None:
        self.clock = clock
        self.log = log
        self.retry = retry
        self._group: asyncio.TaskGroup | None = None
        # Weak: a task leaves the set when it is gone, with no done callback (a loop
        # callback per task, and the async source spawns a task per event); the task
        # group holds the running ones.
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        #: Infrastructure failures seen by supervised loops (for stats and tests).
        self.failures = 0

    @property
    def running(self) -> bool:
        return self._group is not None

    async def open(self) -> None:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Start ``coro`` in the group: its unexpected error fails the runtime."""
        if self._group is None:
            coro.close()
            raise RuntimeClosed("the runtime is not running: use 'async with Runtime() as rt:'")
        task = self._group.create_task(coro, name=name)
        self._tasks.add(task)
        return task

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start a short task that its owner tracks and cancels itself (the async source's
        attempt, one per event): outside the group, so no done callback runs per task (a
        loop callback, and two Python calls). The coroutine must catch what it raises and
        hand an unexpected error to :meth:`fail`, which fails the runtime as a task of the
        group failing would."""
        if self._group is None:
            coro.close()
            raise RuntimeClosed("the runtime is not running: use 'async with Runtime() as rt:'")
        return asyncio.get_running_loop().create_task(coro, name="fnrt-attempt")

    def fail(self, error: BaseException) -> None:
        """A programming error outside the group (see :meth:`start`): it fails the runtime."""
        if self._group is None:
            self.log.error("background task failed", exc_info=error)
            return
        self._group.create_task(_reraise(error), name="failed")

    def loop(
        self, name: str, iteration: Callable[[], Awaitable[object]], *, wake: asyncio.Event | None = None
    ) -> asyncio.Task[Any]:
        """Run ``iteration`` forever under the policy in the module's docstring. ``wake``:
        set when there is new work (an enqueue that succeeded: the store is back), it ends
        a backoff early, so a recovered store is drained at once, not after up to 30 s."""
        return self.spawn(self._forever(name, iteration, wake), name=name)

    async def _backoff(self, delay: float, wake: asyncio.Event | None) -> None:
        if wake is None:
            await self.clock.sleep(delay)
            return
        wake.clear()  # only what comes during the backoff ends it
        timer = self.clock.call_later(delay, wake.set)
        try:
            await wake.wait()
        finally:
            timer.cancel()

    async def _forever(
        self, name: str, iteration: Callable[[], Awaitable[object]], wake: asyncio.Event | None = None
    ) -> None:
        failures = 0
        traced = 0.0  # when this streak of failures last logged a traceback
        while True:
            try:
                await iteration()
            except INFRASTRUCTURE as exc:
                failures += 1
                self.failures += 1
                delay = backoff(failures, *self.retry)
                # The traceback once a streak and then once every TRACEBACK_EVERY seconds: a
                # store that is down fails every loop every few seconds, and each traceback
                # costs the event loop its formatting (seconds with rich's, locals included).
                now = self.clock.monotonic()
                if failures == 1 or now - traced >= TRACEBACK_EVERY:
                    traced = now
                    self.log.error(
                        "background work failed; retrying", loop=name, retry_in=round(delay, 3), exc_info=exc
                    )
                else:
                    self.log.error(
                        "background work failed; retrying",
                        loop=name,
                        retry_in=round(delay, 3),
                        failures=failures,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                await self._backoff(delay, wake)
            else:
                if failures:
                    self.log.info("background work recovered", loop=name, after_failures=failures)
                failures = 0

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait for them to end."""
        while tasks := [task for task in self._tasks if not task.done()]:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)  # ended: whether or not their callbacks ran

    async def close(
        self, exc_type: type[BaseException] | None = None, exc: BaseException | None = None
    ) -> None:
        """Cancel what is left and leave the task group; raises what a task failed with.

        An exception of the block itself (``exc``) wins: it propagates as it is, not
        wrapped in a group, and what a task failed with is logged beside it.
        """
        await self.cancel_all()
        group, self._group = self._group, None
        if group is None:
            return
        if exc is None or isinstance(exc, asyncio.CancelledError):
            await group.__aexit__(exc_type, exc, exc.__traceback__ if exc is not None else None)
            return
        try:
            await group.__aexit__(None, None, None)
        except BaseExceptionGroup as failed:
            for error in failed.exceptions:
                self.log.error("background task failed", exc_info=error)


async def _reraise(error: BaseException) -> None:
    raise error
