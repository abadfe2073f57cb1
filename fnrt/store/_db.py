"""One SQLite state file through aiosqlite: WAL, schema set-up, serialized transactions.

aiosqlite runs the connection on its own thread, so nothing here blocks the event loop.
Writers take ``transaction()``, which holds a lock so that transactions from concurrent
tasks never interleave on the one connection; reads go through ``fetchall``/``fetchone``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite


class Database:
    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self.conn = conn
        self._lock = asyncio.Lock()
        self._schemas: set[str] = set()

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL") -> Database:
        """Open (creating) the state file. ``synchronous=FULL`` makes a commit survive a
        power cut, not only a crash of the process; group commits keep that affordable."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={synchronous}")
        await conn.execute("PRAGMA busy_timeout=5000")
        return cls(path, conn)

    async def close(self) -> None:
        await self.conn.close()

    async def ensure_schema(self, name: str, statements: Iterable[str]) -> None:
        """Run an area's ``CREATE ... IF NOT EXISTS`` statements once per connection."""
        if name in self._schemas:
            return
        async with self.transaction() as conn:
            for statement in statements:
                await conn.execute(statement)
        self._schemas.add(name)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error), one at a time."""
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self.conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self.conn.execute(sql, params) as cursor:
            return await cursor.fetchone()
