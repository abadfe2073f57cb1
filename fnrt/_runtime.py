"""The runtime: Lambda's front end (validate, route, count) and the lifecycle of it all.

An invoke flows: resolve the function -> encode and size-check the payload -> take a
concurrency slot (or throttle at once) -> take a warm sandbox (or cold-start one) -> one
request/reply with the function's timeout -> give the sandbox back (or destroy it) ->
log START/END/REPORT and count metrics. Sources (the async queue, stream pollers) use the
same path through :meth:`Runtime.invoke_detailed`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import tempfile
import uuid
from collections.abc import Awaitable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio

from . import _observe
from ._clock import Clock, SystemClock
from ._concurrency import ConcurrencyLimiter
from ._config import (
    AsyncConfig,
    FunctionConfig,
    RuntimeConfig,
    StreamMappingConfig,
    check_function_name,
    parse_destination,
)
from ._handler import parse_reference, split_config
from ._pool import Environment, FunctionPool, FunctionRecord, init_error, start_sandbox
from .errors import (
    FnrtError,
    FunctionError,
    FunctionNotFound,
    FunctionTimeout,
    InvalidConfig,
    InvalidPayload,
    PayloadTooLarge,
    RuntimeClosed,
    TooManyRequests,
)
from .sandbox import (
    InitRequest,
    InvokeReply,
    InvokeRequest,
    SandboxDied,
    SandboxFactory,
    SandboxTimeout,
    make_factory,
)
from .sources._async import AsyncInvoker
from .sources._streams import Stream, StreamMapping, StreamSource
from .store import Database
from .store._queue import EventQueue

SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
_DEFAULT_ASYNC = AsyncConfig()
EVENT_PAYLOAD_LIMIT = 1024 * 1024
InvocationType = Literal["RequestResponse", "Event", "DryRun"]
_ARN = re.compile(
    r"^(?:arn:aws[\w-]*:lambda:[\w-]+:)?(?:\d{12}:)?(?:function:)?([a-zA-Z0-9_-]+)(?::(\$LATEST|[\w-]+))?$"
)
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_payload(payload: Any, limit: int = SYNC_PAYLOAD_LIMIT) -> bytes:
    """The event as JSON bytes. ``bytes`` are taken as a JSON document already."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        body = bytes(payload)
        if len(body) > limit:
            raise PayloadTooLarge(len(body), limit)
        if not body.strip():
            return b"{}"
        try:
            json.loads(body)
        except ValueError as exc:
            raise InvalidPayload(f"Could not parse request body into json: {exc}") from None
        return body
    try:
        body = _dumps(payload).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload is not JSON: {exc}") from None
    if len(body) > limit:
        raise PayloadTooLarge(len(body), limit)
    return body


class InvocationResult:
    """Everything Lambda's Invoke API returns, plus what the REPORT line says.

    The log text (START, the handler's output, END, REPORT) is composed on first access:
    most callers never read it, and the warm path should not pay for it.
    """

    __slots__ = (
        "_init_log",
        "_log",
        "cold_start",
        "duration_ms",
        "error",
        "executed_version",
        "function_name",
        "init_duration_ms",
        "max_memory_mb",
        "memory_size_mb",
        "output",
        "raw",
        "request_id",
        "status_code",
    )

    def __init__(
        self,
        request_id: str,
        function_name: str,
        status_code: int,
        raw: bytes = b"",
        error: FunctionError | None = None,
        *,
        log: str | None = None,
        output: str = "",
        init_log: str = "",
        cold_start: bool = False,
        duration_ms: float = 0.0,
        init_duration_ms: float | None = None,
        max_memory_mb: int = 0,
        memory_size_mb: int = 128,
    ) -> None:
        self.request_id = request_id
        self.function_name = function_name
        self.status_code = status_code
        self.raw = raw
        self.error = error
        self.output = output
        self.cold_start = cold_start
        self.duration_ms = duration_ms
        self.init_duration_ms = init_duration_ms
        self.max_memory_mb = max_memory_mb
        self.memory_size_mb = memory_size_mb
        self.executed_version = "$LATEST"
        self._init_log = init_log
        self._log = log

    @property
    def payload(self) -> Any:
        """The handler's result (or Lambda's error body on a function error)."""
        if self.error is not None:
            return self.error.to_lambda()
        return json.loads(self.raw) if self.raw else None

    @property
    def function_error(self) -> str | None:
        return "Unhandled" if self.error is not None else None

    @property
    def report(self) -> str:
        """Lambda's ``REPORT`` line for this invocation."""
        return _observe.report_line(
            self.request_id, self.duration_ms, self.memory_size_mb, self.max_memory_mb, self.init_duration_ms
        )

    @property
    def log(self) -> str:
        """The invocation's log as Lambda writes it: START, output, END, REPORT."""
        if self._log is None:
            rid = self.request_id
            self._log = (
                f"{self._init_log}{_observe.start_line(rid)}\n{self.output}"
                f"{_observe.end_line(rid)}\n{self.report}\n"
            )
        return self._log

    @property
    def log_result(self) -> str:
        """``X-Amz-Log-Result``: base64 of the log's last 4 KB."""
        return _observe.log_result(self.log)

    def __repr__(self) -> str:
        state = f"error={self.error.error_type}" if self.error else f"{len(self.raw)} bytes"
        return f"<InvocationResult {self.function_name} {self.request_id} {self.status_code} {state}>"


class Runtime:
    """Hosts functions in sandboxes and invokes them with Lambda's semantics.

    Use it as ``async with Runtime() as rt:``; leaving the block stops every sandbox and
    the template process, also when the block is cancelled.
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
        clock: Clock | None = None,
    ) -> None:
        self.config = RuntimeConfig(
            concurrency_limit=concurrency_limit,
            unreserved_minimum=unreserved_minimum,
            idle_ttl=idle_ttl,
            sandbox=sandbox,
            region=region,
            account_id=account_id,
        )
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.clock: Clock = clock or SystemClock()
        self.metrics = _observe.Metrics()
        self._limiter = ConcurrencyLimiter(concurrency_limit, self.config.unreserved_floor)
        self._functions: dict[str, FunctionRecord] = {}
        self._pools: dict[str, FunctionPool] = {}
        self._factories: dict[str, SandboxFactory] = {}
        self._log = _observe.logger().bind()
        self._tasks: set[asyncio.Task[None]] = set()
        # Request ids in UUID form: a random prefix per runtime and a counter. Unique like
        # uuid4() (76 random bits per runtime) at a tenth of its cost on the warm path.
        prefix = uuid.uuid4().hex
        variant = "89ab"[int(prefix[16], 16) % 4]
        self._rid_prefix = f"{prefix[:8]}-{prefix[8:12]}-4{prefix[13:16]}-{variant}{prefix[17:20]}-"
        self._rid_counter = itertools.count(int(prefix[20:32], 16) >> 8)
        self._db: Database | None = None
        self._temp_state: tempfile.TemporaryDirectory[str] | None = None
        # Sources (async queue, streams) register here; each has ``async aclose()`` and is
        # closed before the sandboxes, so nothing is mid-invoke when pools drain.
        self._sources: list[Any] = []
        self._running = False
        self._provisioning: set[str] = set()
        self._async: AsyncInvoker | None = None
        self._async_starting = asyncio.Lock()
        self._state_opening = asyncio.Lock()
        self._async_configs: dict[str, AsyncConfig] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._running:
            return
        self._log = _observe.logger().bind()
        self._running = True
        self._spawn(self._maintain())
        if self.state_dir is not None:  # events queued by an earlier host resume at once
            self._spawn(self._start_async_quietly())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task owned by the runtime (cancelled and awaited at close)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop everything. Safe to call twice; runs to the end even when the caller is
        cancelled (the cancellation is re-raised afterwards)."""
        if not self._running:
            return
        self._running = False
        shutdown = asyncio.ensure_future(self._shutdown())
        cancelled = False
        while not shutdown.done():
            try:
                await asyncio.shield(shutdown)
            except asyncio.CancelledError:
                cancelled = True
        shutdown.result()
        if cancelled:
            raise asyncio.CancelledError

    async def state(self) -> Database:
        """The runtime's SQLite state (opened on first use). Without ``state_dir`` it lives
        in a temporary directory removed at close: durable across crashes of handlers and
        sandboxes, not across restarts of the host. Set ``state_dir`` for that."""
        self._check_running()
        if self._db is None:
            async with self._state_opening:  # concurrent first callers share one connection
                self._check_running()  # not after shutdown has closed the state
                if self._db is None:
                    if self.state_dir is None:
                        self._temp_state = tempfile.TemporaryDirectory(prefix="fnrt-")
                        self.state_dir = Path(self._temp_state.name)
                    self._db = await Database.open(self.state_dir / "fnrt.sqlite3")
        return self._db

    async def _shutdown(self) -> None:
        """Every step runs even when one fails (a source that cannot release its leases
        must not leave sandboxes or the database open); the first error is raised last."""
        errors: list[Exception] = []

        async def step(action: Awaitable[object]) -> None:
            try:
                await action
            except Exception as exc:
                errors.append(exc)

        for source in reversed(self._sources):
            await step(source.aclose())
        self._sources.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in self._pools.values():
            pool.kill_all()
        for factory in self._factories.values():
            await step(factory.aclose())
        self._factories.clear()
        async with self._state_opening:  # an open in flight finishes first and is closed here
            if self._db is not None:
                await step(self._db.close())
                self._db = None
        if self._temp_state is not None:
            await asyncio.to_thread(self._temp_state.cleanup)  # rmtree: off the event loop
            self._temp_state = None
            self.state_dir = None
        if errors:
            raise errors[0]

    def _factory(self, kind: str) -> SandboxFactory:
        factory = self._factories.get(kind)
        if factory is None:
            factory = self._factories[kind] = make_factory(kind, self.clock)
        return factory

    def _request_id(self) -> str:
        return f"{self._rid_prefix}{next(self._rid_counter) & 0xFFFFFFFFFFFF:012x}"

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeClosed("the runtime is not running: use 'async with Runtime() as rt:'")

    # -- registration -----------------------------------------------------------------

    async def deploy(self, module: str) -> list[str]:
        """Import ``module`` in a fresh sandbox, register every ``@fnrt.handler`` in it.

        The discovery sandbox stays warm for the first function. Deploying a module
        again replaces its functions: their warm sandboxes retire, new code loads.
        """
        self._check_running()
        if not isinstance(module, str) or not re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$", module):
            raise InvalidConfig(f"module must be a dotted module name like 'handlers.echo', got {module!r}")
        factory = self._factory(self.config.sandbox)
        sandbox, reply = await start_sandbox(factory, module, None, init_timeout=10.0)
        try:
            found = reply.handlers
            if not found:
                raise InvalidConfig(
                    f"module {module!r} has no @fnrt.handler functions; decorate one, "
                    "or register it with add_function(name, 'module:function')"
                )
            records = []
            for item in found:
                config = FunctionConfig.from_kwargs(dict(item.config))
                records.append(self._record(item.name, module, item.attr, config, item.extra))
            self._limiter.check_reservations({r.name: r.config.reserved_concurrency for r in records})
            for record in records:
                self._register(record)
            first = records[0]
            if first.sandbox_kind == factory.kind:
                bound = await sandbox.init(InitRequest(module, first.bind_info(sandbox.id)), timeout=10.0)
                if not bound.ok:
                    raise init_error(dict(bound.error or {}))
                self._pools[first.name].adopt(sandbox, reply.init_ms, reply.log)
            else:
                await sandbox.close()
        except BaseException:
            sandbox.kill()
            raise
        await self._provision_all([r.name for r in records])
        self._log.info("deployed", module=module, functions=[r.name for r in records])
        return [r.name for r in records]

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
        self._register(record)
        await self._provision_all([name])
        return record

    async def remove_function(self, name: str) -> None:
        record = self.get_function(name)
        pool = self._pools.pop(record.name)
        del self._functions[record.name]
        self._limiter.unregister(record.name)
        for env in pool.drain():
            await env.sandbox.close()

    def _record(
        self, name: str, module: str, attr: str, config: FunctionConfig, extra: Mapping[str, Any]
    ) -> FunctionRecord:
        check_function_name(name)
        raw_async = extra.get("async_config")  # invalid async config fails the deploy
        return FunctionRecord(
            name=name,
            module=module,
            attr=attr,
            config=config,
            arn=self.config.function_arn(name),
            sandbox_kind=config.sandbox or self.config.sandbox,
            region=self.config.region,
            extra=dict(extra),
            async_config=None if raw_async is None else AsyncConfig.from_kwargs(raw_async),
        )

    def _register(self, record: FunctionRecord) -> None:
        self._limiter.register(record.name, record.config.reserved_concurrency)
        old = self._pools.get(record.name)
        if old is not None:
            for env in old.drain():
                env.sandbox.kill()
        self._functions[record.name] = record
        self._pools[record.name] = FunctionPool(record, self._factory(record.sandbox_kind), self.clock)

    async def _provision_all(self, names: list[str]) -> None:
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(self._pools[name].provision)

    def get_function(self, name: str) -> FunctionRecord:
        """Look a function up by name, partial ARN or full ARN."""
        record = self._functions.get(name)
        if record is not None:
            return record
        match = _ARN.match(name) if isinstance(name, str) else None
        record = self._functions.get(match.group(1)) if match else None
        if record is None:
            raise FunctionNotFound(str(name))
        return record

    def functions(self) -> dict[str, FunctionRecord]:
        return dict(self._functions)

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
        result = await self.invoke_detailed(name, payload, invocation_type, client_context=client_context)
        if result.error is not None:
            raise result.error
        if invocation_type == "Event":
            return result.request_id
        if invocation_type == "DryRun":
            return None
        return json.loads(result.raw) if result.raw else None

    async def invoke_detailed(
        self,
        name: str,
        payload: Any = None,
        invocation_type: InvocationType = "RequestResponse",
        *,
        client_context: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> InvocationResult:
        """Invoke and return Lambda's whole response; a function error is in ``.error``."""
        self._check_running()
        record = self.get_function(name)
        if invocation_type == "RequestResponse":
            body = encode_payload(payload, SYNC_PAYLOAD_LIMIT)
            return await self._execute(record, body, request_id or self._request_id(), client_context)
        if invocation_type == "DryRun":
            encode_payload(payload, SYNC_PAYLOAD_LIMIT)
            return InvocationResult(request_id or self._request_id(), record.name, 204)
        if invocation_type == "Event":
            body = encode_payload(payload, EVENT_PAYLOAD_LIMIT)
            return await self._enqueue_event(record, body, request_id or self._request_id())
        raise InvalidConfig(
            f"invocation_type must be RequestResponse, Event or DryRun; got {invocation_type!r}"
        )

    async def _enqueue_event(self, record: FunctionRecord, body: bytes, request_id: str) -> InvocationResult:
        invoker = self._async or await self._async_source()
        await invoker.queue.enqueue(request_id, record.name, body, self.clock.time())
        self.metrics.incr("AsyncEventsReceived", record.name)
        invoker.wake()
        return InvocationResult(request_id, record.name, 202)

    async def _execute(
        self,
        record: FunctionRecord,
        body: bytes,
        request_id: str,
        client_context: Mapping[str, Any] | None = None,
    ) -> InvocationResult:
        """The one path every invocation takes, whatever its source.

        Returns the result, with any function error (handler exception, timeout, crash,
        init failure) in ``.error``; raises only what never reached a handler
        (:class:`TooManyRequests`, :class:`RuntimeClosed`, :class:`InvalidConfig`).
        """
        name = record.name
        pool = self._pools[name]
        metrics = self.metrics
        try:
            self._limiter.acquire(name)
        except TooManyRequests:
            metrics.incr("Throttles", name)
            raise
        env: Environment | None = None
        try:
            env = pool.take_warm()
            cold = env is None
            if env is None:
                try:
                    env = await pool.cold_start()
                except FunctionError as exc:
                    metrics.incr("Invocations", name)
                    metrics.incr("Errors", name)
                    exc.request_id = request_id
                    self._log.warning(
                        "init failed",
                        function=name,
                        request_id=request_id,
                        error_type=exc.error_type,
                        error=exc.error_message,
                    )
                    return InvocationResult(
                        request_id, name, 200, error=exc, log=exc.log_tail, cold_start=True
                    )
            return await self._run(record, pool, env, cold, body, request_id, client_context)
        finally:
            self._release(name, env)

    def _release(self, name: str, env: Environment | None) -> None:
        """Give the concurrency slot back; but while a killed subinterpreter sandbox is still
        running its timed-out handler (a thread cannot be stopped), keep it counted until
        the sandbox has ``stopped``."""
        stopped = env.sandbox.stopped if env is not None else None
        if env is None or stopped is None or stopped.done() or env.sandbox.alive or not self._running:
            self._limiter.release(name)
        else:
            self._spawn(self._release_when(stopped, name))

    async def _release_when(self, stopped: asyncio.Future[None], name: str) -> None:
        try:
            await asyncio.shield(stopped)
        finally:
            self._limiter.release(name)

    async def _run(
        self,
        record: FunctionRecord,
        pool: FunctionPool,
        env: Environment,
        cold: bool,
        body: bytes,
        request_id: str,
        client_context: Mapping[str, Any] | None,
    ) -> InvocationResult:
        timeout = record.config.timeout
        request = InvokeRequest(
            request_id,
            int((self.clock.time() + timeout) * 1000),
            body,
            None if client_context is None else dict(client_context),
        )
        init_ms, env.init_ms = env.init_ms, None
        init_log, env.init_log = env.init_log, ""
        started = self.clock.monotonic()
        error: FunctionError | None = None
        try:
            reply = await env.sandbox.invoke(request, timeout)
        except SandboxTimeout:
            pool.discard(env)
            reply = InvokeReply(request_id, False, timeout * 1000)
            error = FunctionTimeout(
                "Sandbox.Timedout",
                f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds",
            )
        except SandboxDied as exc:
            pool.discard(env)
            if not self._running:
                raise RuntimeClosed("the runtime closed during the invocation") from None
            elapsed = (self.clock.monotonic() - started) * 1000
            reply = InvokeReply(request_id, False, elapsed)
            error = FunctionError(exc.error_type, f"RequestId: {request_id} Error: {exc.message}")
        except BaseException:
            pool.discard(env)
            raise
        else:
            if reply.fatal:
                pool.discard(env)
            else:
                pool.give_back(env)
            env.invocations += 1
            if not reply.ok:
                e = reply.error or {}
                error = FunctionError(
                    e.get("errorType", "Runtime.Unknown"), e.get("errorMessage", ""), e.get("stackTrace")
                )
        out = reply.body
        if error is None and len(out) > SYNC_PAYLOAD_LIMIT:  # Lambda's limit holds for responses too
            error = FunctionError(
                "Function.ResponseSizeTooLarge",
                "Response payload size exceeded maximum allowed payload size "
                f"({SYNC_PAYLOAD_LIMIT} bytes).",
            )
            out = b""
        memory = record.config.memory_mb
        result = InvocationResult(
            request_id,
            record.name,
            200,
            out,
            error,
            output=reply.log,
            init_log=init_log,
            cold_start=cold,
            duration_ms=reply.duration_ms,
            init_duration_ms=init_ms,
            max_memory_mb=memory if reply.fatal else min(reply.max_memory_mb, memory),
            memory_size_mb=memory,
        )
        if error is not None:
            error.request_id = request_id
            error.log_tail = _observe.log_tail(result.log)
        self._record_invocation(result, env.sandbox.id)
        return result

    def _record_invocation(self, result: InvocationResult, sandbox_id: str) -> None:
        name = result.function_name
        metrics = self.metrics
        metrics.incr("Invocations", name)
        metrics.observe("Duration", name, result.duration_ms)
        if result.cold_start:
            metrics.incr("ColdStarts", name)
        if result.init_duration_ms is not None:
            metrics.observe("InitDuration", name, result.init_duration_ms)
        error = result.error
        if error is not None:
            metrics.incr("Errors", name)
            if isinstance(error, FunctionTimeout):
                metrics.incr("Timeouts", name)
        log = self._log
        if not log.is_enabled_for(logging.INFO):
            return
        rid = result.request_id
        fields = {
            "function": name,
            "request_id": rid,
            "sandbox_id": sandbox_id,
            "cold_start": result.cold_start,
        }
        log.info(_observe.start_line(rid), **fields)
        if result.output:
            log.info(result.output.rstrip("\n"), **fields, source="function")
        if error is not None:
            log.warning("function error", **fields, error_type=error.error_type, error=error.error_message)
        log.info(_observe.end_line(rid), **fields)
        log.info(result.report, **fields, duration_ms=round(result.duration_ms, 2))

    # -- async invoke -----------------------------------------------------------------

    def configure_async(self, name: str, **config: Any) -> AsyncConfig:
        """Set how ``name``'s Event invocations retry and where they end (Lambda's
        event-invoke config): ``max_retry_attempts``, ``retry_delays``, ``max_event_age``,
        ``on_success``, ``on_failure``, ``dead_letter``. Validated here; replaces any
        ``async_config`` given to ``@fnrt.handler`` and applies to queued events too."""
        record = self.get_function(name)
        async_config = AsyncConfig.from_kwargs(config)
        self._async_configs[record.name] = async_config
        return async_config

    def async_config(self, name: str) -> AsyncConfig:
        """The async config in force for ``name`` (the defaults if none was set)."""
        config = self._async_configs.get(name)
        if config is not None:
            return config
        record = self._functions.get(name)
        if record is not None and record.async_config is not None:
            return record.async_config
        return _DEFAULT_ASYNC

    async def destination_records(self, sink: str) -> list[Any]:
        """The records delivered to a durable sink (``"failed-payments"`` or
        ``"sink:failed-payments"``), oldest first."""
        name = sink if ":" in sink else f"sink:{sink}"
        invoker = self._async or await self._async_source()
        return await invoker.queue.sink_records(parse_destination(name)[1])

    async def async_event(self, request_id: str) -> dict[str, Any] | None:
        """Where an Event invocation is: its ``state`` (``queued``, ``leased``, ``done``,
        ``failed``), attempts, ``condition`` and, for a failure, the destination record."""
        invoker = self._async or await self._async_source()
        return await invoker.queue.event(request_id)

    async def async_queue_counts(self, name: str | None = None) -> dict[str, int]:
        """Event counts by state, for one function or all."""
        invoker = self._async or await self._async_source()
        return await invoker.queue.counts(name)

    async def _async_source(self) -> AsyncInvoker:
        """Open the queue and start its poller (once; on first use, or at start with a
        ``state_dir`` so that events an earlier host left behind resume)."""
        async with self._async_starting:
            if self._async is None:
                queue = EventQueue(await self.state())
                await queue.setup()
                self._check_running()
                invoker = AsyncInvoker(self, queue, self.async_config)
                invoker.start()
                self._sources.append(invoker)
                self._async = invoker
            return self._async

    async def _start_async_quietly(self) -> None:
        try:
            await self._async_source()
        except RuntimeClosed:
            pass
        except Exception as exc:  # the next Event invoke tries again and raises it
            self._log.error("async queue failed to start", error=repr(exc))

    # -- maintenance ------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Retire idle sandboxes past their TTL; refill provisioned concurrency."""
        ttl = self.config.idle_ttl
        interval = min(max(ttl / 4, 0.01), 5.0)
        while True:
            await self.clock.sleep(interval)
            for pool in list(self._pools.values()):
                for env in pool.retire_idle(ttl):
                    self._log.debug("sandbox retired", function=pool.function.name, sandbox_id=env.sandbox.id)
                    await env.sandbox.close()
                name = pool.function.name
                if (
                    pool.size < pool.function.config.provisioned_concurrency
                    and name not in self._provisioning
                ):
                    self._provisioning.add(name)
                    self._spawn(self._replenish(pool))

    async def _replenish(self, pool: FunctionPool) -> None:
        try:
            await pool.provision()
        except FnrtError as exc:
            self._log.warning("provisioning failed", function=pool.function.name, error=str(exc))
        finally:
            self._provisioning.discard(pool.function.name)

    # -- statistics -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Live concurrency, sandboxes and counters, per function and overall."""
        functions: dict[str, dict[str, Any]] = {}
        for name, pool in self._pools.items():
            functions[name] = {
                **self._limiter.function_stats(name),
                **pool.stats(),
                "invocations": int(self.metrics.counter("Invocations", name)),
                "errors": int(self.metrics.counter("Errors", name)),
            }
        return {"concurrency": self._limiter.stats(), "functions": functions}

    # -- streams ----------------------------------------------------------------------

    def _stream_source(self) -> StreamSource:
        self._check_running()
        for source in self._sources:
            if isinstance(source, StreamSource):
                return source
        source = StreamSource(self)
        self._sources.append(source)
        return source

    async def create_stream(self, name: str, shard_count: int = 1, *, retention_hours: float = 24) -> Stream:
        """Create a sharded stream in the runtime's state (or open it, if it exists: a
        restarted host gets its stream back with every record and shard)."""
        return await self._stream_source().create_stream(name, shard_count, retention_hours)

    async def get_stream(self, name: str) -> Stream:
        """The stream ``name``; raises :class:`~fnrt.errors.StreamNotFound`."""
        return await self._stream_source().get_stream(name)

    async def add_stream_mapping(self, stream: str, function: str, **config: Any) -> StreamMapping:
        """Start an event source mapping from ``stream`` to ``function`` with
        :class:`~fnrt.StreamMappingConfig` settings. The same pair added again after a
        restart resumes from its durable checkpoints."""
        mapping_config = StreamMappingConfig.from_kwargs(config)
        return await self._stream_source().add_mapping(stream, function, mapping_config)

    async def remove_stream_mapping(self, mapping: StreamMapping | str) -> None:
        """Stop a mapping and delete it with its checkpoints and leases."""
        await self._stream_source().remove_mapping(mapping)

    def stream_mappings(self) -> list[StreamMapping]:
        return list(self._stream_source().mappings.values())
