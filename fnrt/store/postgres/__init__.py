"""PostgreSQL backend for fnrt's stores: many hosts, one database (DESIGN.md section 9).

``store = await open_postgres("postgresql://fnrt@db/fnrt")`` gives ``store.queue`` (the
async event queue), ``store.streams`` (shards, records, mappings, leases, checkpoints),
``store.slots`` (the cross-host counting service), wake-ups (``add_wake_listener``) and
``close()``. Their methods have the SQLite stores' names, signatures and results, and each
is atomic against every other host sharing the database. Needs the ``fnrt[postgres]``
extra (asyncpg: the fastest asyncio PostgreSQL driver, binary protocol, prepared
statements cached per connection, LISTEN/NOTIFY built in).

Which clock judges a lease
--------------------------
fnrt's sources pass ``now`` floats from the runtime's injectable clock. Stored times
(``enqueued_at``, ``run_at``, a record's arrival, a lease's ``expires_at`` as reads report
it) are always those caller values. Whether a lease has *expired*, the one judgment that
decides between hosts, is made by the database's clock when ``db_clock=True`` (the
default, for real deployments): the lease time (``lease_until - now`` or ``ttl``) is added
to ``now()`` on the server and compared with ``now()`` later, so a host whose clock is
skewed can neither steal a live lease nor keep a dead one. With ``db_clock=False`` the
caller's ``now`` judges too, so tests drive expiry with a :class:`fnrt.FakeClock` and no
sleeps. Due times (``run_at <= now``) always use the caller's clock: a retry delay is the
scheduling host's promise, not a lease.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import InvalidConfig
from ._pool import Connections, WakeListener, redact
from ._queue import PgEventQueue
from ._slots import PgSlots
from ._streams import PgStreamStore

__all__ = [
    "PgEventQueue",
    "PgSlots",
    "PgStreamStore",
    "PostgresStore",
    "WakeListener",
    "open_postgres",
    "open_store",
]


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")


def _split_schema(url: str) -> tuple[str, str | None]:
    """``url`` without its ``fnrt_schema`` query parameter, and that parameter."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL", a port that is not a number, ...
        raise InvalidConfig(f"PostgreSQL store URL does not parse: {exc}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "fnrt_schema"), None)
    if schema is None:
        return url, None
    rest = urlencode([(k, v) for k, v in query if k != "fnrt_schema"], safe="/")
    return urlunsplit(parts._replace(query=rest)), schema


class PostgresStore:
    """One PostgreSQL database as fnrt's store (:class:`fnrt.store.Store`): ``queue``,
    ``streams``, ``slots``. Open it with :func:`open_postgres` (or ``await
    PostgresStore.open(url, ...)``, or ``fnrt.store.open_store(url)``)."""

    backend = "postgres"

    @classmethod
    async def open(cls, url: str, **options: Any) -> PostgresStore:
        """:func:`open_postgres` (the same options)."""
        return await open_postgres(url, **options)

    def __init__(self, pg: Connections, *, db_clock: bool) -> None:
        self.pg = pg
        self.url = pg.name  # without the password
        self.schema = pg.schema
        self.db_clock = db_clock
        self.queue = PgEventQueue(pg, db_clock=db_clock)
        self.streams = PgStreamStore(pg, db_clock=db_clock)
        self.slots = PgSlots(pg, db_clock=db_clock)

    @property
    def location(self) -> str:
        """The URL without its password (and the schema, if one was given)."""
        return self.pg.name

    @property
    def closed(self) -> bool:
        return self.pg.closed

    def stats(self) -> dict[str, Any]:
        """``backend``, ``location``, ``commits`` (statements this instance ran: each is
        its own transaction), the pools' sizes and whether ``db_clock`` judges leases."""
        return {
            "backend": self.backend,
            "location": self.location,
            "commits": self.pg.commits,
            "db_clock": self.db_clock,
            "connections": {
                "durable": self.pg.durable.get_size(),
                "relaxed": self.pg.relaxed.get_size(),
            },
        }

    async def add_wake_listener(self, callback: WakeListener) -> None:
        """Call ``callback(kind, name)`` (``"event"``/function or ``"stream"``/stream name)
        when any host enqueues or puts; ``("*", "")`` after the listening connection was
        re-established (wake-ups may have been missed). Returns once listening; raises
        :class:`fnrt.errors.StoreUnavailable` if the server cannot be reached."""
        await self.pg.add_wake_listener(callback)

    def remove_wake_listener(self, callback: WakeListener) -> None:
        self.pg.remove_wake_listener(callback)

    async def close(self) -> None:
        """Finish the enqueues in flight, stop listening, close the pools."""
        try:
            await self.queue.aclose()
        finally:
            await self.pg.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<PostgresStore {redact(self.url)}>"


async def open_postgres(
    url: str,
    *,
    db_clock: bool = True,
    max_connections: int = 8,
    idle_in_transaction_timeout: float = 30.0,
    command_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    schema: str | None = None,
) -> PostgresStore:
    """Connect to ``url`` (``postgresql://user:password@host:port/db``, or a unix socket:
    ``postgresql://user@/db?host=/run/postgresql``), create or check fnrt's schema, and
    return the store. ``max_connections`` bounds each of the two pools (durable and
    relaxed commits). ``schema`` (or the URL's ``fnrt_schema=`` query parameter) puts
    fnrt's tables in that PostgreSQL schema, created if missing, so independent
    deployments can share a database. Raises :class:`fnrt.errors.StoreUnavailable` when
    the server cannot be reached or its schema is newer than this fnrt, and
    :class:`fnrt.errors.InvalidConfig` for a bad schema name."""
    url, in_url = _split_schema(url)
    schema = schema or in_url
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise InvalidConfig(
            f"schema must be 1-40 lowercase letters, digits and underscores, not starting with "
            f"a digit; got {schema!r}"
        )
    pg = await Connections.open(
        url,
        schema=schema,
        max_size=max_connections,
        idle_in_transaction_timeout=idle_in_transaction_timeout,
        command_timeout=command_timeout,
        connect_timeout=connect_timeout,
    )
    return PostgresStore(pg, db_clock=db_clock)


async def open_store(url: str, **options: Any) -> PostgresStore:
    """What :func:`fnrt.store.open_store` calls for a ``postgresql://`` URL:
    :func:`open_postgres` with the same options."""
    return await open_postgres(url, **options)
