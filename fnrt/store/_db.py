"""One SQLite state file through aiosqlite: WAL, schema set-up, serialized transactions.

aiosqlite runs the connection on its own thread, so nothing here blocks the event loop.
Writers take ``transaction()``, which holds a lock so that transactions from concurrent
tasks never interleave on the one connection; reads go through ``fetchall``/``fetchone``.
Many small independent writes use ``group_write()``: concurrent callers share one
transaction, so a burst costs a few commits (fsyncs) instead of one each.

Durability is chosen per write. ``durable=True`` (the default) commits with
``synchronous=FULL``: the commit is on disk before the caller goes on, as an enqueued event
or a put record must be. ``durable=False`` commits with ``NORMAL``: in WAL mode still safe
from a crash of the process (kill -9), lost only to an OS crash or power cut, and written
in order: a later durable commit makes every earlier one durable too. Bookkeeping that
at-least-once delivery redoes when it is lost (leases, results, checkpoints) uses it and
skips the fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

Statement = tuple[str, Sequence[Any]]


class Database:
    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self.conn = conn
        self._lock = asyncio.Lock()
        self._schemas: set[str] = set()
        # group_write(): callers waiting for the next commit, and the task that commits.
        self._pending: list[tuple[Sequence[Statement], asyncio.Future[None], bool]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._synchronous = "FULL"

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL") -> Database:
        """Open (creating) the state file. ``synchronous=FULL`` makes a commit survive a
        power cut, not only a crash of the process; group commits keep that affordable."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # aiosqlite starts the connection's (non-daemon) thread inside connect(): if we are
        # cancelled or fail from here on, close it, or the process cannot exit.
        connecting = asyncio.ensure_future(aiosqlite.connect(path, isolation_level=None))
        try:
            conn = await asyncio.shield(connecting)
        except BaseException:
            with contextlib.suppress(BaseException):
                await (await connecting).close()
            raise
        try:
            conn.row_factory = aiosqlite.Row
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute(f"PRAGMA synchronous={synchronous}")
            await conn.execute("PRAGMA busy_timeout=5000")
        except BaseException:
            await asyncio.shield(conn.close())
            raise
        return cls(path, conn)

    async def close(self) -> None:
        try:
            if self._flusher is not None:
                # Commit what callers already wait for; a failure is theirs (they got it).
                await asyncio.gather(asyncio.shield(self._flusher), return_exceptions=True)
        finally:
            await self.conn.close()

    async def ensure_schema(self, name: str, statements: Iterable[str]) -> None:
        """Run an area's ``CREATE ... IF NOT EXISTS`` statements once per connection."""
        if name in self._schemas:
            return
        async with self.transaction() as conn:
            for statement in statements:
                await conn.execute(statement)
        self._schemas.add(name)

    async def _durability(self, durable: bool) -> None:
        """Set ``synchronous`` for the next commit (only between transactions, under the
        lock; one thread hop, and only when it changes)."""
        wanted = "FULL" if durable else "NORMAL"
        if self._synchronous != wanted:
            await self.conn.execute(f"PRAGMA synchronous={wanted}")
            self._synchronous = wanted

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error), one at a time.

        ``durable=False``: the commit skips the fsync (see the module's docstring)."""
        async with self._lock:
            await self._durability(durable)
            # The connection's thread runs BEGIN even when the caller is cancelled while it
            # waits: then roll back, or the next caller finds a transaction left open.
            begin = asyncio.ensure_future(self.conn.execute("BEGIN IMMEDIATE"))
            try:
                await asyncio.shield(begin)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await begin
                    await self.conn.execute("ROLLBACK")
                raise
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    async def write_returning(
        self, sql: str, params: Sequence[Any] = (), *, durable: bool = True
    ) -> list[aiosqlite.Row]:
        """One writing statement (``... RETURNING``) as its own transaction: one thread hop,
        holding the write lock for the statement alone."""
        async with self._lock:
            await self._durability(durable)
            return list(await self.conn.execute_fetchall(sql, params))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        # One thread hop for execute + fetch: a write from another task on this connection
        # cannot land between them and change the rows under an open cursor.
        return list(await self.conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.conn.execute_fetchall(sql, params)
        return next(iter(rows), None)

    # -- group commit -----------------------------------------------------------------

    async def group_write(self, statements: Sequence[Statement], *, durable: bool = True) -> None:
        """Run ``statements`` (``(sql, params)`` pairs) atomically, sharing the commit.

        Returns once they are committed. Every caller waiting at the same time joins one
        transaction (consecutive statements with the same SQL go in one ``executemany``,
        one thread hop), so the cost of the commit and its fsync is shared by the batch.
        If the batch fails, each caller's statements are retried in a transaction of
        their own, so one bad write fails only its caller. Statements must not depend on
        results (no ``RETURNING``, no rowcount): use :meth:`transaction` for that. A batch
        is committed durably when any of its callers asked for it.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((statements, future, durable))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        await future

    async def _flush(self) -> None:
        batch: list[tuple[Sequence[Statement], asyncio.Future[None], bool]] = []
        try:
            await asyncio.sleep(0)  # let callers of this same loop turn join the first batch
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    durable = any(wants for _, _, wants in batch)
                    async with self.transaction(durable=durable) as conn:
                        flat = [stmt for statements, _, _ in batch for stmt in statements]
                        for sql, run in itertools.groupby(flat, key=lambda stmt: stmt[0]):
                            await conn.executemany(sql, [params for _, params in run])
                except Exception:
                    await self._write_one_by_one(batch)
                    continue
                for _, future, _ in batch:
                    if not future.done():
                        future.set_result(None)
                await asyncio.sleep(0)  # the callers just released write again: one batch
        except BaseException as exc:  # cancelled or the connection broke: nobody waits forever
            for _, future, _ in batch + self._pending:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("closed"))
            self._pending = []
            raise
        finally:
            self._flusher = None

    async def _write_one_by_one(
        self, batch: list[tuple[Sequence[Statement], asyncio.Future[None], bool]]
    ) -> None:
        for statements, future, durable in batch:
            try:
                async with self.transaction(durable=durable) as conn:
                    for sql, params in statements:
                        await conn.execute(sql, params)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(None)
