"""Subprocess sandboxes, forked by a template process (see ``_template``).

The host side of each sandbox is a :class:`~fnrt.sandbox._channel.ChannelSandbox` on a
Unix socketpair: one frame out, one frame back.

Isolation this kind gives: its own process, session and process group (destroying a
sandbox kills the group, so what a handler started dies with it); an environment built
from :class:`~fnrt.sandbox.Resources` alone (the host's variables, its credentials among
them, are not inherited; ``TZ=:UTC`` applies); a private ``TMPDIR`` removed with the
sandbox; ``memory_mb`` as RLIMIT_DATA and RLIMIT_AS; optionally another user id
(``run_as_user``, host running as root). What it does not give: a private file system,
network or PID namespace (it sees the host's files with the user's rights: run it as
another user, or in a container, for code you do not trust); a handler's child that
starts its own session escapes the group kill.

Every spawn is bounded (``spawn_timeout``): a template that is dead, stopped or wedged is
killed and replaced, and the caller gets :class:`~fnrt.errors.ServiceError` saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pwd
import signal
import socket
import sys
import tempfile
from typing import Any

from .._clock import Clock, Deadlines
from ..errors import InvalidConfig, ServiceError
from ._channel import Channel, ChannelSandbox
from ._mirror import SUFFIX as OUTPUT_SUFFIX
from ._mirror import read_file, read_output, remove_with_output
from ._protocol import (
    Resources,
    SandboxDied,
    factory_closed,
    import_path,
    request_deadlines,
    sandbox_environment,
)
from ._tmpdirs import Claim, claim

#: Seconds a spawn may take before the template counts as wedged (and is replaced).
DEFAULT_SPAWN_TIMEOUT = 5.0
#: Seconds a new template may take to start (it imports the worker).
DEFAULT_START_TIMEOUT = 20.0
#: Spawn requests the template has at once. It forks one after the other, so more would only
#: wait in its socket, and a burst of hundreds of cold starts would then count against each
#: request's ``spawn_timeout`` the time the template spent forking the others: a busy
#: template taken for a wedged one, killed with every sandbox it had.
SPAWNS_AT_ONCE = max(4, 2 * (os.cpu_count() or 1))
_KEEP_EXIT_STATUS = 10.0  # seconds an exit status waits for someone to ask for it
_OUTPUTS_KEPT = 64  # dead sandboxes whose last output is kept for a caller to ask


def describe_exit(status: int | None) -> str:
    """Lambda's wording for how a runtime process ended."""
    if status is None:
        return "Runtime exited without providing a reason"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        name = signal.strsignal(-code) or f"signal {-code}"
        return f"Runtime exited with error: signal: {name.lower()}"
    if code == 0:
        return "Runtime exited without providing a reason"
    return f"Runtime exited with error: exit status {code}"


class TemplateGone(Exception):
    """The template process exited or stopped answering (private to this module)."""


def _import_path() -> str:
    return os.pathsep.join(import_path())


class TemplateProcess:
    """The host's handle on the template process: spawn, kill, and exit notifications."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._ctrl: socket.socket | None = None
        self._ids = itertools.count(1)
        self._spawning: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._on_exit: dict[int, Any] = {}
        self._reaped: set[int] = set()
        self._ready: asyncio.Future[int] | None = None
        #: Done once the template is gone: no exit status will be reported after that.
        self._lost: asyncio.Future[None] | None = None
        self.closed = False
        #: Its sandboxes each run in control groups of their own (memory and process count
        #: for the whole environment: see ``_cgroup``), as the template found it could.
        self.control_groups = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setblocking(False)
        # The template holds none of the host's secrets: only what sandboxes pass through.
        env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "PYTHONHOME", "FNRT_CGROUPS")
        }
        env["PYTHONPATH"] = _import_path()  # it imports modules the way the host does
        self._ready = loop.create_future()
        self._lost = loop.create_future()
        self._ctrl = parent
        loop.add_reader(parent.fileno(), self._on_readable)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fnrt.sandbox._template",
                str(child.fileno()),
                pass_fds=[child.fileno()],
                start_new_session=True,
                env=env,
            )
        except BaseException:
            await self.aclose()
            raise
        finally:
            child.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except BaseException:
            self.kill_template()
            await self.aclose()
            raise

    def _on_readable(self) -> None:
        assert self._ctrl is not None
        while True:
            try:
                data = self._ctrl.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._on_lost()
                return
            message = json.loads(data)
            op = message["op"]
            if op == "spawned":
                fut = self._spawning.pop(message["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(message["pid"])
            elif op == "exit":
                pid = message["pid"]
                self._reaped.add(pid)
                asyncio.get_running_loop().call_later(_KEEP_EXIT_STATUS, self._reaped.discard, pid)
                fut = self._exit_future(pid)
                if not fut.done():
                    fut.set_result(message["status"])
                asyncio.get_running_loop().call_later(_KEEP_EXIT_STATUS, self._exits.pop, pid, None)
                callback = self._on_exit.pop(pid, None)
                if callback is not None:
                    callback()
            elif op == "ready" and self._ready is not None and not self._ready.done():
                self.control_groups = bool(message.get("cgroups"))
                self._ready.set_result(message["pid"])

    def _on_lost(self) -> None:
        if self._ctrl is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._ctrl.fileno())
            except (RuntimeError, ValueError):
                pass
        lost = TemplateGone("the template process exited")
        for fut in [*self._spawning.values(), *([self._ready] if self._ready else [])]:
            if not fut.done():
                fut.set_exception(lost)
                fut.exception()  # retrieved: its waiter may be gone (cancelled), not an error to log
        self._spawning.clear()
        self.closed = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        # Its sandboxes die with it (their parent-death signal): nobody will report them.
        for callback in self._on_exit.values():
            callback()
        self._on_exit.clear()

    def _exit_future(self, pid: int) -> asyncio.Future[int]:
        fut = self._exits.get(pid)
        if fut is None:
            fut = self._exits[pid] = asyncio.get_running_loop().create_future()
        return fut

    async def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        ctrl = self._ctrl  # kept: the template may go (and _ctrl with it) while we wait
        if self.closed or ctrl is None:
            raise TemplateGone("the template process is not running")
        data = json.dumps(message).encode()
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(ctrl, [data], fds or [])
                return
            except (BlockingIOError, InterruptedError):
                fileno = ctrl.fileno()
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fileno, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(fileno)
                if self.closed:  # a burst of spawns waited on a template that went meanwhile
                    raise TemplateGone("the template process exited") from None
            except OSError as exc:
                raise TemplateGone(f"the template process is not running ({exc})") from None

    async def spawn(self, setup: dict[str, Any], on_exit: Any = None) -> tuple[int, socket.socket]:
        """Fork a sandbox; returns its pid and the host's end of its socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spawn_id = next(self._ids)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawning[spawn_id] = fut
        try:
            await self._send({"op": "spawn", "id": spawn_id, "setup": setup}, [theirs.fileno()])
        except BaseException:
            self._spawning.pop(spawn_id, None)
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            pid = await fut
        except BaseException:
            self._spawning.pop(spawn_id, None)
            ours.close()
            raise
        self._exit_future(pid)
        if on_exit is not None:
            self._on_exit[pid] = on_exit
        return pid, ours

    def kill(self, pid: int) -> None:
        """Kill the sandbox ``pid`` and its whole process group."""
        if self.closed or self._ctrl is None:
            return  # its sandboxes die with the template (their parent-death signal)
        try:
            socket.send_fds(self._ctrl, [json.dumps({"op": "kill", "pid": pid}).encode()], [])
            return
        except OSError:
            pass
        # The template is not reading (stopped, wedged): signal the group from here. The pid
        # cannot have been reused: the (live) template has not reaped it.
        if pid not in self._reaped:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    async def exit_status(self, pid: int, timeout: float = 2.0) -> int | None:
        """How ``pid`` ended, as the template reported it; ``None`` when it does not say
        within ``timeout``, or cannot any more (the template is gone)."""
        fut = self._exit_future(pid)
        if not fut.done() and not self.closed:
            waiting: list[asyncio.Future[Any]] = [fut] if self._lost is None else [fut, self._lost]
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return fut.result() if fut.done() else None

    def kill_template(self) -> None:
        """SIGKILL the template (wedged or stopped); its sandboxes die with it."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    async def aclose(self) -> None:
        """Stop the template; it kills and reaps every sandbox before exiting."""
        was_open, self.closed = not self.closed, True
        if self._ctrl is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._ctrl.fileno())
            except (RuntimeError, ValueError):
                pass
            self._ctrl.close()
            self._ctrl = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if was_open:  # after the template exited: its sandboxes are gone, their files may go
            self._on_lost()


class SubprocessSandbox(ChannelSandbox):
    kind = "subprocess"
    stopped = None  # a kill ends the process at once

    def __init__(
        self,
        sandbox_id: str,
        pid: int,
        channel: Channel,
        template: TemplateProcess,
        clock: Clock,
        deadlines: Deadlines | None = None,
        tmp: str | None = None,
        outputs: dict[str, asyncio.Future[bytes]] | None = None,
    ) -> None:
        super().__init__(sandbox_id, channel, clock, deadlines)
        self._pid = pid
        self._template = template
        self.tmp = tmp
        self._outputs = outputs

    async def output_so_far(self, request_id: str) -> str:
        if self.tmp is None:
            return ""
        # A sandbox that died has had its TMPDIR removed: the file was read first.
        kept = self._outputs.pop(self.tmp, None) if self._outputs is not None else None
        raw = await kept if kept is not None else await asyncio.to_thread(read_file, self.tmp + OUTPUT_SUFFIX)
        return read_output(raw, request_id)

    @property
    def alive(self) -> bool:
        # A sandbox dies with its template (its parent-death signal): once the template is
        # known gone, a warm one is not handed out for an event it could never run. Spelled
        # out, not through super(): the warm path asks three times a call.
        channel = self._channel
        return not self._dead and not channel.lost and channel.broken is None and not self._template.closed

    @property
    def pid(self) -> int | None:
        return self._pid

    async def _exit_reason(self) -> str:
        return describe_exit(await self._template.exit_status(self._pid))

    async def _death(self) -> SandboxDied:
        template = self._template
        status = await template.exit_status(self._pid)
        if status is None and template.closed:
            # Its template went (killed, crashed): the sandbox died with it, by its
            # parent-death signal. fnrt's machinery failed, not the function.
            return SandboxDied(f"the sandbox's template process exited (pid {template.pid})", service=True)
        return SandboxDied(describe_exit(status))

    def _destroy(self) -> None:
        self._template.kill(self._pid)


def _resolve_user(user: str | int) -> tuple[int, int]:
    try:
        entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise InvalidConfig(f"run_as_user {user!r} is not a user on this host") from None
    return entry.pw_uid, entry.pw_gid


def _keep_output_and_remove(path: str) -> bytes:
    """Remove a dead sandbox's TMPDIR, first reading its output file (see ``_mirror``)."""
    raw = read_file(path + OUTPUT_SUFFIX)
    remove_with_output(path)
    return raw


class SubprocessFactory:
    """Creates subprocess sandboxes through one lazily started template process."""

    kind = "subprocess"
    enforces = frozenset({"memory", "timeout-kill", "process-isolation", "env-isolation", "run-as-user"})

    def __init__(
        self,
        clock: Clock,
        *,
        spawn_timeout: float = DEFAULT_SPAWN_TIMEOUT,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._deadlines = request_deadlines(clock)
        self.spawn_timeout = spawn_timeout
        self.start_timeout = start_timeout
        self._template: TemplateProcess | None = None
        self._starting: asyncio.Lock | None = None
        #: A template being started (``aclose`` kills it: it must not outlive the factory).
        self._pending: TemplateProcess | None = None
        self.closed = False
        self._ids = itertools.count(1)
        self._tmp_dirs: set[str] = set()
        self._removals: set[asyncio.Future[Any]] = set()
        #: Dead sandboxes' TMPDIRs being removed, by path: what their output file held.
        self._outputs: dict[str, asyncio.Future[bytes]] = {}
        #: This host's claim on each temporary folder its sandboxes use (``_tmpdirs``).
        self._claims: dict[str | None, Claim] = {}
        self._claiming = asyncio.Lock()
        self._spawns = asyncio.Semaphore(SPAWNS_AT_ONCE)  # requests the template has

    @property
    def template_pid(self) -> int | None:
        """The template process's pid (``None`` before the first sandbox)."""
        return self._template.pid if self._template is not None and not self._template.closed else None

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise factory_closed(self.kind)

    async def _ensure_template(self) -> TemplateProcess:
        if self._template is not None and not self._template.closed:
            return self._template
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            self._refuse_if_closed()  # closed while this call waited for the lock
            if self._template is None or self._template.closed:
                template = self._pending = TemplateProcess()
                try:
                    await template.start(self.start_timeout)
                except TimeoutError:
                    if self.closed:  # aclose() stopped it while it started
                        raise factory_closed(self.kind) from None
                    raise ServiceError(
                        f"could not start a sandbox: the template process did not start within "
                        f"{self.start_timeout:.1f} s"
                    ) from None
                except (OSError, TemplateGone) as exc:
                    if self.closed:
                        raise factory_closed(self.kind) from None
                    raise ServiceError(
                        f"could not start a sandbox: the template process failed ({exc})"
                    ) from None
                finally:
                    self._pending = None
                if self.closed:  # closed just as it came up: it goes with the factory
                    await template.aclose()
                    raise factory_closed(self.kind)
                self._template = template
        return self._template

    def _setup(self, resources: Resources, tmp: str) -> dict[str, Any]:
        setup: dict[str, Any] = {
            "env": sandbox_environment(resources, os.environ, _import_path()),
            "tmp": tmp,
            "memory_mb": resources.memory_mb,
            "log_bytes": resources.log_capture_bytes,
        }
        if resources.run_as_user is not None:
            uid, gid = _resolve_user(resources.run_as_user)
            if uid != os.geteuid():
                if os.geteuid() != 0:
                    raise InvalidConfig(
                        f"run_as_user={resources.run_as_user!r} needs the host to run as root"
                    )
                os.chown(tmp, uid, gid)
                setup["uid"], setup["gid"] = uid, gid
        return setup

    async def create(self, resources: Resources | None = None) -> SubprocessSandbox:
        """Fork a sandbox. Raises :class:`ServiceError` when no sandbox can be had within
        ``spawn_timeout`` (plus a template start, when one is needed)."""
        self._refuse_if_closed()
        resources = resources or Resources()
        try:
            held = self._claims.get(resources.tmp_dir) or await self._claim(resources.tmp_dir)
            tmp = tempfile.mkdtemp(prefix=held.prefix, dir=held.base)
        except OSError as exc:
            raise ServiceError(f"could not start a sandbox: no temporary directory ({exc})") from None
        self._tmp_dirs.add(tmp)
        try:
            setup = self._setup(resources, tmp)
            template, pid, sock = await self._spawn(setup, tmp)
        except BaseException:
            self._tmp_dirs.discard(tmp)
            remove_with_output(tmp)
            raise
        loop = asyncio.get_running_loop()
        try:
            if self.closed:  # aclose() ran while it was forked: never hand it out
                raise factory_closed(self.kind)
            _, channel = await loop.create_unix_connection(Channel, sock=sock)
        except BaseException as exc:
            template.kill(pid)
            sock.close()
            if isinstance(exc, OSError):
                raise ServiceError(f"could not start a sandbox: {exc}") from None
            raise
        sandbox_id = f"{pid:x}{next(self._ids):04x}"
        return SubprocessSandbox(
            sandbox_id, pid, channel, template, self._clock, self._deadlines, tmp, self._outputs
        )

    async def _claim(self, base: str | None) -> Claim:
        """The first sandbox in a folder claims it, and sweeps what dead hosts left there."""
        async with self._claiming:
            held = self._claims.get(base)
            if held is None:
                held = await asyncio.to_thread(claim, base)
                if self.closed:  # aclose() released the claims meanwhile: this one goes too
                    held.release()
                    raise factory_closed(self.kind)
                self._claims[base] = held
            return held

    async def _spawn(self, setup: dict[str, Any], tmp: str) -> tuple[TemplateProcess, int, socket.socket]:
        loop = asyncio.get_running_loop()

        def removed() -> None:
            if tmp in self._tmp_dirs:
                self._tmp_dirs.discard(tmp)
                removal = loop.run_in_executor(None, _keep_output_and_remove, tmp)
                self._removals.add(removal)
                removal.add_done_callback(self._removals.discard)
                # What its last invocation printed, for a caller that got no reply (a few
                # kept: a sandbox that ended normally is never asked).
                self._outputs[tmp] = removal
                while len(self._outputs) > _OUTPUTS_KEPT:
                    self._outputs.pop(next(iter(self._outputs)))

        for attempt in (1, 2):  # a template found dead is replaced once
            template = await self._ensure_template()
            try:
                # The timeout runs from when the template has the request: a wait for
                # one of SPAWNS_AT_ONCE is the host's queue, not the template's silence.
                async with self._spawns:
                    self._refuse_if_closed()
                    if template.closed:  # replaced while this waited: ask the new one
                        template = await self._ensure_template()
                    pid, sock = await asyncio.wait_for(template.spawn(setup, removed), self.spawn_timeout)
                return template, pid, sock
            except TimeoutError:
                template.kill_template()
                await template.aclose()
                raise ServiceError(
                    f"could not start a sandbox: the template process did not answer within "
                    f"{self.spawn_timeout:.1f} s (it is stopped or wedged; it has been replaced)"
                ) from None
            except TemplateGone as exc:
                await template.aclose()
                if self.closed:  # it went because the factory closed: start no other
                    raise factory_closed(self.kind) from None
                if attempt == 2:
                    raise ServiceError(f"could not start a sandbox: {exc}") from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.closed = True
        pending = self._pending
        if pending is not None:  # a template still starting: its start fails at once ...
            pending.kill_template()
            await pending.aclose()
            if self._starting is not None:  # ... and is reaped before this returns
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._starting.acquire(), DEFAULT_SPAWN_TIMEOUT)
                    self._starting.release()
        if self._template is not None:
            await self._template.aclose()
            self._template = None
        dirs, self._tmp_dirs = list(self._tmp_dirs), set()
        for path in dirs:
            await asyncio.to_thread(remove_with_output, path)
        if self._removals:  # sandboxes that ended just before: their directories go too
            await asyncio.gather(*self._removals)
        claims, self._claims = list(self._claims.values()), {}
        for held in claims:
            held.release()
