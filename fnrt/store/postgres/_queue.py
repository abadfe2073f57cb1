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
Concurrent settles share one ``UPDATE ... FROM unnest(...)`` the same way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import asyncpg
import attrs

from ...errors import StoreUnavailable
from .._queue import Outcome, QueuedEvent
from ._pool import RETRIES, Connections, connection_lost, guarded
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

# Events handed straight to an attempt: stored leased to $6 (token 1) until $5, judged
# from $7 (NULL: the database's clock) plus the same time to live. The ids come back in
# the order of the arrays (taken from the sequence first, in a CTE evaluated once).
_ENQUEUE_LEASED = (
    "WITH v AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('fnrt_async_events', 'id')) AS id, "
    "r, f, p, t, u, o FROM unnest($1::text[], $2::text[], $3::bytea[], $4::float8[], $5::float8[]) "
    "WITH ORDINALITY AS x (r, f, p, t, u, o)), "
    "ins AS (INSERT INTO fnrt_async_events (id, request_id, function, payload, enqueued_at, run_at, "
    "state, lease_owner, lease_until, lease_judge, leases) OVERRIDING SYSTEM VALUE "
    f"SELECT id, r, f, p, t, t, 'leased', $6, u, {judge('$7')} + (u - t), 1 FROM v) "
    "SELECT id FROM v ORDER BY o"
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

# Many settles in one statement: each row changes only while its lease token is current,
# and its sink records and follow-up events are written only if its row changed.
_SETTLE = (
    "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::float8[], $5::int[], "
    "$6::int[], $7::int[], $8::int[], $9::text[], $10::bytea[], $11::text[], $12::text[], $13::float8[]) "
    "AS v (id, lease, state, run_at, attempts, invokes, system_retries, status, error, response, "
    "condition, record, finished_at)), "
    "u AS (UPDATE fnrt_async_events e SET state = v.state, run_at = COALESCE(v.run_at, e.run_at), "
    "attempts = v.attempts, invokes = v.invokes, system_retries = v.system_retries, "
    "last_status = COALESCE(v.status, e.last_status), last_error = v.error, "
    "last_response = COALESCE(v.response, e.last_response), condition = v.condition, record = v.record, "
    "finished_at = v.finished_at, lease_owner = NULL, lease_until = NULL, lease_judge = NULL "
    "FROM v WHERE e.id = v.id AND e.leases = v.lease AND e.state = 'leased' RETURNING e.id, v.lease), "
    "s AS (INSERT INTO fnrt_destination_records (sink, record, created_at) "
    "SELECT t.k, t.r, t.c FROM unnest($14::bigint[], $15::text[], $16::text[], $17::float8[], $23::int[]) "
    "WITH ORDINALITY AS t (eid, k, r, c, lease, o) WHERE (t.eid, t.lease) IN (SELECT id, lease FROM u) "
    "ORDER BY t.o), "
    "n AS (INSERT INTO fnrt_async_events (request_id, function, payload, enqueued_at, run_at) "
    "SELECT t.r, t.f, t.p, t.c, t.c FROM unnest($18::bigint[], $19::text[], $20::text[], $21::bytea[], "
    "$22::float8[], $24::int[]) WITH ORDINALITY AS t (eid, r, f, p, c, lease, o) "
    "WHERE (t.eid, t.lease) IN (SELECT id, lease FROM u) "
    "ORDER BY t.o RETURNING function) "
    "SELECT count(fnrt_wake('event:' || d.function)) FROM (SELECT DISTINCT function FROM n) d"
)

_RELEASE = (
    "WITH r AS (UPDATE fnrt_async_events e SET state = 'queued', lease_owner = NULL, lease_until = NULL, "
    "lease_judge = NULL FROM unnest($1::bigint[], $2::int[]) AS t (id, lease) "
    "WHERE e.id = t.id AND e.leases = t.lease AND e.state = 'leased' RETURNING e.function) "
    "SELECT fnrt_wake('event:' || d.function) FROM (SELECT DISTINCT function FROM r) d"
)


_EVENT_COLUMNS = (
    "request_id, function, state, enqueued_at, run_at, attempts, invokes, "
    "system_retries, leases, condition, record, last_error"
)


def _shaped(row: asyncpg.Record) -> dict[str, Any]:
    """A row as :meth:`QueueStore.event` shapes it."""
    out = dict(row)
    out["record"] = json.loads(out["record"]) if out["record"] else None
    return out


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


Item = TypeVar("Item")


class GroupWriter(Generic[Item]):
    """Concurrent callers share one statement (and one commit): ``await submit(item)``
    returns once ``write(batch)`` committed a batch holding ``item``. Up to ``parallel``
    batches are in flight at once, so a lone caller never waits for a timer and a burst
    becomes a few large statements. If a batch fails for a reason other than the server,
    each of its items is written alone, so one bad item fails only its own caller.

    ``write`` may return one result per item; ``after(item, result)`` (when given) is
    called for every item as its batch ends, before its caller resumes and whether or
    not it still waits, with ``None`` for an item whose write failed."""

    def __init__(
        self,
        pg: Connections,
        what: str,
        write: Callable[[Sequence[Item]], Awaitable[Sequence[Any] | None]],
        *,
        parallel: int = 4,
        max_batch: int = 1000,
        after: Callable[[Item, Any], None] | None = None,
    ) -> None:
        self.pg = pg
        self.what = what
        self._write = write
        self._after = after
        self._parallel = max(1, parallel)
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[None]]] = []
        self._flushers = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> None:
        await self.join(item)

    def join(self, item: Item) -> asyncio.Future[None]:
        """Join the next batch now (raises at once when the store is closed): the future
        of ``item``'s write."""
        self.pg.check_open(self.what)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flushers < self._parallel:
            self._flushers += 1
            task = asyncio.ensure_future(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def aclose(self) -> None:
        """Wait for the batches callers already wait for (their failure is theirs)."""
        if self._tasks:
            await asyncio.gather(*(asyncio.shield(t) for t in list(self._tasks)), return_exceptions=True)

    async def _write_mapped(self, items: Sequence[Item]) -> Sequence[Any]:
        for attempt in range(RETRIES + 1):
            try:
                results = await self._write(items)
                self.pg.commits += 1
                return [None] * len(items) if results is None else results
            except asyncpg.exceptions.TransactionRollbackError as exc:  # a deadlock: redo
                if attempt == RETRIES:
                    raise self.pg.unavailable(self.what, exc) from exc
                await asyncio.sleep(0.005 * 2**attempt)
            except Exception as exc:
                if connection_lost(exc):
                    raise self.pg.unavailable(self.what, exc) from exc
                raise
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _flush(self) -> None:
        batch: list[tuple[Item, asyncio.Future[None]]] = []
        try:
            await asyncio.sleep(0)  # let callers of this same loop turn join the batch
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                results: list[Any] = [None] * len(batch)
                try:
                    results = list(await self._write_mapped([item for item, _ in batch]))
                except StoreUnavailable as exc:
                    outcomes: list[BaseException | None] = [exc] * len(batch)
                except Exception:
                    outcomes = []
                    for i, (item, _) in enumerate(batch):
                        try:
                            [results[i]] = await self._write_mapped([item])
                        except Exception as exc:
                            outcomes.append(exc)
                        else:
                            outcomes.append(None)
                else:
                    outcomes = [None] * len(batch)
                done, batch = batch, []
                for (item, future), outcome, result in zip(done, outcomes, results, strict=True):
                    if self._after is not None:
                        self._after(item, result if outcome is None else None)
                    if future.done():
                        continue
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
        except BaseException as exc:  # cancelled: nobody waits forever
            error = self.pg.unavailable(self.what, exc)
            for item, future in batch + self._pending:
                if self._after is not None:
                    self._after(item, None)
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()
            raise
        finally:
            self._flushers -= 1


_Settle = tuple[QueuedEvent, Outcome, float]
#: An event handed straight to an attempt (its id 0 until stored), its owner, its lease's
#: end, and what to call once the write ended.
_Handoff = tuple[QueuedEvent, str, float, "Callable[[QueuedEvent | None], None]"]


def _started(item: _Handoff, rowid: int | None) -> None:
    event, _, _, started = item
    started(None if rowid is None else attrs.evolve(event, id=rowid))


class PgEventQueue:
    """The durable queue behind ``invoke(..., "Event")`` on PostgreSQL."""

    def __init__(self, pg: Connections, *, db_clock: bool = True, max_parallel_commits: int = 4) -> None:
        self.pg = pg
        self.db_clock = db_clock
        self._enqueues: GroupWriter[tuple[str, str, bytes, float]] = GroupWriter(
            pg, "enqueue", self._insert, parallel=max_parallel_commits
        )
        self._settles: GroupWriter[_Settle] = GroupWriter(
            pg, "settle", self._settle_batch, parallel=max_parallel_commits
        )
        self._handoffs: GroupWriter[_Handoff] = GroupWriter(
            pg, "enqueue", self._insert_leased, parallel=max_parallel_commits, after=_started
        )

    def _judge(self, now: float) -> float | None:
        return None if self.db_clock else now

    async def setup(self) -> None:
        """The schema is created when the store opens; kept for the SQLite class's shape."""

    # -- enqueue: group commit -----------------------------------------------------------

    async def enqueue(self, request_id: str, function: str, payload: bytes, now: float) -> None:
        """Store one event; returns once it is committed durably (sharing the commit with
        every concurrent enqueue of this host). Wakes listeners with
        ``event:<function>``."""
        await self._enqueues.submit((request_id, function, bytes(payload), now))

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
        """Store one event already leased to ``owner`` (no wake-up: its holder runs it);
        ``started`` gets it once committed, ``None`` if the write failed."""
        event = QueuedEvent(0, request_id, function, bytes(payload), now, 0, 0, 0, 1)
        return self._handoffs.join((event, owner, lease_until, started))

    async def aclose(self) -> None:
        """Commit what enqueue and settle callers already wait for."""
        await self._enqueues.aclose()
        await self._handoffs.aclose()
        await self._settles.aclose()

    async def _insert(self, rows: Sequence[tuple[str, str, bytes, float]]) -> None:
        request_ids, functions, payloads, times = (list(c) for c in zip(*rows, strict=True))
        await self.pg.durable.execute(_ENQUEUE, request_ids, functions, payloads, times)

    async def _insert_leased(self, rows: Sequence[_Handoff]) -> list[int]:
        # One owner per host: every handoff of a batch names the same.
        records = await self.pg.durable.fetch(
            _ENQUEUE_LEASED,
            [e.request_id for e, _, _, _ in rows],
            [e.function for e, _, _, _ in rows],
            [e.payload for e, _, _, _ in rows],
            [e.enqueued_at for e, _, _, _ in rows],
            [until for _, _, until, _ in rows],
            rows[0][1],
            self._judge(rows[0][0].enqueued_at),
        )
        return [record["id"] for record in records]

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

    async def settle(self, event: QueuedEvent, outcome: Outcome, now: float) -> None:
        """Write an attempt's outcome, its destination records and follow-up events
        atomically, only while ``event.lease`` is still the current lease (a poller that
        lost its lease writes nothing). Concurrent settles share one statement."""
        await self._settles.submit((event, outcome, now))

    async def _settle_batch(self, batch: Sequence[_Settle]) -> None:
        # Durable only when it hands events on (a function destination's new event): a
        # lost "done" or sink record is redone by running the event again.
        pool = self.pg.durable if any(o.events for _, o, _ in batch) else self.pg.relaxed
        sinks = [(e.id, sink, record, now, e.lease) for e, o, now in batch for sink, record in o.sink_records]
        events = [
            (e.id, rid, fn, bytes(body), now, e.lease) for e, o, now in batch for rid, fn, body in o.events
        ]
        await pool.execute(
            _SETTLE,
            [e.id for e, _, _ in batch],
            [e.lease for e, _, _ in batch],
            [o.state for _, o, _ in batch],
            [o.run_at for _, o, _ in batch],
            [o.attempts for _, o, _ in batch],
            [o.invokes for _, o, _ in batch],
            [o.system_retries for _, o, _ in batch],
            [o.status for _, o, _ in batch],
            [o.function_error for _, o, _ in batch],
            [None if o.response is None else bytes(o.response) for _, o, _ in batch],
            [o.condition for _, o, _ in batch],
            [o.record for _, o, _ in batch],
            [None if o.state == "queued" else now for _, o, now in batch],
            [s[0] for s in sinks],
            [s[1] for s in sinks],
            [s[2] for s in sinks],
            [s[3] for s in sinks],
            [e[0] for e in events],
            [e[1] for e in events],
            [e[2] for e in events],
            [e[3] for e in events],
            [e[4] for e in events],
            [s[4] for s in sinks],
            [e[5] for e in events],
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
    async def discard(self, function: str, condition: str, now: float) -> list[str]:
        """Every queued event of a deleted function, ``failed`` with ``condition``."""
        rows = await self.pg.durable.fetch(
            "UPDATE fnrt_async_events SET state = 'failed', condition = $2, finished_at = $3 "
            "WHERE function = $1 AND state = 'queued' RETURNING request_id",
            function,
            condition,
            now,
        )
        return [str(row[0]) for row in rows]

    @guarded
    async def event(self, request_id: str) -> dict[str, Any] | None:
        """The latest row for ``request_id`` (``Runtime.async_event``)."""
        row = await self.pg.relaxed.fetchrow(
            f"SELECT {_EVENT_COLUMNS} FROM fnrt_async_events WHERE request_id = $1 ORDER BY id DESC LIMIT 1",
            request_id,
        )
        return None if row is None else _shaped(row)

    @guarded
    async def events(
        self, function: str | None = None, *, state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Events shaped as :meth:`event`, oldest first, optionally filtered."""
        rows = await self.pg.relaxed.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM fnrt_async_events WHERE ($1::text IS NULL OR function = $1) "
            "AND ($2::text IS NULL OR state = $2) ORDER BY id LIMIT $3",
            function,
            state,
            limit,
        )
        return [_shaped(r) for r in rows]

    @guarded
    async def counts(
        self, function: str | None = None, *, states: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Events by state (``queued``, ``leased``, ``done``, ``failed``), cluster-wide."""
        rows = await self.pg.relaxed.fetch(
            "SELECT state, count(*) FROM fnrt_async_events WHERE ($1::text IS NULL OR function = $1) "
            "AND ($2::text[] IS NULL OR state = ANY($2::text[])) GROUP BY state",
            function,
            None if states is None else list(states),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    @guarded
    async def purge_finished(self, before: float, *, limit: int = 10_000) -> int:
        """Delete up to ``limit`` ``done`` and ``failed`` events that finished before
        ``before``, oldest first (by the index on ``finished_at``); returns how many."""
        if limit <= 0:
            return 0
        deleted = await self.pg.relaxed.fetchval(
            "WITH d AS (DELETE FROM fnrt_async_events WHERE id IN (SELECT id FROM fnrt_async_events "
            "WHERE state IN ('done', 'failed') AND finished_at < $1 ORDER BY finished_at LIMIT $2 "
            "FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM d",
            before,
            limit,
        )
        return int(deleted)

    @guarded
    async def append_sink(self, sink: str, record: str, now: float) -> None:
        await self.pg.durable.execute(
            "INSERT INTO fnrt_destination_records (sink, record, created_at) VALUES ($1, $2, $3)",
            sink,
            record,
            now,
        )

    @guarded
    async def sink_records(self, sink: str, *, newest: int | None = None) -> list[Any]:
        rows = await self.pg.relaxed.fetch(
            "SELECT record FROM (SELECT id, record FROM fnrt_destination_records WHERE sink = $1 "
            "ORDER BY id DESC LIMIT $2) AS newest ORDER BY id",
            sink,
            None if newest is None else max(newest, 0),
        )
        return [json.loads(r[0]) for r in rows]

    @guarded
    async def sink_count(self, sink: str) -> int:
        value = await self.pg.relaxed.fetchval(
            "SELECT count(*) FROM fnrt_destination_records WHERE sink = $1", sink
        )
        return int(value or 0)
