"""The store backends the contract suite runs against, and how to open one.

A backend gives a *location* shared by every store opened on it (one SQLite file; one
PostgreSQL schema on the server ``tests.pg`` starts), so a test can open several stores
on it, as several hosts would. To add a backend, add its name to ``BACKENDS`` and a
branch to :func:`location`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fnrt.store import Store, open_store

BACKENDS = ["sqlite", "postgres"]


class Stores:
    """Opens stores on one shared location and closes them all at the end."""

    def __init__(self, backend: str, spec: Any, **options: Any) -> None:
        self.backend = backend
        self.spec = spec
        self.options = options
        self.opened: list[Store] = []

    async def open(self, **options: Any) -> Store:
        """Another store on the same location (its own connection, like another host)."""
        store = await open_store(self.spec, **{**self.options, **options})
        self.opened.append(store)
        return store

    async def aclose(self) -> None:
        for store in reversed(self.opened):
            await store.close()
        self.opened.clear()


def server_for(backend: str, request: Any) -> str | None:
    """What :func:`location` needs besides a directory: for PostgreSQL the database URL
    of ``tests.pg``'s session server (call from a synchronous fixture: the fixture that
    starts the server runs its own event loop)."""
    if backend == "postgres":
        database: str = request.getfixturevalue("postgres_database")
        return database
    return None


@contextlib.asynccontextmanager
async def location(backend: str, tmp_path: Path, server: str | None = None) -> AsyncIterator[Stores]:
    """Stores on one fresh location. ``server`` (what :func:`server_for` gave) names the
    PostgreSQL database: a fresh schema on it, dropped afterwards.
    PostgreSQL stores judge leases by the ``now`` given (``db_clock=False``), as the
    contract moves time only through arguments."""
    if backend == "sqlite":
        stores = Stores(backend, tmp_path / "fnrt.sqlite3")
    elif backend == "postgres":
        if server is None:
            raise AssertionError("the postgres backend needs server_for(...)'s database URL")
        database = server
        schema = f"t_{uuid.uuid4().hex[:16]}"
        separator = "&" if "?" in database else "?"
        url = f"{database}{separator}fnrt_schema={schema}"
        stores = Stores(backend, url, db_clock=False, max_connections=4)
        try:
            yield stores
        finally:
            await stores.aclose()
            import asyncpg

            admin = await asyncpg.connect(database)
            try:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await admin.close()
        return
    else:  # pragma: no cover - a backend named in BACKENDS without a branch here
        raise AssertionError(f"no such store backend {backend!r}")
    try:
        yield stores
    finally:
        await stores.aclose()
