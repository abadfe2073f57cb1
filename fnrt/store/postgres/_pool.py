"""Connections to PostgreSQL: two asyncpg pools, error mapping, schema set-up, wake-ups.

Two pools, because durability is chosen per write as in the SQLite store: ``durable``
commits wait for the WAL flush (an enqueued event, a put record); ``relaxed`` ones run
with ``synchronous_commit=off`` (leases, results, checkpoints: safe from a crash of any
fnrt host, lost only to a crash of the database server, and written in order, so a later
durable commit makes every earlier one durable too). Every connection sets
``idle_in_transaction_session_timeout`` so a stalled host cannot pin vacuum or hold locks.

Every store method goes through :func:`guarded`: an unreachable or failing server
(connection refused or lost, admin shutdown, out of connections, disk full, a timeout)
becomes :class:`fnrt.errors.StoreUnavailable`; a serialization failure or deadlock is
retried a few times first (each method is one transaction, so a retry is a clean redo).
Anything else is a programming error and propagates as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import structlog

from ...errors import FnrtError, InvalidConfig, StoreUnavailable
from . import _schema

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")

WakeListener = Callable[[str, str], None]

# Errors that mean "the database cannot be used right now".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # 08: connection refused, lost, rejected
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, cannot connect now, canceled
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.PostgresSystemError,  # 58: I/O error
    asyncpg.exceptions.InvalidTransactionStateError,  # 25: read-only (a standby), idle timeout
    asyncpg.exceptions.TransactionRollbackError,  # 40: after the retries below
    # 55P03: lock_timeout (a DBA's setting) ran out while another session held a lock on
    # a table fnrt uses: like a held SQLite lock, the store cannot be used right now.
    asyncpg.exceptions.LockNotAvailableError,
    # 28, 3D000: a connection the pool opens again is refused (the role was disabled or its
    # password rotated, pg_hba.conf changed, the database renamed): what StoreUnavailable
    # says at open, with the same hints; the runtime waits for it to be fixed.
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
)
RETRIES = 3


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be used right now: one of
    :data:`UNAVAILABLE`, or the driver's own report of a connection that broke under it
    (the server killed it with ``pg_terminate_backend``, or restarted, in mid-query:
    asyncpg may then say ``InterfaceError`` "connection is closed" / "another operation is
    in progress", or ``InternalClientError`` "cannot switch to state ..."; and a pool
    closed under a caller). ``DataError`` (an argument asyncpg cannot encode) is a
    programming error, not an outage."""
    if isinstance(exc, UNAVAILABLE) or isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, asyncpg.DataError)


# Opening errors that are the URL's: asyncpg's own, and the server's about its query options
# (an unknown setting, one that cannot be set at connection time).
_CONFIG_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ClientConfigurationError,
    ValueError,
    OverflowError,
)
_CONFIG_STATES = {"42704", "55P02", "22023"}
# What to do about the errors of opening a store that are the user's to fix (a server that
# refuses the role, a database that is not there): every one is StoreUnavailable.
_OPEN_HINTS = {
    "3D000": " (create the database, e.g. with createdb, or name one that exists)",
    "28000": " (the server refuses this role: check the user name and pg_hba.conf)",
    "28P01": " (wrong password for this role)",
}

_log = structlog.get_logger("fnrt.store.postgres")


def redact(url: str) -> str:
    """``url`` without its password, to name the store in errors and logs."""
    url = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def guarded(
    method: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """Map the database's failures to :class:`StoreUnavailable` (see the module docstring)."""

    @functools.wraps(method)
    async def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        pg: Connections = getattr(self, "pg")  # noqa: B009
        for attempt in range(RETRIES + 1):
            pg.check_open(method.__name__)
            try:
                result = await method(self, *args, **kwargs)
                pg.commits += 1
                return result
            except asyncpg.exceptions.TransactionRollbackError as exc:
                if attempt < RETRIES:
                    await asyncio.sleep(0.005 * 2**attempt)
                    continue
                raise pg.unavailable(method.__name__, exc) from exc
            except StoreUnavailable:
                raise
            except Exception as exc:
                if connection_lost(exc):
                    raise pg.unavailable(method.__name__, exc) from exc
                raise
        raise AssertionError("unreachable")

    return run


class Connections:
    """The pools of one store and its listening connection."""

    def __init__(
        self,
        url: str,
        durable: asyncpg.Pool,
        relaxed: asyncpg.Pool,
        *,
        connect_kwargs: dict[str, Any],
        schema: str | None = None,
    ) -> None:
        self.url = url
        self.name = redact(url) if schema is None else f"{redact(url)} (schema {schema})"
        self.schema = schema
        self.channel = _schema.channel(schema)
        self.durable = durable
        self.relaxed = relaxed
        self._connect_kwargs = connect_kwargs
        self._listeners: list[WakeListener] = []
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._listen_ready: asyncio.Event | None = None
        self._closed = False
        #: Statements (each its own transaction) this instance ran successfully.
        self.commits = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self, what: str) -> None:
        """Raise :class:`StoreUnavailable` once :meth:`close` was called."""
        if self._closed:
            raise StoreUnavailable(f"PostgreSQL store {self.name} is closed ({what})", path=self.name)

    def unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        hint = _OPEN_HINTS.get(getattr(exc, "sqlstate", None) or "", "")
        return StoreUnavailable(
            f"PostgreSQL store {self.name} unavailable ({what}): {type(exc).__name__}: {exc}{hint}",
            path=self.name,
            cause=exc,
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_size: int = 8,
        idle_in_transaction_timeout: float = 30.0,
        command_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        schema: str | None = None,
    ) -> Connections:
        settings = {
            "application_name": "fnrt",
            "idle_in_transaction_session_timeout": str(int(idle_in_transaction_timeout * 1000)),
        }
        if schema is not None:
            settings["search_path"] = f'"{schema}"'

        kwargs: dict[str, Any] = {"command_timeout": command_timeout, "timeout": connect_timeout}
        name = redact(url)
        pools: list[asyncpg.Pool] = []
        try:
            for extra in ({}, {"synchronous_commit": "off"}):
                pools.append(
                    await asyncpg.create_pool(
                        url,
                        min_size=1,
                        max_size=max_size,
                        server_settings={**settings, **extra},
                        **kwargs,
                    )
                )
            self = cls(
                url,
                pools[0],
                pools[1],
                connect_kwargs={**kwargs, "server_settings": settings},
                schema=schema,
            )
            await self.setup_schema()
        except BaseException as exc:
            for pool in pools:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pool.close())
            if isinstance(exc, FnrtError):
                raise
            if isinstance(exc, _CONFIG_ERRORS) or getattr(exc, "sqlstate", None) in _CONFIG_STATES:
                # a URL that does not parse, a port out of range, an option nobody knows
                raise InvalidConfig(f"PostgreSQL store {name}: {type(exc).__name__}: {exc}") from exc
            if not isinstance(exc, (*UNAVAILABLE, asyncpg.PostgresError, asyncpg.InterfaceError)):
                raise
            hint = _OPEN_HINTS.get(getattr(exc, "sqlstate", None) or "", "")
            raise StoreUnavailable(
                f"PostgreSQL store {name} unavailable (open): {type(exc).__name__}: {exc}{hint}",
                path=name,
                cause=exc,
            ) from exc
        return self

    async def setup_schema(self) -> None:
        """Create (or check) the schema under an advisory lock, once per database."""
        async with self.durable.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _schema.LOCK_KEY, self.schema or ""
            )
            if self.schema is not None:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(_schema.TABLES[0])
            version = await conn.fetchval("SELECT max(version) FROM fnrt_schema")
            if version is not None and version > _schema.VERSION:
                raise StoreUnavailable(
                    f"PostgreSQL store {self.name} has fnrt schema version {version}; this fnrt "
                    f"knows up to {_schema.VERSION}: upgrade fnrt on this host",
                    path=self.name,
                )
            if version != _schema.VERSION:
                for statement in (*_schema.TABLES[1:], *_schema.FUNCTIONS):
                    await conn.execute(statement.replace("@CHANNEL@", self.channel))
                await conn.execute("INSERT INTO fnrt_schema (version) VALUES ($1)", _schema.VERSION)
            for table, column, kind in _schema.COLUMNS:
                # Looked up first: ALTER TABLE locks the table even when the column is there.
                if not await conn.fetchval(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = $1 AND column_name = $2",
                    table,
                    column,
                ):
                    await conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
        try:
            await self._close_listen_conn()
        finally:
            await asyncio.gather(self.durable.close(), self.relaxed.close(), return_exceptions=True)

    # -- LISTEN/NOTIFY wake-ups ----------------------------------------------------------

    async def add_wake_listener(self, callback: WakeListener) -> None:
        """Call ``callback(kind, name)`` when any host enqueues an event (``"event"``,
        function name) or puts stream records (``"stream"``, stream name). A hint only:
        notifications are coalesced and may be lost while the listening connection
        reconnects, after which every listener gets ``("*", "")`` (look at everything).
        Returns once the listener is live."""
        self._listeners.append(callback)
        if self._listen_task is None:
            self._listen_ready = asyncio.Event()
            self._listen_task = asyncio.ensure_future(self._listen())
        assert self._listen_ready is not None
        waiting = asyncio.ensure_future(self._listen_ready.wait())
        done, _ = await asyncio.wait({waiting, self._listen_task}, return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            waiting.cancel()
            self._listeners.remove(callback)
            task, self._listen_task = self._listen_task, None
            exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
            assert exc is not None
            raise self.unavailable("add_wake_listener", exc) from exc

    def remove_wake_listener(self, callback: WakeListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def _deliver(self, kind: str, name: str) -> None:
        for callback in list(self._listeners):
            try:
                callback(kind, name)
            except Exception:
                _log.exception("wake listener failed", kind=kind, name=name)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        kind, _, name = payload.partition(":")
        self._deliver(kind, name)

    async def _close_listen_conn(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=2))

    async def _listen(self) -> None:
        """Keep one connection LISTENing; reconnect with backoff when it drops. The first
        connection failure ends the task (``add_wake_listener`` raises it); later ones are
        retried for as long as the store is open."""
        assert self._listen_ready is not None
        delay = 0.05
        first = True
        while not self._closed:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.url, **self._connect_kwargs)
                self._listen_conn = conn
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self.channel, self._on_notify)
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                await self._close_listen_conn()
                if first:
                    raise
                _log.warning("wake listener cannot connect; retrying", store=self.name, delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if not first:
                self._deliver("*", "")  # notifications may have been missed meanwhile
            first = False
            delay = 0.05
            self._listen_ready.set()
            await lost.wait()
            _log.warning("wake listener connection lost; reconnecting", store=self.name)
            await self._close_listen_conn()
