"""Inline sandboxes: the handler runs in a host thread. For debugging and unit tests.

Not isolated: the module is imported into the host process (imported once, shared by every
inline sandbox of that module), memory limits are not enforced, environment variables are
not applied, and a timed-out handler cannot be killed: the caller gets the timeout at once
and the thread is abandoned to finish on its own.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from typing import Any

from .._clock import Clock
from ._base import SandboxDied, SandboxSpec, SandboxTimeout, arm_deadline
from ._worker import Worker


class InlineSandbox:
    kind = "inline"
    pid = None
    stopped = None  # documented: a timed-out inline handler's thread is abandoned

    def __init__(self, sandbox_id: str, clock: Clock) -> None:
        self.id = sandbox_id
        self._clock = clock
        self._worker = Worker(process_wide=False, apply_environment=False)
        self._dead = False

    @property
    def alive(self) -> bool:
        return not self._dead

    def _handle(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        op = header["op"]
        if op == "invoke":
            return self._worker.invoke(header, body)
        if op == "init":
            return self._worker.init({**header, "enforce_memory": False}), b""
        if op == "bind":
            return self._worker.bind({**header["bind"], "enforce_memory": False}), b""
        raise ValueError(f"unknown op {op}")

    async def request(
        self, header: dict[str, Any], body: bytes = b"", timeout: float | None = None
    ) -> tuple[dict[str, Any], bytes]:
        if self._dead:
            raise SandboxDied("Runtime exited without providing a reason")
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(None, functools.partial(self._handle, header, body))
        fut: asyncio.Future[tuple[dict[str, Any], bytes]] = loop.create_future()

        def finished(done: asyncio.Future[tuple[dict[str, Any], bytes]]) -> None:
            if fut.done():
                return
            if done.exception() is not None:
                fut.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                fut.set_result(done.result())

        work.add_done_callback(finished)
        timer = arm_deadline(fut, timeout, self._clock)
        try:
            reply = await fut
        except SandboxTimeout:
            self._dead = True
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if reply[0].get("fatal"):
            self._dead = True
        return reply

    def kill(self) -> None:
        self._dead = True
        self._worker.close()

    async def close(self) -> None:
        self.kill()


class InlineFactory:
    kind = "inline"
    enforces_memory = False

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._ids = itertools.count(1)

    async def create(self, spec: SandboxSpec) -> InlineSandbox:
        return InlineSandbox(f"inline-{next(self._ids):04x}", self._clock)

    async def aclose(self) -> None:
        return None
