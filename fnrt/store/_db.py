"""One SQLite state file through aiosqlite: WAL, schema set-up, serialized transactions.

aiosqlite runs the connection on its own thread, so nothing here blocks the event loop.
Writers take ``transaction()``, which holds a lock so that transactions from concurrent
tasks never interleave on the one connection; reads go through ``fetchall``/``fetchone``.
Many small independent writes use ``group_write()``: concurrent callers share one
transaction, so a burst costs a few commits (fsyncs) instead of one each.

The hot operations (a group commit, a take, one ``... RETURNING`` write) run as one function
on the connection's thread (:meth:`Database.run`): one round trip through the event loop per
operation, not one per statement. On a busy loop each round trip waits its turn behind the
invocations' callbacks (0.5-1 ms measured), so the hop count is what bounds the queue.

Durability is chosen per write. ``durable=True`` (the default) commits with
``synchronous=FULL``: the commit is on disk before the caller goes on, as an enqueued event
or a put record must be. ``durable=False`` commits with ``NORMAL``: in WAL mode still safe
from a crash of the process (kill -9), lost only to an OS crash or power cut, and written
in order: a later durable commit makes every earlier one durable too. Bookkeeping that
at-least-once delivery redoes when it is lost (leases, results, checkpoints) uses it and
skips the fsync.

Every failure underneath (``sqlite3.Error``, ``OSError``, a closed connection) leaves this
module as :class:`~fnrt.errors.StoreUnavailable` naming the file and the cause
(:func:`store_error`), so callers only ever see fnrt's errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import aiosqlite

from ..errors import StoreUnavailable

Statement = tuple[str, Sequence[Any]]

#: The WAL's checkpoint interval (pages) once the disk has been found full (SQLite's is 1,000).
TIGHT_WAL_PAGES = 100
T = TypeVar("T")
Item = TypeVar("Item")
R = TypeVar("R")

# SQLite's primary result codes that mean the store itself is unusable (not one bad
# statement): a group commit that fails with one of them fails every caller at once.
_STORE_WIDE = {
    sqlite3.SQLITE_BUSY: "locked by another connection",
    sqlite3.SQLITE_LOCKED: "locked by another connection",
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "not an SQLite database",
    sqlite3.SQLITE_CANTOPEN: "cannot be opened",
    sqlite3.SQLITE_NOMEM: "out of memory",
    sqlite3.SQLITE_PERM: "permission denied",
}
_OS_ERRORS = {
    errno.ESTALE: "the file was deleted or replaced while open (nothing written since would last)",
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk full (quota)",
    errno.EROFS: "read-only (read-only file system)",
    errno.EACCES: "read-only or not accessible (permission denied)",
    errno.EPERM: "read-only or not accessible (operation not permitted)",
}
_CLOSED = ("Connection closed", "no active connection", "Cannot operate on a closed database.")


def _closed_error(exc: BaseException) -> bool:
    return isinstance(exc, (ValueError, sqlite3.ProgrammingError)) and str(exc) in _CLOSED


def store_wide(exc: BaseException) -> bool:
    """True when ``exc`` means the store is unusable, not that one statement was bad."""
    if isinstance(exc, StoreUnavailable):
        exc = exc.cause or exc
    if isinstance(exc, OSError) or _closed_error(exc):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _STORE_WIDE


def store_error(exc: BaseException, path: Path | str) -> StoreUnavailable:
    """``exc`` (from sqlite3, aiosqlite or the OS) as the error callers see."""
    if isinstance(exc, StoreUnavailable):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    if _closed_error(exc):
        what = "closed"
    elif isinstance(code, int) and (code & 0xFF) in _STORE_WIDE:
        name = getattr(exc, "sqlite_errorname", "")
        # The extended code says more than the primary one: a -shm file that cannot grow
        # is SQLITE_IOERR_SHMSIZE ("disk I/O error"), and it means the disk is full.
        what = "disk full" if name == "SQLITE_IOERR_SHMSIZE" else _STORE_WIDE[code & 0xFF]
        detail = f"{exc}; {name}" if name else str(exc)
        what = f"{what} ({detail})"
    elif isinstance(exc, OSError):
        what = f"{_OS_ERRORS.get(exc.errno or 0, 'not accessible')} ({exc})"
    else:
        what = f"write failed ({exc})"
    return StoreUnavailable(f"state store {path}: {what}", path=str(path), cause=exc)


def mappable(exc: BaseException) -> bool:
    return isinstance(exc, (sqlite3.Error, OSError)) or _closed_error(exc)


@contextlib.contextmanager
def mapped_errors(path: Path | str) -> Iterator[None]:
    """Raise what escapes the block as :class:`StoreUnavailable` (cancellation and
    fnrt's own errors pass through)."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if mappable(exc):
            raise store_error(exc, path) from exc
        raise


class Database:
    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self.conn = conn
        self._lock = asyncio.Lock()
        self.schemas: set[str] = set()
        # Operations whose concurrent calls share a hop (close() lets them finish).
        self._batchers: list[Batcher[Any, Any]] = []
        self._writes: Batcher[_Write, Any] = Batcher(
            self, _commit_writes, durable=lambda writes: any(write[1] for write in writes), after=_then
        )
        self._synchronous = "FULL"
        #: What a durable commit uses: FULL (fsync: survives a power cut) or NORMAL (the
        #: "process" durability: survives a crash of the host, not of the machine).
        self.durable_level = "FULL"
        self._closed = False
        self.commits = 0  # transactions committed through this handle (stats, tests)
        #: The file this handle has open ((st_dev, st_ino)); a writer checks that the path
        #: still names it, so nothing is acknowledged into a deleted or replaced file.
        self.identity: tuple[int, int] | None = None
        self._wal_identity: tuple[int, int] | None = None
        # Absolute: a relative state path must not come to name another file when the
        # process changes its working directory.
        self._absolute = os.path.abspath(path)
        self.busy_ms = 5000
        # After a write found the file locked by another process for the whole busy timeout,
        # the writes queued behind it wait briefly, not a busy timeout each in turn.
        self._locked_until = 0.0
        # After a write found the disk full: the next write checkpoints the WAL first.
        self._full = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        read_only: bool = False,
        busy_timeout: float = 5.0,
    ) -> Database:
        """Open an SQLite file (creating it, unless ``read_only``). ``synchronous=FULL``
        makes a commit survive a power cut, not only a crash of the process; group
        commits keep that affordable. This is the bare handle: ``SQLiteStore.open``
        checks that the file is an fnrt store first."""
        path = Path(path)
        target: str | Path = f"file:{quote(str(path.absolute()))}?mode=ro" if read_only else path
        with mapped_errors(path):
            # aiosqlite starts the connection's (non-daemon) thread inside connect(): if we
            # are cancelled or fail from here on, close it, or the process cannot exit.
            connecting = asyncio.ensure_future(
                aiosqlite.connect(target, isolation_level=None, uri=read_only)
            )
            try:
                conn = await asyncio.shield(connecting)
            except BaseException:
                with contextlib.suppress(BaseException):
                    await (await connecting).close()
                raise
            try:
                conn.row_factory = aiosqlite.Row
                await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                if not read_only:
                    await conn.execute("PRAGMA journal_mode=WAL")
                await conn.execute(f"PRAGMA synchronous={synchronous}")
            except BaseException:
                await asyncio.shield(conn.close())
                raise
        db = cls(path, conn)
        db._synchronous = synchronous.upper()
        db.busy_ms = int(busy_timeout * 1000)
        if not read_only:
            with mapped_errors(path):
                info = await asyncio.to_thread(os.stat, path)
            db.identity = (info.st_dev, info.st_ino)
        return db

    # -- what every write checks first (on the connection's thread) ---------------------

    def _before_write(self, conn: sqlite3.Connection) -> bool:
        """Checks and settings for one write, on the connection's thread: the path still
        names the open file (else ESTALE), the WAL checkpointed after a full disk, and
        a short busy timeout while another process is known to hold the lock. True when
        the busy timeout must be put back after the write."""
        if self.identity is not None:
            self._check_files()
        if self._full:
            # The WAL grew into whatever space there was (it is checkpointed only every
            # 1,000 pages, 4 MB): checkpointed and truncated, it gives that space back, so
            # writes resume once the disk has a little room, and from now on it is kept
            # under 400 KB, so it cannot take that room again. Without waiting: a reader of
            # another connection holding a snapshot makes TRUNCATE wait for it, so then
            # only what it allows is checkpointed (PASSIVE), and the next write tries again.
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA wal_autocheckpoint={TIGHT_WAL_PAGES}")
                conn.execute("PRAGMA busy_timeout=0")
                try:
                    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                    if busy:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    conn.execute(f"PRAGMA busy_timeout={self.busy_ms}")
        if self._locked_until > time.monotonic():
            conn.execute(f"PRAGMA busy_timeout={min(100, self.busy_ms)}")
            return True
        return False

    def _check_files(self) -> None:
        """The path still names the file this handle opened, and its write-ahead log too
        (either one deleted or replaced: what is written goes to a file nobody will open)."""
        try:
            info = os.stat(self._absolute)
        except FileNotFoundError:
            info = None
        if info is None or (info.st_dev, info.st_ino) != self.identity:
            raise OSError(errno.ESTALE, f"{self.path} is not the file that was opened")
        try:
            wal = os.stat(self._absolute + "-wal")
        except FileNotFoundError:
            wal = None
        seen = (wal.st_dev, wal.st_ino) if wal is not None else None
        if self._wal_identity is None:
            self._wal_identity = seen  # SQLite makes it at the first write
        elif seen != self._wal_identity:
            raise OSError(errno.ESTALE, f"{self.path}-wal is not the write-ahead log that was opened")

    def _failed(self, exc: BaseException) -> None:
        """What a failed write teaches about the store (a full disk, another process's lock)."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary == sqlite3.SQLITE_FULL or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            self._full = True
        elif primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            self._locked_until = time.monotonic() + self.busy_ms / 1000

    def _committed(self) -> None:
        self._full = False
        self._locked_until = 0.0

    def _guarded(
        self, fn: Callable[[sqlite3.Connection], T], *, commits: bool = True
    ) -> Callable[[sqlite3.Connection], T]:
        """``fn`` as one write: :meth:`_before_write`, ``fn``, then what it teaches
        (``commits``: ``fn`` commits, so its success says the store is well again)."""

        def write(conn: sqlite3.Connection) -> T:
            shortened = self._before_write(conn)
            try:
                result = fn(conn)
            except BaseException as exc:
                self._failed(exc)
                raise
            finally:
                if shortened:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(f"PRAGMA busy_timeout={self.busy_ms}")
            if commits:
                self._committed()
            return result

        return write

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"state store {self.path}: closed", path=str(self.path))

    async def close(self) -> None:
        if self._closed:
            return
        with mapped_errors(self.path):
            try:
                for batcher in self._batchers:  # what callers already wait for
                    await batcher.drain()
            finally:
                self._closed = True
                await self.conn.close()

    async def ensure_schema(self, name: str, statements: Iterable[str]) -> None:
        """Run an area's ``CREATE ... IF NOT EXISTS`` statements once per connection."""
        if name in self.schemas:
            return
        async with self.transaction() as conn:
            for statement in statements:
                await conn.execute(statement)
        self.schemas.add(name)

    async def _durability(self, durable: bool) -> None:
        """Set ``synchronous`` for the next commit (only between transactions, under the
        lock; one thread hop, and only when it changes)."""
        wanted = self.durable_level if durable else "NORMAL"
        if self._synchronous != wanted:
            await self.conn.execute(f"PRAGMA synchronous={wanted}")
            self._synchronous = wanted

    @contextlib.asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error), one at a time.

        ``BEGIN IMMEDIATE`` takes the file's write lock first, so what the block reads it
        decides on alone, against every other connection and process. ``durable=False``:
        the commit skips the fsync (see the module's docstring). Errors of the block and
        of the commit leave as :class:`StoreUnavailable`; nothing of a failed block stays."""
        with mapped_errors(self.path):
            async with self._lock:
                self._check_open()
                await self._durability(durable)
                # The connection's thread runs BEGIN even when the caller is cancelled while
                # it waits: then roll back, or the next caller finds a transaction left open.
                begin = asyncio.ensure_future(self._hop(self._guarded(_begin_immediate, commits=False)))
                try:
                    await asyncio.shield(begin)
                except asyncio.CancelledError:
                    # Roll back before the lock is given up, even if cancelled again while
                    # doing so: a BEGIN left open fails every later writer ("cannot start a
                    # transaction within a transaction").
                    await _uncancelled(asyncio.ensure_future(self._undo_begin(begin)))
                    raise
                try:
                    yield self.conn
                    await self.conn.execute("COMMIT")
                except BaseException as exc:
                    self._failed(exc)
                    await self._rollback()
                    raise
                self._committed()
                self.commits += 1

    async def _undo_begin(self, begin: asyncio.Future[Any]) -> None:
        with contextlib.suppress(Exception):
            await begin
            await self.conn.execute("ROLLBACK")

    async def _rollback(self) -> None:
        """Roll back if a transaction is still open (SQLite ends one itself on some
        errors, e.g. a full disk); a failure here must not hide the error that led here."""
        with contextlib.suppress(Exception):
            if self.conn.in_transaction:
                await asyncio.shield(self.conn.execute("ROLLBACK"))

    async def write_returning(
        self, sql: str, params: Sequence[Any] = (), *, durable: bool = True
    ) -> list[sqlite3.Row]:
        """One writing statement (``... RETURNING``) as its own transaction: one thread hop,
        holding the write lock for the statement alone (SQLite takes it before the
        statement reads, so its ``WHERE`` decides against every other writer)."""
        return await self.run(lambda conn: conn.execute(sql, params).fetchall(), durable=durable)

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool | None = None) -> T:
        """``fn(connection)`` on the connection's own thread, in one hop, and its result.

        ``fn`` gets the plain :class:`sqlite3.Connection` (autocommit; rows are
        :class:`sqlite3.Row`) and may run any number of statements: a whole operation
        costs one round trip through the loop. With ``durable`` set (a writer), it runs
        under the lock that orders this handle's transactions, with ``synchronous`` set
        for its commits in the same hop; ``fn`` must leave no transaction open (it
        commits or rolls back what it begins). ``durable=None`` is for reads.

        aiosqlite has no public call for this; its ``_execute`` (the queue its own
        methods use, unchanged since 0.17) is used here and nowhere else.
        """
        with mapped_errors(self.path):
            self._check_open()
            if durable is None:
                return await self._hop(fn)
            wanted = self.durable_level if durable else "NORMAL"
            async with self._lock:
                self._check_open()
                current, self._synchronous = self._synchronous, wanted

                def call(conn: sqlite3.Connection) -> T:
                    if current != wanted:
                        conn.execute(f"PRAGMA synchronous={wanted}")
                    return fn(conn)

                try:
                    result = await self._hop(self._guarded(call))
                except BaseException:
                    self._synchronous = "unknown"  # set again by the next write
                    raise
                self.commits += 1
                return result

    async def _hop(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self.conn._execute(fn, self.conn._conn)  # type: ignore[no-untyped-call]
        return result

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        # One thread hop for execute + fetch: a write from another task on this connection
        # cannot land between them and change the rows under an open cursor.
        with mapped_errors(self.path):
            self._check_open()
            return list(await self.conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        with mapped_errors(self.path):
            self._check_open()
            rows = await self.conn.execute_fetchall(sql, params)
            return next(iter(rows), None)

    # -- group commit -----------------------------------------------------------------

    def group_write(self, statements: Sequence[Statement], *, durable: bool = True) -> Awaitable[None]:
        """Run ``statements`` (``(sql, params)`` pairs) atomically, sharing the commit.

        The returned awaitable (the batch's future: no coroutine in between, as this is every
        enqueue's and every outcome's path) is done once they are committed. Every caller waiting
        at the same time joins one transaction (consecutive statements with the same SQL go in one
        ``executemany``, one thread hop), so the cost of the commit and its fsync is shared by the
        batch. If the batch fails because of one statement, each caller's statements are retried
        in a transaction of their own, so one bad write fails only its caller; if it fails because
        the store is unusable (locked, full, read-only, ...), every caller gets that
        :class:`StoreUnavailable` at once. Statements must not depend on results (no
        ``RETURNING``, no rowcount): use :meth:`transaction` for that, or chain a statement on the
        one before with ``WHERE changes() > 0`` (it writes only if the statement before it in the
        same caller's list wrote). A batch is committed durably when any of its callers asked for
        it.
        """
        return self._writes.submit((statements, durable, None, None))

    def insert_then(
        self, sql: str, params: Sequence[Any], then: Callable[[int | None], None]
    ) -> Awaitable[int]:
        """Insert one row durably in the next group commit (as :meth:`group_write`); the
        awaitable's result is its rowid.

        ``then(rowid)`` is called once the row is committed, and ``then(None)`` once the
        write failed, in the loop turn that learns it and before any awaiting caller
        resumes, whether or not that caller is still waiting: what must follow a commit
        (starting the work the row describes) does not depend on a caller that may be
        cancelled meanwhile. ``then`` must not raise."""
        return self._writes.submit(((), True, functools.partial(_lastrowid, sql, params), then))

    async def join_or_run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` (a writer that needs its result, e.g. a take) inside the next
        group commit when one is pending or running, else in a hop of its own
        (:meth:`run`, not durable).

        A queue under load commits its enqueues and results in a group commit and takes
        events in between: joining saves a thread hop and a wait for the lock per round,
        and an event can be taken in the very commit that stored it. ``fn`` runs after
        the batch's statements, in the batch's ``BEGIN IMMEDIATE`` transaction (it must not
        begin or commit one itself), with the batch's durability. When nothing is being
        written, it runs alone as before, so an idle reader never takes the write lock
        only to join."""
        if self._writes.busy:
            result: T = await self._writes.submit(((), False, fn, None))
            return result
        return await self.run(fn, durable=False)


class Batcher(Generic[Item, R]):
    """One operation whose concurrent calls share a thread hop and a transaction.

    ``submit(item)`` is the future of the item's own result, done once the batch it joined ran:
    ``run(conn, items)`` on the connection's thread (:meth:`Database.run`), returning one
    result per item, durably when ``durable(items)``. ``after(item, result)`` (when given)
    is called for every item as its batch ends, before its future is answered, with
    ``None`` for an item whose write failed: it runs even for a caller that stopped
    waiting. If a batch fails because of one
    item, each item runs again alone, so the error stays its caller's; if it fails
    because the store is unusable (locked, full, read-only, ...), every caller gets that
    :class:`StoreUnavailable` at once. Nobody waits forever: a cancelled or broken batch
    fails every caller still waiting.
    """

    def __init__(
        self,
        db: Database,
        run: Callable[[sqlite3.Connection, Sequence[Item]], list[R]],
        *,
        durable: Callable[[Sequence[Item]], bool],
        after: Callable[[Item, R | None], None] | None = None,
    ) -> None:
        self.db = db
        self._run = run
        self._durable = durable
        self._after = after
        self._pending: list[tuple[Item, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the running batch's
        db._batchers.append(self)

    @property
    def busy(self) -> bool:
        """A batch is pending or running: an item submitted now joins the next one."""
        return self._task is not None

    def submit(self, item: Item) -> asyncio.Future[R]:
        """Join the next batch: the future of ``item``'s own result (raises at once when
        the store is closed)."""
        self.db._check_open()
        loop = self._loop
        if self._task is None or loop is None:
            # The loop is asked for once a batch (on 3.11 each ask is a getpid system call).
            self._loop = loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._flush())
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        return future

    async def drain(self) -> None:
        """Until every call submitted so far is answered (their errors are theirs)."""
        while self._task is not None:
            await asyncio.gather(asyncio.shield(self._task), return_exceptions=True)

    async def _batch(self, items: Sequence[Item]) -> list[R]:
        return await self.db.run(lambda conn: self._run(conn, items), durable=self._durable(items))

    async def _flush(self) -> None:
        path = self.db.path
        batch: list[tuple[Item, asyncio.Future[R]]] = []
        try:
            await asyncio.sleep(0)  # let callers of this same loop turn join the first batch
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._batch([item for item, _ in batch])
                except Exception as exc:
                    if len(batch) > 1 and not store_wide(exc):
                        await self._one_by_one(batch)
                        continue
                    cause = exc.cause if isinstance(exc, StoreUnavailable) and exc.cause else exc
                    self._ended(batch)
                    for _, future in batch:
                        if not future.done():  # an error of its own each: its own traceback
                            future.set_exception(store_error(cause, path) if mappable(cause) else exc)
                    batch = []
                    continue
                after = self._after
                for (item, future), result in zip(batch, results, strict=True):
                    if after is not None:
                        after(item, result)
                    if not future.done():
                        future.set_result(result)
                batch = []
                await asyncio.sleep(0)  # the callers just released write again: one batch
        except BaseException as exc:  # cancelled or the connection broke: nobody waits forever
            self._ended(batch + self._pending)
            for _, future in batch + self._pending:
                if not future.done():
                    future.set_exception(
                        store_error(exc, path)
                        if mappable(exc)
                        else StoreUnavailable(
                            f"state store {path}: closed before the write was committed",
                            path=str(path),
                            cause=exc,
                        )
                    )
            self._pending = []
            raise
        finally:
            self._task = None

    def _ended(self, batch: Sequence[tuple[Item, asyncio.Future[R]]]) -> None:
        """``after`` for the items of a batch that failed (each once: a failed item is
        dropped from the batch lists before anything else can fail)."""
        if self._after is not None:
            for item, _ in batch:
                self._after(item, None)

    async def _one_by_one(self, batch: list[tuple[Item, asyncio.Future[R]]]) -> None:
        while batch:
            item, future = batch[0]
            try:
                [result] = await self._batch([item])
            except Exception as exc:
                del batch[0]
                self._ended([(item, future)])
                if not future.done():
                    future.set_exception(store_error(exc, self.db.path) if mappable(exc) else exc)
            else:
                del batch[0]
                if self._after is not None:
                    self._after(item, result)
                if not future.done():
                    future.set_result(result)


async def _uncancelled(task: asyncio.Future[Any]) -> None:
    """Wait for ``task`` to finish whatever cancellations arrive meanwhile (the first one
    is re-raised by the caller afterwards)."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on a plain connection (on its own thread): roll
    back and re-raise on any error, so nothing of a failed block stays."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


#: One caller's part of a group commit: its statements, whether it must be durable, an
#: operation run after every statement of the batch (:meth:`Database.join_or_run`), and
#: what to call once the batch ended (:meth:`Database.insert_then`).
_Write = tuple[
    Sequence[Statement],
    bool,
    "Callable[[sqlite3.Connection], Any] | None",
    "Callable[[Any], None] | None",
]


def _then(write: _Write, result: Any) -> None:
    if write[3] is not None:
        write[3](result)


def _lastrowid(sql: str, params: Sequence[Any], conn: sqlite3.Connection) -> int | None:
    return conn.execute(sql, params).lastrowid


def _commit_writes(conn: sqlite3.Connection, items: Sequence[_Write]) -> list[Any]:
    """The group commit: every caller's statements in one transaction (consecutive
    statements with the same SQL as one ``executemany``), then the operations that
    joined it, each with its own result."""
    statements = [statement for each, _, _, _ in items for statement in each]
    with immediate(conn):
        for sql, run in itertools.groupby(statements, key=lambda stmt: stmt[0]):
            conn.executemany(sql, [params for _, params in run])
        return [None if fn is None else fn(conn) for _, _, fn, _ in items]
