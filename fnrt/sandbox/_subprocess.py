"""Subprocess sandboxes, forked by a template process (see ``_template``).

The host side of each sandbox is a :class:`~fnrt.sandbox._channel.ChannelSandbox` on a
Unix socketpair: one frame out, one frame back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import sys
from typing import Any

from .._clock import Clock
from ._base import SandboxDied, SandboxSpec
from ._channel import Channel, ChannelSandbox


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


class TemplateProcess:
    """The host's handle on the template process: spawn, kill, and exit notifications."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._ctrl: socket.socket | None = None
        self._ids = itertools.count(1)
        self._spawning: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._ready: asyncio.Future[int] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setblocking(False)
        env = dict(os.environ)
        # The template (and so every sandbox) imports modules the way the host does.
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self._ready = loop.create_future()
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
        finally:
            child.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), 60)
        except BaseException:
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
                fut = self._exit_future(message["pid"])
                if not fut.done():
                    fut.set_result(message["status"])
            elif op == "ready" and self._ready is not None and not self._ready.done():
                self._ready.set_result(message["pid"])

    def _on_lost(self) -> None:
        if self._ctrl is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._ctrl.fileno())
            except (RuntimeError, ValueError):
                pass
        lost = SandboxDied("the template process exited")
        for fut in [*self._spawning.values(), *([self._ready] if self._ready else [])]:
            if not fut.done():
                fut.set_exception(lost)
        self._spawning.clear()
        self._closed = True

    def _exit_future(self, pid: int) -> asyncio.Future[int]:
        fut = self._exits.get(pid)
        if fut is None:
            fut = self._exits[pid] = asyncio.get_running_loop().create_future()
        return fut

    async def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        if self._closed or self._ctrl is None:
            raise SandboxDied("the template process is not running")
        data = json.dumps(message).encode()
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self._ctrl, [data], fds or [])
                return
            except (BlockingIOError, InterruptedError):
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._ctrl.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._ctrl.fileno())

    async def spawn(self) -> tuple[int, socket.socket]:
        """Fork a sandbox; returns its pid and the host's end of its socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spawn_id = next(self._ids)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawning[spawn_id] = fut
        try:
            await self._send({"op": "spawn", "id": spawn_id}, [theirs.fileno()])
        except BaseException:
            self._spawning.pop(spawn_id, None)
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            pid = await fut
        except BaseException:
            ours.close()
            raise
        self._exit_future(pid)
        return pid, ours

    def kill(self, pid: int) -> None:
        if self._closed or self._ctrl is None:
            return
        try:
            socket.send_fds(self._ctrl, [json.dumps({"op": "kill", "pid": pid}).encode()], [])
        except OSError:
            pass

    async def exit_status(self, pid: int, timeout: float = 2.0) -> int | None:
        fut = self._exit_future(pid)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except (TimeoutError, SandboxDied):
            return None
        finally:
            if fut.done():
                self._exits.pop(pid, None)

    def forget(self, pid: int) -> None:
        self._exits.pop(pid, None)

    async def aclose(self) -> None:
        """Stop the template; it kills and reaps every sandbox before exiting."""
        if self._ctrl is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._ctrl.fileno())
            except (RuntimeError, ValueError):
                pass
            self._ctrl.close()
            self._ctrl = None
        self._closed = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class SubprocessSandbox(ChannelSandbox):
    kind = "subprocess"
    stopped = None  # a kill ends the process at once

    def __init__(
        self, sandbox_id: str, pid: int, channel: Channel, template: TemplateProcess, clock: Clock
    ) -> None:
        super().__init__(sandbox_id, channel, clock)
        self._pid = pid
        self._template = template

    @property
    def pid(self) -> int | None:
        return self._pid

    async def _exit_reason(self) -> str:
        return describe_exit(await self._template.exit_status(self._pid))

    def _destroy(self) -> None:
        self._template.kill(self._pid)
        self._template.forget(self._pid)

    def _retired(self) -> None:
        self._template.forget(self._pid)


class SubprocessFactory:
    """Creates subprocess sandboxes through one lazily started template process."""

    kind = "subprocess"
    enforces_memory = True

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._template: TemplateProcess | None = None
        self._starting: asyncio.Lock | None = None
        self._ids = itertools.count(1)

    async def _ensure_template(self) -> TemplateProcess:
        if self._template is not None and not self._template._closed:
            return self._template
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._template is None or self._template._closed:
                template = TemplateProcess()
                await template.start()
                self._template = template
        return self._template

    async def create(self, spec: SandboxSpec) -> SubprocessSandbox:
        template = await self._ensure_template()
        pid, sock = await template.spawn()
        loop = asyncio.get_running_loop()
        try:
            _, channel = await loop.create_unix_connection(Channel, sock=sock)
        except BaseException:
            template.kill(pid)
            sock.close()
            raise
        return SubprocessSandbox(f"{pid:x}{next(self._ids):04x}", pid, channel, template, self._clock)

    async def aclose(self) -> None:
        if self._template is not None:
            await self._template.aclose()
            self._template = None
