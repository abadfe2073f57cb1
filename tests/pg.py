"""A real PostgreSQL server for the tests, started by the test session itself.

Use it from a test module with ``pytest_plugins = ["tests.pg"]`` (or import the fixtures):

- ``postgres_server`` (session): the URL of a server's ``postgres`` database. Either the
  server named by the ``FNRT_POSTGRES`` environment variable, or a throwaway cluster that
  this fixture creates in a temporary directory with Debian's ``initdb``/``pg_ctl``
  (``/usr/lib/postgresql/<version>/bin``, or on ``PATH``), listening on a unix socket only,
  and stops and deletes at the end of the session
  (:class:`fnrt.store.postgres._cluster.ThrowawayCluster`; as root the server runs as the
  ``postgres`` user via ``runuser``, as PostgreSQL refuses to run as root).
- ``postgres_database`` (session): the database the tests' schemas live in
  (``FNRT_POSTGRES``'s own, or ``fnrt_tests`` made once on the throwaway cluster).
- ``postgres_url`` (function): a store URL for ``open_postgres`` naming a fresh PostgreSQL
  schema (``...&fnrt_schema=t_<uuid>``) on that server, dropped after the test, so tests
  never see each other's rows. A plain string: pass it to host subprocesses as it is.

Without the binaries the tests are skipped with a message saying what to install, except
under CI (the ``CI`` environment variable set), where that is a failure: a broken install
must not pass as skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


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
    from fnrt.store.postgres._cluster import ThrowawayCluster, missing_reason

    reason = missing_reason()
    if reason is not None:
        _missing(f"{reason}, or set FNRT_POSTGRES to a server's URL")
    cluster = ThrowawayCluster()
    url = cluster.start()
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
