"""Streams on PostgreSQL: :class:`fnrt.store._streams.StreamStore`'s methods, atomic
against every other host sharing the database.

Sequence numbers are one counter per stream (as in SQLite: they increase within a shard
and from a parent to its children), allocated with ``UPDATE fnrt_streams SET next_seq =
next_seq + n ... RETURNING`` in the transaction that inserts the records. The counter row
stays locked until that commit, so writers to one stream commit in allocation order and a
reader never sees sequence number ``n+1`` before ``n`` (which it could checkpoint past).
Split and merge lock the same row, so a put lands wholly before or wholly after them.

A shard lease is a row with an owner, two expiries (the caller's and the judged one, see
``_schema``) and a token bumped at each change of hands. A checkpoint moves only while its
writer holds the lease, and locks the lease row (``FOR SHARE``) so a takeover waits for it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from ...errors import InvalidConfig, StreamNotFound
from .._streams import MAX_HASH_KEY, Checkpoint, MappingRow, Shard, StoredRecord, shard_name
from ._pool import Connections, guarded
from ._schema import judge


def _shard(row: asyncpg.Record) -> Shard:
    return Shard(
        shard_id=row["shard_id"],
        start_hash=int(row["start_hash"]),
        end_hash=int(row["end_hash"]),
        parent=row["parent"],
        adjacent_parent=row["adjacent_parent"],
        start_seq=row["start_seq"],
        end_seq=row["end_seq"],
    )


_CHECKPOINT = (
    "WITH l AS (SELECT 1 FROM fnrt_stream_leases WHERE mapping = $1 AND shard_id = $2 AND owner = $3 "
    "FOR SHARE), "
    "c AS (INSERT INTO fnrt_stream_checkpoints AS cp (mapping, shard_id, seq, finished) "
    "SELECT $1, $2, $4, $5 WHERE EXISTS (SELECT 1 FROM l) "
    "ON CONFLICT (mapping, shard_id) DO UPDATE SET seq = GREATEST(cp.seq, excluded.seq), "
    "finished = excluded.finished RETURNING 1), "
    "f AS (INSERT INTO fnrt_stream_failures (mapping, destination, record, created_at) "
    "SELECT $1, $6, $7, $8 WHERE $7::text IS NOT NULL AND EXISTS (SELECT 1 FROM c)) "
    "SELECT count(*) FROM c"
)

# A shard's records after $3, at most $4 of them, oldest first.
_READ = (
    "SELECT seq, partition_key, data, arrival FROM fnrt_stream_records "
    "WHERE stream = $1 AND shard_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
)
# The same, up to the record whose data and partition key bring the total to $5.
_READ_CAPPED = (
    "SELECT seq, partition_key, data, arrival FROM (SELECT *, "
    "sum(length(data) + length(partition_key)) OVER (ORDER BY seq) "
    f"- length(data) - length(partition_key) AS before FROM ({_READ}) l) r "
    "WHERE before < $5 ORDER BY seq"
)


def _mapping_row(row: Any) -> MappingRow:
    filters = tuple(json.loads(row["filters"])) if row["filters"] else ()
    return MappingRow(row["uuid"], row["stream"], row["function"], json.loads(row["config"]), filters)


class PgStreamStore:
    """The stream sources' store on PostgreSQL. Records, streams and shards are written
    durably; leases and checkpoints with ``synchronous_commit=off`` (see ``_pool``)."""

    def __init__(self, pg: Connections, *, db_clock: bool = True) -> None:
        self.pg = pg
        self.db_clock = db_clock

    def _judge(self, now: float) -> float | None:
        return None if self.db_clock else now

    # -- streams and shards -----------------------------------------------------------

    @guarded
    async def create_stream(
        self, name: str, shard_count: int, retention: float, now: float, *, mode: str | None = None
    ) -> bool:
        """Create ``name`` with ``shard_count`` shards splitting the hash-key space evenly.
        ``False`` (nothing changed) when it exists already, whoever created it."""
        async with self.pg.durable.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                "INSERT INTO fnrt_streams (name, next_seq, next_shard, retention, created_at, mode) "
                "VALUES ($1, 0, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING 1",
                name,
                shard_count,
                retention,
                now,
                mode,
            )
            if created is None:
                return False
            step = (MAX_HASH_KEY + 1) // shard_count
            ranges = [
                (index * step, MAX_HASH_KEY if index == shard_count - 1 else (index + 1) * step - 1)
                for index in range(shard_count)
            ]
            await conn.execute(
                "INSERT INTO fnrt_shards (stream, shard_id, start_hash, end_hash, start_seq) "
                "SELECT $1, s, lo, hi, 0 FROM unnest($2::text[], $3::numeric[], $4::numeric[]) "
                "AS u (s, lo, hi)",
                name,
                [shard_name(i) for i in range(shard_count)],
                [Decimal(lo) for lo, _ in ranges],
                [Decimal(hi) for _, hi in ranges],
            )
        return True

    @guarded
    async def stream_exists(self, name: str) -> bool:
        return await self.pg.relaxed.fetchval("SELECT 1 FROM fnrt_streams WHERE name = $1", name) is not None

    @guarded
    async def delete_stream(self, name: str) -> list[str]:
        async with self.pg.durable.acquire() as conn, conn.transaction():
            # The stream's row first: a put holds it while it writes (fnrt_put_records
            # updates next_seq), so a put is wholly before this or finds no stream.
            found = await conn.fetchval("SELECT 1 FROM fnrt_streams WHERE name = $1 FOR UPDATE", name)
            if found is None:
                raise StreamNotFound(name)
            # The mappings stay, disabled (Lambda keeps a mapping whose stream is gone);
            # their checkpoints and leases name shards that are gone.
            rows = await conn.fetch(
                "UPDATE fnrt_stream_mappings "
                "SET config = jsonb_set(config::jsonb, '{enabled}', 'false')::text "
                "WHERE stream = $1 RETURNING uuid",
                name,
            )
            mappings = [str(r["uuid"]) for r in rows]
            await conn.execute(
                "DELETE FROM fnrt_stream_checkpoints WHERE mapping = ANY($1::text[])", mappings
            )
            await conn.execute("DELETE FROM fnrt_stream_leases WHERE mapping = ANY($1::text[])", mappings)
            await conn.execute("DELETE FROM fnrt_stream_records WHERE stream = $1", name)
            await conn.execute("DELETE FROM fnrt_shards WHERE stream = $1", name)
            await conn.execute("DELETE FROM fnrt_streams WHERE name = $1", name)
        return mappings

    @guarded
    async def stream_names(self) -> list[str]:
        rows = await self.pg.relaxed.fetch("SELECT name FROM fnrt_streams ORDER BY name")
        return [str(r["name"]) for r in rows]

    @guarded
    async def stream_info(self, name: str) -> dict[str, Any] | None:
        row = await self.pg.relaxed.fetchrow(
            "SELECT created_at, retention, next_seq, mode, tags FROM fnrt_streams WHERE name = $1", name
        )
        if row is None:
            return None
        return {
            "created_at": float(row["created_at"]),
            "retention": float(row["retention"]),
            "last_seq": int(row["next_seq"]) - 1,
            "mode": row["mode"] or "PROVISIONED",
            "tags": json.loads(row["tags"]) if row["tags"] else {},
        }

    @guarded
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
        found = await self.pg.durable.fetchval(
            "UPDATE fnrt_streams SET mode = COALESCE($2, mode), retention = COALESCE($3, retention), "
            "tags = COALESCE($4, tags) WHERE name = $1 RETURNING 1",
            name,
            mode,
            retention,
            None if tags is None else json.dumps(tags),
        )
        return found is not None

    @guarded
    async def stream_retention(self, name: str) -> float:
        value = await self.pg.relaxed.fetchval("SELECT retention FROM fnrt_streams WHERE name = $1", name)
        return float(value) if value is not None else 0.0

    @guarded
    async def shards(self, stream: str) -> list[Shard]:
        rows = await self.pg.relaxed.fetch(
            "SELECT * FROM fnrt_shards WHERE stream = $1 ORDER BY shard_id", stream
        )
        return [_shard(r) for r in rows]

    @guarded
    async def put_records(
        self, stream: str, entries: Sequence[tuple[str, str, int]], now: float
    ) -> list[tuple[str, int]]:
        """Append ``(partition_key, base64 data, hash key)`` entries in one transaction,
        each to the open shard whose range holds its hash key; returns ``(shard_id,
        seq)`` in order. Wakes listeners with ``stream:<name>``."""
        if not entries:
            return []
        try:
            rows = await self.pg.durable.fetch(
                "SELECT shard_id, seq FROM fnrt_put_records($1, $2::text[], $3::text[], $4::numeric[], $5)",
                stream,
                [key for key, _, _ in entries],
                [data for _, data, _ in entries],
                [Decimal(hashed) for _, _, hashed in entries],
                now,
            )
        except asyncpg.exceptions.NoDataFoundError as exc:  # P0002, raised by fnrt_put_records
            raise StreamNotFound(stream) from exc
        return [(r["shard_id"], r["seq"]) for r in rows]

    @guarded
    async def read(
        self, stream: str, shard_id: str, after: int, limit: int, *, max_bytes: int | None = None
    ) -> list[StoredRecord]:
        if max_bytes is None:
            rows = await self.pg.relaxed.fetch(_READ, stream, shard_id, after, limit)
        else:  # the running total is taken in the database: what is left out is not sent
            rows = await self.pg.relaxed.fetch(_READ_CAPPED, stream, shard_id, after, limit, max_bytes)
        return [StoredRecord(r[0], r[1], r[2], r[3]) for r in rows]

    async def _close_shards(
        self, conn: Any, stream: str, shard_ids: Sequence[str], new: int
    ) -> tuple[int, int]:
        """Lock the stream's counter row, close ``shard_ids`` at its current sequence
        number and reserve ``new`` shard indexes; returns ``(first sequence number for
        the children, first new shard index)``. A shard closed meanwhile by another host
        is :class:`InvalidConfig`, and nothing is written."""
        row = await conn.fetchrow(
            "UPDATE fnrt_streams SET next_shard = next_shard + $2 WHERE name = $1 "
            "RETURNING next_seq, next_shard - $2 AS first",
            stream,
            new,
        )
        if row is None:
            raise StreamNotFound(stream)
        closed = await conn.fetchval(
            "WITH c AS (UPDATE fnrt_shards SET end_seq = $3 WHERE stream = $1 AND shard_id = ANY($2::text[]) "
            "AND end_seq IS NULL RETURNING 1) SELECT count(*) FROM c",
            stream,
            list(shard_ids),
            row["next_seq"] - 1,
        )
        if closed != len(shard_ids):
            raise InvalidConfig(
                f"stream {stream!r}: {' and '.join(shard_ids)} not all open (closed meanwhile by "
                "another host?); only open shards can be split or merged"
            )
        return row["next_seq"], row["first"]

    @guarded
    async def split_shard(self, stream: str, shard: Shard, new_start: int) -> list[str]:
        async with self.pg.durable.acquire() as conn, conn.transaction():
            start_seq, index = await self._close_shards(conn, stream, [shard.shard_id], 2)
            names = [shard_name(index), shard_name(index + 1)]
            await conn.execute(
                "INSERT INTO fnrt_shards (stream, shard_id, start_hash, end_hash, parent, start_seq) "
                "SELECT $1, s, lo, hi, $5, $6 FROM unnest($2::text[], $3::numeric[], $4::numeric[]) "
                "AS u (s, lo, hi)",
                stream,
                names,
                [Decimal(shard.start_hash), Decimal(new_start)],
                [Decimal(new_start - 1), Decimal(shard.end_hash)],
                shard.shard_id,
                start_seq,
            )
        return names

    @guarded
    async def merge_shards(self, stream: str, shard: Shard, adjacent: Shard) -> str:
        async with self.pg.durable.acquire() as conn, conn.transaction():
            start_seq, index = await self._close_shards(conn, stream, [shard.shard_id, adjacent.shard_id], 1)
            name = shard_name(index)
            await conn.execute(
                "INSERT INTO fnrt_shards (stream, shard_id, start_hash, end_hash, parent, adjacent_parent, "
                "start_seq) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                stream,
                name,
                Decimal(min(shard.start_hash, adjacent.start_hash)),
                Decimal(max(shard.end_hash, adjacent.end_hash)),
                shard.shard_id,
                adjacent.shard_id,
                start_seq,
            )
        return name

    @guarded
    async def trim(self, stream: str, before: float, *, limit: int | None = None) -> int:
        """Drop records that arrived before ``before`` (the stream's retention), oldest
        first in each shard, at most ``limit`` per shard; returns how many. Each shard is
        cut at its first record to keep (a record out of arrival order behind a newer
        one waits for the next trim), in one statement."""
        value = await self.pg.relaxed.fetchval(
            "WITH k AS (SELECT s.shard_id, (SELECT min(r.seq) FROM fnrt_stream_records r "
            "WHERE r.stream = $1 AND r.shard_id = s.shard_id AND r.arrival >= $2) AS keep "
            "FROM fnrt_shards s WHERE s.stream = $1), "
            "v AS (SELECT k.shard_id, x.seq FROM k CROSS JOIN LATERAL (SELECT r.seq "
            "FROM fnrt_stream_records r WHERE r.stream = $1 AND r.shard_id = k.shard_id "
            "AND r.seq < COALESCE(k.keep, 9223372036854775807) ORDER BY r.seq LIMIT $3) x), "
            "d AS (DELETE FROM fnrt_stream_records r USING v WHERE r.stream = $1 AND r.shard_id = v.shard_id "
            "AND r.seq = v.seq RETURNING 1) SELECT count(*) FROM d",
            stream,
            before,
            limit,
        )
        return int(value)

    async def trim_expired(self, now: float, *, limit: int | None = None) -> int:
        """:meth:`trim` every stream by its own retention; returns how many were deleted."""
        rows = await self._stream_retentions()
        deleted = 0
        for name, retention in rows:
            deleted += await self.trim(name, now - retention, limit=limit)
        return deleted

    @guarded
    async def _stream_retentions(self) -> list[tuple[str, float]]:
        rows = await self.pg.relaxed.fetch("SELECT name, retention FROM fnrt_streams ORDER BY name")
        return [(r[0], float(r[1])) for r in rows]

    # -- mappings ---------------------------------------------------------------------

    @guarded
    async def mappings(self) -> list[MappingRow]:
        rows = await self.pg.relaxed.fetch(
            "SELECT uuid, stream, function, config, filters FROM fnrt_stream_mappings "
            "ORDER BY stream, function"
        )
        return [_mapping_row(r) for r in rows]

    @guarded
    async def mapping(self, stream: str, function: str) -> MappingRow | None:
        row = await self.pg.relaxed.fetchrow(
            "SELECT uuid, stream, function, config, filters FROM fnrt_stream_mappings "
            "WHERE stream = $1 AND function = $2",
            stream,
            function,
        )
        if row is None:
            return None
        return _mapping_row(row)

    @guarded
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
        """Insert the mapping, or return the one for (stream, function) that exists (with
        ``config`` and ``filters`` written to it). Of hosts creating it at once one wins
        and the others get its row. A new mapping gets a checkpoint per existing shard
        according to ``start`` (``TRIM_HORIZON``, ``LATEST``, ``AT_TIMESTAMP``)."""
        encoded = json.dumps(config)
        filters = tuple(filters)
        kept = json.dumps(list(filters)) if filters else None
        async with self.pg.durable.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO fnrt_stream_mappings (uuid, stream, function, config, created_at, filters) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream, function) DO NOTHING RETURNING uuid",
                uuid,
                stream,
                function,
                encoded,
                now,
                kept,
            )
            if inserted is None:
                existing = await conn.fetchval(
                    "UPDATE fnrt_stream_mappings SET config = $3, filters = $4 "
                    "WHERE stream = $1 AND function = $2 RETURNING uuid",
                    stream,
                    function,
                    encoded,
                    kept,
                )
                return MappingRow(existing, stream, function, config, filters)
            if start == "LATEST":
                await conn.execute(
                    "INSERT INTO fnrt_stream_checkpoints (mapping, shard_id, seq, finished) "
                    "SELECT $1, s.shard_id, COALESCE((SELECT max(seq) FROM fnrt_stream_records r "
                    "WHERE r.stream = s.stream AND r.shard_id = s.shard_id), -1), s.end_seq IS NOT NULL "
                    "FROM fnrt_shards s WHERE s.stream = $2",
                    uuid,
                    stream,
                )
            elif start == "AT_TIMESTAMP":
                await conn.execute(
                    "INSERT INTO fnrt_stream_checkpoints (mapping, shard_id, seq) "
                    "SELECT $1, s.shard_id, COALESCE((SELECT max(seq) FROM fnrt_stream_records r "
                    "WHERE r.stream = s.stream AND r.shard_id = s.shard_id AND r.arrival < $3), -1) "
                    "FROM fnrt_shards s WHERE s.stream = $2",
                    uuid,
                    stream,
                    timestamp,
                )
        return MappingRow(uuid, stream, function, config, filters)

    @guarded
    async def delete_mapping(self, uuid: str) -> None:
        async with self.pg.durable.acquire() as conn, conn.transaction():
            # The mapping's row first: a lease being taken holds it (acquire_lease), so it
            # is wholly before this, or finds no mapping and takes nothing.
            await conn.execute("DELETE FROM fnrt_stream_mappings WHERE uuid = $1", uuid)
            await conn.execute("DELETE FROM fnrt_stream_checkpoints WHERE mapping = $1", uuid)
            await conn.execute("DELETE FROM fnrt_stream_leases WHERE mapping = $1", uuid)

    # -- checkpoints and leases -------------------------------------------------------

    @guarded
    async def checkpoints(self, mapping: str) -> dict[str, Checkpoint]:
        rows = await self.pg.relaxed.fetch(
            "SELECT shard_id, seq, finished FROM fnrt_stream_checkpoints WHERE mapping = $1", mapping
        )
        return {r[0]: Checkpoint(r[1], bool(r[2])) for r in rows}

    @guarded
    async def acquire_lease(self, mapping: str, shard_id: str, owner: str, now: float, ttl: float) -> bool:
        """Take the shard's lease if it is free, expired (judged by the database's clock
        in db-clock mode), or ours already. Atomic: of hosts racing for it one wins. Only
        while the mapping is there, its row share-locked (a removal deletes that row first,
        so a lease is never taken after its leases and checkpoints went)."""
        value = await self.pg.relaxed.fetchval(
            "INSERT INTO fnrt_stream_leases AS l (mapping, shard_id, owner, expires_at, expires_judge) "
            f"SELECT $1, $2, $3, $4::float8 + $5::float8, {judge('$6')} + $5::float8 "
            "WHERE EXISTS (SELECT 1 FROM fnrt_stream_mappings WHERE uuid = $1 FOR KEY SHARE) "
            "ON CONFLICT (mapping, shard_id) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at, expires_judge = excluded.expires_judge, "
            "token = l.token + (l.owner <> excluded.owner)::int "
            f"WHERE l.owner = excluded.owner OR l.expires_judge < {judge('$6')} RETURNING 1",
            mapping,
            shard_id,
            owner,
            now,
            ttl,
            self._judge(now),
        )
        return value is not None

    @guarded
    async def heartbeat(
        self, mapping: str, owner: str, shard_ids: Sequence[str], now: float, ttl: float
    ) -> set[str]:
        """Extend our leases; returns the shards whose lease we still hold."""
        if not shard_ids:
            return set()
        rows = await self.pg.relaxed.fetch(
            f"UPDATE fnrt_stream_leases SET expires_at = $4::float8 + $5::float8, "
            f"expires_judge = {judge('$6')} + $5::float8 "
            "WHERE mapping = $1 AND owner = $2 AND shard_id = ANY($3::text[]) RETURNING shard_id",
            mapping,
            owner,
            list(shard_ids),
            now,
            ttl,
            self._judge(now),
        )
        return {r[0] for r in rows}

    @guarded
    async def release_lease(self, mapping: str, shard_id: str, owner: str) -> None:
        await self.pg.relaxed.execute(
            "DELETE FROM fnrt_stream_leases WHERE mapping = $1 AND shard_id = $2 AND owner = $3",
            mapping,
            shard_id,
            owner,
        )

    @guarded
    async def steal_lease(
        self, mapping: str, shard_id: str, owner: str, victim: str, now: float, ttl: float
    ) -> bool:
        """Take the shard's lease from ``victim``, live or not (balancing). Fenced: only
        while ``victim`` still holds it; a checkpoint in flight (it holds the lease row
        ``FOR SHARE``) finishes first."""
        value = await self.pg.relaxed.fetchval(
            "UPDATE fnrt_stream_leases SET owner = $3, expires_at = $5::float8 + $6::float8, "
            f"expires_judge = {judge('$7')} + $6::float8, token = token + 1 "
            "WHERE mapping = $1 AND shard_id = $2 AND owner = $4 AND owner <> $3 RETURNING 1",
            mapping,
            shard_id,
            owner,
            victim,
            now,
            ttl,
            self._judge(now),
        )
        return value is not None

    # -- membership ---------------------------------------------------------------------

    @guarded
    async def register_host(self, host: str, info: dict[str, Any], now: float, ttl: float) -> None:
        """Say ``host`` is alive until ``now + ttl`` (judged like a lease), with ``info``;
        rows of hosts dead for an hour are dropped."""
        await self.pg.relaxed.execute(
            "WITH gone AS (DELETE FROM fnrt_hosts WHERE expires_judge < "
            f"{judge('$5')} - 3600 AND host <> $1) "
            "INSERT INTO fnrt_hosts AS h (host, info, started_at, seen_at, expires_at, expires_judge) "
            f"VALUES ($1, $2, $3, $3, $3::float8 + $4::float8, {judge('$5')} + $4::float8) "
            "ON CONFLICT (host) DO UPDATE SET info = excluded.info, seen_at = excluded.seen_at, "
            "expires_at = excluded.expires_at, expires_judge = excluded.expires_judge",
            host,
            json.dumps(info),
            now,
            ttl,
            self._judge(now),
        )

    @guarded
    async def unregister_host(self, host: str) -> None:
        await self.pg.relaxed.execute("DELETE FROM fnrt_hosts WHERE host = $1", host)

    @guarded
    async def live_hosts(self, now: float) -> list[dict[str, Any]]:
        """The hosts whose registration has not expired, by host id: ``host``, ``info``,
        ``started_at``, ``seen_at``, ``expires_at`` (the host's own clock)."""
        rows = await self.pg.relaxed.fetch(
            "SELECT host, info, started_at, seen_at, expires_at FROM fnrt_hosts "
            f"WHERE expires_judge > {judge('$1')} ORDER BY host",
            self._judge(now),
        )
        return [{**dict(r), "info": json.loads(r["info"])} for r in rows]

    @guarded
    async def leases(self, mapping: str, now: float | None = None) -> dict[str, tuple[str, float]]:
        """Shard -> ``(owner, expires_at)``: the expiry in the holder's clock frame, or with
        ``now`` in the caller's, as judged: ``now`` plus what the lease has left by the
        judging clock (the database's in db-clock mode; else the callers' ``now``, which is
        the expiry as written)."""
        if now is None:
            rows = await self.pg.relaxed.fetch(
                "SELECT shard_id, owner, expires_at FROM fnrt_stream_leases WHERE mapping = $1", mapping
            )
        else:
            rows = await self.pg.relaxed.fetch(
                f"SELECT shard_id, owner, $2::float8 + (expires_judge - {judge('$3')}) "
                "FROM fnrt_stream_leases WHERE mapping = $1",
                mapping,
                now,
                self._judge(now),
            )
        return {r[0]: (r[1], r[2]) for r in rows}

    @guarded
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
        """Move the checkpoint to ``seq`` (never backwards) while we hold the lease, with
        the on-failure record (if any) in the same statement. ``False``: the lease was
        taken over, and nothing was written."""
        destination, record, created = (None, None, 0.0) if failure is None else failure
        value = await self.pg.relaxed.fetchval(
            _CHECKPOINT,
            mapping,
            shard_id,
            owner,
            seq,
            finished,
            destination,
            None if record is None else json.dumps(record),
            created,
        )
        return bool(value)

    @guarded
    async def failure_records(
        self, *, mapping: str | None = None, destination: str | None = None, newest: int | None = None
    ) -> list[dict[str, Any]]:
        column, value = ("mapping", mapping) if mapping is not None else ("destination", destination)
        rows = await self.pg.relaxed.fetch(
            f"SELECT record FROM (SELECT id, record FROM fnrt_stream_failures WHERE {column} = $1 "
            "ORDER BY id DESC LIMIT $2) AS newest ORDER BY id",
            value,
            None if newest is None else max(newest, 0),
        )
        return [json.loads(r[0]) for r in rows]

    @guarded
    async def failure_count(self, *, mapping: str) -> int:
        value = await self.pg.relaxed.fetchval(
            "SELECT count(*) FROM fnrt_stream_failures WHERE mapping = $1", mapping
        )
        return int(value or 0)
