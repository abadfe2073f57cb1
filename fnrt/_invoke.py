"""The invoker: the one path every invocation takes, whatever its source.

An invoke flows: take a concurrency slot (or throttle at once) -> take a warm sandbox (or
cold-start one) -> one request/reply with the function's timeout -> give the sandbox back
(or destroy it) -> log START/END/REPORT and count metrics -> release the slot. Sync
invoke, the async queue and the stream pollers all call :meth:`Invoker.invoke`; none of
them knows the runtime.

What can come out of it: an :class:`InvocationResult` (with any function error, handler
exception, timeout, crash or init failure in ``.error``), or one of the public errors
that mean no handler ran: :class:`~fnrt.errors.TooManyRequests`,
:class:`~fnrt.errors.RuntimeClosed`, :class:`~fnrt.errors.InvalidConfig`,
:class:`~fnrt.errors.ServiceError` (the sandbox machinery failed; its subclass
:class:`~fnrt.errors.StoreUnavailable` when a cluster host cannot reach the counting
service to lease a slot: never an admit beyond what the cluster granted).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from . import _json, _observe
from ._clock import Clock
from ._concurrency import ConcurrencyLimiter, Slot
from ._lambda import (
    CLIENT_CONTEXT_LIMIT,
    LARGE_PAYLOAD,
    LATEST,
    SYNC_PAYLOAD_LIMIT,
    dumps,
    iso_timestamp,
    loads,
    response_too_large,
    timeout_message,
)
from ._pool import INIT_FAILED, Environment, output_so_far
from ._registry import FunctionEntry
from .errors import (
    FnrtError,
    FunctionError,
    FunctionTimeout,
    InitError,
    InvalidPayload,
    PayloadTooLarge,
    RuntimeClosed,
    ServiceError,
    TooManyRequests,
)
from .sandbox import InvokeReply, InvokeRequest, SandboxDied, SandboxTimeout

__all__ = [
    "InvocationResult",
    "Invoker",
    "check_client_context",
    "decode_or_text",
    "decode_result",
    "encode_large",
    "encode_payload",
    "encode_payload_async",
    "encode_small",
    "looks_large",
]

Observer = Callable[["InvocationResult", "str | None", bytes], None]
ThrottleObserver = Callable[[str, str], None]


# -- payloads -------------------------------------------------------------------------

def encode_payload(payload: Any, limit: int = SYNC_PAYLOAD_LIMIT) -> bytes:
    """The event as JSON bytes. ``bytes`` are taken as a JSON document already."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        body = bytes(payload)
        if len(body) > limit:
            raise PayloadTooLarge(len(body), limit)
        if not body.strip():
            return b"{}"
        try:
            # UTF-8 only, as the sandbox reads it (json would also take UTF-16/32 and a BOM,
            # which the handler's runtime then refuses: a function error for a bad request).
            loads(body.decode())
        except (ValueError, RecursionError) as exc:
            raise InvalidPayload(f"Could not parse request body into json: {exc}") from None
        return body
    try:
        body = dumps(payload).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"payload is not JSON: {exc}") from None
    except Exception as exc:  # the payload's own code failed (a mapping whose items() raises)
        raise InvalidPayload(f"payload is not JSON: {type(exc).__name__}: {exc}") from exc
    if len(body) > limit:
        raise PayloadTooLarge(len(body), limit)
    return body


def check_client_context(client_context: object) -> None:
    """Lambda's ``ClientContext``: a JSON object of at most 3,583 bytes base64-encoded."""
    if not isinstance(client_context, Mapping):
        kind = type(client_context).__name__
        raise InvalidPayload(f"client_context must be a JSON object (client, custom, env), got {kind}")
    try:
        size = len(dumps(dict(client_context)).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"client_context is not JSON: {exc}") from None
    encoded = (size + 2) // 3 * 4
    if encoded > CLIENT_CONTEXT_LIMIT:
        raise InvalidPayload(
            f"Client context must be at most {CLIENT_CONTEXT_LIMIT} bytes base64-encoded; got {encoded}"
        )


_SCALARS = frozenset((int, float, bool, type(None)))


def looks_large(payload: Any, budget: int = 64) -> bool:
    """A cheap guess whether ``payload`` encodes to more than ``LARGE_PAYLOAD`` bytes: the
    sizes of strings found in a bounded walk (``budget`` values), and any big container,
    say so. A walk that runs out of budget (deep or wide) says so too."""
    if not payload or type(payload) in _SCALARS:
        return False
    stack = [payload]
    size = 0
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            values = item.values()
            size += 8 * len(item)
        elif kind is list or kind is tuple:
            values = item
        elif isinstance(item, (str, bytes, bytearray, memoryview)):
            size += len(item)
            if size > LARGE_PAYLOAD:
                return True
            continue
        elif isinstance(item, dict):
            values = item.values()
            size += 8 * len(item)
        elif isinstance(item, (list, tuple)):
            values = item
        else:
            continue
        count = len(item)
        budget -= count
        if count > 1024 or budget < 0:
            return True
        for value in values:
            kind = type(value)
            if kind is str:
                size += len(value)
            elif kind not in _SCALARS:
                stack.append(value)
        if size > LARGE_PAYLOAD:
            return True
    return False


def encode_small(payload: Any, limit: int = SYNC_PAYLOAD_LIMIT) -> bytes | None:
    """:func:`encode_payload` here, on the loop, when the payload looks small; ``None`` when
    it looks large (then :func:`encode_large`). The warm paths use it so the common case
    runs without a coroutine: ``encode_small(p) or await encode_large(p)``
    (an encoded payload is never empty)."""
    return None if looks_large(payload) else encode_payload(payload, limit)


async def encode_large(payload: Any, limit: int = SYNC_PAYLOAD_LIMIT) -> bytes:
    """:func:`encode_payload` on a worker thread (a 6 MB document takes tens of
    milliseconds to encode or validate: not on the event loop)."""
    return await asyncio.to_thread(encode_payload, payload, limit)


async def encode_payload_async(payload: Any, limit: int = SYNC_PAYLOAD_LIMIT) -> bytes:
    """:func:`encode_payload`, on a worker thread when the payload is large."""
    return encode_small(payload, limit) or await encode_large(payload, limit)


async def decode_result(raw: bytes) -> Any:
    """A result's JSON, decoded on a worker thread when it is large."""
    if not raw:
        return None
    if len(raw) >= LARGE_PAYLOAD:
        return await asyncio.to_thread(_json.loads, raw)
    return _json.loads(raw)


async def decode_or_text(raw: bytes) -> Any:
    """:func:`decode_result`, or the text itself when it is not JSON (for records that
    quote a result: a result a broken sandbox sent must not fail the record's writer)."""
    try:
        return await decode_result(raw)
    except (ValueError, RecursionError):
        return raw.decode(errors="replace")


# -- results --------------------------------------------------------------------------


class InvocationResult:
    """Everything Lambda's Invoke API returns, plus what the REPORT line says.

    The log text (START, the handler's output, END, REPORT) is composed on first access:
    most callers never read it, and the warm path should not pay for it.
    """

    __slots__ = (
        "_application_level",
        "_init_log",
        "_log",
        "_logged_at",
        "_system_level",
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
        self.executed_version = LATEST
        self._init_log = init_log
        self._log = log
        #: Set when the function's log format is JSON (:meth:`in_json_format`).
        self._system_level: str | None = None
        self._application_level: str | None = None
        self._logged_at = 0.0

    def in_json_format(self, system_level: str | None, application_level: str | None, at: float) -> None:
        """Write the log in Lambda's JSON log format, with these levels; ``at``: when the
        invocation ended (the platform lines' time)."""
        self._system_level = system_level
        self._application_level = application_level
        self._logged_at = at

    @property
    def payload(self) -> Any:
        """The handler's result (or Lambda's error body on a function error)."""
        if self.error is not None:
            return self.error.to_lambda()
        return _json.loads(self.raw) if self.raw else None

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
        """The invocation's log as Lambda writes it: START, output, END, REPORT (in the JSON
        log format, the platform's JSON objects: :func:`fnrt._observe.platform_log`)."""
        if self._log is None and self._system_level is not None:
            error = self.error
            self._log = _observe.platform_log(
                self._system_level,
                self.request_id,
                self.output,
                at=self._logged_at,
                duration_ms=self.duration_ms,
                memory_mb=self.memory_size_mb,
                max_memory_mb=self.max_memory_mb,
                init_ms=self.init_duration_ms,
                init_log=self._init_log,
                function_name=self.function_name,
                error_type=None if error is None else error.error_type,
                timed_out=isinstance(error, FunctionTimeout),
                produced_bytes=len(self.raw),
                application_level=self._application_level,
            )
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


# -- the invoker ----------------------------------------------------------------------


def _ended_line(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


class Invoker:
    """Encodes nothing and knows no source: admits, runs and reports one invocation."""

    def __init__(
        self,
        limiter: ConcurrencyLimiter,
        clock: Clock,
        metrics: _observe.Metrics,
        log: Any,
    ) -> None:
        self.limiter = limiter
        self.clock = clock
        self.metrics = metrics
        self.log = log
        #: Called with ``(result, sandbox_id, request_body)`` after every invocation that
        #: reached a sandbox (the console's recent-invocations ring, for one).
        self.observers: list[Observer] = []
        #: Called with ``(function, reason)`` for every throttle.
        self.throttle_observers: list[ThrottleObserver] = []
        #: Set by the runtime when it starts closing: a sandbox killed under a call then
        #: means :class:`RuntimeClosed`, not a crash of the function.
        self.closing = False
        # Request ids in UUID form: a random prefix per runtime and a counter. Unique like
        # uuid4() (76 random bits per runtime) at a tenth of its cost on the warm path.
        prefix = uuid.uuid4().hex
        variant = "89ab"[int(prefix[16], 16) % 4]
        self._rid_prefix = f"{prefix[:8]}-{prefix[8:12]}-4{prefix[13:16]}-{variant}{prefix[17:20]}-"
        self._rid_counter = itertools.count(int(prefix[20:32], 16) >> 8)

    def request_id(self) -> str:
        return f"{self._rid_prefix}{next(self._rid_counter) & 0xFFFFFFFFFFFF:012x}"

    async def invoke(
        self,
        entry: FunctionEntry,
        body: bytes,
        request_id: str,
        client_context: Mapping[str, Any] | None = None,
        invoked_arn: str | None = None,
    ) -> InvocationResult:
        """Run one invocation of ``entry``'s function with the JSON ``body``.
        ``invoked_arn``: the (qualified) ARN the caller used, for the context."""
        if self.closing:  # admitted before the close began (it awaited on the way here)
            raise RuntimeClosed("the runtime closed before the invocation could start")
        record = entry.record
        name = record.name
        try:
            slot = self.limiter.acquire(entry.counter)
            if slot is None:  # a cluster host whose leased block is empty: one round trip
                slot = await self.limiter.acquire_async(entry.counter)
        except TooManyRequests as exc:
            self._throttled(name, exc)
            raise
        pool = entry.pool
        env: Environment | None = None
        try:
            env = pool.take_warm()
            cold = env is None
            if cold and not entry.scaling.take(self.clock.monotonic()):
                throttle = self.limiter.scaling_throttle(entry.counter)
                self._throttled(name, throttle)
                raise throttle
            # Lambda's ConcurrentExecutions (per function and account-wide) and
            # UnreservedConcurrentExecutions, sampled as each call starts: their summaries'
            # max is the peak, as CloudWatch's Maximum statistic is.
            counter = entry.counter
            limiter = self.limiter
            self.metrics.admitted(
                name,
                counter.in_flight,
                limiter.running,
                limiter.unreserved_in_flight if counter.reserved is None else None,
            )
            if env is None:
                try:
                    env = await pool.cold_start(record.config.timeout)
                except FunctionTimeout as exc:  # the retried init phase used up the timeout
                    timeout = record.config.timeout
                    timed_out = FunctionTimeout(
                        "Sandbox.Timedout", timeout_message(request_id, timeout), log_tail=exc.log_tail
                    )
                    self.metrics.incr("Timeouts", name)
                    return self._init_failed(name, request_id, timed_out, body)
                except FunctionError as exc:
                    return self._init_failed(name, request_id, exc, body)
            # -- the invocation proper (inline: one coroutine less on the warm path) --
            config = record.config
            if config.provisioned_concurrency:
                self._provisioned(name, entry, env)
            timeout = config.timeout
            if env.budget_used:  # the first invocation after a retried init phase
                budget = timeout - env.budget_used
                env.budget_used = 0.0
            else:
                budget = timeout
            init_ms = env.init_ms
            init_log = env.init_log
            if init_ms is not None or init_log:  # reported once, with the first invocation
                env.init_ms = None
                env.init_log = ""
            clock = self.clock
            started = clock.monotonic()
            sandbox = env.sandbox
            error: FunctionError | None = None
            try:
                request = InvokeRequest(
                    request_id,
                    # On the wall clock the sandbox reads (get_remaining_time_in_millis is
                    # deadline - time.time()), whatever clock the runtime runs on: with a
                    # FakeClock the handler sees its timeout count down, not a fake date.
                    int((time.time() + budget) * 1000),
                    body,
                    None if client_context is None else dict(client_context),
                    None,
                    invoked_arn,
                )
                reply = await sandbox.invoke(request, budget if budget > 0.001 else 0.001)
            except SandboxTimeout:
                pool.discard(env)
                # What it printed, Lambda's own line, and the peak memory last known of.
                at = iso_timestamp(clock.time())
                line = f"{at} {request_id} Task timed out after {timeout:.2f} seconds\n"
                log = _ended_line(await output_so_far(sandbox, request_id)) + line
                reply = InvokeReply(request_id, False, timeout * 1000, max_memory_mb=env.peak_mb, log=log)
                error = FunctionTimeout("Sandbox.Timedout", timeout_message(request_id, timeout))
            except SandboxDied as exc:
                pool.discard(env)
                if self.closing:
                    raise RuntimeClosed("the runtime closed during the invocation") from None
                if exc.service:  # the machinery failed under the call, not the function
                    raise ServiceError(f"fnrt lost the invocation's sandbox: {exc.message}") from None
                message = f"RequestId: {request_id} Error: {exc.message}"
                printed = _ended_line(await output_so_far(sandbox, request_id))
                reply = InvokeReply(
                    request_id,
                    False,
                    (clock.monotonic() - started) * 1000,
                    max_memory_mb=env.peak_mb,
                    log=f"{printed}{message}\n{exc.error_type}\n",  # as Lambda logs a runtime that exited
                )
                error = FunctionError(exc.error_type, message)
            except BaseException:
                pool.discard(env)
                raise
            else:
                if reply.fatal:
                    pool.discard(env)
                else:
                    pool.give_back(env)
                env.invocations += 1
                env.peak_mb = reply.max_memory_mb
                if not reply.ok:
                    e = reply.error or {}
                    error = FunctionError(
                        e.get("errorType", "Runtime.Unknown"), e.get("errorMessage", ""), e.get("stackTrace")
                    )
            out = reply.body
            if error is None and len(out) > SYNC_PAYLOAD_LIMIT:  # Lambda's limit holds for responses too
                error = FunctionError("Function.ResponseSizeTooLarge", response_too_large())
                out = b""
            memory = config.memory_mb
            result = InvocationResult(
                request_id,
                name,
                200,
                out,
                error,
                output=reply.log,
                init_log=init_log,
                cold_start=cold,
                duration_ms=reply.duration_ms,
                init_duration_ms=init_ms,
                # The sandbox's true peak (ru_maxrss); an environment that ran out of memory used it all.
                max_memory_mb=memory if reply.fatal else reply.max_memory_mb,
                memory_size_mb=memory,
            )
            if config.log_format == "JSON":
                result.in_json_format(config.system_level, config.log_level, clock.time())
            if error is not None:
                error.request_id = request_id
                error.log_tail = _observe.log_tail(result.log)
            self._record(result, sandbox.id, body)
            return result
        except FnrtError:
            raise
        except Exception as exc:  # never a private error to the caller
            self.log.error("invocation failed in fnrt", function=name, request_id=request_id, exc_info=exc)
            raise ServiceError(f"fnrt could not run the invocation: {type(exc).__name__}: {exc}") from exc
        finally:
            if env is not None and env in pool.active:
                # Taken but neither given back nor destroyed: an error between taking it
                # and the call. Its state is unknown, so it goes; it must never leak.
                pool.discard(env)
            if env is None or env.sandbox.stopped is None:
                slot.release()
            else:
                self._release(slot, env)

    def _provisioned(self, name: str, entry: FunctionEntry, env: Environment) -> None:
        """Lambda's provisioned concurrency metrics, for a function that has some: an
        invocation on a provisioned environment, or one that spilled over to on-demand."""
        if not env.provisioned:
            self.metrics.incr("ProvisionedConcurrencySpilloverInvocations", name)
            return
        allocated = entry.record.config.provisioned_concurrency
        self.metrics.provisioned(name, entry.pool.provisioned_busy, allocated)

    def _throttled(self, name: str, exc: TooManyRequests) -> None:
        self.metrics.incr("Throttles", name)
        for observer in self.throttle_observers:
            observer(name, exc.reason)

    def _init_failed(self, name: str, request_id: str, exc: FunctionError, body: bytes) -> InvocationResult:
        if exc.error_message.startswith(INIT_FAILED):
            # The environment ended in its init phase (an exit, a signal): as Lambda answers
            # the invocation that started it, "RequestId: <id> Error: Runtime exited ...".
            ended = exc.error_message[len(INIT_FAILED) :]
            message = f"RequestId: {request_id} Error: {ended}"
            exc = InitError(exc.error_type, message, exc.stack_trace, log_tail=exc.log_tail)
        self.metrics.incr("Invocations", name)
        self.metrics.incr("Errors", name)
        self.metrics.incr("ColdStarts", name)
        exc.request_id = request_id
        self.log.warning(
            "init failed",
            function=name,
            request_id=request_id,
            error_type=exc.error_type,
            error=exc.error_message,
        )
        result = InvocationResult(request_id, name, 200, error=exc, log=exc.log_tail, cold_start=True)
        for observer in self.observers:
            observer(result, None, body)
        return result

    @staticmethod
    def _release(slot: Slot, env: Environment | None) -> None:
        """Give the slot back; but while a killed subinterpreter sandbox still runs its
        timed-out handler (a thread cannot be stopped), keep it counted until the sandbox
        has ``stopped``."""
        stopped = env.sandbox.stopped if env is not None else None
        if env is None or stopped is None or stopped.done() or env.sandbox.alive:
            slot.release()
        else:
            stopped.add_done_callback(lambda _: slot.release())

    def _record(self, result: InvocationResult, sandbox_id: str, body: bytes) -> None:
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
        for observer in self.observers:
            observer(result, sandbox_id, body)
        log = self.log
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
