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
  is a copy of the host's as it was when the interpreter booted (its secrets included; a
  spare boots ahead, so later changes in the host are not seen), so a function's
  ``environment`` is not applied; read configuration another way. Not for untrusted code.
- **Output without a reply.** As a subprocess sandbox does, each interpreter copies what
  an invocation prints into a small file (``_mirror``), so what a handler printed before a
  timeout, or before it ended its interpreter, is in the invocation's log.
- ``os.fork()`` and ``os.exec*()`` raise ``RuntimeError`` in an isolated interpreter
  (``subprocess`` itself works on 3.13); ``os._exit()`` ends the whole host process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import tempfile
import threading
import traceback
from typing import Any

from .._clock import Clock, Deadlines
from . import _wire
from ._channel import Channel, ChannelSandbox
from ._mirror import SUFFIX as OUTPUT_SUFFIX
from ._mirror import read_file, read_output
from ._protocol import (
    DEFAULT_LOG_CAPTURE_BYTES,
    K_ERROR,
    K_FATAL,
    Resources,
    factory_closed,
    import_path,
    request_deadlines,
)

SUBPROCESS_HINT = 'use sandbox="subprocess" for this function'
_CLOSE_GRACE = 5.0  # seconds runtime close waits for quarantined handlers to return
_BOOT = """\
import sys
sys.path[:] = __import__("json").loads(fnrt_path)
from fnrt.sandbox._subinterpreter import serve
sys.exit(serve(fnrt_fd, fnrt_output))
"""


# -- the interpreter API: 3.14's public module where present, else 3.13's private one ----


def _run_interpreter(fd: int, path: str, output: str = "") -> int | str:
    """Create an isolated interpreter, run :func:`serve` in it until it returns, destroy it.

    Blocks the calling (sandbox) thread. Returns how it ended: the exit status
    :func:`serve` returned, or what else escaped the interpreter (fnrt could not start in it).
    """
    try:
        from concurrent import interpreters  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        import _interpreters  # type: ignore[import-not-found,unused-ignore]

        interp = _interpreters.create(_interpreters.new_config("isolated"))
        try:
            shared = {"fnrt_fd": fd, "fnrt_path": path, "fnrt_output": output}
            failure = _interpreters.exec(interp, _BOOT, shared)
        finally:
            _interpreters.destroy(interp)
        return 0 if failure is None else _ended(failure)
    interp = interpreters.create()
    try:
        interp.prepare_main(fnrt_fd=fd, fnrt_path=path, fnrt_output=output)
        interp.exec(_BOOT)
    except interpreters.ExecutionFailed as exc:
        return _ended(exc.excinfo)
    finally:
        interp.close()
    return 0


def _ended(excinfo: Any) -> int | str:
    """How an interpreter ended, from the snapshot of the exception that left it: the
    boot's ``sys.exit(status)``, else (fnrt failed to start in it) that exception."""
    if excinfo.type.__name__ == "SystemExit" and excinfo.msg.isdigit():
        return int(excinfo.msg)
    return str(excinfo.formatted)


def _describe(ended: int | str | None) -> str:
    """Lambda's wording for how a sandbox's interpreter ended (``None``: not known yet),
    word for word the subprocess kind's for a process's exit status (``describe_exit``)."""
    if not ended:
        return "Runtime exited without providing a reason"
    if isinstance(ended, int):
        return f"Runtime exited with error: exit status {ended}"
    return f"Runtime exited with error: {ended}"


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


def _exit_status(code: object) -> int:
    """The status a process exits with after ``sys.exit(code)``, as the OS keeps it:
    ``None`` is 0, an int is itself (in 0-255), anything else (a message) is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


def serve(fd: int, output: str = "") -> int:
    """The sandbox's main loop, run inside its interpreter: one frame in, one frame out.

    The subprocess worker's :func:`~fnrt.sandbox._worker.dispatch`, except that nothing
    here may end the process: a fatal reply (out of memory) or a lost host ends only this
    loop. A handler that ends its environment (``sys.exit``, an uncaught ``BaseException``)
    ends the loop with the exit status the subprocess kind's process would end with (1 for
    an exception, its traceback on stderr), and the boot exits the interpreter with it, so
    the host thread words it as the subprocess kind does.
    """
    from ._worker import Worker, dispatch, encode_reply, host_stderr, install_mirror

    if output:  # what each invocation prints, where the host reads it if no reply comes
        install_mirror(output, DEFAULT_LOG_CAPTURE_BYTES)
    sock = socket.socket(fileno=os.dup(fd))
    worker = Worker(process_wide=True, apply_environment=False, enforce_memory=False)
    try:
        read = _wire.FrameReader(sock).read
        while True:
            frame = read()
            if frame is None:
                return 0
            answer = dispatch(worker, *frame)
            if answer is None:
                return 0
            reply, out = answer
            _explain(reply.get(K_ERROR))
            sock.sendall(encode_reply(frame[0], reply, out))
            if reply.get(K_FATAL):
                return 0
    except (OSError, _wire.FrameError):
        return 0  # the host closed its end: quarantined, killed or retired
    except SystemExit as exc:
        return _exit_status(exc.code)
    except BaseException:
        traceback.print_exc(file=host_stderr())
        return 1
    finally:
        worker.close()
        sock.close()


# -- the host side ---------------------------------------------------------------------------


class SubinterpreterSandbox(ChannelSandbox):
    kind = "subinterpreter"

    def __init__(
        self,
        sandbox_id: str,
        channel: Channel,
        clock: Clock,
        deadlines: Deadlines | None = None,
        output: str | None = None,
    ) -> None:
        super().__init__(sandbox_id, channel, clock, deadlines)
        self._ended: int | str | None = None
        #: The file its interpreter copies each invocation's output into (see ``_mirror``),
        #: and what it held when the interpreter ended (the file is gone then).
        self._output = output
        self._last_output: bytes | None = None
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

    def _on_stopped(self, ended: int | str, output: bytes = b"") -> None:
        self._ended = ended
        self._last_output = output
        if not self.stopped.done():
            self.stopped.set_result(None)

    async def output_so_far(self, request_id: str) -> str:
        """What ``request_id`` printed before it timed out (the handler may still be
        running: its interpreter's output file) or ended its interpreter (what the file
        held when the interpreter was destroyed)."""
        if self._output is None:
            return ""
        raw = self._last_output
        if raw is None:
            raw = await asyncio.to_thread(read_file, self._output)
        if not raw and self._last_output is None:  # removed as its interpreter ended: a moment
            try:
                await asyncio.wait_for(asyncio.shield(self.stopped), 2.0)
            except TimeoutError:
                pass
            raw = self._last_output or b""
        return read_output(raw, request_id)

    async def _exit_reason(self) -> str:
        try:  # the interpreter ended; its thread says how in a moment
            await asyncio.wait_for(asyncio.shield(self.stopped), 2.0)
        except TimeoutError:
            pass
        return _describe(self._ended)

    # kill(): the socket is aborted; the interpreter is destroyed as soon as the current
    # handler (if any) returns, and ``stopped`` says when. close(): EOF, serve() returns.


def _output_file(sandbox_id: str) -> str | None:
    """A new file for a sandbox's output mirror, or ``None`` when none can be made (then
    what it printed before a timeout is not kept, as before)."""
    try:
        fd, path = tempfile.mkstemp(prefix=f"fnrt-{sandbox_id}-", suffix=OUTPUT_SUFFIX)
    except OSError:
        return None
    os.close(fd)
    return path


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
        self._booting_spare = False
        self.closed = False

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise factory_closed(self.kind)

    async def create(self, resources: Resources | None = None) -> SubinterpreterSandbox:
        self._refuse_if_closed()
        sandbox, self._spare = self._spare, None
        if sandbox is None or not sandbox.alive:
            sandbox = await self._boot()
        spare = None
        if not self._booting_spare:  # one spare at a time: a burst of creates boots one, not one each
            self._booting_spare = True
            try:
                spare = await self._boot()
            finally:
                self._booting_spare = False
        if self.closed:  # aclose() ran meanwhile: neither may outlive the factory
            if spare is not None:
                spare.kill()
            sandbox.kill()
            raise factory_closed(self.kind)
        if spare is not None:  # only the create booting it sets the spare: none is orphaned
            self._spare = spare
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
        output = _output_file(sandbox_id)
        sandbox = SubinterpreterSandbox(sandbox_id, channel, self._clock, self._deadlines, output)
        path = json.dumps(import_path())

        def run() -> None:
            ended: int | str
            kept = b""
            try:
                ended = _run_interpreter(theirs.fileno(), path, output or "")
            except BaseException as exc:  # creating the interpreter failed
                ended = f"{type(exc).__name__}: {exc}"
            finally:
                theirs.close()
                if output is not None:
                    kept = read_file(output)
                    with contextlib.suppress(OSError):
                        os.unlink(output)
            try:
                loop.call_soon_threadsafe(sandbox._on_stopped, ended, kept)
            except RuntimeError:
                pass  # the host's loop is closed

        thread = threading.Thread(target=run, name=f"fnrt-{sandbox_id}", daemon=True)
        thread.start()
        self._sandboxes.add(sandbox)
        sandbox.stopped.add_done_callback(lambda _: self._sandboxes.discard(sandbox))
        return sandbox

    async def aclose(self) -> None:
        """Stop every sandbox; wait a little for quarantined handlers, then leave them."""
        self.closed = True
        self._spare = None
        sandboxes = list(self._sandboxes)
        for sandbox in sandboxes:
            sandbox.kill()
        pending = [s.stopped for s in sandboxes if not s.stopped.done()]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_GRACE)
