"""The runtime: the composition root and the public face.

It builds the parts and wires them, one way down: the :class:`~fnrt._registry.FunctionRegistry`
(what is deployed), the :class:`~fnrt._concurrency.ConcurrencyLimiter` (the counting
service), the :class:`~fnrt._invoke.Invoker` (the one invoke path), the sources (the
async queue and the streams, which receive the invoker, the registry and the store and
never see this class), and the :class:`~fnrt._supervise.Supervisor` whose task group holds
every background task. ``async with Runtime()`` owns all of it: leaving the block stops
every sandbox, source and task, and raises what a background task failed with.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import attrs

from . import _json, _observe, _recent
from ._clock import Clock, SystemClock
from ._cluster import ClusterMember
from ._cluster_limit import ClusterLimit, ClusterLimiter, cluster_limiter
from ._concurrency import ConcurrencyLimiter, ScalingAllowance
from ._config import (
    AsyncConfig,
    FunctionConfig,
    RuntimeConfig,
    StreamMappingConfig,
    check_function_name,
    parse_destination,
)
from ._control import ControlPlane
from ._handler import parse_reference, split_config
from ._invoke import (
    InvocationResult,
    Invoker,
    check_client_context,
    decode_result,
    encode_large,
    encode_payload,
    encode_payload_async,
    encode_small,
)
from ._lambda import (
    EVENT_PAYLOAD_LIMIT,
    LARGE_PAYLOAD,
    LATEST,
    SCALING_LIMIT,
    SCALING_WINDOW,
    SYNC_PAYLOAD_LIMIT,
    function_arn,
    parse_function_ref,
)
from ._pool import FunctionPool, first_leaf, start_sandbox
from ._registry import FunctionEntry, FunctionRecord, FunctionRegistry
from ._reload import Reloader, check_available
from ._scan import handler_hints, module_source
from ._state import State
from ._supervise import Supervisor
from .errors import (
    FnrtError,
    FunctionError,
    FunctionNotFound,
    InvalidConfig,
    RuntimeClosed,
    StoreUnavailable,
    StreamNotFound,
)
from .sandbox import SandboxFactory, make_factory
from .sources._async import AsyncSource
from .sources._streams import Stream, StreamMapping, StreamSource
from .store import Store

__all__ = [
    "EVENT_PAYLOAD_LIMIT",
    "SYNC_PAYLOAD_LIMIT",
    "InvocationResult",
    "InvocationType",
    "Runtime",
    "encode_payload",
]

InvocationType = Literal["RequestResponse", "Event", "DryRun"]
RETENTION_INTERVAL = 60.0  # seconds between garbage-collection passes of the store
_MODULE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,256}\Z").match


class Runtime(ControlPlane, ClusterMember):
    """Hosts functions in sandboxes and invokes them with Lambda's semantics.

    Use it as ``async with Runtime() as rt:``; leaving the block stops every sandbox and
    the template process, also when the block is cancelled. ``start()`` and ``aclose()``
    do the same by hand (call both from the same task).

    ``store`` is where queues and streams live: a directory or file (SQLite), a
    ``postgresql://`` URL (any number of hosts sharing one database; ``fnrt[postgres]``),
    or a :class:`~fnrt.store.Store` the caller opened and closes (e.g. ``await
    open_store(url, db_clock=False)`` for a runtime on a :class:`~fnrt.FakeClock`). Hosts
    sharing a store wake each other's pollers, balance stream shards between them and
    appear in :meth:`cluster_stats`.

    ``durability`` of the SQLite store: ``"fsync"`` (default: an acknowledged ``Event``
    or stream record survives a power cut) or ``"process"`` (WAL without an fsync per
    commit: it survives a crash or ``kill -9`` of the host, not a power cut; faster).

    ``finished_event_retention``: how long (s) a ``done`` or ``failed`` async event stays
    readable with :meth:`async_event` before it is garbage-collected; stream records go
    when their stream's retention passes. Both run in the maintenance loop.

    ``sandbox_user`` runs subprocess sandboxes as that user (a name or uid) when the host
    runs as root; ``env_passthrough`` names host variables sandboxes get besides ``PATH``,
    ``LD_LIBRARY_PATH``, ``VIRTUAL_ENV`` and ``PYTHONHOME`` (nothing else of the host's
    environment reaches them). A function's own ``credentials`` are its execution role.

    ``reload=True`` watches ``reload_paths`` (the current directory) and loads changed
    code into new environments without cutting off what runs (see :mod:`fnrt._reload`;
    needs ``fnrt[reload]``).

    ``scaling_limit`` new execution environments per ``scaling_window`` seconds is each
    function's scaling rate (Lambda's: 1,000 per 10 s, refilling continuously); a cold
    start over it is throttled with ``FunctionInvocationRateLimitExceeded``.

    ``cluster_limit`` (:class:`~fnrt._cluster_limit.ClusterLimit`) makes the concurrency
    limits hold across every host sharing a counting service: the one given, or the
    store's when it has one (PostgreSQL), with the lease settings given (defaults otherwise).
    """

    def __init__(
        self,
        concurrency_limit: int = 1000,
        *,
        unreserved_minimum: int | None = None,
        idle_ttl: float = 300.0,
        sandbox: str = "subprocess",
        region: str = "us-east-1",
        account_id: str = "000000000000",
        state_dir: str | Path | None = None,
        store: str | Path | Store | None = None,
        clock: Clock | None = None,
        scaling_limit: int = SCALING_LIMIT,
        scaling_window: float = SCALING_WINDOW,
        reload: bool = False,
        reload_paths: Sequence[str | Path] | None = None,
        durability: Literal["fsync", "process"] = "fsync",
        finished_event_retention: float = 86_400.0,
        sandbox_user: str | int | None = None,
        env_passthrough: Sequence[str] = (),
        cluster_limit: ClusterLimit | None = None,
    ) -> None:
        self.config = RuntimeConfig(
            concurrency_limit=concurrency_limit,
            unreserved_minimum=unreserved_minimum,
            idle_ttl=idle_ttl,
            sandbox=sandbox,
            region=region,
            account_id=account_id,
            scaling_limit=scaling_limit,
            scaling_window=scaling_window,
        )
        if state_dir is not None and store is not None:
            raise InvalidConfig("give state_dir (a folder for the SQLite file) or store, not both")
        if state_dir is not None and not isinstance(state_dir, (str, os.PathLike)):
            raise InvalidConfig(f"state_dir must be a folder's path, got {state_dir!r}")
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if clock is not None and not all(
            callable(getattr(clock, method, None)) for method in ("monotonic", "time", "sleep", "call_later")
        ):
            raise InvalidConfig(f"clock must be a Clock (monotonic, time, sleep, call_later), got {clock!r}")
        self.clock: Clock = clock or SystemClock()
        self.metrics = _observe.Metrics()
        self.metrics.add_gauges(self._gauges)
        self._log = _observe.logger().bind()
        self._limiter = ConcurrencyLimiter(concurrency_limit, self.config.unreserved_floor)
        self._cluster_limit = cluster_limit
        self._registry = FunctionRegistry()
        self._invoker = Invoker(self._limiter, self.clock, self.metrics, self._log)
        #: The recent invocations and throttles, bounded (the console reads them).
        self.recent = _recent.RecentInvocations(self.clock)
        self._invoker.observers.append(self.recent.add)
        self._invoker.throttle_observers.append(self.recent.throttled)
        self._supervisor = Supervisor(self.clock, self._log)
        self._factories: dict[str, SandboxFactory] = {}
        spec: str | Path | Store | None = store
        if self.state_dir is not None:
            spec = self.state_dir / "fnrt.sqlite3"
        elif isinstance(spec, str) and "://" not in spec:
            spec = Path(spec)
        self._durable = spec is not None  # a store that outlives this host: resume at start
        if not isinstance(finished_event_retention, (int, float)) or finished_event_retention < 0:
            raise InvalidConfig(
                f"finished_event_retention must be seconds >= 0, got {finished_event_retention!r}"
            )
        self.finished_event_retention = float(finished_event_retention)
        if isinstance(env_passthrough, str) or not all(isinstance(n, str) for n in env_passthrough):
            raise InvalidConfig(f"env_passthrough must be a list of variable names, got {env_passthrough!r}")
        self._sandbox_user = sandbox_user
        self._passthrough = tuple(env_passthrough)
        self._retention_due = 0.0  # clock.monotonic() of the next retention pass
        if durability not in ("fsync", "process"):
            raise InvalidConfig(f"durability must be 'fsync' or 'process', got {durability!r}")
        self._state = State(spec, durability=durability, on_open=self._store_opened)
        self._running = False
        self._entered = False  # inside its ``async with`` block
        self._installing = 0  # registrations initializing their provisioned environments
        #: The event loop the runtime was started on: its sandboxes' sockets and timers
        #: belong to it, so it is used from that loop only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Future[None] | None = None  # done once a close has ended
        self._deployed: dict[str, list[str]] = {}  # module -> functions deploy() found in it
        # module -> every handler its last deploy or reload found (a reload tells new ones,
        # which it deploys, from ones removed on purpose, which stay removed)
        self._discovered: dict[str, set[str]] = {}
        # function -> what its decorator declared (its handler, its config) at the last
        # deploy or reload: a reload takes from the new decorator only what changed in it,
        # so settings changed at run time (concurrency, update_function_configuration, a
        # new handler) stay
        self._declared: dict[str, FunctionRecord] = {}
        self._reloader: Reloader | None = None
        if reload:
            check_available()
            self._reloader = Reloader(self, list(reload_paths or [Path.cwd()]))
        # What every source receives: never the runtime itself.
        wiring: dict[str, Any] = {
            "invoker": self._invoker,
            "registry": self._registry,
            "clock": self.clock,
            "metrics": self.metrics,
            "log": self._log,
            "supervisor": self._supervisor,
            "region": region,
            "account_id": account_id,
        }
        self._async = AsyncSource(open_queue=self._state.queue, **wiring)
        #: This host's id in the store: event and shard leases, ``fnrt stats``' host list.
        self.host_id = self._async.owner
        #: What this host tells the others (``cluster_stats``); the HTTP server adds its port.
        self.host_info: dict[str, Any] = {"hostname": socket.gethostname(), "pid": os.getpid()}
        self._streams = StreamSource(open_store=self._state.streams, deliver=self._async.deliver, **wiring)
        self._streams.host_id = self.host_id

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        # Entered once: the block that entered it owns its close. A nested ``async with``
        # on the same runtime would close it under the outer block at its own exit (and
        # leave the outer block with a closed runtime), so it is refused; the outer block
        # goes on untouched.
        if self._entered:
            raise RuntimeClosed(
                "this runtime is already entered by an 'async with': enter it once, "
                "and pass it (not a second 'async with') to the code that uses it"
            )
        await self.start()
        self._entered = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._close(exc_type, exc)
        finally:
            self._entered = False

    async def start(self) -> None:
        if self._running:
            return
        if self._state.closed:
            raise RuntimeClosed("a Runtime runs once; create a new one")
        store = None
        if self._durable:  # refuse to start on a store that is not usable: say so now
            store = await self._state.store()
        await self._supervisor.open()
        self._running = True
        self._loop = asyncio.get_running_loop()
        limiter = cluster_limiter(self._limiter, store, self._cluster_limit, self.clock, self._log)
        self._limiter = self._invoker.limiter = limiter
        if isinstance(limiter, ClusterLimiter):
            # The other hosts' reservations, before this host registers its own beside them.
            try:
                await limiter.publish()
            except StoreUnavailable as exc:  # its acquires still never pass the global limit
                self._log.warning("could not learn the cluster's reservations", error=str(exc))
        limiter.start(self._supervisor)
        self._supervisor.loop("maintenance", self._maintain_once)
        if self._reloader is not None:
            self._supervisor.spawn(self._reloader.run(), name="reload")
        if self._durable:  # events queued by an earlier host resume at once
            self._supervisor.spawn(self._open_async_queue(), name="async-queue-open")
            self._supervisor.loop("host-heartbeat", self._heartbeat_once)

    async def aclose(self) -> None:
        """Stop everything. Safe to call twice, also from two tasks at once (each returns
        once everything is stopped); runs to the end even when the caller is cancelled
        (the cancellation is re-raised afterwards)."""
        await self._close(None, None)

    async def _close(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        if not self._running:
            closed = self._closed
            if closed is not None and not closed.done():
                # Another task is closing it: return once it is closed (what that close
                # raises is its caller's to see).
                await asyncio.shield(closed)
            return
        self._check_loop()
        self._running = False
        self._closed = closed = asyncio.get_running_loop().create_future()
        try:
            shutdown = asyncio.ensure_future(self._shutdown())
            cancelled = False
            while not shutdown.done():
                try:
                    await asyncio.shield(shutdown)
                except asyncio.CancelledError:
                    cancelled = True
            if cancelled and exc is None:
                exc_type, exc = asyncio.CancelledError, asyncio.CancelledError()
            await self._supervisor.close(exc_type, exc)  # raises what a background task failed with
            shutdown.result()
            if cancelled:
                raise asyncio.CancelledError
        finally:
            closed.set_result(None)

    async def _shutdown(self) -> None:
        """Every step runs even when one fails (a source that cannot release its leases
        must not leave sandboxes or the database open); the first error is raised last.

        A store that is unavailable while closing (locked, full, down) is logged, not
        raised: what the steps write then is bookkeeping that expires by itself (leases,
        this host's registration), and nothing the caller was told is stored depends on it."""
        errors: list[Exception] = []

        async def step(action: Awaitable[object]) -> None:
            try:
                await action
            except StoreUnavailable as exc:
                self._log.warning("store unavailable while closing (leases expire)", error=str(exc))
            except Exception as exc:
                errors.append(exc)

        self._invoker.closing = True
        await step(self._streams.aclose())
        await step(self._async.aclose())
        await step(self._supervisor.cancel_all())
        await step(self._leave_cluster())
        for entry in self._registry:
            entry.pool.kill_all()
        for factory in self._factories.values():
            await step(factory.aclose())
        self._factories.clear()
        await step(self._limiter.aclose())
        await step(self._state.close())
        if errors:
            raise errors[0]

    def _factory(self, kind: str) -> SandboxFactory:
        factory = self._factories.get(kind)
        if factory is None:
            factory = self._factories[kind] = make_factory(kind, self.clock)
        return factory

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeClosed("the runtime is not running: use 'async with Runtime() as rt:'")
        self._check_loop()

    def _check_loop(self) -> None:
        """Refuse a call from another event loop or thread: the runtime's sandboxes, timers
        and futures belong to the loop it started on (awaiting them elsewhere fails, and a
        sandbox made there would die with that loop)."""
        if asyncio._get_running_loop() is not self._loop:
            raise RuntimeClosed(
                "this runtime runs on another event loop: call it from the loop that started it "
                "(from another thread: asyncio.run_coroutine_threadsafe(coro, loop))"
            )

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until nothing is left to do without new input or the clock moving: every
        due async event handled, every stream mapping caught up or waiting for a retry
        delay, no provisioning under way. For tests and examples (with a ``FakeClock``:
        advance it, then wait again)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._idle():
            if loop.time() > deadline:
                raise TimeoutError(f"the runtime was still busy after {timeout} s")
            await asyncio.sleep(0.002)

    def _idle(self) -> bool:
        return (
            self._async.idle
            and self._streams.idle
            and not self._installing
            and not any(e.provisioning or e.pool.starting for e in self._registry)
        )

    # -- registration -----------------------------------------------------------------

    async def deploy(self, module: str) -> list[str]:
        """Import ``module`` in a discovery sandbox and register every ``@fnrt.handler``.

        The discovery sandbox only finds the handlers and their configuration: it is
        thrown away, so every environment that serves events is initialized under its
        function's configuration (environment, memory limit), and the first invocation
        is a cold start. Deploying a module again replaces its functions.
        """
        self._check_running()
        if not isinstance(module, str) or not _MODULE.match(module):
            raise InvalidConfig(f"module must be a dotted module name like 'handlers.echo', got {module!r}")
        records = await self._discover(module)
        if not records:
            raise InvalidConfig(
                f"module {module!r} has no @fnrt.handler functions; decorate one, "
                "or register it with add_function(name, 'module:function')"
            )
        await self._register_all(records)
        self._deployed[module] = [r.name for r in records]
        self._discovered[module] = {r.name for r in records}
        self._declared.update({r.name: r for r in records})
        if self._reloader is not None:
            self._reloader.watch_module(module)
        self._log.info("deployed", module=module, functions=[r.name for r in records])
        return [r.name for r in records]

    async def _discover(self, module: str) -> list[FunctionRecord]:
        """The ``@fnrt.handler`` functions of ``module``, found in a sandbox thrown away
        after (raises the module's init error)."""
        factory = self._factory(self.config.sandbox)
        resources = (await self._discovery_record(module)).resources()
        sandbox, reply = await start_sandbox(factory, module, None, init_timeout=10.0, resources=resources)
        try:
            return [
                self._record(
                    item.name, module, item.attr, FunctionConfig.from_kwargs(item.config), item.extra
                )
                for item in reply.handlers
            ]
        finally:
            await sandbox.close()

    async def _discovery_record(self, module: str) -> FunctionRecord:
        """Who the discovery sandbox's init runs as: the module's first handler, as the
        literal arguments of its decorator say (:mod:`fnrt._scan`), with every handler's
        own variables, so the import finds Lambda's environment (``AWS_REGION``, the
        function's name) and the variables the module reads at import."""
        source = await asyncio.to_thread(module_source, module)
        hints = handler_hints(source) if source is not None else []
        attr, first = hints[0] if hints else ("handler", {})
        environment: dict[str, str] = {}
        for _, literals in hints:
            own = literals.get("environment")
            if isinstance(own, dict):
                for key, value in own.items():
                    if isinstance(key, str) and isinstance(value, str):
                        environment.setdefault(key, value)
        name = first.get("name") if isinstance(first.get("name"), str) else attr
        try:
            name = check_function_name(name)
        except InvalidConfig:
            name = "discovery"
        try:
            memory = first.get("memory_mb", 128)
            config = FunctionConfig.from_kwargs({"memory_mb": memory, "environment": environment})
        except (InvalidConfig, TypeError, ValueError):
            config = FunctionConfig()  # the decorator itself reports what is wrong, at import
        return self._record(name, module, attr, config, {}, generation=0)

    async def _register_all(self, records: list[FunctionRecord]) -> None:
        await self._install(records)

    def _modules_in_use(self) -> list[str]:
        """The modules a reload checks: a package's functions (``code_root``) run code no
        edit in the project changes (UpdateFunctionCode does), so theirs are not."""
        return sorted({e.record.module for e in self._registry if e.record.config.code_root is None})

    async def _reload_module(self, module: str) -> list[str]:
        """Register ``module``'s functions again from its current source (hot reload).
        Deployed functions take from their decorators what changed there, and keep what
        was changed at run time; functions added by reference keep their config, and each
        is checked in an init phase under it (its environment, its handler). Raises the
        module's init error, and then changes nothing."""
        self._check_running()
        registered = {entry.name for entry in self._registry}
        records: list[FunctionRecord] = []
        declared: dict[str, FunctionRecord] = {}
        discovered = await self._discover(module) if module in self._deployed else None
        # Read after the discovery: a function deleted meanwhile is no longer in it.
        deployed = set(self._deployed.get(module, ()))
        if discovered is not None:  # a deployed module: its new handlers are deployed too
            declared = {r.name: r for r in discovered}
            deployed |= declared.keys() - self._discovered.get(module, set())
            records = [self._redeclared(r) for r in discovered if r.name in deployed]
        for entry in list(self._registry):  # added by reference: same config, new code
            ours = entry.record.module == module and entry.record.config.code_root is None
            if ours and entry.name not in deployed:
                record = attrs.evolve(entry.record, generation=self._registry.next_generation())
                await self._check_init(record)
                if self._registry.lookup(entry.name) is entry:  # not deleted or updated meanwhile
                    records.append(record)
        # A function deleted while the reload checked the code stays deleted.
        records = [r for r in records if r.name not in registered or r.name in self._registry]
        await self._register_all(records)
        if module in self._deployed:
            found = set(declared)
            # Handlers the module no longer has: a call could only fail (HandlerNotFound).
            for gone in sorted((deployed - found) & {entry.name for entry in self._registry}):
                await self.remove_function(gone)
            self._deployed[module] = sorted(deployed & found)
            self._discovered[module] = found
            self._declared.update({name: declared[name] for name in deployed & found})
        return sorted(r.name for r in records)

    def _redeclared(self, declared: FunctionRecord) -> FunctionRecord:
        """``declared`` (a reloaded decorator's record) with the settings changed at run
        time since the last deploy or reload kept, unless the decorator changed them too."""
        entry = self._registry.lookup(declared.name)
        before = self._declared.get(declared.name)
        if entry is None or before is None:
            return declared
        current = entry.record
        now, old, new = current.config.to_dict(), before.config.to_dict(), declared.config.to_dict()
        config = FunctionConfig.from_kwargs({k: now[k] if new[k] == old[k] else new[k] for k in new})
        module, attr = declared.module, declared.attr
        if (module, attr) == (before.module, before.attr):  # the handler set at run time stays
            module, attr = current.module, current.attr
        kind = config.sandbox or self.config.sandbox
        return attrs.evolve(declared, config=config, sandbox_kind=kind, module=module, attr=attr)

    async def _check_init(self, record: FunctionRecord) -> None:
        """Run ``record``'s init phase under its own configuration in a sandbox thrown
        away after: raises its init error (the module fails to import with the
        function's environment, or no longer has the handler)."""
        sandbox, _ = await start_sandbox(
            self._factory(record.sandbox_kind), record.module, record, record.config.init_timeout
        )
        await sandbox.close()

    async def add_function(self, name: str, handler: str, **config: Any) -> FunctionRecord:
        """Register ``handler`` (``"module:function"``) as function ``name`` with ``config``.

        The module is not imported here: its init phase runs at the first cold start
        (or now, for provisioned concurrency).
        """
        self._check_running()
        check_function_name(name)
        module, attr = parse_reference(handler)
        function_config, extra = split_config(config)
        record = self._record(name, module, attr, function_config, extra)
        await self._install([record])
        if self._reloader is not None and function_config.code_root is None:  # not a package's
            self._reloader.watch_module(module)
        return record

    async def remove_function(self, name: str) -> None:
        """Delete ``name`` (Lambda's ``DeleteFunction``): idle sandboxes close now, busy
        ones when their call ends. Its concurrency, pool and event-invoke config go with
        it, and so do its queued async events: they are dropped (``failed`` with condition
        ``FunctionDeleted``, counted in AsyncEventsDropped), as a deleted function's queue
        is. Replacing a function (a redeploy, an update) keeps its events, and so does a
        host that has not registered a function yet (their events wait for it)."""
        self._check_running()
        entry = self._registry.pop(name)
        self._limiter.unregister(entry.name)
        for names in self._deployed.values():
            if entry.name in names:
                names.remove(entry.name)
        for env in entry.pool.drain():
            await env.sandbox.close()
        if self._durable or self._async.opened:  # else no event of it was ever stored
            try:
                await self._async.discard(entry.name)
            except StoreUnavailable as exc:  # removed all the same; its events stay queued
                self._log.warning(
                    "queued events of a deleted function not dropped", function=entry.name, error=str(exc)
                )

    def _record(
        self,
        name: str,
        module: str,
        attr: str,
        config: FunctionConfig,
        extra: Mapping[str, Any],
        *,
        generation: int | None = None,
    ) -> FunctionRecord:
        """A function's record; the next generation unless ``generation`` is given (a
        discovery sandbox's record, never registered)."""
        check_function_name(name)
        raw_async = extra.get("async_config")  # invalid async config fails the deploy
        if config.code_root is not None and (config.sandbox or self.config.sandbox) == "inline":
            # an inline handler imports into the host itself: another function's package
            # (the same module names) would be served from the host's module cache
            raise InvalidConfig("code_root needs a subprocess or subinterpreter sandbox, not inline")
        return FunctionRecord(
            name=name,
            module=module,
            attr=attr,
            config=config,
            arn=function_arn(self.config.region, self.config.account_id, name),
            sandbox_kind=config.sandbox or self.config.sandbox,
            region=self.config.region,
            extra=dict(extra),
            async_config=None if raw_async is None else AsyncConfig.from_kwargs(raw_async),
            generation=self._registry.next_generation() if generation is None else generation,
            run_as_user=self._sandbox_user,
            passthrough=self._passthrough,
        )

    def _register(self, record: FunctionRecord, pool: FunctionPool | None = None) -> FunctionEntry:
        """Register a new generation of ``record.name`` (with ``pool``, its provisioned
        environments already initialized, or an empty one). What it replaces stops taking
        events: idle sandboxes go now, busy ones when their call ends; its event-invoke
        config carries over (in Lambda it is the function's, not the code's)."""
        current = self._registry.lookup(record.name)
        reserved = record.config.reserved_concurrency
        if current is not None:
            # The same function in a new generation (an update, a redeploy): the calls the
            # old one still runs count against the function's reservation and release into
            # it, so an update never lets it run more than its reserved concurrency.
            counter = current.counter
            self._limiter.check_reservations({record.name: reserved})
            self._limiter.set_reserved(counter, reserved)
        else:
            counter = self._limiter.register(record.name, reserved)
        if pool is None:
            pool = FunctionPool(record, self._factory(record.sandbox_kind), self.clock)
        # The scaling rate is the function's, whatever its generation: an update or a
        # redeploy in a burst does not grant another 1,000 environments at once.
        scaling = current.scaling if current is not None else ScalingAllowance(
            self.config.scaling_limit, self.config.scaling_window, self.clock.monotonic()
        )
        entry = FunctionEntry(record, pool, counter, scaling)
        old = self._registry.put(entry)
        if old is not None:
            entry.async_override, entry.async_deleted = old.async_override, old.async_deleted
            entry.dead_letter, entry.dead_letter_set = old.dead_letter, old.dead_letter_set
            for env in old.pool.drain():
                env.sandbox.kill()
        return entry

    async def _install(self, records: list[FunctionRecord], replacing: FunctionEntry | None = None) -> None:
        """Register ``records`` all or none: their reservations are checked, then their
        provisioned environments initialized, and only then are they registered (what
        they replace serves until that moment). A failure (an
        :class:`~fnrt.errors.InitError` of a provisioned environment, say) is raised as it
        is, not in a group, and registers nothing: the sandboxes made for it are
        destroyed and the functions stay as they were. ``replacing``: the generation an
        update starts from; removed meanwhile, the update is :class:`FunctionNotFound`."""
        reservations = {r.name: r.config.reserved_concurrency for r in records}
        self._limiter.check_reservations(reservations)
        pools = [FunctionPool(r, self._factory(r.sandbox_kind), self.clock) for r in records]
        self._installing += 1  # not idle while it provisions (wait_idle)
        try:
            if any(r.config.provisioned_concurrency for r in records):
                try:
                    async with asyncio.TaskGroup() as tg:
                        for pool in pools:
                            tg.create_task(pool.provision())
                except BaseExceptionGroup as group:
                    raise first_leaf(group) from None
                self._check_running()  # closed meanwhile: nothing to register in
                if replacing is not None:
                    current = self._registry.lookup(replacing.name)
                    if current is None:
                        raise FunctionNotFound(replacing.name)
                    records = self._live_concurrency(records, pools, current)
                    reservations = {r.name: r.config.reserved_concurrency for r in records}
                self._limiter.check_reservations(reservations)  # others registered meanwhile
        except BaseException:
            for pool in pools:
                pool.kill_all()
            raise
        finally:
            self._installing -= 1
        for record, pool in zip(records, pools, strict=True):
            entry = self._register(record, pool)
            if pool.provisioned_size < record.config.provisioned_concurrency:  # raised meanwhile
                entry.provisioning = True
                self._supervisor.spawn(self._replenish(entry), name=f"provision:{entry.name}")

    @staticmethod
    def _live_concurrency(
        records: list[FunctionRecord], pools: list[FunctionPool], current: FunctionEntry
    ) -> list[FunctionRecord]:
        """``records`` with ``current``'s reserved and provisioned concurrency: an update
        does not change them (they have their own calls), so what those calls set while
        the update provisioned stays (the pool tops up a raised floor)."""
        live = current.record.config
        wanted = (live.reserved_concurrency, live.provisioned_concurrency)
        out = []
        for record, pool in zip(records, pools, strict=True):
            config = record.config
            have = (config.reserved_concurrency, config.provisioned_concurrency)
            if record.name == current.name and have != wanted:
                config = attrs.evolve(
                    config, reserved_concurrency=wanted[0], provisioned_concurrency=wanted[1]
                )
                record = attrs.evolve(record, config=config)
                pool.function = record
            out.append(record)
        return out

    def get_function(self, name: str) -> FunctionRecord:
        """Look a function up by name, partial ARN or full ARN."""
        return self._registry.get(name).record

    def functions(self) -> dict[str, FunctionRecord]:
        return self._registry.records()

    def sandboxes(self, name: str) -> list[dict[str, Any]]:
        """The function's live sandboxes (busy, then warm) with their ids, pids, ages and
        invocation counts."""
        return self._registry.get(name).pool.sandboxes()

    # -- invoke -----------------------------------------------------------------------

    async def invoke(
        self,
        name: str,
        payload: Any = None,
        invocation_type: InvocationType = "RequestResponse",
        *,
        client_context: Mapping[str, Any] | None = None,
    ) -> Any:
        """Invoke ``name`` and return the handler's result (``RequestResponse``).

        ``DryRun`` validates the request and returns ``None``; ``Event`` queues the event
        durably and returns its request id. A function error raises
        :class:`~fnrt.errors.FunctionError` with Lambda's error shape and the log tail.
        """
        if invocation_type == "RequestResponse":  # the warm path: invoke_detailed's, inline
            entry, request_id, qualifier = self._target(name, client_context, None, None)
            body = encode_small(payload)
            if body is None:  # 6 MB: their default
                body = await encode_large(payload)
                entry = self._current(entry)
            invoked_arn = f"{entry.record.arn}:{qualifier}" if qualifier else None
            result = await self._invoker.invoke(entry, body, request_id, client_context, invoked_arn)
        elif invocation_type == "Event":  # the async path: invoke_detailed's, inline
            entry, request_id, _ = self._target(name, client_context, None, None)
            limit = EVENT_PAYLOAD_LIMIT
            body = encode_small(payload, limit)
            if body is None:
                body = await encode_large(payload, limit)
                entry = self._current(entry)
            await self._async.enqueue(entry, body, request_id)
            return request_id
        else:
            result = await self.invoke_detailed(name, payload, invocation_type, client_context=client_context)
        if result.error is not None:
            raise result.error
        if invocation_type == "DryRun":
            return None
        raw = result.raw
        try:
            if len(raw) < LARGE_PAYLOAD:  # the common case, without a coroutine
                return _json.loads(raw) if raw else None
            return await decode_result(raw)
        except (ValueError, RecursionError) as exc:
            # Only a sandbox that broke the protocol sends a result that is not JSON: a
            # function error of the call, never json's own exception.
            raise FunctionError(
                "Runtime.MarshalError",
                f"Unable to marshal response: the result is not JSON ({exc})",
                request_id=result.request_id,
            ) from None

    async def invoke_detailed(
        self,
        name: str,
        payload: Any = None,
        invocation_type: InvocationType = "RequestResponse",
        *,
        client_context: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        qualifier: str | None = None,
    ) -> InvocationResult:
        """Invoke and return Lambda's whole response; a function error is in ``.error``.

        ``qualifier`` (or a qualified ARN as ``name``; only ``$LATEST`` exists) makes the
        context's ``invoked_function_arn`` the qualified ARN, as Lambda does; any other
        qualifier is :class:`~fnrt.errors.FunctionNotFound`."""
        entry, request_id, qualifier = self._target(name, client_context, qualifier, request_id)
        if invocation_type == "RequestResponse":
            body = encode_small(payload)
            if body is None:  # 6 MB: their default
                body = await encode_large(payload)
                entry = self._current(entry)
            invoked_arn = f"{entry.record.arn}:{qualifier}" if qualifier else None
            return await self._invoker.invoke(entry, body, request_id, client_context, invoked_arn)
        if invocation_type == "DryRun":
            await encode_payload_async(payload, SYNC_PAYLOAD_LIMIT)
            return InvocationResult(request_id, entry.name, 204)
        if invocation_type == "Event":
            body = await encode_payload_async(payload, EVENT_PAYLOAD_LIMIT)
            await self._async.enqueue(self._current(entry), body, request_id)
            return InvocationResult(request_id, entry.name, 202)
        raise InvalidConfig(
            f"invocation_type must be RequestResponse, Event or DryRun; got {invocation_type!r}"
        )

    def _current(self, entry: FunctionEntry) -> FunctionEntry:
        """``entry``, or what replaced it while the call awaited (a new generation: the
        call runs on it); :class:`~fnrt.errors.FunctionNotFound` if it was removed."""
        self._check_running()
        return entry if self._registry.lookup(entry.name) is entry else self._registry.get(entry.name)

    def _target(
        self,
        name: str,
        client_context: Mapping[str, Any] | None,
        qualifier: str | None,
        request_id: str | None,
    ) -> tuple[FunctionEntry, str, str | None]:
        """What an invoke names, checked: the function, the request id, the qualifier."""
        self._check_running()
        entry = self._registry.get(name)
        if request_id is not None and not (isinstance(request_id, str) and _REQUEST_ID(request_id)):
            # It goes into the sandbox's wire frame and every log line: printable, bounded.
            raise InvalidConfig(
                f"request_id must be 1-256 printable ASCII characters without spaces, got {request_id!r:.80}"
            )
        if client_context is not None:
            check_client_context(client_context)
        if qualifier is None and ":" in name:  # a qualified ARN names its qualifier
            parsed = parse_function_ref(name)
            qualifier = parsed[1] if parsed else None
        if qualifier is not None and qualifier != LATEST:
            raise FunctionNotFound(f"{entry.name}:{qualifier}")
        return entry, request_id or self._invoker.request_id(), qualifier

    # -- async invoke -----------------------------------------------------------------

    def configure_async(self, name: str, **config: Any) -> AsyncConfig:
        """Set how ``name``'s Event invocations retry and where they end (Lambda's
        event-invoke config): ``max_retry_attempts``, ``retry_delays``, ``max_event_age``,
        ``on_success``, ``on_failure``, ``dead_letter``. Validated here; replaces any
        ``async_config`` given to ``@fnrt.handler`` and applies to queued events too.
        It lives with the function: removing the function removes it."""
        entry = self._registry.get(name)
        configured = self._async.configure(entry.name, AsyncConfig.from_kwargs(config))
        if "dead_letter" in config and config["dead_letter"] != entry.dead_letter:
            # said otherwise here: it replaces one set apart (set_dead_letter)
            entry.dead_letter, entry.dead_letter_set = None, False
        return configured

    def set_dead_letter(self, name: str, dead_letter: str | None) -> AsyncConfig:
        """Lambda's ``DeadLetterConfig`` (UpdateFunctionConfiguration): a function setting of
        its own, not part of the event-invoke config (deleting that keeps it). ``None``
        removes it."""
        entry = self._registry.get(name)
        AsyncConfig(dead_letter=dead_letter)  # validates the sink
        entry.dead_letter, entry.dead_letter_set = dead_letter, True
        return entry.async_config

    def async_config(self, name: str) -> AsyncConfig:
        """The async config in force for ``name`` (the defaults if none was set)."""
        return self._async.config_for(name)

    async def destination_records(self, sink: str, *, newest: int | None = None) -> list[Any]:
        """The records delivered to a durable sink (``"failed-payments"`` or
        ``"sink:failed-payments"``), oldest first; with ``newest``, only that many of the
        last ones (:meth:`destination_count` tells how many there are)."""
        return await self._async.destination_records(self._sink_name(sink), newest)

    async def destination_count(self, sink: str) -> int:
        """How many records a durable sink holds, without reading them."""
        return await self._async.destination_count(self._sink_name(sink))

    def _sink_name(self, sink: str) -> str:
        self._check_running()
        if not isinstance(sink, str):
            raise InvalidConfig(f"sink must be a sink's name like 'failed-payments', got {sink!r}")
        name = sink if ":" in sink else f"sink:{sink}"
        if parse_destination(name)[0] != "sink":
            raise InvalidConfig(
                f"{sink!r} is a function, not a sink: a function destination gets its records "
                "as Events (see Runtime.async_event); destination_records reads sinks"
            )
        return name

    async def async_event(self, request_id: str) -> dict[str, Any] | None:
        """Where an Event invocation is: its ``state`` (``queued``, ``leased``, ``done``,
        ``failed``), attempts, ``condition`` and, for a failure, the destination record."""
        self._check_running()
        return await self._async.event(request_id)

    @property
    def async_queue_open(self) -> bool:
        """Whether the async queue's store is open (asking for counts would open it)."""
        return self._async.opened

    async def async_queue_counts(
        self, name: str | None = None, *, states: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Event counts by state, for one function or all; ``states`` counts only those
        (``("queued", "leased")``: the queue's depth, cheap for one function however many
        finished events are retained)."""
        self._check_running()
        return await self._async.counts(name, states)

    async def _open_async_queue(self) -> None:
        try:
            await self._async.queue()
        except RuntimeClosed:
            pass
        except FnrtError as exc:  # the next Event invoke tries again and raises it
            self._log.error("async queue failed to start", exc_info=exc)

    # -- maintenance ------------------------------------------------------------------

    async def _maintain_once(self) -> None:
        """Retire idle sandboxes past their TTL; refill provisioned concurrency; apply
        retention to the store."""
        ttl = self.config.idle_ttl
        await self.clock.sleep(min(max(ttl / 4, 0.01), 5.0))
        await self._retention()
        for entry in self._registry:
            pool = entry.pool
            for env in pool.retire_idle(ttl):
                self._log.debug("sandbox retired", function=entry.name, sandbox_id=env.sandbox.id)
                await env.sandbox.close()
            if pool.provisioned_size < entry.record.config.provisioned_concurrency and not entry.provisioning:
                entry.provisioning = True
                self._supervisor.spawn(self._replenish(entry), name=f"provision:{entry.name}")

    async def _retention(self) -> None:
        """Garbage-collect finished async events and expired stream records, once a
        minute, in bounded batches, and only on a store this runtime has opened."""
        store = self._state.opened
        now = self.clock.monotonic()
        if store is None or now < self._retention_due:
            return
        self._retention_due = now + RETENTION_INTERVAL
        wall = self.clock.time()
        while await store.queue.purge_finished(wall - self.finished_event_retention) >= 10_000:
            pass
        await store.streams.trim_expired(wall)

    async def _replenish(self, entry: FunctionEntry) -> None:
        try:
            await entry.pool.provision()
        except FnrtError as exc:
            self._log.warning("provisioning failed", function=entry.name, error=str(exc))
        finally:
            entry.provisioning = False

    # -- statistics -------------------------------------------------------------------

    def _gauges(self) -> dict[str, dict[str, float]]:
        """Lambda's concurrency metrics as they are now (``rt.metrics.gauge(...)``):
        ConcurrentExecutions per function and account-wide (``""``, a removed function's
        calls still running included), UnreservedConcurrentExecutions, ClaimedAccountConcurrency
        (reservations, the shared pool's calls and the idle provisioned environments of
        functions without a reservation) and, per function with provisioned concurrency,
        ProvisionedConcurrentExecutions."""
        limiter = self._limiter
        concurrent: dict[str, float] = {"": limiter.running}
        provisioned: dict[str, float] = {}
        idle_provisioned = 0  # of functions without a reservation: claimed, though not running
        for entry in self._registry:
            concurrent[entry.name] = entry.counter.in_flight
            if entry.record.config.provisioned_concurrency:
                pool = entry.pool
                provisioned[entry.name] = pool.provisioned_busy
                if entry.counter.reserved is None:
                    idle_provisioned += sum(1 for env in pool.idle if env.provisioned)
        unreserved = limiter.unreserved_in_flight
        reserved = limiter.limit - limiter.unreserved_pool
        return {
            "ConcurrentExecutions": concurrent,
            "UnreservedConcurrentExecutions": {"": unreserved},
            "ClaimedAccountConcurrency": {"": reserved + unreserved + idle_provisioned},
            "ProvisionedConcurrentExecutions": provisioned,
        }

    def stats(self) -> dict[str, Any]:
        """Live concurrency, sandboxes and counters, per function and overall."""
        functions: dict[str, dict[str, Any]] = {}
        for entry in self._registry:
            name = entry.name
            functions[name] = {
                **self._limiter.function_stats(name),
                **entry.pool.stats(),
                "invocations": int(self.metrics.counter("Invocations", name)),
                "errors": int(self.metrics.counter("Errors", name)),
            }
        return {
            "concurrency": self._limiter.stats(),
            "functions": functions,
            "background_failures": self._supervisor.failures,
        }

    # -- streams ----------------------------------------------------------------------

    async def create_stream(
        self, name: str, shard_count: int = 1, *, retention_hours: float = 24, mode: str = "PROVISIONED"
    ) -> Stream:
        """Create a sharded stream in the runtime's state (or open it, if it exists: a
        restarted host gets its stream back with every record and shard). ``mode`` is
        Kinesis' capacity mode (``PROVISIONED`` or ``ON_DEMAND``), kept and reported."""
        self._check_running()
        return await self._streams.create_stream(name, shard_count, retention_hours, mode)

    async def get_stream(self, name: str) -> Stream:
        """The stream ``name``; raises :class:`~fnrt.errors.StreamNotFound`."""
        self._check_running()
        return await self._streams.get_stream(name)

    async def delete_stream(self, name: str) -> None:
        """Delete the stream ``name`` with every record and shard (Kinesis' ``DeleteStream``).
        Its event source mappings stay, as Lambda's do: disabled, polling nothing, without
        their checkpoints (their on-failure records stay); remove them with
        :meth:`remove_stream_mapping`. Raises :class:`~fnrt.errors.StreamNotFound`."""
        self._check_running()
        await self._streams.delete_stream(name)

    async def list_streams(self) -> list[str]:
        """The names of every stream in the runtime's state, sorted."""
        self._check_running()
        return await self._streams.stream_names()

    async def add_stream_mapping(self, stream: str, function: str, **config: Any) -> StreamMapping:
        """Start an event source mapping from ``stream`` to ``function`` with
        :class:`~fnrt.StreamMappingConfig` settings. The same pair added again after a
        restart resumes from its durable checkpoints (its other settings are the new ones;
        its starting position stays the stored one's, a new mapping's only)."""
        self._check_running()
        mapping_config = StreamMappingConfig.from_kwargs(config)
        return await self._streams.add_mapping(stream, function, mapping_config)

    async def resume_stream_mappings(self) -> list[StreamMapping]:
        """Start the stored event source mappings whose function is registered here and that
        this runtime does not run yet, from their durable checkpoints: those created before a
        restart (through the API, the CLI or the control plane, as Lambda's outlive one), and
        on a shared store those another host created. ``fnrt serve`` calls it once its
        modules are deployed. A stored mapping whose stream was deleted is taken back
        disabled, not started (as Lambda keeps it); one whose config this version refuses is
        skipped with a warning. Returns the mappings started."""
        self._check_running()
        store = await self._state.store()
        running = {(m.stream.name, m.function) for m in self._streams.mappings.values()}
        started = []
        for row in await store.streams.mappings():
            if (row.stream, row.function) in running or row.function not in self._registry:
                continue
            try:
                started.append(
                    await self.add_stream_mapping(row.stream, row.function, **row.config, filters=row.filters)
                )
            except StreamNotFound:  # its stream was deleted: listed, disabled, as Lambda keeps it
                try:
                    config = StreamMappingConfig.from_kwargs({**row.config, "filters": row.filters})
                except InvalidConfig as exc:
                    self._log.warning("stored stream mapping not resumed", mapping=row.uuid, error=str(exc))
                    continue
                await self._streams.add_orphan(row.uuid, row.stream, row.function, config)
            except InvalidConfig as exc:
                self._log.warning("stored stream mapping not resumed", mapping=row.uuid, error=str(exc))
        return started

    async def update_stream_mapping(self, mapping: StreamMapping | str, **config: Any) -> StreamMapping:
        """Change a mapping's settings (Lambda's ``UpdateEventSourceMapping``); polling goes
        on from the durable checkpoints with the new ones."""
        self._check_running()
        key = mapping.uuid if isinstance(mapping, StreamMapping) else mapping
        current = self._streams.mappings.get(key)
        if current is None:
            raise InvalidConfig(f"no stream mapping {key!r}")
        merged = StreamMappingConfig.from_kwargs({**current.config.to_dict(), **config})
        return await self._streams.update_mapping(key, merged)

    async def remove_stream_mapping(self, mapping: StreamMapping | str) -> None:
        """Stop a mapping and delete it with its checkpoints and leases."""
        self._check_running()
        await self._streams.remove_mapping(mapping)

    def stream_mappings(self) -> list[StreamMapping]:
        return list(self._streams.mappings.values())
