"""A throwaway local PostgreSQL server: for tests, benchmarks and examples, not production.

:class:`ThrowawayCluster` runs ``initdb`` and ``pg_ctl`` from Debian's ``postgresql``
package (``/usr/lib/postgresql/<version>/bin``, the newest one, else ``PATH``) to make a
cluster in a temporary directory that listens on a unix socket in that directory only
(no TCP port), and deletes it all on :meth:`stop`. PostgreSQL refuses to run as root, so
as root the server runs as the ``postgres`` user (``runuser``), which owns the directory.

Its methods block (they run the server's tools): call them from synchronous code, or
through ``asyncio.to_thread`` inside an event loop.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from ...errors import StoreUnavailable


def bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: the newest Debian install, else
    wherever ``PATH`` finds them; ``None`` if neither has them."""

    def version(path: str) -> tuple[int, ...]:
        found = re.search(r"/postgresql/([\d.]+)/bin/", path)
        return tuple(int(p) for p in found.group(1).split(".")) if found else ()

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates and Path(candidates[-1]).with_name("pg_ctl").exists():
        return Path(candidates[-1]).parent
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return Path(initdb).parent if initdb and pg_ctl else None


def missing_reason() -> str | None:
    """Why a cluster cannot be started here, or ``None`` if it can."""
    if bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "as root, the server needs a 'postgres' user to run as (apt-get install postgresql)"
    return None


class ThrowawayCluster:
    """``with ThrowawayCluster() as url: ...``: a fresh server; ``url`` names its
    ``postgres`` database as the ``postgres`` superuser (trust authentication, socket only).

    ``durable=False`` turns ``fsync`` off (fast, for tests: an OS crash may corrupt it);
    keep it on to measure commit costs."""

    def __init__(self, *, durable: bool = False, max_connections: int = 200) -> None:
        reason = missing_reason()
        if reason is not None:
            raise StoreUnavailable(reason)
        found = bin_dir()
        assert found is not None
        self.bindir = found
        self.durable = durable
        self.max_connections = max_connections
        # The socket lives in this directory: its path must stay under the OS limit (~107).
        parent = None if len(tempfile.gettempdir()) < 60 else "/tmp"
        self.root = Path(tempfile.mkdtemp(prefix="fnrt-pg-", dir=parent))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_postgres = os.geteuid() == 0
        self.url = f"postgresql://postgres@/postgres?host={self.root}"
        if self.as_postgres:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> str:
        """Create and start the cluster; returns its URL. ``StoreUnavailable`` (with the
        tool's output and the server log) if that fails; nothing is left behind."""
        try:
            init = ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
            done = self._run(*init, "--no-instructions", *([] if self.durable else ["--no-sync"]))
            if done.returncode != 0:
                raise StoreUnavailable(f"initdb failed: {done.stdout}{done.stderr}")
            settings = [
                "listen_addresses=''",
                f"unix_socket_directories='{self.root}'",
                f"max_connections={self.max_connections}",
            ]
            if not self.durable:
                settings += ["fsync=off", "full_page_writes=off"]
            options = " ".join(f"-c {s}" for s in settings)
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
            )
            if done.returncode != 0:
                log = self.log.read_text() if self.log.exists() else ""
                raise StoreUnavailable(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log[-3000:]}")
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it is kept) and delete its files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
