"""The PostgreSQL schema fnrt creates and versions: tables, indexes and the functions that
make one round trip of a multi-statement step.

Times are epoch seconds in ``double precision``. A row that a lease protects carries two
expiry columns: the one the caller gave, in its own clock's frame (what reads report), and
``*_judge``, the one expiry is decided by: the database's clock (``now()``) plus the lease
time when the store runs with ``db_clock=True``, or the caller's own value when it does not
(tests driving a :class:`fnrt.FakeClock`). The SQL writes ``COALESCE($n, <db now>)`` where
it needs "now" for judging, and the Python side passes ``None`` for ``$n`` in db-clock mode.

Everything is created under one transaction-scoped advisory lock, so hosts starting
together do not race, and stamped with :data:`VERSION` in ``fnrt_schema``. With a
``schema`` the tables live in that PostgreSQL schema (``search_path``), so several
independent deployments (or tests) can share one database.
"""

from __future__ import annotations

VERSION = 3  # 2: fnrt_hosts (cluster membership); 3: reservations published (fnrt_slot_reserve)
LOCK_KEY = 0x666E7274  # "fnrt": pg_advisory_xact_lock(key) around schema set-up
CHANNEL = "fnrt_wake"  # with a schema: fnrt_wake_<schema>, so deployments do not wake each other
DB_NOW = "extract(epoch from now())::float8"


def channel(schema: str | None) -> str:
    return CHANNEL if schema is None else f"{CHANNEL}_{schema}"


def judge(param: str) -> str:
    """The "now" leases are judged by: the caller's value, or the database's clock."""
    return f"COALESCE({param}::float8, {DB_NOW})"


TABLES = (
    """CREATE TABLE IF NOT EXISTS fnrt_schema (
        version integer NOT NULL,
        created_at double precision NOT NULL DEFAULT extract(epoch from now())
    )""",
    # -- the async queue ------------------------------------------------------------
    """CREATE TABLE IF NOT EXISTS fnrt_async_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id text NOT NULL,
        function text NOT NULL,
        payload bytea NOT NULL,
        state text NOT NULL DEFAULT 'queued',
        enqueued_at double precision NOT NULL,
        run_at double precision NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        invokes integer NOT NULL DEFAULT 0,
        system_retries integer NOT NULL DEFAULT 0,
        lease_owner text,
        lease_until double precision,
        lease_judge double precision,
        leases integer NOT NULL DEFAULT 0,
        last_status integer,
        last_error text,
        last_response bytea,
        condition text,
        record text,
        finished_at double precision
    )""",
    "CREATE INDEX IF NOT EXISTS fnrt_async_events_queued ON fnrt_async_events (function, run_at) "
    "WHERE state = 'queued'",
    "CREATE INDEX IF NOT EXISTS fnrt_async_events_leased ON fnrt_async_events (function, lease_judge) "
    "WHERE state = 'leased'",
    "CREATE INDEX IF NOT EXISTS fnrt_async_events_finished ON fnrt_async_events (finished_at) "
    "WHERE state IN ('done', 'failed')",
    "CREATE INDEX IF NOT EXISTS fnrt_async_events_request ON fnrt_async_events (request_id, id)",
    """CREATE TABLE IF NOT EXISTS fnrt_destination_records (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sink text NOT NULL,
        record text NOT NULL,
        created_at double precision NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS fnrt_destination_records_sink ON fnrt_destination_records (sink, id)",
    # -- streams --------------------------------------------------------------------
    """CREATE TABLE IF NOT EXISTS fnrt_streams (
        name text PRIMARY KEY,
        next_seq bigint NOT NULL,
        next_shard integer NOT NULL,
        retention double precision NOT NULL,
        created_at double precision NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS fnrt_shards (
        stream text NOT NULL REFERENCES fnrt_streams (name),
        shard_id text NOT NULL,
        start_hash numeric(39, 0) NOT NULL,
        end_hash numeric(39, 0) NOT NULL,
        parent text,
        adjacent_parent text,
        start_seq bigint NOT NULL,
        end_seq bigint,
        PRIMARY KEY (stream, shard_id)
    )""",
    """CREATE TABLE IF NOT EXISTS fnrt_stream_records (
        stream text NOT NULL,
        shard_id text NOT NULL,
        seq bigint NOT NULL,
        partition_key text NOT NULL,
        data text NOT NULL,
        arrival double precision NOT NULL,
        PRIMARY KEY (stream, shard_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS fnrt_stream_records_arrival ON fnrt_stream_records (stream, arrival)",
    """CREATE TABLE IF NOT EXISTS fnrt_stream_mappings (
        uuid text PRIMARY KEY,
        stream text NOT NULL,
        function text NOT NULL,
        config text NOT NULL,
        created_at double precision NOT NULL,
        UNIQUE (stream, function)
    )""",
    """CREATE TABLE IF NOT EXISTS fnrt_stream_checkpoints (
        mapping text NOT NULL,
        shard_id text NOT NULL,
        seq bigint NOT NULL,
        finished boolean NOT NULL DEFAULT false,
        PRIMARY KEY (mapping, shard_id)
    )""",
    # token: bumped each time the lease changes hands (a fencing token for the record).
    """CREATE TABLE IF NOT EXISTS fnrt_stream_leases (
        mapping text NOT NULL,
        shard_id text NOT NULL,
        owner text NOT NULL,
        expires_at double precision NOT NULL,
        expires_judge double precision NOT NULL,
        token bigint NOT NULL DEFAULT 1,
        PRIMARY KEY (mapping, shard_id)
    )""",
    """CREATE TABLE IF NOT EXISTS fnrt_stream_failures (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        mapping text NOT NULL,
        destination text,
        record text NOT NULL,
        created_at double precision NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS fnrt_stream_failures_mapping ON fnrt_stream_failures (mapping, id)",
    "CREATE INDEX IF NOT EXISTS fnrt_stream_failures_destination ON fnrt_stream_failures (destination, id)",
    # -- membership: each host's heartbeat (for balancing and ``fnrt stats``) ------------
    """CREATE TABLE IF NOT EXISTS fnrt_hosts (
        host text PRIMARY KEY,
        info text NOT NULL,
        started_at double precision NOT NULL,
        seen_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        expires_judge double precision NOT NULL
    )""",
    # -- the counting service ---------------------------------------------------------
    # One row serializes every acquire (the "per-limit row"); reservations are data so
    # every host carves the same amount out of the shared pool.
    """CREATE TABLE IF NOT EXISTS fnrt_slot_limit (
        id integer PRIMARY KEY CHECK (id = 1)
    )""",
    "INSERT INTO fnrt_slot_limit (id) VALUES (1) ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS fnrt_slot_functions (
        function text PRIMARY KEY,
        reserved integer
    )""",
    # When a live host last said this reservation is its function's (judged like leases):
    # one no host has repeated for a while (its hosts removed the function or are gone)
    # stops counting, so an old deployment's reservations do not hold the pool for ever.
    # A row from before (NULL: a host of schema 2 still running) counts as it did then.
    "ALTER TABLE fnrt_slot_functions ADD COLUMN IF NOT EXISTS seen double precision",
    """CREATE TABLE IF NOT EXISTS fnrt_slot_leases (
        host text NOT NULL,
        function text NOT NULL,
        count integer NOT NULL,
        expires_judge double precision NOT NULL,
        PRIMARY KEY (host, function)
    )""",
)

# Columns added since a table was first made, each nullable (NULL: what a row written by an
# older fnrt means), so a store of the same VERSION gains them without a version bump and an
# older fnrt still opens it: added when missing at every set-up (under the advisory lock).
# fnrt_stream_mappings.filters: the mapping's FilterCriteria patterns as a JSON list.
# fnrt_streams.mode: Kinesis' capacity mode (NULL: PROVISIONED); .tags: a JSON object.
COLUMNS = (
    ("fnrt_stream_mappings", "filters", "text"),
    ("fnrt_streams", "mode", "text"),
    ("fnrt_streams", "tags", "text"),
)

FUNCTIONS = (
    # The one place that names the notification channel (fixed when the schema is made).
    """CREATE OR REPLACE FUNCTION fnrt_wake(p_payload text) RETURNS integer LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('@CHANNEL@', p_payload);
        RETURN 1;
    END $$""",
    # put_records: lock the stream's counter row first (it serializes writers, so sequence
    # numbers commit in the order they were allocated: a reader never sees seq n+1 before
    # n), then route by the open shards as they are after any split that held the lock
    # (each statement of a volatile function reads a fresh snapshot), insert, notify.
    """CREATE OR REPLACE FUNCTION fnrt_put_records(
        p_stream text, p_keys text[], p_data text[], p_hashes numeric[], p_arrival double precision
    ) RETURNS TABLE (shard_id text, seq bigint) LANGUAGE plpgsql AS $$
    DECLARE
        n integer := cardinality(p_keys);
        base bigint;
        placed integer;
    BEGIN
        UPDATE fnrt_streams SET next_seq = next_seq + n WHERE name = p_stream
            RETURNING next_seq - n INTO base;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no stream %', p_stream USING ERRCODE = 'P0002';
        END IF;
        RETURN QUERY WITH ins AS (
            INSERT INTO fnrt_stream_records AS r (stream, shard_id, seq, partition_key, data, arrival)
            SELECT p_stream, s.shard_id, base + u.ord - 1, u.k, u.d, p_arrival
            FROM unnest(p_keys, p_data, p_hashes) WITH ORDINALITY AS u (k, d, h, ord)
            JOIN fnrt_shards s ON s.stream = p_stream AND s.end_seq IS NULL
                AND u.h BETWEEN s.start_hash AND s.end_hash
            RETURNING r.shard_id, r.seq
        ) SELECT ins.shard_id, ins.seq FROM ins ORDER BY ins.seq;
        GET DIAGNOSTICS placed = ROW_COUNT;
        IF placed <> n THEN
            RAISE EXCEPTION 'stream %: % of % records had no open shard', p_stream, n - placed, n
                USING ERRCODE = 'P0003';
        END IF;
        PERFORM fnrt_wake('stream:' || p_stream);
    END $$""",
    # try_acquire: one round trip. The limit row's lock serializes acquires, and each
    # statement after it reads a fresh snapshot, so the sums include every committed grant.
    """CREATE OR REPLACE FUNCTION fnrt_slot_acquire(
        p_host text, p_function text, p_n integer, p_limit integer, p_reserved integer,
        p_ttl double precision, p_now double precision
    ) RETURNS integer LANGUAGE plpgsql AS $$
    DECLARE
        t double precision;
        fresh double precision;
        used bigint;
        room bigint;
        granted integer;
    BEGIN
        PERFORM 1 FROM fnrt_slot_limit WHERE id = 1 FOR UPDATE;
        -- Read the clock after the lock: judging times then increase from one holder to
        -- the next, so a lease one acquire judged expired is never alive to a later one.
        t := COALESCE(p_now, extract(epoch from clock_timestamp())::float8);
        fresh := t - GREATEST(60.0, 6 * p_ttl);
        INSERT INTO fnrt_slot_functions AS f (function, reserved, seen) VALUES (p_function, p_reserved, t)
            ON CONFLICT (function) DO UPDATE SET reserved = excluded.reserved, seen = t
            WHERE f.reserved IS DISTINCT FROM excluded.reserved OR f.seen IS NULL OR f.seen < t - 1;
        IF p_reserved IS NOT NULL THEN
            SELECT COALESCE(sum(l.count), 0) INTO used FROM fnrt_slot_leases l
                WHERE l.function = p_function AND l.expires_judge > t;
            room := p_reserved - used;
        ELSE
            SELECT COALESCE(sum(l.count), 0) INTO used FROM fnrt_slot_leases l
                LEFT JOIN fnrt_slot_functions f ON f.function = l.function
                    AND (f.seen IS NULL OR f.seen > fresh)
                WHERE f.reserved IS NULL AND l.expires_judge > t;
            room := p_limit - used - (SELECT COALESCE(sum(reserved), 0) FROM fnrt_slot_functions
                WHERE seen IS NULL OR seen > fresh);
        END IF;
        -- Never past the global limit, whatever the reservations add up to (hosts that
        -- reserved at the same moment, each within the limit on its own).
        SELECT COALESCE(sum(l.count), 0) INTO used FROM fnrt_slot_leases l WHERE l.expires_judge > t;
        room := LEAST(room, p_limit - used);
        granted := GREATEST(0, LEAST(p_n, room));
        IF granted > 0 THEN
            INSERT INTO fnrt_slot_leases AS l (host, function, count, expires_judge)
                VALUES (p_host, p_function, granted, t + p_ttl)
                ON CONFLICT (host, function) DO UPDATE SET
                    count = CASE WHEN l.expires_judge > t THEN l.count + granted ELSE granted END,
                    expires_judge = t + p_ttl;
        END IF;
        RETURN granted;
    END $$""",
    # reserve: a host's reservations, published when they change (before its next acquire,
    # or within a third of the lease time), so every host carves them out of the shared pool
    # before their function is first called; NULL gives one back. Returns every reservation.
    """CREATE OR REPLACE FUNCTION fnrt_slot_reserve(
        p_functions text[], p_reserved integer[], p_ttl double precision, p_now double precision
    ) RETURNS TABLE (reserved_by text, reservation integer) LANGUAGE plpgsql AS $$
    DECLARE
        t double precision;
    BEGIN
        PERFORM 1 FROM fnrt_slot_limit WHERE id = 1 FOR UPDATE;
        t := COALESCE(p_now, extract(epoch from clock_timestamp())::float8);
        INSERT INTO fnrt_slot_functions AS f (function, reserved, seen)
            SELECT u.f, u.r, t FROM unnest(p_functions, p_reserved) AS u (f, r)
            ON CONFLICT (function) DO UPDATE SET reserved = excluded.reserved, seen = t;
        RETURN QUERY SELECT f.function, f.reserved FROM fnrt_slot_functions f
            WHERE f.reserved IS NOT NULL AND (f.seen IS NULL OR f.seen > t - GREATEST(60.0, 6 * p_ttl));
    END $$""",
    # renew: under the same lock, so a lease an acquire judged expired (and gave away)
    # cannot be revived by its host's late renewal. Expired rows of every host are dropped.
    """CREATE OR REPLACE FUNCTION fnrt_slot_renew(p_host text, p_ttl double precision, p_now double precision)
    RETURNS TABLE (function text, count integer) LANGUAGE plpgsql AS $$
    DECLARE
        t double precision;
    BEGIN
        PERFORM 1 FROM fnrt_slot_limit WHERE id = 1 FOR UPDATE;
        t := COALESCE(p_now, extract(epoch from clock_timestamp())::float8);
        DELETE FROM fnrt_slot_leases l WHERE l.expires_judge <= t;
        RETURN QUERY UPDATE fnrt_slot_leases l SET expires_judge = t + p_ttl
            WHERE l.host = p_host RETURNING l.function, l.count;
    END $$""",
)
