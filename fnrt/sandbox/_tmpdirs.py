"""Subprocess sandboxes' private TMPDIRs: made under their host's claim, swept once it is gone.

A sandbox's TMPDIR (and its output file beside it, ``_mirror``) is removed by the host when
the sandbox ends, or by the template when the host died first. When both die at once
(kill -9 of the whole process group, the OOM killer, a container stopped), nobody does:
the directories stayed in the temporary folder for good.

So each host names its sandboxes' directories after a claim of its own,
``fnrt-sandbox-<tag>-…``, and holds an advisory lock (``flock``) on
``fnrt-sandbox-<tag>.lock`` beside them for as long as it runs. The kernel drops the lock
when the process ends however it ends, and a lock is seen across PID namespaces that share
the folder (a pid would not be). The first sandbox a host makes in a folder sweeps it: each
claim whose lock nobody holds (and that is older than ``STALE_AFTER``, so a host that is
just creating its own is not taken for dead) has its directories, their output files and
its lock file removed. Other users' claims are left to them (or to root).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
import tempfile
import time

PREFIX = "fnrt-sandbox-"
LOCK_SUFFIX = ".lock"
#: A claim younger than this is never swept (its host may be between creating and locking it).
STALE_AFTER = 60.0


class Claim:
    """One host's claim on one temporary folder: the prefix of its sandboxes' directories
    and the lock that says it is alive."""

    def __init__(self, base: str) -> None:
        self.base = base
        for _ in range(100):
            tag = secrets.token_hex(4)
            path = os.path.join(base, f"{PREFIX}{tag}{LOCK_SUFFIX}")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 2**32 tags
            raise FileExistsError(f"no free sandbox claim in {base}")
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.tag = tag
        self.path = path
        self._fd: int | None = fd
        #: What ``mkdtemp`` is given: every directory of this claim starts so.
        self.prefix = f"{PREFIX}{tag}-"

    def release(self) -> None:
        """The host closes: its lock file goes (its directories are removed by then)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


def claim(base: str | None) -> Claim:
    """Claim ``base`` (the system's temporary folder when ``None``) and sweep the claims
    of hosts that are gone. Blocking (a directory scan): run it off the event loop."""
    folder = base or tempfile.gettempdir()
    mine = Claim(folder)
    sweep(folder, keep=mine.tag)
    return mine


def sweep(folder: str, *, keep: str | None = None, now: float | None = None) -> list[str]:
    """Remove what the dead claims in ``folder`` left; the tags swept."""
    now = time.time() if now is None else now
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    swept = []
    for name in names:
        if not (name.startswith(PREFIX) and name.endswith(LOCK_SUFFIX)):
            continue
        tag = name[len(PREFIX) : -len(LOCK_SUFFIX)]
        if tag == keep or "-" in tag:
            continue
        if _dead(os.path.join(folder, name), now):
            swept.append(tag)
            _remove_claim(folder, names, tag)
    return swept


def _dead(path: str, now: float) -> bool:
    """Nobody holds the claim's lock, and it is old enough to be nobody's new one. The lock
    is taken here and kept until the file is gone (closing drops it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < STALE_AFTER:
            return False
        if info.st_uid != os.geteuid() and os.geteuid() != 0:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its host is alive
            return False
        os.unlink(path)  # under the lock: a late sweeper finds nothing to take
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _remove_claim(folder: str, names: list[str], tag: str) -> None:
    prefix = f"{PREFIX}{tag}-"
    for name in names:
        if name.startswith(prefix):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
