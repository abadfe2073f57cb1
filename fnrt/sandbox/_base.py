"""The sandbox protocol: what the pool needs from an execution environment.

A sandbox runs one module, bound to one function, one event at a time. Backends
(``subprocess``, ``subinterpreter``, ``inline``) implement :class:`Sandbox` and a
:class:`SandboxFactory` that creates them; the runtime picks a factory by name.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import attrs

from .._clock import Clock, TimerHandle


class SandboxDied(Exception):
    """The sandbox ended during a request. ``message`` is Lambda's wording."""

    def __init__(self, message: str, error_type: str = "Runtime.ExitError") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


class SandboxTimeout(Exception):
    """The request passed its deadline; the sandbox has been destroyed."""


def arm_deadline(fut: asyncio.Future[Any], timeout: float | None, clock: Clock) -> TimerHandle | None:
    """Fail ``fut`` with :class:`SandboxTimeout` when ``timeout`` passes on ``clock``.

    Every sandbox kind waits for its reply this way; the caller cancels the returned timer
    once the reply is in. A timer on the runtime's clock, not ``wait_for``: no task per
    request on the hot path, and tests move time with ``FakeClock``.
    """
    if timeout is None:
        return None

    def expire() -> None:
        if not fut.done():
            fut.set_exception(SandboxTimeout())

    return clock.call_later(timeout, expire)


@attrs.frozen
class SandboxSpec:
    """What a factory needs to create one sandbox."""

    module: str
    memory_mb: int | None = None
    environment: dict[str, str] = attrs.field(factory=dict)


class Sandbox(Protocol):
    id: str
    kind: str
    @property
    def stopped(self) -> asyncio.Future[None] | None:
        """``None``, or done once the sandbox runs no user code any more. A kind that cannot
        stop a handler at once (a subinterpreter thread) keeps it pending after a timeout,
        and the runtime keeps the function's concurrency slot until it is done."""
        ...

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    async def request(
        self, header: dict[str, Any], body: bytes = b"", timeout: float | None = None
    ) -> tuple[dict[str, Any], bytes]:
        """Send one frame, wait for its reply.

        Raises :class:`SandboxTimeout` (after destroying the sandbox) when ``timeout``
        passes, :class:`SandboxDied` when the sandbox ends first.
        """
        ...

    def kill(self) -> None:
        """Destroy at once (timeouts, crashes, runtime close)."""
        ...

    async def close(self) -> None:
        """Retire gracefully: let it finish, then free its resources."""
        ...


class SandboxFactory(Protocol):
    kind: str
    enforces_memory: bool

    async def create(self, spec: SandboxSpec) -> Sandbox: ...

    async def aclose(self) -> None: ...
