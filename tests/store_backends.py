"""The store backends the contract suite runs against, and how to open one.

A backend gives a *location* shared by every store opened on it (one SQLite file; later
one PostgreSQL database), so a test can open several stores on it, as several hosts
would. To add a backend, add its name to ``BACKENDS`` and a branch to :func:`location`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fnrt.store import Store, open_store

BACKENDS = ["sqlite"]


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


@contextlib.asynccontextmanager
async def location(backend: str, tmp_path: Path) -> AsyncIterator[Stores]:
    if backend == "sqlite":
        stores = Stores(backend, tmp_path / "fnrt.sqlite3")
    else:  # pragma: no cover - a backend named in BACKENDS without a branch here
        raise AssertionError(f"no such store backend {backend!r}")
    try:
        yield stores
    finally:
        await stores.aclose()
