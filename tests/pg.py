"""A real PostgreSQL server for the tests, started by the test session itself.

Use it from a test module with ``pytest_plugins = ["tests.pg"]`` (or import the fixtures):

- ``postgres_server`` (session): the URL of a server's ``postgres`` database. Either the
  server named by the ``FNRT_POSTGRES`` environment variable, or a throwaway cluster that
  this fixture creates in a temporary directory with Debian's ``initdb``/``pg_ctl``
  (``/usr/lib/postgresql/<version>/bin``, or on ``PATH``), listening on a unix socket only,
  and stops and deletes at the end of the session. As root the server runs as the
  ``postgres`` user (``runuser``), as PostgreSQL refuses to run as root.
- ``postgres_url`` (function): a store URL for ``open_postgres`` naming a fresh PostgreSQL
  schema (``...&fnrt_schema=t_<uuid>``) on that server, dropped after the test, so tests
  never see each other's rows.

Without the binaries the tests are skipped with a message saying what to install, except
under CI (the ``CI`` environment variable set), where that is a failure: a broken install
must not pass as skipped.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: the newest Debian install, else
    wherever ``PATH`` finds them."""

    def version(path: str) -> tuple[int, ...]:
        found = re.search(r"/postgresql/([\d.]+)/bin/", path)
        return tuple(int(p) for p in found.group(1).split(".")) if found else ()

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory, on a unix socket only."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="fnrt-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                _missing(
                    "running as root needs a 'postgres' user to run the server (apt-get install postgresql)"
                )
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> str:
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories='{self.root}'",
                "-c fsync=off",  # a throwaway cluster: durability is not under test here
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log[-3000:]}")
        return f"postgresql://postgres@/postgres?host={self.root}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server (``FNRT_POSTGRES`` or a throwaway cluster)."""
    existing = os.environ.get("FNRT_POSTGRES")
    if existing:
        yield existing
        return
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        _missing("asyncpg is not installed: pip install 'fnrt[postgres]'")
    bindir = bin_dir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        _missing(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql, "
            "or set FNRT_POSTGRES to a server's URL"
        )
    assert bindir is not None
    cluster = Cluster(bindir)
    try:
        url = cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> str:
    """The URL of the database the tests' schemas live in: ``FNRT_POSTGRES``'s own, or a
    ``fnrt_tests`` database made once on the throwaway cluster."""
    if os.environ.get("FNRT_POSTGRES"):
        return postgres_server
    import asyncio

    import asyncpg

    async def create() -> None:
        admin = await asyncpg.connect(postgres_server)
        try:
            await admin.execute("CREATE DATABASE fnrt_tests")
        finally:
            await admin.close()

    asyncio.run(create())
    return with_database(postgres_server, "fnrt_tests")


@pytest.fixture
async def postgres_url(postgres_database: str) -> AsyncIterator[str]:
    """A store URL of one's own: a fresh PostgreSQL schema (``fnrt_schema=t_<uuid>``, which
    ``open_postgres`` creates), dropped after the test. Schemas, not databases, because
    ``CREATE DATABASE`` costs a checkpoint each time."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    separator = "&" if "?" in postgres_database else "?"
    try:
        yield f"{postgres_database}{separator}fnrt_schema={schema}"
    finally:
        admin = await asyncpg.connect(postgres_database)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()
