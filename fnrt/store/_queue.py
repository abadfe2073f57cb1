"""The async invoke queue and the destination sinks: every SQL statement they need.

An event row moves through explicit states, with its retry schedule as data on the row:

    queued --take--> leased --success---------------------------> done
      ^                 |----function error, retries left--------> queued (run_at later)
      |                 |----throttle / system error, age left---> queued (backoff)
      |                 |----retries exhausted / age exceeded----> failed
      +--lease expired--+   (the host died holding it: taken again, at least once)

``done`` and ``failed`` rows stay (the outcome and, for ``failed``, the destination record
are kept on the row), so an event is never lost silently. A lease is data: owner, expiry
(``lease_until``) and a token (``leases``, bumped at every take) that a finishing poller
must still hold, so a poller that lost its lease cannot overwrite a newer attempt.

Times are wall-clock seconds (the runtime clock's ``time()``) because they must mean the
same thing to the next process that opens the file.

Nothing here relies on being the only writer (:class:`fnrt.store.QueueStore` states the
contract): a take is one ``UPDATE ... RETURNING`` whose ``WHERE`` picks and checks the
rows under SQLite's write lock, and every fenced write checks the lease token in the
statement that writes. ``done`` and ``failed`` rows are deleted by :meth:`purge_finished`
once they are old (indexed by ``finished_at``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from ._db import Database, Statement
from ._types import Outcome, QueuedEvent

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS async_events (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        function TEXT NOT NULL,
        payload BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        enqueued_at REAL NOT NULL,
        run_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        invokes INTEGER NOT NULL DEFAULT 0,
        system_retries INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_until REAL,
        leases INTEGER NOT NULL DEFAULT 0,
        last_status INTEGER,
        last_error TEXT,
        last_response BLOB,
        condition TEXT,
        record TEXT,
        finished_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS async_events_due ON async_events (function, state, run_at)",
    "CREATE INDEX IF NOT EXISTS async_events_request ON async_events (request_id)",
    # Only finished rows have finished_at: the index is what purge_finished walks.
    "CREATE INDEX IF NOT EXISTS async_events_finished ON async_events (finished_at) "
    "WHERE finished_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS destination_records (
        id INTEGER PRIMARY KEY,
        sink TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS destination_records_sink ON destination_records (sink, id)",
)

_ENQUEUE = (
    "INSERT INTO async_events (request_id, function, payload, enqueued_at, run_at) VALUES (?, ?, ?, ?, ?)"
)
# An event handed straight to an attempt: stored already leased (its first lease, token 1).
_ENQUEUE_LEASED = (
    "INSERT INTO async_events (request_id, function, payload, enqueued_at, run_at, state, "
    "lease_owner, lease_until, leases) VALUES (?, ?, ?, ?, ?, 'leased', ?, ?, 1)"
)
_SINK = "INSERT INTO destination_records (sink, record, created_at) VALUES (?, ?, ?)"
# A settle's side effects: written only if the statement before them (the fenced UPDATE
# of the event, then each insert in turn) wrote a row, in the same transaction.
_ENQUEUE_FENCED = (
    "INSERT INTO async_events (request_id, function, payload, enqueued_at, run_at) "
    "SELECT ?, ?, ?, ?, ? WHERE changes() > 0"
)
_SINK_FENCED = (
    "INSERT INTO destination_records (sink, record, created_at) SELECT ?, ?, ? WHERE changes() > 0"
)
_COLUMNS = (
    "id, request_id, function, payload, enqueued_at, attempts, invokes, system_retries, leases, "
    "last_status, last_error, last_response"
)
# Lease up to LIMIT due events, oldest first; {state}/{due}: queued by run_at, or leased
# by lease_until (expired leases, taken over). One statement: SQLite takes the write lock
# before it reads, so the rows it picks are checked and leased with no other writer in
# between; the outer WHERE repeats the check so the statement says what it relies on.
_TAKE = (
    "UPDATE async_events SET state = 'leased', lease_owner = ?, lease_until = ?, "
    "leases = leases + 1 WHERE id IN (SELECT id FROM async_events WHERE function = ? "
    "AND state = '{state}' AND {due} <= ? ORDER BY {due} LIMIT ?) "
    "AND state = '{state}' AND {due} <= ? RETURNING "
    + _COLUMNS
)
_TAKE_QUEUED = _TAKE.format(state="queued", due="run_at")
_TAKE_EXPIRED = _TAKE.format(state="leased", due="lease_until")  # their holder died
_DUE = (
    "SELECT EXISTS (SELECT 1 FROM async_events WHERE function = ? AND state = 'queued' "
    "AND run_at <= ?), EXISTS (SELECT 1 FROM async_events WHERE function = ? "
    "AND state = 'leased' AND lease_until <= ?)"
)
_SETTLE = (
    "UPDATE async_events SET state = ?, run_at = COALESCE(?, run_at), attempts = ?, "
    "invokes = ?, system_retries = ?, last_status = COALESCE(?, last_status), "
    "last_error = ?, last_response = COALESCE(?, last_response), condition = ?, "
    "record = ?, finished_at = ?, lease_owner = NULL, lease_until = NULL "
    "WHERE id = ? AND leases = ? AND state = 'leased'"
)
_EVENT_COLUMNS = (
    "request_id, function, state, enqueued_at, run_at, attempts, invokes, "
    "system_retries, leases, condition, record, last_error"
)


def _event(row: Any) -> dict[str, Any]:
    event = dict(row)
    event["record"] = json.loads(event["record"]) if event["record"] else None
    return event


class SQLiteQueue:
    """The durable queue behind ``invoke(..., "Event")`` in SQLite; all its SQL is here.

    Implements :class:`fnrt.store.QueueStore` (its docstrings give the contract)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def setup(self) -> None:
        await self.db.ensure_schema("async_queue", SCHEMA)

    def enqueue(self, request_id: str, function: str, payload: bytes, now: float) -> Awaitable[None]:
        """Store one event; done once it is committed (sharing the commit with every
        concurrent enqueue)."""
        return self.db.group_write([(_ENQUEUE, (request_id, function, payload, now, now))])

    def enqueue_leased(
        self,
        request_id: str,
        function: str,
        payload: bytes,
        now: float,
        owner: str,
        lease_until: float,
        started: Callable[[QueuedEvent | None], None],
    ) -> Awaitable[None]:
        """Store one event already leased to ``owner``; ``started`` gets it once committed
        (``None`` if the write failed), in the commit's loop turn, caller or no caller."""

        def then(rowid: int | None) -> None:
            started(
                None if rowid is None else QueuedEvent(rowid, request_id, function, payload, now, 0, 0, 0, 1)
            )

        params = (request_id, function, payload, now, now, owner, lease_until)
        return cast("Awaitable[None]", self.db.insert_then(_ENQUEUE_LEASED, params, then))

    async def take(
        self, function: str, now: float, limit: int, owner: str, lease_until: float
    ) -> list[QueuedEvent]:
        """Lease up to ``limit`` due events of ``function``: queued ones whose ``run_at``
        has come, and leased ones whose lease expired (their holder died)."""
        if limit <= 0:
            return []

        # A read first: an idle poller must not take the write lock (other hosts and
        # areas share the file), only one that has something to take. Then each take is
        # one autocommit statement under SQLite's write lock whose inner SELECT walks the
        # (function, state, run_at) index in order: O(limit), whatever the queue's length.
        # The whole of it is one function on the connection's thread (one hop), inside the
        # group commit of the enqueues and outcomes when one is under way (no hop or wait
        # for the lock of its own; it sees the events that commit stores). Not durable of
        # itself: a lease lost to a power cut only means the event is taken again.
        def take(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            queued, expired = conn.execute(_DUE, (function, now, function, now)).fetchone()
            rows: list[sqlite3.Row] = []
            if queued:
                rows += conn.execute(_TAKE_QUEUED, (owner, lease_until, function, now, limit, now))
            if expired and len(rows) < limit:  # their holder died: take them over
                rows += conn.execute(
                    _TAKE_EXPIRED, (owner, lease_until, function, now, limit - len(rows), now)
                )
            return rows

        rows = await self.db.join_or_run(take)
        events = [QueuedEvent(*row) for row in rows]
        events.sort(key=lambda e: e.id)
        return events

    async def next_due(self, functions: Sequence[str]) -> float | None:
        """The earliest time an event of these functions becomes takeable."""
        if not functions:
            return None
        marks = ",".join("?" * len(functions))
        row = await self.db.fetchone(
            "SELECT MIN(CASE state WHEN 'queued' THEN run_at ELSE lease_until END) FROM async_events "
            f"WHERE state IN ('queued', 'leased') AND function IN ({marks})",
            tuple(functions),
        )
        return None if row is None or row[0] is None else float(row[0])

    def settle(self, event: QueuedEvent, outcome: Outcome, now: float) -> Awaitable[None]:
        """Write an attempt's outcome and its destination records atomically.

        The row changes only while ``event.lease`` is still the current lease, and the
        side effects are chained on that change (``WHERE changes() > 0``): a stale
        holder writes nothing at all.
        """
        statements: list[Statement] = [
            (
                _SETTLE,
                (
                    outcome.state,
                    outcome.run_at,
                    outcome.attempts,
                    outcome.invokes,
                    outcome.system_retries,
                    outcome.status,
                    outcome.function_error,
                    outcome.response,
                    outcome.condition,
                    outcome.record,
                    None if outcome.state == "queued" else now,
                    event.id,
                    event.lease,
                ),
            )
        ]
        statements += [(_SINK_FENCED, (sink, record, now)) for sink, record in outcome.sink_records]
        statements += [(_ENQUEUE_FENCED, (rid, fn, body, now, now)) for rid, fn, body in outcome.events]
        # Durable only when it hands events on (a function destination's new event, a
        # retry): a lost "done" or sink record is redone by running the event again.
        return self.db.group_write(statements, durable=bool(outcome.events))

    async def release(self, events: Sequence[QueuedEvent]) -> None:
        """Give leases back unfinished (graceful close): the events are due again at once."""
        await self.db.group_write(
            [
                (
                    "UPDATE async_events SET state = 'queued', lease_owner = NULL, lease_until = NULL "
                    "WHERE id = ? AND leases = ? AND state = 'leased'",
                    (event.id, event.lease),
                )
                for event in events
            ],
            durable=False,
        )

    async def discard(self, function: str, condition: str, now: float) -> list[str]:
        """Every queued event of a deleted function, ``failed`` with ``condition``."""
        rows = await self.db.write_returning(
            "UPDATE async_events SET state = 'failed', condition = ?, finished_at = ? "
            "WHERE function = ? AND state = 'queued' RETURNING request_id",
            (condition, now, function),
        )
        return [str(row[0]) for row in rows]

    async def event(self, request_id: str) -> dict[str, Any] | None:
        """The latest row for ``request_id``, for users and tests (``Runtime.async_event``)."""
        row = await self.db.fetchone(
            f"SELECT {_EVENT_COLUMNS} FROM async_events WHERE request_id = ? ORDER BY id DESC LIMIT 1",
            (request_id,),
        )
        return None if row is None else _event(row)

    async def events(
        self, function: str | None = None, *, state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Events shaped as :meth:`event`, oldest first, optionally filtered."""
        where, params = [], []
        if function is not None:
            where.append("function = ?")
            params.append(function)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        rows = await self.db.fetchall(
            f"SELECT {_EVENT_COLUMNS} FROM async_events "
            f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id LIMIT ?",
            (*params, -1 if limit is None else limit),
        )
        return [_event(row) for row in rows]

    async def counts(
        self, function: str | None = None, *, states: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Events by state (``queued``, ``leased``, ``done``, ``failed``)."""
        clauses, params = (["function = ?"], [function]) if function else ([], [])
        if states is not None:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            params += list(states)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.db.fetchall(
            f"SELECT state, COUNT(*) FROM async_events {where} GROUP BY state", params
        )
        return {str(state): int(n) for state, n in rows}

    async def append_sink(self, sink: str, record: str, now: float) -> None:
        await self.db.group_write([(_SINK, (sink, record, now))])

    async def sink_records(self, sink: str, *, newest: int | None = None) -> list[Any]:
        rows = await self.db.fetchall(
            "SELECT record FROM (SELECT id, record FROM destination_records WHERE sink = ? "
            "ORDER BY id DESC LIMIT ?) ORDER BY id",
            (sink, -1 if newest is None else max(newest, 0)),
        )
        return [json.loads(row[0]) for row in rows]

    async def sink_count(self, sink: str) -> int:
        row = await self.db.fetchone("SELECT count(*) FROM destination_records WHERE sink = ?", (sink,))
        return int(row[0]) if row is not None else 0

    async def purge_finished(self, before: float, *, limit: int = 10_000) -> int:
        """Delete up to ``limit`` done/failed events finished before ``before``."""
        if limit <= 0:
            return 0
        async with self.db.transaction(durable=False) as conn:  # lost: purged next time
            cursor = await conn.execute(
                "DELETE FROM async_events WHERE id IN (SELECT id FROM async_events "
                "WHERE finished_at < ? AND state IN ('done', 'failed') ORDER BY finished_at LIMIT ?)",
                (before, limit),
            )
            return cursor.rowcount


EventQueue = SQLiteQueue  # the name the sources know it by

__all__ = ["EventQueue", "Outcome", "QueuedEvent", "SQLiteQueue"]
