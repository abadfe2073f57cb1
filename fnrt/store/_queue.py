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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from ._db import Database, Statement

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
_SINK = "INSERT INTO destination_records (sink, record, created_at) VALUES (?, ?, ?)"
_COLUMNS = (
    "id, request_id, function, payload, enqueued_at, attempts, invokes, system_retries, leases, "
    "last_status, last_error, last_response"
)
# Lease up to LIMIT due events, oldest first; {state}/{due}: queued by run_at, or leased
# by lease_until (expired leases, taken over).
_TAKE = (
    "UPDATE async_events SET state = 'leased', lease_owner = ?, lease_until = ?, "
    "leases = leases + 1 WHERE id IN (SELECT id FROM async_events WHERE function = ? "
    "AND state = '{state}' AND {due} <= ? ORDER BY {due} LIMIT ?) RETURNING "
    + _COLUMNS
)


@attrs.frozen
class QueuedEvent:
    """One taken (leased) event, as a poller sees it."""

    id: int
    request_id: str
    function: str
    payload: bytes
    enqueued_at: float
    attempts: int  # invocations that ended in a function error (use retry attempts)
    invokes: int  # invocations that reached the function (approximateInvokeCount)
    system_retries: int  # throttles and system errors so far (drive the backoff)
    lease: int  # the lease token this poller holds
    last_status: int | None = None
    last_error: str | None = None
    last_response: bytes | None = None


@attrs.frozen
class Outcome:
    """What happened to one attempt, to write back in one transaction.

    ``state`` is ``queued`` (try again at ``run_at``), ``done`` or ``failed``. The
    destination side effects go in the same transaction: ``sink_records`` as
    ``(sink, record)`` and ``events`` (records for function destinations) as
    ``(request_id, function, payload)``.
    """

    state: str
    run_at: float | None = None
    attempts: int = 0
    invokes: int = 0
    system_retries: int = 0
    status: int | None = None
    function_error: str | None = None
    response: bytes | None = None
    condition: str | None = None
    record: str | None = None
    sink_records: Sequence[tuple[str, str]] = ()
    events: Sequence[tuple[str, str, bytes]] = ()


class EventQueue:
    """The durable queue behind ``invoke(..., "Event")``; all its SQL is here."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def setup(self) -> None:
        await self.db.ensure_schema("async_queue", SCHEMA)

    async def enqueue(self, request_id: str, function: str, payload: bytes, now: float) -> None:
        """Store one event; returns once it is committed (sharing the commit with every
        concurrent enqueue)."""
        await self.db.group_write([(_ENQUEUE, (request_id, function, payload, now, now))])

    async def take(
        self, function: str, now: float, limit: int, owner: str, lease_until: float
    ) -> list[QueuedEvent]:
        """Lease up to ``limit`` due events of ``function``: queued ones whose ``run_at``
        has come, and leased ones whose lease expired (their holder died)."""
        if limit <= 0:
            return []
        # A read first: an idle poller must not take the write lock (other hosts and
        # areas share the file), only one that has something to take.
        due = await self.db.fetchone(
            "SELECT EXISTS (SELECT 1 FROM async_events WHERE function = ? AND state = 'queued' "
            "AND run_at <= ?), EXISTS (SELECT 1 FROM async_events WHERE function = ? "
            "AND state = 'leased' AND lease_until <= ?)",
            (function, now, function, now),
        )
        queued, expired = (bool(due[0]), bool(due[1])) if due is not None else (False, False)
        # Each take is one autocommit statement (one thread hop under the write lock that
        # enqueues wait on) whose inner SELECT walks the (function, state, run_at) index in
        # order: O(limit), whatever the queue's length. Not durable: a lease lost to a
        # power cut only means the event is taken again.
        rows = []
        if queued:
            rows += await self.db.write_returning(
                _TAKE.format(state="queued", due="run_at"),
                (owner, lease_until, function, now, limit),
                durable=False,
            )
        if expired and len(rows) < limit:  # their holder died: take them over
            rows += await self.db.write_returning(
                _TAKE.format(state="leased", due="lease_until"),
                (owner, lease_until, function, now, limit - len(rows)),
                durable=False,
            )
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

    async def settle(self, event: QueuedEvent, outcome: Outcome, now: float) -> None:
        """Write an attempt's outcome and its destination records atomically.

        The row changes only while ``event.lease`` is still the current lease.
        """
        statements: list[Statement] = [
            (
                "UPDATE async_events SET state = ?, run_at = COALESCE(?, run_at), attempts = ?, "
                "invokes = ?, system_retries = ?, last_status = COALESCE(?, last_status), "
                "last_error = ?, last_response = COALESCE(?, last_response), condition = ?, "
                "record = ?, finished_at = ?, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND leases = ? AND state = 'leased'",
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
        statements += [(_SINK, (sink, record, now)) for sink, record in outcome.sink_records]
        statements += [(_ENQUEUE, (rid, fn, body, now, now)) for rid, fn, body in outcome.events]
        # Durable only when it hands events on (a function destination's new event, a
        # retry): a lost "done" or sink record is redone by running the event again.
        await self.db.group_write(statements, durable=bool(outcome.events))

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

    async def event(self, request_id: str) -> dict[str, Any] | None:
        """The latest row for ``request_id``, for users and tests (``Runtime.async_event``)."""
        row = await self.db.fetchone(
            "SELECT request_id, function, state, enqueued_at, run_at, attempts, invokes, "
            "system_retries, leases, condition, record, last_error FROM async_events "
            "WHERE request_id = ? ORDER BY id DESC LIMIT 1",
            (request_id,),
        )
        if row is None:
            return None
        event = dict(row)
        event["record"] = json.loads(event["record"]) if event["record"] else None
        return event

    async def counts(self, function: str | None = None) -> dict[str, int]:
        """Events by state (``queued``, ``leased``, ``done``, ``failed``)."""
        where, params = ("WHERE function = ?", (function,)) if function else ("", ())
        rows = await self.db.fetchall(
            f"SELECT state, COUNT(*) FROM async_events {where} GROUP BY state", params
        )
        return {str(state): int(n) for state, n in rows}

    async def append_sink(self, sink: str, record: str, now: float) -> None:
        await self.db.group_write([(_SINK, (sink, record, now))])

    async def sink_records(self, sink: str) -> list[Any]:
        rows = await self.db.fetchall(
            "SELECT record FROM destination_records WHERE sink = ? ORDER BY id", (sink,)
        )
        return [json.loads(row[0]) for row in rows]
