"""A control group per subprocess sandbox: its memory and process count, all its processes.

Lambda's limits are the execution environment's, not one process's: ``memory_mb`` holds for
the handler and every process it starts together, and an environment runs at most 1,024
processes and threads. Resource limits (``setrlimit``) are per process, and a handler's
children each get the whole limit again. So where Linux lets the template make control
groups (cgroup v1 ``memory`` and ``pids`` hierarchies it can write, as root usually can; or
cgroup v2 with both controllers delegated to its group), each sandbox runs in one of its own:

    <the template's own group>/fnrt-<template pid>/sandbox-<n>
        memory limit  = memory_mb (swap included, where the kernel counts it)
        pids limit    = 1,024

The kernel then charges every process of the sandbox to that group: past the memory limit
it kills one of them (the way Lambda's environments end: ``Runtime exited with error:
signal: killed``), past the pids limit ``fork`` fails. A sandbox's group also names every
process it has, whatever process group or session they moved to, so destroying a sandbox
kills them all, and the group is removed once they are gone.

Where none of this is available (not Linux, no cgroup file system, not writable, or
``FNRT_CGROUPS=0`` in the host's environment), sandboxes run as before: the per-process
limits hold and nothing else changes. Only the template uses this module (before it
forks, and when it reaps), so it is all plain blocking file I/O on ``/sys/fs/cgroup``.
"""

from __future__ import annotations

import contextlib
import os
import signal

__all__ = ["PIDS_LIMIT", "SandboxGroups", "discover"]

#: Lambda's quota of processes and threads per execution environment.
PIDS_LIMIT = 1024


class SandboxGroups:
    """The template's sandbox groups: one parent directory per hierarchy, one child each."""

    def __init__(self, parents: dict[str, str], version: int) -> None:
        self.parents = parents  # "memory"/"pids" (v1) or "unified" (v2) -> directory
        self.version = version

    def create(self, name: str, memory_mb: int | None) -> list[str]:
        """The directories of a new sandbox's groups, limits set; [] if they cannot be
        made (the sandbox then runs without them)."""
        made: list[str] = []
        try:
            for controller, parent in self.parents.items():
                path = os.path.join(parent, name)
                os.mkdir(path)
                made.append(path)
                if self.version == 2:
                    if memory_mb:
                        _write(path, "memory.max", str(memory_mb * 1024 * 1024))
                        _write(path, "memory.swap.max", "0", optional=True)
                    _write(path, "pids.max", str(PIDS_LIMIT))
                elif controller == "memory":
                    if memory_mb:
                        limit = str(memory_mb * 1024 * 1024)
                        _write(path, "memory.limit_in_bytes", limit)
                        _write(path, "memory.memsw.limit_in_bytes", limit, optional=True)
                else:
                    _write(path, "pids.max", str(PIDS_LIMIT))
        except OSError:
            remove(made)
            return []
        return made


def enter(groups: list[str]) -> None:
    """Move the calling process into ``groups`` (the sandbox, first thing after the fork:
    everything it starts is born there)."""
    for path in groups:
        with contextlib.suppress(OSError):
            _write(path, "cgroup.procs", str(os.getpid()))


def _tree(path: str) -> list[str]:
    """``path`` and the groups below it (a handler running as root can make some), deepest
    first: the order they can be removed in."""
    below: list[str] = []
    try:
        entries = list(os.scandir(path))
    except OSError:
        return [path]
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            below += _tree(entry.path)
    return [*below, path]


def members(groups: list[str]) -> list[int]:
    """Every process in the sandbox's groups and the groups below them."""
    found: set[int] = set()
    for group in groups:
        for path in _tree(group):
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    found.update(int(line) for line in f if line.strip())
            except (OSError, ValueError):
                continue
    return sorted(found)


def kill(groups: list[str]) -> None:
    """SIGKILL every process in the sandbox's groups."""
    for pid in members(groups):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def remove(groups: list[str]) -> bool:
    """Remove the groups, with the groups below them; False while a process is still in
    one (try again later)."""
    done = True
    for group in reversed(groups):
        for path in _tree(group):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError:
                done = False
    return done


def discover(tag: str) -> SandboxGroups | None:
    """The parent groups for this template's sandboxes (made here, named ``tag``), or
    None where sandboxes cannot have groups of their own."""
    if os.environ.get("FNRT_CGROUPS", "1") == "0" or not os.path.isdir("/sys/fs/cgroup"):
        return None
    try:
        mounts = _cgroup_mounts()
        own = _own_groups()
    except OSError:
        return None
    v1 = {c: base for c in ("memory", "pids") if (base := _base(mounts, own, c))}
    if v1:  # the v1 hierarchies there are (memory alone still bounds the environment)
        parents = {c: os.path.join(base, tag) for c, base in v1.items()}
        if _make_parents(parents):
            return SandboxGroups(parents, 1)
        return None
    unified = _base(mounts, own, "")
    if unified:
        # Delegated: both controllers enabled for our group's children. Our parent group
        # holds no process (the template stays where it is), so it may enable them for its
        # own children in turn (the "no internal processes" rule).
        try:
            with open(os.path.join(unified, "cgroup.subtree_control")) as f:
                enabled = set(f.read().split())
        except OSError:
            return None
        if {"memory", "pids"} <= enabled:
            parent = os.path.join(unified, tag)
            if _make_parents({"unified": parent}):
                try:
                    _write(parent, "cgroup.subtree_control", "+memory +pids")
                except OSError:
                    remove([parent])
                    return None
                return SandboxGroups({"unified": parent}, 2)
    return None


def _clear_stale(base: str) -> None:
    """Remove the groups a template that was killed outright (SIGKILL: no cleanup ran)
    left beside ours: ``fnrt-<pid>`` of a process that is gone, and its sandboxes' groups
    (killing what is still in them: their sandbox died with the template)."""
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith("fnrt-") or not entry[5:].isdigit():
            continue
        try:
            os.kill(int(entry[5:]), 0)
            continue  # its template is alive
        except ProcessLookupError:
            pass
        except OSError:
            continue
        stale = os.path.join(base, entry)
        kill([stale])
        remove([stale])


def _make_parents(parents: dict[str, str]) -> bool:
    made: list[str] = []
    for path in parents.values():
        _clear_stale(os.path.dirname(path))
        if os.path.isdir(path):  # a dead template's, whose pid this process has now
            kill([path])
            remove([path])
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError:
            remove(made)
            return False
        made.append(path)
        if not os.access(path, os.W_OK):
            remove(made)
            return False
    return True


def _write(path: str, name: str, value: str, *, optional: bool = False) -> None:
    try:
        with open(os.path.join(path, name), "w") as f:
            f.write(value)
    except OSError:  # optional: a file this kernel does not have (memsw, swap.max)
        if not optional:
            raise


def _cgroup_mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root of the hierarchy mounted there, type, options) of each cgroup
    file system, from ``/proc/self/mountinfo``."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            options = set(tail[2].split(",")) | set(fields[5].split(",") if len(fields) > 5 else ())
            found.append((_unescape(fields[4]), _unescape(fields[3]), tail[0], options))
    return found


def _own_groups() -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's group path, from ``/proc/self/cgroup``."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            for controller in parts[1].split(",") if parts[1] else [""]:
                own[controller] = parts[2]
    return own


def _base(mounts: list[tuple[str, str, str, set[str]]], own: dict[str, str], controller: str) -> str | None:
    """This process's own group directory in ``controller``'s hierarchy (v2: ``""``)."""
    path = own.get(controller)
    if path is None:
        return None
    for point, root, kind, options in mounts:
        wanted = kind == "cgroup2" if controller == "" else kind == "cgroup" and controller in options
        if wanted:
            if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
                continue
            rel = path[len(root) :] if root != "/" else path
            base = os.path.join(point, rel.lstrip("/"))
            if os.path.isdir(base):
                return base
    return None


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
