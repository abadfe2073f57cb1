"""The async invoke queue on PostgreSQL: :class:`fnrt.store._queue.EventQueue`'s methods,
atomic against every other host sharing the database.

The rows move through the same states (``queued -> leased -> done | failed``, back to
``queued`` for a retry or an expired lease). A take is one statement that locks due rows
with ``FOR UPDATE SKIP LOCKED``, so hosts taking at once get disjoint batches and never
wait on each other; the lease token (``leases``, bumped at every take) fences a settle:
a poller that lost its lease writes nothing, its destination records and follow-up
events included. Lease expiry is judged by ``lease_judge`` (see ``_schema``).

Concurrent enqueues share a commit: callers waiting at the same time go in one
``INSERT ... SELECT FROM unnest(...)``, which also notifies once per function (``fnrt_wake``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from .._queue import Outcome, QueuedEvent
from ._pool import UNAVAILABLE, Connections, guarded
from ._schema import judge

_COLUMNS = (
    "id, request_id, function, payload, enqueued_at, attempts, invokes, system_retries, leases, "
    "last_status, last_error, last_response"
)

_ENQUEUE = (
    "WITH ins AS (INSERT INTO fnrt_async_events (request_id, function, payload, enqueued_at, run_at) "
    "SELECT r, f, p, t, t FROM unnest($1::text[], $2::text[], $3::bytea[], $4::float8[]) AS u (r, f, p, t) "
    "RETURNING function) "
    "SELECT fnrt_wake('event:' || d.function) FROM (SELECT DISTINCT function FROM ins) d"
)

# $1 function, $2 now (for run_at), $3 limit, $4 owner, $5 lease_until, $6 ttl,
# $7 judging now (NULL: the database's clock).
_TAKE = (
    "WITH q AS (SELECT id FROM fnrt_async_events WHERE function = $1 AND state = 'queued' "
    "AND run_at <= $2 ORDER BY run_at LIMIT $3 FOR UPDATE SKIP LOCKED), "
    "x AS (SELECT id FROM fnrt_async_events WHERE function = $1 AND state = 'leased' "
    f"AND lease_judge <= {judge('$7')} ORDER BY lease_judge LIMIT $3 FOR UPDATE SKIP LOCKED), "
    "ids AS (SELECT id FROM (SELECT id, 0 AS k FROM q UNION ALL SELECT id, 1 FROM x) a "
    "ORDER BY k LIMIT $3) "
    "UPDATE fnrt_async_events e SET state = 'leased', lease_owner = $4, lease_until = $5, "
    f"lease_judge = {judge('$7')} + $6, leases = e.leases + 1 FROM ids WHERE e.id = ids.id "
    "RETURNING " + ", ".join(f"e.{c.strip()}" for c in _COLUMNS.split(","))
)

_SETTLE = (
    "WITH u AS (UPDATE fnrt_async_events SET state = $3, run_at = COALESCE($4, run_at), attempts = $5, "
    "invokes = $6, system_retries = $7, last_status = COALESCE($8, last_status), last_error = $9, "
    "last_response = COALESCE($10, last_response), condition = $11, record = $12, finished_at = $13, "
    "lease_owner = NULL, lease_until = NULL, lease_judge = NULL "
    "WHERE id = $1 AND leases = $2 AND state = 'leased' RETURNING 1), "
    "s AS (INSERT INTO fnrt_destination_records (sink, record, created_at) "
    "SELECT k, r, $14 FROM unnest($15::text[], $16::text[]) WITH ORDINALITY AS t (k, r, o) "
    "WHERE EXISTS (SELECT 1 FROM u) ORDER BY o), "
    "e AS (INSERT INTO fnrt_async_events (request_id, function, payload, enqueued_at, run_at) "
    "SELECT r, f, p, $14, $14 FROM unnest($17::text[], $18::text[], $19::bytea[]) WITH ORDINALITY "
    "AS t (r, f, p, o) WHERE EXISTS (SELECT 1 FROM u) ORDER BY o RETURNING function) "
    "SELECT (SELECT count(*) FROM u) AS settled, "
    "(SELECT count(fnrt_wake('event:' || d.function)) FROM (SELECT DISTINCT function FROM e) d)"
)

_RELEASE = (
    "WITH r AS (UPDATE fnrt_async_events e SET state = 'queued', lease_owner = NULL, lease_until = NULL, "
    "lease_judge = NULL FROM unnest($1::bigint[], $2::int[]) AS t (id, lease) "
    "WHERE e.id = t.id AND e.leases = t.lease AND e.state = 'leased' RETURNING e.function) "
    "SELECT fnrt_wake('event:' || d.function) FROM (SELECT DISTINCT function FROM r) d"
)


def _event(row: asyncpg.Record) -> QueuedEvent:
    return QueuedEvent(
        id=row["id"],
        request_id=row["request_id"],
        function=row["function"],
        payload=bytes(row["payload"]),
        enqueued_at=row["enqueued_at"],
        attempts=row["attempts"],
        invokes=row["invokes"],
        system_retries=row["system_retries"],
        lease=row["leases"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        last_response=None if row["last_response"] is None else bytes(row["last_response"]),
    )


_Pending = tuple[tuple[str, str, bytes, float], "asyncio.Future[None]"]


class PgEventQueue:
    """The durable queue behind ``invoke(..., "Event")`` on PostgreSQL."""

    def __init__(self, pg: Connections, *, db_clock: bool = True, max_parallel_commits: int = 4) -> None:
        self.pg = pg
        self.db_clock = db_clock
        self._pending: list[_Pending] = []
        self._flushers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_flushers = max(1, max_parallel_commits)

    def _judge(self, now: float) -> float | None:
        return None if self.db_clock else now

    async def setup(self) -> None:
        """The schema is created when the store opens; kept for the SQLite class's shape."""

    # -- enqueue: group commit -----------------------------------------------------------

    async def enqueue(self, request_id: str, function: str, payload: bytes, now: float) -> None:
        """Store one event; returns once it is committed durably (sharing the commit with
        every concurrent enqueue of this host). Wakes listeners with
        ``event:<function>``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((request_id, function, bytes(payload), now), future))
        if self._flushers < self._max_flushers:
            self._flushers += 1
            task = asyncio.ensure_future(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await future

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # let callers of this same loop turn join the batch
            while self._pending:
                batch, self._pending = self._pending[:1000], self._pending[1000:]
                try:
                    await self._insert([row for row, _ in batch])
                except UNAVAILABLE as exc:
                    error = self.pg.unavailable("enqueue", exc)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                except Exception:
                    # One bad row (say, text the server rejects) fails only its caller.
                    for row, future in batch:
                        try:
                            await self._insert([row])
                        except UNAVAILABLE as exc:
                            if not future.done():
                                future.set_exception(self.pg.unavailable("enqueue", exc))
                        except Exception as exc:
                            if not future.done():
                                future.set_exception(exc)
                        else:
                            if not future.done():
                                future.set_result(None)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        except BaseException as exc:  # cancelled: nobody waits forever
            error = self.pg.unavailable("enqueue", exc)
            for _, future in self._pending:
                if not future.done():
                    future.set_exception(error)
            self._pending = []
            raise
        finally:
            self._flushers -= 1

    async def aclose(self) -> None:
        """Commit what enqueue callers already wait for (their failure is theirs)."""
        if self._tasks:
            await asyncio.gather(*(asyncio.shield(t) for t in list(self._tasks)), return_exceptions=True)

    async def _insert(self, rows: Sequence[tuple[str, str, bytes, float]]) -> None:
        request_ids, functions, payloads, times = (list(c) for c in zip(*rows, strict=True))
        await self.pg.durable.execute(_ENQUEUE, request_ids, functions, payloads, times)

    # -- take, settle, release -------------------------------------------------------------

    @guarded
    async def take(
        self, function: str, now: float, limit: int, owner: str, lease_until: float
    ) -> list[QueuedEvent]:
        """Lease up to ``limit`` due events of ``function``: queued ones whose ``run_at``
        has come (by the caller's clock), then leased ones whose lease expired (judged by
        the database's clock in db-clock mode). Rows another host is taking right now are
        skipped, never waited for and never shared."""
        if limit <= 0:
            return []
        rows = await self.pg.relaxed.fetch(
            _TAKE, function, now, limit, owner, lease_until, lease_until - now, self._judge(now)
        )
        return sorted((_event(r) for r in rows), key=lambda e: e.id)

    @guarded
    async def next_due(self, functions: Sequence[str]) -> float | None:
        """The earliest time an event of these functions becomes takeable (a lease's
        expiry as its holder reported it: a hint for the poller's sleep)."""
        if not functions:
            return None
        value = await self.pg.relaxed.fetchval(
            "SELECT min(CASE state WHEN 'queued' THEN run_at ELSE lease_until END) FROM fnrt_async_events "
            "WHERE state IN ('queued', 'leased') AND function = ANY($1::text[])",
            list(functions),
        )
        return None if value is None else float(value)

    @guarded
    async def settle(self, event: QueuedEvent, outcome: Outcome, now: float) -> None:
        """Write an attempt's outcome, its destination records and follow-up events in one
        statement, only while ``event.lease`` is still the current lease."""
        pool = self.pg.durable if outcome.events else self.pg.relaxed
        await pool.execute(
            _SETTLE,
            event.id,
            event.lease,
            outcome.state,
            outcome.run_at,
            outcome.attempts,
            outcome.invokes,
            outcome.system_retries,
            outcome.status,
            outcome.function_error,
            None if outcome.response is None else bytes(outcome.response),
            outcome.condition,
            outcome.record,
            None if outcome.state == "queued" else now,
            now,
            [sink for sink, _ in outcome.sink_records],
            [record for _, record in outcome.sink_records],
            [rid for rid, _, _ in outcome.events],
            [fn for _, fn, _ in outcome.events],
            [bytes(body) for _, _, body in outcome.events],
        )

    @guarded
    async def release(self, events: Sequence[QueuedEvent]) -> None:
        """Give leases back unfinished (graceful close): the events are due again at once,
        and other hosts are told."""
        if not events:
            return
        await self.pg.relaxed.execute(_RELEASE, [e.id for e in events], [e.lease for e in events])

    # -- reads and clean-up -----------------------------------------------------------------

    @guarded
    async def event(self, request_id: str) -> dict[str, Any] | None:
        """The latest row for ``request_id`` (``Runtime.async_event``)."""
        row = await self.pg.relaxed.fetchrow(
            "SELECT request_id, function, state, enqueued_at, run_at, attempts, invokes, "
            "system_retries, leases, condition, record, last_error FROM fnrt_async_events "
            "WHERE request_id = $1 ORDER BY id DESC LIMIT 1",
            request_id,
        )
        if row is None:
            return None
        out = dict(row)
        out["record"] = json.loads(out["record"]) if out["record"] else None
        return out

    @guarded
    async def counts(self, function: str | None = None) -> dict[str, int]:
        """Events by state (``queued``, ``leased``, ``done``, ``failed``), cluster-wide."""
        rows = await self.pg.relaxed.fetch(
            "SELECT state, count(*) FROM fnrt_async_events WHERE $1::text IS NULL OR function = $1 "
            "GROUP BY state",
            function,
        )
        return {str(r[0]): int(r[1]) for r in rows}

    @guarded
    async def purge_finished(self, before: float) -> int:
        """Delete ``done`` and ``failed`` events that finished before ``before``; returns
        how many. In batches, so no statement holds many row locks for long."""
        total = 0
        while True:
            deleted = await self.pg.relaxed.fetchval(
                "WITH d AS (DELETE FROM fnrt_async_events WHERE id IN (SELECT id FROM fnrt_async_events "
                "WHERE state IN ('done', 'failed') AND finished_at < $1 LIMIT 5000) RETURNING 1) "
                "SELECT count(*) FROM d",
                before,
            )
            total += int(deleted)
            if deleted < 5000:
                return total

    @guarded
    async def append_sink(self, sink: str, record: str, now: float) -> None:
        await self.pg.durable.execute(
            "INSERT INTO fnrt_destination_records (sink, record, created_at) VALUES ($1, $2, $3)",
            sink,
            record,
            now,
        )

    @guarded
    async def sink_records(self, sink: str) -> list[Any]:
        rows = await self.pg.relaxed.fetch(
            "SELECT record FROM fnrt_destination_records WHERE sink = $1 ORDER BY id", sink
        )
        return [json.loads(r[0]) for r in rows]
