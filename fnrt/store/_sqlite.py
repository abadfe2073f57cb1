"""The SQLite store: one state file, checked before use, with a versioned schema.

:meth:`SQLiteStore.open` refuses anything that is not a usable fnrt store before it
writes a byte, because the file holds acknowledged events: a zero-length file, a file that
is not SQLite, an SQLite database of another program, a schema written by a newer fnrt,
and a file it cannot write are each a :class:`~fnrt.errors.StoreUnavailable` naming the
path (and nothing is overwritten). A new store is built under a temporary name and linked
into place, so the path either does not exist or holds a complete fnrt schema: a crash
while creating it cannot leave an empty file that a later start would have to guess about.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from ..errors import InvalidConfig, StoreUnavailable
from . import _queue, _streams
from ._db import Database, immediate, mapped_errors, store_error

SCHEMA_VERSION = 1
FILE_NAME = "fnrt.sqlite3"  # the state file in a state directory
_HEADER = b"SQLite format 3\x00"

_VERSION_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fnrt_schema (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        opened_at REAL NOT NULL
    )""",
)
SCHEMA: tuple[str, ...] = _VERSION_SCHEMA + _queue.SCHEMA + _streams.SCHEMA

# Tables a store written before the schema was versioned (fnrt 0.1) may hold, with the
# columns this fnrt needs of each: such a store is adopted, anything else is foreign.
_KNOWN_COLUMNS = {
    "async_events": {"id", "request_id", "function", "payload", "state", "run_at", "leases", "finished_at"},
    "destination_records": {"id", "sink", "record", "created_at"},
    "streams": {"name", "next_seq", "next_shard", "retention"},
    "shards": {"stream", "shard_id", "start_hash", "end_hash", "start_seq", "end_seq"},
    "stream_records": {"stream", "shard_id", "seq", "partition_key", "data", "arrival"},
    "stream_mappings": {"uuid", "stream", "function", "config"},
    "stream_checkpoints": {"mapping", "shard_id", "seq", "finished"},
    "stream_leases": {"mapping", "shard_id", "owner", "expires_at"},
    "stream_failures": {"id", "mapping", "destination", "record"},
    "hosts": {"host", "info", "expires_at"},
}


def _refuse(path: Path, what: str) -> StoreUnavailable:
    return StoreUnavailable(
        f"state store {path}: {what}; fnrt will not use or overwrite it "
        "(move it away to start with an empty store)",
        path=str(path),
    )


def _inspect(path: Path) -> bool:
    """``True`` when ``path`` exists and looks like an SQLite file, ``False`` when it does
    not exist; raises for anything else. Runs in a thread (it reads the disk)."""
    try:
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            # A FIFO, a device, a socket: opening one can block forever (a FIFO's open waits
            # for a writer), and none of them can hold a store.
            raise _refuse(path, "is not a regular file (a FIFO, a device or a socket), not a state file")
        with path.open("rb") as f:
            header = f.read(len(_HEADER))
    except FileNotFoundError:
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:  # SQLite would replay it into a new file
            raise _refuse(wal, f"is the write-ahead log of a missing {path.name}") from None
        return False
    except IsADirectoryError:
        raise _refuse(path, "is a directory, not a state file") from None
    except OSError as exc:
        raise store_error(exc, path) from exc
    if not header:
        raise _refuse(path, "is an empty (zero-length) file, not an fnrt store")
    if header != _HEADER:
        raise _refuse(path, "is not an SQLite database (it may be corrupt)")
    return True


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a database that is not an fnrt store this version can use."""
    tables = {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not row[0].startswith("sqlite_")
    }
    if "fnrt_schema" in tables:
        row = conn.execute("SELECT version FROM fnrt_schema WHERE id = 1").fetchone()
        version = None if row is None else row[0]
        if not isinstance(version, int):
            raise _refuse(path, "has an fnrt_schema table without a version")
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"state store {path}: written by a newer fnrt (schema version {version}; this fnrt "
                f"knows up to {SCHEMA_VERSION}); upgrade fnrt to use it",
                path=str(path),
            )
        return
    # fnrt makes no views or triggers: a database with some (and no fnrt_schema) is not ours.
    rows = conn.execute("SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger')")
    others = sorted(f"{kind} {name}" for kind, name in rows)
    if others:
        raise _refuse(path, f"is an SQLite database of another program ({', '.join(others)})")
    foreign = sorted(tables - set(_KNOWN_COLUMNS))
    if foreign:
        raise _refuse(path, f"is an SQLite database of another program (tables {', '.join(foreign)})")
    for table in tables:  # a store of fnrt 0.1 (no version yet) is adopted
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not _KNOWN_COLUMNS[table] <= columns:
            raise _refuse(path, f"has a table {table!r} that is not fnrt's")


def _prepare(file: Path, path: Path, *, read_only: bool, busy_timeout: float) -> None:
    """Check ``file`` (named ``path`` in messages) and complete its schema in one write
    transaction, which also proves the file writable. Runs in a thread, on a connection
    of its own: plain ``sqlite3``, so the check is one piece of sync code."""
    with mapped_errors(path):
        if read_only:
            conn = sqlite3.connect(f"file:{quote(str(file.absolute()))}?mode=ro", uri=True)
        else:
            conn = sqlite3.connect(file, timeout=busy_timeout, isolation_level=None)
        try:
            if read_only:
                _check_schema(conn, path)
                if conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fnrt_schema'"
                ).fetchone() is None:
                    raise _refuse(path, "has no fnrt schema")
                return
            with immediate(conn):  # two hosts starting at once: one at a time
                _check_schema(conn, path)
                for statement in SCHEMA:
                    conn.execute(statement)
                # Migrations from older versions go here, in order (version 1 is the first).
                _streams.add_columns(conn)
                now = time.time()
                conn.execute(  # this write proves the file writable before anything starts
                    "INSERT INTO fnrt_schema (id, version, created_at, opened_at) VALUES (1, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET version = MAX(version, excluded.version), "
                    "opened_at = excluded.opened_at",
                    (SCHEMA_VERSION, now, now),
                )
            conn.execute("PRAGMA journal_mode=WAL")  # only now: it rewrites the file's header
        finally:
            conn.close()


def _create(path: Path, busy_timeout: float) -> None:
    """Build a new store under a temporary name and link it to ``path`` (never replacing
    a file another process linked there first). Runs in a thread."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise store_error(exc, path) from exc
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.creating")
    try:
        _prepare(temp, path, read_only=False, busy_timeout=busy_timeout)
        with mapped_errors(path):
            try:
                os.link(temp, path)
            except FileExistsError:
                pass  # another process created it first: use theirs
            except OSError:  # no hard links here: a rename (that could replace) will do
                if not path.exists():
                    os.replace(temp, path)
    finally:
        for leftover in (temp, Path(f"{temp}-wal"), Path(f"{temp}-shm")):
            with contextlib.suppress(OSError):
                leftover.unlink()


class SQLiteStore:
    """:class:`fnrt.store.Store` on one SQLite file (WAL; any number of processes on one
    machine may share it, each through its own ``SQLiteStore``)."""

    backend = "sqlite"

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue = _queue.SQLiteQueue(db)
        self._streams = _streams.SQLiteStreams(db)

    @classmethod
    async def open(
        cls,
        spec: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        read_only: bool = False,
        max_bytes: int | None = None,
        busy_timeout: float = 5.0,
        durability: str = "fsync",
    ) -> Self:
        """Open the store at ``spec``: a state file, or a directory holding
        ``fnrt.sqlite3``. A missing file is created (unless ``read_only``); an existing
        one is used only if it is an fnrt store this version can read.

        ``read_only`` opens it for reading only (inspection: every write raises
        ``StoreUnavailable``). ``max_bytes`` caps the file's size: a write that would
        grow it past the cap fails as a full disk would (``StoreUnavailable``, "disk
        full"), committing nothing. ``busy_timeout``: how long a write waits for another
        process's write lock before it fails as "locked". ``durability``: ``"fsync"``
        (an acknowledged event or record survives a power cut: each group commit waits
        for the disk) or ``"process"`` (WAL without fsync per commit: safe from a crash of
        the host process, not from the machine losing power; several times faster for
        few concurrent writers)."""
        if durability not in ("fsync", "process"):
            raise InvalidConfig(f"durability must be 'fsync' or 'process', got {durability!r}")
        path = Path(spec)
        if await asyncio.to_thread(path.is_dir):
            path = path / FILE_NAME
        if await asyncio.to_thread(_inspect, path):
            await asyncio.to_thread(_prepare, path, path, read_only=read_only, busy_timeout=busy_timeout)
        elif read_only:
            raise StoreUnavailable(f"state store {path}: no such file", path=str(path))
        else:
            await asyncio.to_thread(_create, path, busy_timeout)
        db = await Database.open(
            path, synchronous=synchronous, read_only=read_only, busy_timeout=busy_timeout
        )
        db.durable_level = "FULL" if durability == "fsync" else "NORMAL"
        try:
            if max_bytes is not None:
                page = await db.fetchone("PRAGMA page_size")
                assert page is not None
                await db.fetchone(f"PRAGMA max_page_count = {max(1, max_bytes // int(page[0]))}")
        except BaseException:
            await asyncio.shield(db.close())
            raise
        for area in ("async_queue", "streams"):
            db.schemas.add(area)  # done above: the areas' setup() need not run it again
        return cls(db)

    # -- the Store protocol -----------------------------------------------------------

    @property
    def location(self) -> str:
        return str(self.db.path)

    @property
    def path(self) -> Path:
        return self.db.path

    @property
    def queue(self) -> _queue.SQLiteQueue:
        return self._queue

    @property
    def streams(self) -> _streams.SQLiteStreams:
        return self._streams

    @property
    def closed(self) -> bool:
        return self.db.closed

    async def close(self) -> None:
        await self.db.close()

    def stats(self) -> dict[str, Any]:
        return {"backend": self.backend, "location": self.location, "commits": self.db.commits}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


__all__ = ["FILE_NAME", "SCHEMA_VERSION", "SQLiteStore"]
