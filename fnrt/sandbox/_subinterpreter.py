"""Subinterpreter sandboxes (Python 3.13+): each sandbox is an isolated interpreter with
its own GIL inside the host process, so CPU-bound handlers in different sandboxes run in
parallel without a process per sandbox.

Each sandbox owns one host thread, which creates the interpreter (the ``isolated`` config:
``gil='own'``, no fork, no exec, only extension modules that support subinterpreters)
and runs :func:`serve` in it for the sandbox's whole life: the same :class:`Worker` as in
a subprocess, reading and writing the same frames over a Unix socketpair. The host side
is the subprocess sandbox's asyncio protocol, so a warm call is one socket round trip and
never blocks the event loop.

What differs from a subprocess, and what fnrt does about it:

- **Timeouts cannot kill.** A thread stuck in a CPU loop cannot be stopped from outside.
  On a timeout the caller gets ``Task timed out`` at once and the sandbox is
  *quarantined*: it takes no more events, and when the handler finally returns its reply
  is dropped and its interpreter destroyed. Until then ``stopped`` is not done and the
  runtime keeps the function's concurrency slot counted, because the handler still uses
  a core. At runtime close, fnrt waits a few seconds for quarantined handlers, then leaves
  their (daemon) threads behind; the process can still exit.
- **No memory limit** (``"memory"`` is not in ``enforces``): interpreters share the process heap.
  ``Max Memory Used`` reports the host process's peak.
- **No per-sandbox environment variables, no private TMPDIR, same user**: ``os.environ``
  is process-wide and shared with the host (its secrets included), so a function's
  ``environment`` is not applied; read configuration another way. Not for untrusted code.
- ``os.fork()`` and ``os.exec*()`` raise ``RuntimeError`` in an isolated interpreter
  (``subprocess`` itself works on 3.13); ``os._exit()`` ends the whole host process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import sys
import threading
from typing import Any

from .._clock import Clock, Deadlines
from . import _wire
from ._channel import Channel, ChannelSandbox
from ._protocol import K_ERROR, K_FATAL, Resources, request_deadlines

SUBPROCESS_HINT = 'use sandbox="subprocess" for this function'
_CLOSE_GRACE = 5.0  # seconds runtime close waits for quarantined handlers to return
_BOOT = """\
import sys
sys.path[:] = __import__("json").loads(fnrt_path)
from fnrt.sandbox._subinterpreter import serve
serve(fnrt_fd)
"""


# -- the interpreter API: 3.14's public module where present, else 3.13's private one ----


def _run_interpreter(fd: int, path: str) -> str | None:
    """Create an isolated interpreter, run :func:`serve` in it until it returns, destroy it.

    Blocks the calling (sandbox) thread. Returns how it ended when that was not a clean
    return (an exception that escaped the interpreter), else ``None``.
    """
    try:
        from concurrent import interpreters  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        import _interpreters  # type: ignore[import-not-found,unused-ignore]

        interp = _interpreters.create(_interpreters.new_config("isolated"))
        try:
            failure = _interpreters.exec(interp, _BOOT, {"fnrt_fd": fd, "fnrt_path": path})
        finally:
            _interpreters.destroy(interp)
        return None if failure is None else str(failure.formatted)
    interp = interpreters.create()
    try:
        interp.prepare_main(fnrt_fd=fd, fnrt_path=path)
        interp.exec(_BOOT)
    except interpreters.ExecutionFailed as exc:
        return str(exc.excinfo.formatted)
    finally:
        interp.close()
    return None


def _describe(reason: str | None) -> str:
    """Lambda's wording for how a sandbox's interpreter ended."""
    if reason is None:
        return "Runtime exited without providing a reason"
    if reason.startswith("SystemExit"):
        code = reason.partition(":")[2].strip() or "0"
        if code in ("0", "None"):
            return "Runtime exited without providing a reason"
        return f"Runtime exited with error: exit status {code}"
    return f"Runtime exited with error: {reason}"


# -- inside the interpreter ----------------------------------------------------------------


def _explain(error: dict[str, Any] | None) -> None:
    """Say why an error happened when the cause is the subinterpreter itself."""
    if not error:
        return
    message = str(error.get("errorMessage", ""))
    if "does not support loading in subinterpreters" in message:
        error["errorMessage"] = (
            f"{message}. A C extension this module imports cannot load in a subinterpreter; {SUBPROCESS_HINT}"
        )
    elif "not supported for isolated subinterpreters" in message:
        error["errorMessage"] = (
            f"{message}. Handlers in subinterpreter sandboxes cannot call os.fork() or os.exec*(); "
            f"{SUBPROCESS_HINT}"
        )


def serve(fd: int) -> None:
    """The sandbox's main loop, run inside its interpreter: one frame in, one frame out.

    The subprocess worker's :func:`~fnrt.sandbox._worker.dispatch`, except that nothing
    here may end the process: a fatal reply (out of memory) or a lost host ends only this
    loop, and ``SystemExit`` leaves the interpreter so the host thread can report it.
    """
    from ._worker import Worker, dispatch, encode_reply

    sock = socket.socket(fileno=os.dup(fd))
    worker = Worker(process_wide=True, apply_environment=False, enforce_memory=False)
    try:
        read = _wire.FrameReader(sock).read
        while True:
            frame = read()
            if frame is None:
                return
            answer = dispatch(worker, *frame)
            if answer is None:
                return
            reply, out = answer
            _explain(reply.get(K_ERROR))
            sock.sendall(encode_reply(frame[0], reply, out))
            if reply.get(K_FATAL):
                return
    except (OSError, _wire.FrameError):
        return  # the host closed its end: quarantined, killed or retired
    finally:
        worker.close()
        sock.close()


# -- the host side ---------------------------------------------------------------------------


class SubinterpreterSandbox(ChannelSandbox):
    kind = "subinterpreter"

    def __init__(
        self, sandbox_id: str, channel: Channel, clock: Clock, deadlines: Deadlines | None = None
    ) -> None:
        super().__init__(sandbox_id, channel, clock, deadlines)
        self._reason: str | None = None
        #: Done when the interpreter has been destroyed (its thread has ended). After a
        #: timeout this can be much later than ``kill()``: the runtime holds the function's
        #: concurrency slot until then.
        self.stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def alive(self) -> bool:
        return super().alive and not self.stopped.done()

    @property
    def quarantined(self) -> bool:
        """Killed, but its handler is still running (a thread cannot be stopped)."""
        return self._dead and not self.stopped.done()

    def _on_stopped(self, reason: str | None) -> None:
        self._reason = reason
        if not self.stopped.done():
            self.stopped.set_result(None)

    async def _exit_reason(self) -> str:
        try:  # the interpreter ended; its thread says how in a moment
            await asyncio.wait_for(asyncio.shield(self.stopped), 2.0)
        except TimeoutError:
            pass
        return _describe(self._reason)

    # kill(): the socket is aborted; the interpreter is destroyed as soon as the current
    # handler (if any) returns, and ``stopped`` says when. close(): EOF, serve() returns.


class SubinterpreterFactory:
    """Creates subinterpreter sandboxes; each runs in its own daemon thread.

    Booting an interpreter (creating it, importing fnrt and the worker) costs most of a
    cold start, so, as the subprocess kind forks from a pre-imported template, the factory
    keeps one *spare* sandbox booted ahead from its first use on: a cold start takes the
    spare (paying only the handler module's init) and boots the next one in the background,
    on its own thread and GIL.
    """

    kind = "subinterpreter"
    enforces: frozenset[str] = frozenset()

    def __init__(self, clock: Clock, **_options: Any) -> None:
        self._clock = clock
        self._deadlines = request_deadlines(clock)
        self._ids = itertools.count(1)
        self._sandboxes: set[SubinterpreterSandbox] = set()
        self._spare: SubinterpreterSandbox | None = None

    async def create(self, resources: Resources | None = None) -> SubinterpreterSandbox:
        sandbox, self._spare = self._spare, None
        if sandbox is None or not sandbox.alive:
            sandbox = await self._boot()
        self._spare = await self._boot()
        return sandbox

    async def _boot(self) -> SubinterpreterSandbox:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _, channel = await loop.create_unix_connection(Channel, sock=ours)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        sandbox_id = f"si{os.getpid():x}{next(self._ids):04x}"
        sandbox = SubinterpreterSandbox(sandbox_id, channel, self._clock, self._deadlines)
        path = json.dumps([p or os.getcwd() for p in sys.path])

        def run() -> None:
            reason: str | None
            try:
                reason = _run_interpreter(theirs.fileno(), path)
            except BaseException as exc:  # creating the interpreter failed
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                theirs.close()
            try:
                loop.call_soon_threadsafe(sandbox._on_stopped, reason)
            except RuntimeError:
                pass  # the host's loop is closed

        thread = threading.Thread(target=run, name=f"fnrt-{sandbox_id}", daemon=True)
        thread.start()
        self._sandboxes.add(sandbox)
        sandbox.stopped.add_done_callback(lambda _: self._sandboxes.discard(sandbox))
        return sandbox

    async def aclose(self) -> None:
        """Stop every sandbox; wait a little for quarantined handlers, then leave them."""
        self._spare = None
        sandboxes = list(self._sandboxes)
        for sandbox in sandboxes:
            sandbox.kill()
        pending = [s.stopped for s in sandboxes if not s.stopped.done()]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_GRACE)
