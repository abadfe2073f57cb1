"""The template process: imports the sandbox worker once, then forks sandboxes on request.

Forking the host is unsafe once it has threads (aiosqlite runs one), so the host starts
this small single-threaded process and asks it over a ``SOCK_SEQPACKET`` control socket
(JSON messages):

    host -> template   {"op": "spawn", "id": n, "setup": {...}}  + the sandbox's socket (SCM_RIGHTS)
    template -> host   {"op": "spawned", "id": n, "pid": pid}
    host -> template   {"op": "kill", "pid": pid}
    template -> host   {"op": "exit", "pid": pid, "status": wait_status}

``setup`` says how the child is prepared before it serves: its environment (it starts from
that alone), its private ``TMPDIR``, its memory limit, the uid/gid it runs as.

Each sandbox leads its own session and process group, and "kill" kills the whole group, so
processes a handler started die with its sandbox. The template reaps its children, kills
what is left of a reaped child's group, and reports how each one ended, so the host can
tell the caller "Runtime exited with error: signal: segmentation fault". When the host goes
away (the control socket closes, or the host dies: the template gets SIGTERM as its
parent-death signal), the template kills every sandbox's group and exits. A sandbox whose
template dies gets SIGTERM too and kills its own group.
"""

from __future__ import annotations

# Pre-import what every sandbox needs, so a fork starts with it loaded.
import asyncio  # noqa: F401
import collections
import ctypes
import errno
import itertools
import json
import logging  # noqa: F401
import os
import select
import signal
import socket
import sys
import tempfile
import time
import traceback
from typing import Any

from fnrt import _context  # noqa: F401
from fnrt.sandbox import _cgroup, _mirror, _worker

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    """Linux's ``prctl(option, value)``; False where it is not there or refused."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(option, value) == 0)
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no orphans)."""
    _prctl(PR_SET_PDEATHSIG, sig)


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux 3.4+), not init's: what a
    handler started and moved out of its sandbox's process group (``setpgid``,
    ``setsid``, a double fork) comes back here when its parent dies, to be killed."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def adopted(parent: int, own: set[int]) -> list[int]:
    """``parent``'s children that are not in ``own`` (its sandboxes): orphans adopted."""
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) in own or int(entry) == parent:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])  # after "(comm)": state, ppid
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent:
            found.append(int(entry))
    return found


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (or, before it has one, the process)."""
    try:
        os.killpg(pid, signal.SIGKILL)
        return
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _send(ctrl: socket.socket, message: dict[str, object]) -> None:
    try:
        ctrl.send(json.dumps(message).encode())
    except OSError:
        pass  # the host is gone; we exit on the next read


def _kill_own_group(*_: object) -> None:
    os.killpg(0, signal.SIGKILL)


def _prepare_child(setup: dict[str, Any]) -> _worker.Worker:
    """Turn the freshly forked child into a sandbox: own group, clean environment, limits."""
    os.setsid()
    os.dup2(2, 1)  # nothing a sandbox writes at the fd level reaches the host's stdout
    env = setup.get("env")
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    tmp = setup.get("tmp")
    log_bytes = int(setup.get("log_bytes") or 0) or 65536
    if tmp:
        os.environ["TMPDIR"] = tmp
        tempfile.tempdir = tmp
        _worker.install_mirror(tmp + _mirror.SUFFIX, log_bytes)
    if env is not None and hasattr(time, "tzset"):
        time.tzset()
    worker = _worker.Worker(process_wide=True, log_capture_bytes=log_bytes)
    uid, gid = setup.get("uid"), setup.get("gid")
    if gid is not None:
        os.setgroups([])
        os.setgid(int(gid))
    if uid is not None:
        os.setuid(int(uid))
    worker.limit_memory(setup.get("memory_mb"))
    return worker


def _run_child(sock: socket.socket, parent: int, setup: dict[str, Any], groups: list[str]) -> None:
    code = 0
    try:
        _cgroup.enter(groups)  # first: all it starts is born in its control groups
        worker = _prepare_child(setup)
        # After setuid (a change of credentials clears the parent-death signal): when the
        # template dies, this sandbox kills its whole group.
        signal.signal(signal.SIGTERM, _kill_own_group)
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:  # the template died before prctl
            _kill_own_group()
        _worker.serve(sock, worker)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc(file=_worker.host_stderr())
        code = 1
    finally:
        try:
            sys.__stdout__.flush()  # type: ignore[union-attr]
        except (OSError, ValueError, AttributeError):
            pass
    # Whatever the handler started ends with the sandbox, however the sandbox ends (the
    # host closed the socket or went away). SIGTERM, so this process keeps its exit code;
    # the template SIGKILLs the group when it reaps this process.
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    os._exit(code)


def main(ctrl_fd: int) -> None:
    # The parent-death signal only sets a flag (and wakes the loop through the wakeup fd):
    # nothing may interrupt the cleanup below, which the host's death also starts (EOF).
    host_gone: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: host_gone.append(signum))
    die_with_parent(signal.SIGTERM)
    ctrl = socket.socket(fileno=ctrl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: set[int] = set()
    tmp_dirs: dict[int, str] = {}  # the host removes them, unless it is gone
    # Dirs of sandboxes reaped lately: a sandbox that ends because the host died can be
    # reaped before the template sees the host is gone, and then nobody else removes its
    # TMPDIR. Bounded: only the host's death needs them, and only the last few.
    reaped_dirs: collections.deque[str] = collections.deque(maxlen=256)
    me = os.getpid()
    subreaper = become_subreaper()
    # A control group per sandbox where Linux allows it (memory and process count for the
    # whole environment, and every process of it named: see _cgroup); reaped sandboxes'
    # groups are removed once their last process is gone.
    cgroups = _cgroup.discover(f"fnrt-{me}")
    spawned = itertools.count(1)
    groups: dict[int, list[str]] = {}
    emptying: list[list[str]] = []
    _send(ctrl, {"op": "ready", "pid": me, "cgroups": cgroups is not None})

    def kill_sandbox(pid: int) -> None:
        kill_group(pid)
        _cgroup.kill(groups.get(pid, []))

    def empty_groups() -> None:
        """Kill what is left in reaped sandboxes' groups, and remove those now empty."""
        for dirs in list(emptying):
            _cgroup.kill(dirs)
            if _cgroup.remove(dirs):
                emptying.remove(dirs)

    def sweep() -> None:
        """Kill what a handler started that left its sandbox's group and lost its parent:
        as this process's adopted children they are found, whatever group they lead."""
        if subreaper:
            for orphan in adopted(me, children):
                kill_group(orphan)

    def reap() -> None:
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            if pid not in children:  # an adopted orphan, ended: nobody waits for it
                continue
            children.discard(pid)
            gone = tmp_dirs.pop(pid, None)
            if gone is not None:
                reaped_dirs.append(gone)
            kill_sandbox(pid)  # what the sandbox started dies with it
            dirs = groups.pop(pid, [])
            if dirs and not _cgroup.remove(dirs):
                emptying.append(dirs)
            _send(ctrl, {"op": "exit", "pid": pid, "status": status})
        if reaped:
            sweep()  # a sandbox (or an orphan) ended: its escaped descendants are ours now

    running = True
    while running and not host_gone:
        try:
            # While reaped sandboxes' groups still hold processes, look again soon.
            readable, _, _ = select.select([ctrl.fileno(), wake_r], [], [], 0.05 if emptying else None)
        except InterruptedError:
            continue
        if emptying:
            empty_groups()
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
            data, fds, _flags, _addr = socket.recv_fds(ctrl, 1 << 20, 4)
        except OSError:
            break
        if not data:
            break
        message = json.loads(data)
        op = message["op"]
        if op == "spawn":
            sock = socket.socket(fileno=fds[0])
            setup = message.get("setup") or {}
            dirs = cgroups.create(f"sandbox-{next(spawned)}", setup.get("memory_mb")) if cgroups else []
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                ctrl.close()
                os.close(wake_r)
                os.close(wake_w)
                _run_child(sock, me, setup, dirs)
            sock.close()
            children.add(pid)
            if dirs:
                groups[pid] = dirs
            tmp = (message.get("setup") or {}).get("tmp")
            if tmp:
                tmp_dirs[pid] = tmp
            _send(ctrl, {"op": "spawned", "id": message["id"], "pid": pid})
        elif op == "kill":
            pid = int(message["pid"])
            if pid in children:
                kill_sandbox(pid)
        elif op == "stop":
            running = False
        for fd in fds[1:] if op == "spawn" else fds:
            os.close(fd)
    for pid in list(children):
        kill_sandbox(pid)
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    reap()
    # Escaped descendants come back to us as their parents die: kill and reap them until
    # none is left (bounded: each round kills a generation), so none outlives the runtime.
    deadline = time.monotonic() + 2.0
    while subreaper and time.monotonic() < deadline:
        orphans = adopted(me, set())
        if not orphans:
            break
        for orphan in orphans:
            kill_group(orphan)
        time.sleep(0.005)
        reap()
    emptying.extend(groups.values())
    while emptying and time.monotonic() < deadline + 1.0:
        empty_groups()
        if emptying:
            time.sleep(0.01)
            reap()
    if cgroups is not None and not emptying:
        _cgroup.remove(list(cgroups.parents.values()))
    for tmp in [*tmp_dirs.values(), *reaped_dirs]:  # removing one twice does no harm
        _mirror.remove_with_output(tmp)
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
