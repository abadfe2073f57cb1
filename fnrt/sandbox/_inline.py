"""Inline sandboxes: the handler runs in a host thread. For debugging and unit tests.

Not isolated (``enforces`` is empty): the module is imported into the host process
(imported once, shared by every inline sandbox of that module) and sees the host's whole
environment, memory limits are not enforced, environment variables are not applied, and a
timed-out handler cannot be killed: the caller gets the timeout at once and the thread is
abandoned to finish on its own. Handlers run on the factory's own threads, so an abandoned
one never starves the host's ``to_thread`` work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import weakref
from typing import Any

from .._clock import Clock, Deadlines
from . import _protocol as _p
from ._protocol import (
    InitReply,
    InitRequest,
    InvokeReply,
    InvokeRequest,
    Resources,
    SandboxDied,
    SandboxTimeout,
    factory_closed,
    request_deadlines,
)
from ._worker import Worker, dispatch


class InlineSandbox:
    kind = "inline"
    pid = None
    stopped = None  # documented: a timed-out inline handler's thread is abandoned

    def __init__(
        self,
        sandbox_id: str,
        clock: Clock,
        executor: concurrent.futures.Executor,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.id = sandbox_id
        self._clock = clock
        self._deadlines = deadlines if deadlines is not None else request_deadlines(clock)
        self._executor = executor
        self._worker = Worker(process_wide=False, apply_environment=False, enforce_memory=False)
        self._dead = False
        #: The reply the request in flight waits for: a kill fails it at once (the thread
        #: running the handler cannot be stopped; it is abandoned).
        self._waiting: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None

    @property
    def alive(self) -> bool:
        return not self._dead

    async def output_so_far(self, request_id: str) -> str:
        return ""  # a timed-out inline handler's thread is abandoned with what it captured

    async def init(self, request: InitRequest, timeout: float | None = None) -> InitReply:
        header, _ = await self._request(request.to_wire(), b"", timeout)
        return InitReply.from_wire(header)

    async def invoke(self, request: InvokeRequest, timeout: float | None = None) -> InvokeReply:
        header, body = await self._request(request.to_wire(), request.body, timeout)
        return InvokeReply.from_wire(header, body)

    def _handle(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        answer = dispatch(self._worker, header, body)
        return answer if answer is not None else ({_p.K_OK: True}, b"")

    async def _request(
        self, header: dict[str, Any], body: bytes, timeout: float | None
    ) -> tuple[dict[str, Any], bytes]:
        if self._dead:
            raise SandboxDied("Runtime exited without providing a reason")
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, functools.partial(self._handle, header, body))
        fut: asyncio.Future[tuple[dict[str, Any], bytes]] = loop.create_future()

        def finished(done: asyncio.Future[tuple[dict[str, Any], bytes]]) -> None:
            if fut.done():
                return
            if done.cancelled():
                fut.cancel()
            elif (exc := done.exception()) is not None:
                if not isinstance(exc, Exception):  # SystemExit from the handler: this sandbox ends
                    exc = SandboxDied(f"Runtime exited with error: {type(exc).__name__}: {exc}")
                fut.set_exception(exc)
            else:
                fut.set_result(done.result())

        work.add_done_callback(finished)
        deadline = None if timeout is None else self._deadlines.add(fut, timeout)
        self._waiting = fut
        try:
            reply = await fut
        except SandboxTimeout:
            self._dead = True
            raise
        except BaseException:
            self._dead = True
            raise
        finally:
            self._waiting = None
            if deadline is not None:
                Deadlines.discard(deadline)
        if reply[0].get(_p.K_FATAL):
            self._dead = True
        return reply

    def kill(self) -> None:
        self._dead = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_exception(SandboxDied("Runtime exited with error: signal: killed"))
        self._worker.close()

    async def close(self) -> None:
        self.kill()


class InlineFactory:
    kind = "inline"
    enforces: frozenset[str] = frozenset()

    def __init__(self, clock: Clock, *, max_workers: int = 64, **_options: Any) -> None:
        self._clock = clock
        self._deadlines = request_deadlines(clock)
        self._ids = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="fnrt-inline")
        self._sandboxes: weakref.WeakSet[InlineSandbox] = weakref.WeakSet()
        self.closed = False

    async def create(self, resources: Resources | None = None) -> InlineSandbox:
        if self.closed:
            raise factory_closed(self.kind)
        sandbox = InlineSandbox(f"inline-{next(self._ids):04x}", self._clock, self._executor, self._deadlines)
        self._sandboxes.add(sandbox)
        return sandbox

    async def aclose(self) -> None:
        """Kill every sandbox (a call in flight fails at once; its thread is abandoned)."""
        self.closed = True
        for sandbox in list(self._sandboxes):
            sandbox.kill()
        self._executor.shutdown(wait=False)
