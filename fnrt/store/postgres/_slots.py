"""The cross-host counting service: concurrency slots leased in blocks, with an expiry.

Each host holds, per function, a row ``(host, function, count, expires_judge)``: slots the
cluster granted it until the expiry. A host asks for a block (:meth:`PgSlots.try_acquire`),
runs invocations against it locally, gives back what it does not use
(:meth:`PgSlots.release`) and extends its rows while it lives (:meth:`PgSlots.renew`). A
host that dies stops renewing, and its slots count for nothing once its rows expire.
A host refused slots leaves a marker (:meth:`PgSlots.want`) that tells the hosts holding
them to give freed slots back rather than reuse them (:meth:`PgSlots.wanted`).

Lambda's rules hold cluster-wide: a function with reserved concurrency ``R`` holds at most
``R`` slots over all hosts, and the reservations are carved out of the global limit;
functions without one share ``limit - sum(reserved)``. Reservations are rows too
(``fnrt_slot_functions``, written by every acquire), so every host carves out the same.

An acquire is one round trip: ``fnrt_slot_acquire`` locks the one limit row
(``SELECT ... FOR UPDATE``), reads the clock, then sums the unexpired leases in fresh
snapshots, so two hosts can never both be granted the last slot. Renewals take the same
lock, so a lease an acquire judged expired is never revived. If the database cannot be reached the call
raises :class:`fnrt.errors.StoreUnavailable`: nothing is granted, never an over-admit.

Expiry is judged by the database's clock when the store runs with ``db_clock=True``;
otherwise by the ``now`` each call passes (a test's :class:`fnrt.FakeClock`), or, when a
call passes none, this host's ``time.time()``.
"""

from __future__ import annotations

import time

from ._pool import Connections, guarded
from ._schema import judge

#: The suffix of a host's "refused lately" marker rows (see PgSlots.want).
WANTS = "#wants"


class PgSlots:
    def __init__(self, pg: Connections, *, db_clock: bool = True) -> None:
        self.pg = pg
        self.db_clock = db_clock

    def _judge(self, now: float | None) -> float | None:
        if self.db_clock:
            return None
        return time.time() if now is None else now

    @guarded
    async def try_acquire(
        self,
        host: str,
        function: str,
        n: int,
        limit: int,
        reserved: int | None,
        ttl: float,
        *,
        now: float | None = None,
    ) -> int:
        """Lease up to ``n`` slots for ``function`` on ``host`` until ``ttl`` seconds from
        now; returns how many were granted (0 when the cluster is at its limit: throttle).
        ``limit`` is the global concurrency limit, ``reserved`` the function's reserved
        concurrency (``None``: it shares the unreserved pool). The host's unexpired slots
        of ``function`` are kept and their expiry moves with this lease."""
        if n <= 0:
            return 0
        granted = await self.pg.durable.fetchval(
            "SELECT fnrt_slot_acquire($1, $2, $3, $4, $5, $6, $7)",
            host,
            function,
            n,
            limit,
            reserved,
            ttl,
            self._judge(now),
        )
        return int(granted)

    @guarded
    async def release(self, host: str, function: str, n: int) -> None:
        """Give ``n`` of ``host``'s slots of ``function`` back (never below zero)."""
        if n <= 0:
            return
        # Not waiting for the disk: a release lost to a server crash only keeps slots
        # unused until the lease expires (under-admit, never over-admit). Grants are durable.
        await self.pg.relaxed.execute(
            "UPDATE fnrt_slot_leases SET count = GREATEST(count - $3, 0) WHERE host = $1 AND function = $2",
            host,
            function,
            n,
        )

    @guarded
    async def renew(self, host: str, ttl: float, *, now: float | None = None) -> dict[str, int]:
        """Extend every unexpired lease of ``host`` to ``ttl`` seconds from now; returns
        ``{function: slots still held}``. Leases that had expired are gone (the cluster
        gave their slots away): a function missing here holds nothing. Also drops every
        host's expired rows."""
        rows = await self.pg.durable.fetch(
            "SELECT function, count FROM fnrt_slot_renew($1, $2, $3)", host, ttl, self._judge(now)
        )
        return {r[0]: int(r[1]) for r in rows}

    @guarded
    async def want(self, host: str, function: str, seconds: float, *, now: float | None = None) -> None:
        """Say that ``host`` was refused slots of ``function``: for ``seconds``, hosts that
        hold its slots give freed ones back instead of reusing them (:meth:`wanted`), so
        one busy host cannot keep the whole pool from the others. A marker row of no
        slots (``host#wants``, count 0): it counts for nothing and expires by itself."""
        await self.pg.relaxed.execute(
            "INSERT INTO fnrt_slot_leases AS l (host, function, count, expires_judge) "
            f"VALUES ($1 || '{WANTS}', $2, 0, {judge('$4')} + $3) "
            "ON CONFLICT (host, function) DO UPDATE SET expires_judge = excluded.expires_judge",
            host,
            function,
            seconds,
            self._judge(now),
        )

    @guarded
    async def wanted(self, host: str, functions: list[str], *, now: float | None = None) -> set[str]:
        """Which of ``functions`` another host was refused slots of lately (:meth:`want`)."""
        if not functions:
            return set()
        rows = await self.pg.relaxed.fetch(
            "SELECT DISTINCT function FROM fnrt_slot_leases WHERE count = 0 "
            f"AND host LIKE '%{WANTS}' AND host <> $1 || '{WANTS}' AND function = ANY($2::text[]) "
            f"AND expires_judge > {judge('$3')}",
            host,
            functions,
            self._judge(now),
        )
        return {r[0] for r in rows}

    @guarded
    async def reserve(
        self, reservations: dict[str, int], ttl: float, *, now: float | None = None
    ) -> dict[str, int]:
        """Record these functions' reserved concurrency as said by a live host now, so every
        host's acquires carve them out before the function is first called; a reservation no
        host has repeated for ``max(60, 6 * ttl)`` seconds stops counting. Returns every
        reservation that counts."""
        names = list(reservations)
        rows = await self.pg.durable.fetch(
            "SELECT reserved_by, reservation FROM fnrt_slot_reserve($1::text[], $2::integer[], $3, $4)",
            names,
            [reservations[n] for n in names],
            ttl,
            self._judge(now),
        )
        return {r[0]: int(r[1]) for r in rows}

    @guarded
    async def forget(self, function: str) -> None:
        """Drop ``function``'s reservation (it was removed everywhere): its reserved
        concurrency goes back to the shared pool."""
        await self.pg.durable.execute("DELETE FROM fnrt_slot_functions WHERE function = $1", function)

    @guarded
    async def in_use(self, *, now: float | None = None) -> dict[str, dict[str, int]]:
        """Unexpired slots by function, then host: ``{function: {host: count}}`` (for
        ``fnrt stats``)."""
        rows = await self.pg.relaxed.fetch(
            f"SELECT function, host, count FROM fnrt_slot_leases WHERE expires_judge > {judge('$1')} "
            "AND count > 0 ORDER BY function, host",
            self._judge(now),
        )
        out: dict[str, dict[str, int]] = {}
        for function, host, count in rows:
            out.setdefault(function, {})[host] = int(count)
        return out
