"""Streams in SQLite: shards, records, mappings, checkpoints, leases, on-failure records.

Every statement about streams lives here. The rows are the whole truth: a shard's hash-key
range and parents, a mapping's checkpoint per shard (the last sequence number that
succeeded or was sent to the on-failure destination), and a lease per shard with an owner
and an expiry time. Pollers on any host that shares the database coordinate through these
rows only (DESIGN.md section 9); :class:`fnrt.store.StreamStore` states the contract.

Sequence numbers are integers here, one counter per stream, so they increase within a
shard and also from a parent shard to its children. Users see them as zero-padded
decimal strings (:func:`seq_str`) that sort correctly as strings. A put allocates its
numbers with ``UPDATE streams SET next_seq = next_seq + n ... RETURNING`` in the
transaction that writes the records, so numbers are unique and, per shard, increase in
commit order whatever the number of writers. Lease-holder writes (checkpoint, heartbeat,
release) check the lease in the statement that writes.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidConfig, StreamNotFound
from ._db import Batcher, Database, immediate
from ._types import (
    MAX_HASH_KEY,
    Checkpoint,
    MappingRow,
    Shard,
    StoredRecord,
    hash_key,
    seq_int,
    seq_str,
    shard_name,
)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS streams (
        name TEXT PRIMARY KEY,
        next_seq INTEGER NOT NULL,
        next_shard INTEGER NOT NULL,
        retention REAL NOT NULL,
        created_at REAL NOT NULL,
        mode TEXT,
        tags TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS shards (
        stream TEXT NOT NULL,
        shard_id TEXT NOT NULL,
        start_hash TEXT NOT NULL,
        end_hash TEXT NOT NULL,
        parent TEXT,
        adjacent_parent TEXT,
        start_seq INTEGER NOT NULL,
        end_seq INTEGER,
        PRIMARY KEY (stream, shard_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS stream_records (
        stream TEXT NOT NULL,
        shard_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        partition_key TEXT NOT NULL,
        data TEXT NOT NULL,
        arrival REAL NOT NULL,
        PRIMARY KEY (stream, shard_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS stream_mappings (
        uuid TEXT PRIMARY KEY,
        stream TEXT NOT NULL,
        function TEXT NOT NULL,
        config TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (stream, function)
    )""",
    """CREATE TABLE IF NOT EXISTS stream_checkpoints (
        mapping TEXT NOT NULL,
        shard_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        finished INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (mapping, shard_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS stream_leases (
        mapping TEXT NOT NULL,
        shard_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (mapping, shard_id)
    ) WITHOUT ROWID""",
    # membership: each host's heartbeat (balancing and ``fnrt stats``)
    """CREATE TABLE IF NOT EXISTS hosts (
        host TEXT PRIMARY KEY,
        info TEXT NOT NULL,
        started_at REAL NOT NULL,
        seen_at REAL NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS stream_failures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mapping TEXT NOT NULL,
        destination TEXT,
        record TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
)


# Columns added since a table was first made, each nullable (NULL: what a row written by an
# older fnrt means), so an older fnrt still opens the file and ignores them.
# stream_mappings.filters: the mapping's FilterCriteria patterns as a JSON list (NULL: none).
# streams.mode: Kinesis' capacity mode (NULL: PROVISIONED); streams.tags: a JSON object.
COLUMNS = (
    ("stream_mappings", "filters", "TEXT"),
    ("streams", "mode", "TEXT"),
    ("streams", "tags", "TEXT"),
)


def add_columns(conn: sqlite3.Connection) -> None:
    """Add the :data:`COLUMNS` a database made by an older fnrt lacks (in the open's
    write transaction: idempotent, and one host at a time)."""
    for table, column, kind in COLUMNS:
        if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _filters_column(filters: Sequence[str]) -> str | None:
    return json.dumps(list(filters)) if filters else None


def _mapping_row(row: Any) -> MappingRow:
    raw = row["filters"] if "filters" in row.keys() else None
    filters = tuple(json.loads(raw)) if raw else ()
    return MappingRow(row["uuid"], row["stream"], row["function"], json.loads(row["config"]), filters)


def _hash_text(value: int) -> str:
    return f"{value:039d}"  # fixed width so that ranges compare as text


# Moves the checkpoint (never backwards) only while OWNER holds the shard's lease: the
# check is in the writing statement, so a poller that lost its lease writes nothing.
_CHECKPOINT = (
    "INSERT INTO stream_checkpoints (mapping, shard_id, seq, finished) "
    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM stream_leases "
    "WHERE mapping = ? AND shard_id = ? AND owner = ?) "
    "ON CONFLICT (mapping, shard_id) DO UPDATE SET seq = MAX(seq, excluded.seq), "
    "finished = excluded.finished RETURNING 1"
)


_READ = (
    "SELECT seq, partition_key, data, arrival FROM stream_records "
    "WHERE stream = ? AND shard_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
# A row of _READ (its four columns, in StoredRecord's order) as a StoredRecord, in C:
# StoredRecord._make is a Python function (a frame and a length check per record).
_stored_record = functools.partial(tuple.__new__, StoredRecord)


def _shard(row: Any) -> Shard:
    return Shard(
        shard_id=row["shard_id"],
        start_hash=int(row["start_hash"]),
        end_hash=int(row["end_hash"]),
        parent=row["parent"],
        adjacent_parent=row["adjacent_parent"],
        start_seq=row["start_seq"],
        end_seq=row["end_seq"],
    )


class SQLiteStreams:
    """The async interface the stream sources use; SQL stays behind it.

    Records (put, split, merge) are written durably. Leases and checkpoints are not
    (``durable=False``: safe from a process crash, lost only to a power cut): a lost
    checkpoint redelivers from the one before, which at-least-once allows.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        # checkpoint(): the shard pollers of a host finish their batches about together;
        # their checkpoints share one hop and one transaction, each with its own lease check.
        self._checkpoints: Batcher[tuple[Any, ...], bool] = Batcher(
            db, _checkpoint_batch, durable=lambda _: False
        )

    @classmethod
    async def open(cls, db: Database) -> SQLiteStreams:
        await db.ensure_schema("streams", SCHEMA)
        await db.run(add_columns, durable=True)
        return cls(db)

    # -- streams and shards -----------------------------------------------------------

    async def create_stream(
        self, name: str, shard_count: int, retention: float, now: float, *, mode: str | None = None
    ) -> bool:
        """Create ``name`` with ``shard_count`` shards splitting the hash-key space evenly.
        Returns ``False`` (and changes nothing) when the stream exists already."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT OR IGNORE INTO streams (name, next_seq, next_shard, retention, created_at, mode) "
                "VALUES (?, 0, ?, ?, ?, ?)",
                (name, shard_count, retention, now, mode),
            )
            if cursor.rowcount == 0:
                return False
            step = (MAX_HASH_KEY + 1) // shard_count
            for index in range(shard_count):
                start = index * step
                end = MAX_HASH_KEY if index == shard_count - 1 else (index + 1) * step - 1
                await conn.execute(
                    "INSERT INTO shards (stream, shard_id, start_hash, end_hash, start_seq) "
                    "VALUES (?, ?, ?, ?, 0)",
                    (name, shard_name(index), _hash_text(start), _hash_text(end)),
                )
        return True

    async def delete_stream(self, name: str) -> list[str]:
        async with self.db.transaction() as conn:
            async with conn.execute("DELETE FROM streams WHERE name = ? RETURNING 1", (name,)) as cursor:
                if await cursor.fetchone() is None:
                    raise StreamNotFound(name)
            # The mappings stay, disabled (Lambda keeps a mapping whose stream is gone);
            # their checkpoints and leases name shards that are gone.
            async with conn.execute(
                "UPDATE stream_mappings SET config = json_set(config, '$.enabled', json('false')) "
                "WHERE stream = ? RETURNING uuid",
                (name,),
            ) as cursor:
                mappings = [row[0] for row in await cursor.fetchall()]
            for mapping in mappings:
                for table in ("stream_checkpoints", "stream_leases"):
                    await conn.execute(f"DELETE FROM {table} WHERE mapping = ?", (mapping,))
            for table in ("stream_records", "shards"):
                await conn.execute(f"DELETE FROM {table} WHERE stream = ?", (name,))
        return mappings

    async def stream_names(self) -> list[str]:
        rows = await self.db.fetchall("SELECT name FROM streams ORDER BY name", ())
        return [r[0] for r in rows]

    async def stream_info(self, name: str) -> dict[str, Any] | None:
        """``created_at``, ``retention`` (s), ``last_seq`` (-1 before the first record),
        ``mode`` and ``tags``."""
        # SELECT *: a store opened read-only may be from before the added columns.
        row = await self.db.fetchone("SELECT * FROM streams WHERE name = ?", (name,))
        if row is None:
            return None
        keys = row.keys()
        return {
            "created_at": row["created_at"],
            "retention": row["retention"],
            "last_seq": row["next_seq"] - 1,
            "mode": (row["mode"] if "mode" in keys else None) or "PROVISIONED",
            "tags": json.loads(row["tags"]) if "tags" in keys and row["tags"] else {},
        }

    async def update_stream(
        self,
        name: str,
        *,
        mode: str | None = None,
        retention: float | None = None,
        tags: dict[str, str] | None = None,
    ) -> bool:
        """Set the stream's ``mode``, ``retention`` (s) and ``tags`` (the whole set), those
        given; ``False`` for an unknown stream."""
        changes = {"mode": mode, "retention": retention, "tags": None if tags is None else json.dumps(tags)}
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return await self.stream_exists(name)
        sets = ", ".join(f"{column} = ?" for column in given)
        rows = await self.db.write_returning(
            f"UPDATE streams SET {sets} WHERE name = ? RETURNING 1", (*given.values(), name)
        )
        return bool(rows)

    async def stream_exists(self, name: str) -> bool:
        return await self.db.fetchone("SELECT 1 FROM streams WHERE name = ?", (name,)) is not None

    async def stream_retention(self, name: str) -> float:
        row = await self.db.fetchone("SELECT retention FROM streams WHERE name = ?", (name,))
        return float(row["retention"]) if row else 0.0

    async def shards(self, stream: str) -> list[Shard]:
        rows = await self.db.fetchall("SELECT * FROM shards WHERE stream = ? ORDER BY shard_id", (stream,))
        return [_shard(r) for r in rows]

    async def put_records(
        self, stream: str, entries: Sequence[tuple[str, str, int]], now: float
    ) -> list[tuple[str, int]]:
        """Append ``(partition_key, base64 data, hash key)`` entries in one transaction;
        each goes to the open shard whose range holds its hash key."""
        async with self.db.transaction() as conn:
            # Allocate the numbers first, in the writing statement: it also takes the
            # stream's row for the rest of the transaction (the shard ranges below cannot
            # change under us, and a concurrent put numbers after us).
            async with conn.execute(
                "UPDATE streams SET next_seq = next_seq + ? WHERE name = ? RETURNING next_seq - ?",
                (len(entries), stream, len(entries)),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise StreamNotFound(stream)
            seq = row[0]
            async with conn.execute(
                "SELECT shard_id, start_hash, end_hash FROM shards WHERE stream = ? AND end_seq IS NULL",
                (stream,),
            ) as cursor:
                ranges = [(int(r[1]), int(r[2]), r[0]) for r in await cursor.fetchall()]
            out: list[tuple[str, int]] = []
            rows = []
            for key, data, hashed in entries:
                shard_id = next(s for lo, hi, s in ranges if lo <= hashed <= hi)
                rows.append((stream, shard_id, seq, key, data, now))
                out.append((shard_id, seq))
                seq += 1
            await conn.executemany(
                "INSERT INTO stream_records (stream, shard_id, seq, partition_key, data, arrival) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        return out

    async def read(
        self, stream: str, shard_id: str, after: int, limit: int, *, max_bytes: int | None = None
    ) -> list[StoredRecord]:
        params = (stream, shard_id, after, limit)

        def fetch(conn: sqlite3.Connection) -> list[tuple[int, str, str, float]]:
            # One hop fetching plain tuples (no row objects); the records are built on the
            # loop's thread, which has time to spare, not on the store's, which has none.
            cursor = conn.cursor()
            cursor.row_factory = None
            try:
                cursor.execute(_READ, params)
                if max_bytes is None:
                    return cursor.fetchall()
                rows = []
                total = 0
                for row in cursor:  # SQLite steps row by row: what is not taken is not read
                    rows.append(row)
                    total += len(row[2]) + len(row[1])
                    if total >= max_bytes:
                        break
                return rows
            finally:
                cursor.close()

        return list(map(_stored_record, await self.db.run(fetch)))

    async def _close_shards(
        self, conn: Any, stream: str, shard_ids: Sequence[str], children: int
    ) -> tuple[int, int]:
        """Close ``shard_ids`` at the stream's current sequence number and reserve
        ``children`` shard indexes; returns ``(first sequence number for children, first
        reserved index)``. :class:`InvalidConfig` when a shard is closed already (another
        writer split or merged it first): the caller's transaction then rolls back."""
        async with conn.execute(
            "UPDATE streams SET next_shard = next_shard + ? WHERE name = ? "
            "RETURNING next_seq, next_shard - ?",
            (children, stream, children),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise StreamNotFound(stream)
        next_seq, next_shard = row[0], row[1]
        for shard_id in shard_ids:
            cursor = await conn.execute(
                "UPDATE shards SET end_seq = ? WHERE stream = ? AND shard_id = ? AND end_seq IS NULL",
                (next_seq - 1, stream, shard_id),
            )
            if cursor.rowcount != 1:
                raise InvalidConfig(f"{shard_id} is closed; only open shards can be split or merged")
        return next_seq, next_shard

    async def split_shard(self, stream: str, shard: Shard, new_start: int) -> list[str]:
        async with self.db.transaction() as conn:
            start_seq, index = await self._close_shards(conn, stream, [shard.shard_id], 2)
            children = [(shard.start_hash, new_start - 1), (new_start, shard.end_hash)]
            names = []
            for offset, (lo, hi) in enumerate(children):
                names.append(shard_name(index + offset))
                await conn.execute(
                    "INSERT INTO shards (stream, shard_id, start_hash, end_hash, parent, start_seq) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (stream, names[-1], _hash_text(lo), _hash_text(hi), shard.shard_id, start_seq),
                )
        return names

    async def merge_shards(self, stream: str, shard: Shard, adjacent: Shard) -> str:
        async with self.db.transaction() as conn:
            start_seq, index = await self._close_shards(conn, stream, [shard.shard_id, adjacent.shard_id], 1)
            name = shard_name(index)
            await conn.execute(
                "INSERT INTO shards (stream, shard_id, start_hash, end_hash, parent, adjacent_parent, "
                "start_seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stream,
                    name,
                    _hash_text(min(shard.start_hash, adjacent.start_hash)),
                    _hash_text(max(shard.end_hash, adjacent.end_hash)),
                    shard.shard_id,
                    adjacent.shard_id,
                    start_seq,
                ),
            )
        return name

    async def trim(self, stream: str, before: float, *, limit: int | None = None) -> int:
        """Drop records that arrived before ``before`` (the stream's retention), oldest
        first, at most ``limit`` per shard. Each shard is walked in sequence order from
        its oldest record to the first one to keep (the primary key's order, no index
        to maintain on every put); a record out of arrival order behind a newer one
        waits for the next trim."""
        deleted = 0
        async with self.db.transaction(durable=False) as conn:  # lost: trimmed next time
            async with conn.execute("SELECT shard_id FROM shards WHERE stream = ?", (stream,)) as cursor:
                shard_ids = [r[0] for r in await cursor.fetchall()]
            for shard_id in shard_ids:
                async with conn.execute(
                    "SELECT seq FROM stream_records WHERE stream = ? AND shard_id = ? AND arrival >= ? "
                    "ORDER BY seq LIMIT 1",
                    (stream, shard_id, before),
                ) as cursor:
                    keep = await cursor.fetchone()
                cursor = await conn.execute(
                    "DELETE FROM stream_records WHERE stream = ? AND shard_id = ? AND seq IN "
                    "(SELECT seq FROM stream_records WHERE stream = ? AND shard_id = ? AND seq < ? "
                    "ORDER BY seq LIMIT ?)",
                    (
                        stream,
                        shard_id,
                        stream,
                        shard_id,
                        2**62 if keep is None else keep[0],
                        -1 if limit is None else limit,
                    ),
                )
                deleted += cursor.rowcount
        return deleted

    async def trim_expired(self, now: float, *, limit: int | None = None) -> int:
        """Trim every stream by its own retention."""
        rows = await self.db.fetchall("SELECT name, retention FROM streams ORDER BY name")
        deleted = 0
        for name, retention in rows:
            deleted += await self.trim(name, now - retention, limit=limit)
        return deleted

    # -- mappings ---------------------------------------------------------------------

    async def mappings(self) -> list[MappingRow]:
        rows = await self.db.fetchall("SELECT * FROM stream_mappings ORDER BY stream, function")
        return [_mapping_row(r) for r in rows]

    async def mapping(self, stream: str, function: str) -> MappingRow | None:
        row = await self.db.fetchone(
            "SELECT * FROM stream_mappings WHERE stream = ? AND function = ?", (stream, function)
        )
        if row is None:
            return None
        return _mapping_row(row)

    async def create_mapping(
        self,
        uuid: str,
        stream: str,
        function: str,
        config: dict[str, Any],
        start: str,
        timestamp: float | None,
        now: float,
        *,
        filters: Sequence[str] = (),
    ) -> MappingRow:
        """Insert the mapping, or update the config (and ``filters``) of the one for
        (stream, function) that exists and return it (a restarted host resumes from its
        checkpoints, an updated mapping keeps them). A new mapping gets a checkpoint per
        existing shard according to ``start`` (``TRIM_HORIZON``, ``LATEST``,
        ``AT_TIMESTAMP``); shards created later are read from their beginning."""
        encoded = json.dumps(config)
        filters = tuple(filters)
        kept = _filters_column(filters)
        async with self.db.transaction() as conn:
            # The insert decides between "new" and "exists" (UNIQUE (stream, function)): of
            # hosts adding the same mapping at once, one inserts and all get its uuid. It
            # returns a row only when it inserted: the uuid alone cannot tell, since an
            # update passes the existing mapping's own uuid (and must keep its checkpoints).
            async with conn.execute(
                "INSERT INTO stream_mappings (uuid, stream, function, config, created_at, filters) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream, function) DO NOTHING RETURNING uuid",
                (uuid, stream, function, encoded, now, kept),
            ) as cursor:
                inserted = await cursor.fetchone()
            if inserted is None:
                # BEGIN IMMEDIATE holds the write lock: the row found above is still there.
                async with conn.execute(
                    "UPDATE stream_mappings SET config = ?, filters = ? WHERE stream = ? AND function = ? "
                    "RETURNING uuid",
                    (encoded, kept, stream, function),
                ) as cursor:
                    row = await cursor.fetchone()
                assert row is not None
                return MappingRow(row[0], stream, function, config, filters)
            if start == "LATEST":
                await conn.execute(
                    "INSERT INTO stream_checkpoints (mapping, shard_id, seq, finished) "
                    "SELECT ?, s.shard_id, COALESCE((SELECT MAX(seq) FROM stream_records r "
                    "WHERE r.stream = s.stream AND r.shard_id = s.shard_id), -1), s.end_seq IS NOT NULL "
                    "FROM shards s WHERE s.stream = ?",
                    (uuid, stream),
                )
            elif start == "AT_TIMESTAMP":
                await conn.execute(
                    "INSERT INTO stream_checkpoints (mapping, shard_id, seq) "
                    "SELECT ?, s.shard_id, COALESCE((SELECT MAX(seq) FROM stream_records r "
                    "WHERE r.stream = s.stream AND r.shard_id = s.shard_id AND r.arrival < ?), -1) "
                    "FROM shards s WHERE s.stream = ?",
                    (uuid, timestamp, stream),
                )
        return MappingRow(uuid, stream, function, config, filters)

    async def delete_mapping(self, uuid: str) -> None:
        async with self.db.transaction() as conn:
            for table in ("stream_checkpoints", "stream_leases"):
                await conn.execute(f"DELETE FROM {table} WHERE mapping = ?", (uuid,))
            await conn.execute("DELETE FROM stream_mappings WHERE uuid = ?", (uuid,))

    # -- checkpoints and leases -------------------------------------------------------

    async def checkpoints(self, mapping: str) -> dict[str, Checkpoint]:
        rows = await self.db.fetchall(
            "SELECT shard_id, seq, finished FROM stream_checkpoints WHERE mapping = ?", (mapping,)
        )
        return {r[0]: Checkpoint(r[1], bool(r[2])) for r in rows}

    async def acquire_lease(self, mapping: str, shard_id: str, owner: str, now: float, ttl: float) -> bool:
        """Take the shard's lease if it is free, expired, or ours already: one upsert
        whose ``WHERE`` judges ownership and expiry as it writes, and only while the
        mapping is there (another host may have removed it: its leases and checkpoints went
        with it, and a lease taken then would read the shard again from its beginning)."""
        rows = await self.db.write_returning(
            "INSERT INTO stream_leases (mapping, shard_id, owner, expires_at) SELECT ?, ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM stream_mappings WHERE uuid = ?) "
            "ON CONFLICT (mapping, shard_id) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at WHERE owner = excluded.owner OR expires_at < ? "
            "RETURNING 1",
            (mapping, shard_id, owner, now + ttl, mapping, now),
            durable=False,
        )
        return bool(rows)

    async def heartbeat(
        self, mapping: str, owner: str, shard_ids: Sequence[str], now: float, ttl: float
    ) -> set[str]:
        """Extend our leases; returns the shards whose lease we still hold (one
        statement: a lease another owner took is neither extended nor returned)."""
        if not shard_ids:
            return set()
        marks = ",".join("?" * len(shard_ids))
        rows = await self.db.write_returning(
            f"UPDATE stream_leases SET expires_at = ? WHERE mapping = ? AND owner = ? "
            f"AND shard_id IN ({marks}) RETURNING shard_id",
            (now + ttl, mapping, owner, *shard_ids),
            durable=False,
        )
        return {r[0] for r in rows}

    async def release_lease(self, mapping: str, shard_id: str, owner: str) -> None:
        async with self.db.transaction(durable=False) as conn:
            await conn.execute(
                "DELETE FROM stream_leases WHERE mapping = ? AND shard_id = ? AND owner = ?",
                (mapping, shard_id, owner),
            )

    async def steal_lease(
        self, mapping: str, shard_id: str, owner: str, victim: str, now: float, ttl: float
    ) -> bool:
        """Take the shard's lease from ``victim``, live or not (balancing); fenced: only
        while ``victim`` still holds it."""
        rows = await self.db.write_returning(
            "UPDATE stream_leases SET owner = ?, expires_at = ? WHERE mapping = ? AND shard_id = ? "
            "AND owner = ? AND owner <> ? RETURNING 1",
            (owner, now + ttl, mapping, shard_id, victim, owner),
            durable=False,
        )
        return bool(rows)

    # -- membership ---------------------------------------------------------------------

    async def register_host(self, host: str, info: dict[str, Any], now: float, ttl: float) -> None:
        """Say ``host`` is alive until ``now + ttl`` with ``info``; rows of hosts dead
        for an hour are dropped."""
        async with self.db.transaction(durable=False) as conn:
            await conn.execute("DELETE FROM hosts WHERE expires_at < ? AND host <> ?", (now - 3600, host))
            await conn.execute(
                "INSERT INTO hosts (host, info, started_at, seen_at, expires_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (host) DO UPDATE SET info = excluded.info, seen_at = excluded.seen_at, "
                "expires_at = excluded.expires_at",
                (host, json.dumps(info), now, now, now + ttl),
            )

    async def unregister_host(self, host: str) -> None:
        async with self.db.transaction(durable=False) as conn:
            await conn.execute("DELETE FROM hosts WHERE host = ?", (host,))

    async def live_hosts(self, now: float) -> list[dict[str, Any]]:
        """The hosts whose registration has not expired, by host id."""
        rows = await self.db.fetchall(
            "SELECT host, info, started_at, seen_at, expires_at FROM hosts WHERE expires_at > ? "
            "ORDER BY host",
            (now,),
        )
        return [
            {"host": r[0], "info": json.loads(r[1]), "started_at": r[2], "seen_at": r[3], "expires_at": r[4]}
            for r in rows
        ]

    async def leases(self, mapping: str, now: float | None = None) -> dict[str, tuple[str, float]]:
        """``shard_id -> (owner, expires_at)``. ``now`` changes nothing here: the hosts of
        one SQLite file share one machine's clock, so the expiry as written is already in
        every caller's frame."""
        rows = await self.db.fetchall(
            "SELECT shard_id, owner, expires_at FROM stream_leases WHERE mapping = ?", (mapping,)
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    async def checkpoint(
        self,
        mapping: str,
        shard_id: str,
        owner: str,
        seq: int,
        *,
        finished: bool = False,
        failure: tuple[str | None, dict[str, Any], float] | None = None,
    ) -> bool:
        """Move the checkpoint to ``seq`` while we hold the lease, with the on-failure
        record (if any) in the same transaction. ``False``: the lease was taken over, and
        nothing was written."""
        params = (mapping, shard_id, seq, int(finished), mapping, shard_id, owner)
        if failure is None:  # the common case: one statement, sharing a hop with the others
            return await self._checkpoints.submit(params)
        async with self.db.transaction(durable=False) as conn:
            async with conn.execute(_CHECKPOINT, params) as cursor:
                if await cursor.fetchone() is None:
                    return False  # the lease was taken over: the failure record neither
            destination, record, now = failure
            await conn.execute(
                "INSERT INTO stream_failures (mapping, destination, record, created_at) "
                "VALUES (?, ?, ?, ?)",
                (mapping, destination, json.dumps(record), now),
            )
        return True

    async def failure_records(
        self, *, mapping: str | None = None, destination: str | None = None, newest: int | None = None
    ) -> list[dict[str, Any]]:
        column, value = ("mapping", mapping) if mapping is not None else ("destination", destination)
        rows = await self.db.fetchall(
            f"SELECT record FROM (SELECT id, record FROM stream_failures WHERE {column} = ? "
            "ORDER BY id DESC LIMIT ?) ORDER BY id",
            (value, -1 if newest is None else max(newest, 0)),
        )
        return [json.loads(r[0]) for r in rows]

    async def failure_count(self, *, mapping: str) -> int:
        row = await self.db.fetchone("SELECT count(*) FROM stream_failures WHERE mapping = ?", (mapping,))
        return int(row[0]) if row is not None else 0


def _checkpoint_batch(conn: sqlite3.Connection, items: Sequence[tuple[Any, ...]]) -> list[bool]:
    """One checkpoint statement per item, in one transaction (one alone autocommits);
    whether each found its lease. Nothing stays of a batch that fails."""
    if len(items) == 1:
        return [bool(conn.execute(_CHECKPOINT, items[0]).fetchall())]
    with immediate(conn):
        return [bool(conn.execute(_CHECKPOINT, item).fetchall()) for item in items]


StreamStore = SQLiteStreams  # the name the sources know it by

__all__ = [
    "MAX_HASH_KEY",
    "Checkpoint",
    "MappingRow",
    "SQLiteStreams",
    "Shard",
    "StoredRecord",
    "StreamStore",
    "hash_key",
    "seq_int",
    "seq_str",
    "shard_name",
]
