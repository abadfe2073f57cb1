"""The template process: imports the sandbox worker once, then forks sandboxes on request.

Forking the host is unsafe once it has threads (aiosqlite runs one), so the host starts
this small single-threaded process and asks it over a ``SOCK_SEQPACKET`` control socket:

    host -> template   {"op": "spawn", "id": n}  + the sandbox's socket (SCM_RIGHTS)
    template -> host   {"op": "spawned", "id": n, "pid": pid}
    host -> template   {"op": "kill", "pid": pid}
    template -> host   {"op": "exit", "pid": pid, "status": wait_status}

The template reaps its children and reports how each one ended, so the host can tell the
caller "Runtime exited with error: signal: segmentation fault". When the host goes away
(the control socket closes, or the host dies), the template kills every sandbox and exits.
"""

from __future__ import annotations

# Pre-import what every sandbox needs, so a fork starts with it loaded.
import asyncio  # noqa: F401
import ctypes
import errno
import json
import logging  # noqa: F401
import os
import select
import signal
import socket
import sys
import traceback

from fnrt import _context  # noqa: F401
from fnrt.sandbox import _worker

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _send(ctrl: socket.socket, message: dict[str, object]) -> None:
    try:
        ctrl.send(json.dumps(message).encode())
    except OSError:
        pass  # the host is gone; we exit on the next read


def _run_child(sock: socket.socket, parent: int) -> None:
    die_with_parent()
    if os.getppid() != parent:  # the template died between fork and prctl
        os._exit(1)
    code = 0
    try:
        _worker.serve(sock)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc(file=sys.__stderr__)
        code = 1
    finally:
        try:
            sys.__stdout__.flush()  # type: ignore[union-attr]
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def main(ctrl_fd: int) -> None:
    die_with_parent()
    ctrl = socket.socket(fileno=ctrl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: set[int] = set()
    me = os.getpid()
    _send(ctrl, {"op": "ready", "pid": me})

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            _send(ctrl, {"op": "exit", "pid": pid, "status": status})

    running = True
    while running:
        try:
            readable, _, _ = select.select([ctrl.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            reap()
        if ctrl.fileno() not in readable:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(ctrl, 65536, 4)
        except OSError:
            break
        if not data:
            break
        message = json.loads(data)
        op = message["op"]
        if op == "spawn":
            sock = socket.socket(fileno=fds[0])
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                ctrl.close()
                os.close(wake_r)
                os.close(wake_w)
                _run_child(sock, me)
            sock.close()
            children.add(pid)
            _send(ctrl, {"op": "spawned", "id": message["id"], "pid": pid})
        elif op == "kill":
            pid = int(message["pid"])
            if pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
        elif op == "stop":
            running = False
        for fd in fds[1:] if op == "spawn" else fds:
            os.close(fd)
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
