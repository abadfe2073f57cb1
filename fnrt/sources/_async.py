"""Asynchronous invoke: the poller that drains the durable event queue.

One poller loop per runtime. Each turn it leases the due events of every registered
function (at most ``per_function`` in flight per function, ``max_in_flight`` in all, so
task creation is bounded), runs each through the runtime's one invoke path (the same
concurrency limits as sync calls), writes the outcome back to its row, and sleeps on the
runtime clock until the next event is due or an enqueue wakes it.

What an attempt's result means, as Lambda does it:

- success: the event is ``done``; the ``on_success`` destination gets a ``Success`` record.
- function error (the handler raised, timed out, exited, ran out of memory, failed its
  init phase): one retry attempt is used; with attempts left the event is queued again
  after ``retry_delays``, else it is ``failed`` with ``RetriesExhausted``.
- throttle (:class:`TooManyRequests`) or system error (no sandbox could even be created,
  the function is not registered right now): no attempt is used; the event is queued
  again with exponential backoff (1 s doubling to 5 min) until its age runs out.
- the event is older than ``max_event_age`` when taken: ``failed`` with ``EventAgeExceeded``.

A failed event goes to the ``on_failure`` destination and the dead-letter sink (both, when
both are set) in the same transaction that marks it failed; with neither, its row keeps
the record and the event counts as dropped (Lambda's AsyncEventsDropped) and is logged.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from .._config import AsyncConfig, parse_destination
from ..errors import FunctionNotFound, RuntimeClosed, ServiceError, TooManyRequests
from ..sandbox import SandboxDied
from ..store._queue import EventQueue, Outcome, QueuedEvent

if TYPE_CHECKING:
    from .._pool import FunctionRecord
    from .._runtime import InvocationResult, Runtime

# ``@fnrt.handler(async_config={...})`` is read here (validated at deploy by the runtime).

EVENT_PAYLOAD_LIMIT = 1024 * 1024
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _timestamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(data: bytes | None) -> Any:
    return json.loads(data) if data else None


class AsyncInvoker:
    """The async queue's poller and retry policy. Registered in ``Runtime._sources``."""

    def __init__(
        self,
        runtime: Runtime,
        queue: EventQueue,
        config_for: Callable[[str], AsyncConfig],
        *,
        max_in_flight: int = 256,
        per_function: int = 64,
        lease_margin: float = 30.0,
        idle_poll: float = 1.0,
        backoff: tuple[float, float] = (1.0, 300.0),
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.clock = runtime.clock
        self.metrics = runtime.metrics
        self.config_for = config_for
        self.max_in_flight = max_in_flight
        self.per_function = per_function
        # A lease lasts the function's timeout plus this margin: long enough for an attempt
        # and its write-back, short enough that a crashed host's events soon run again.
        self.lease_margin = lease_margin
        self.idle_poll = idle_poll
        self.backoff = backoff
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._log = runtime._log.bind(source="async")
        self._wake = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], QueuedEvent] = {}
        self._busy: Counter[str] = Counter()
        self._poller: asyncio.Task[None] | None = None
        self._parked = False

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.ensure_future(self._poll())

    def wake(self) -> None:
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing in flight and the poller asleep until the next due time (for tests and
        shutdown decisions: every due event has been handled)."""
        return self._parked and not self._wake.is_set() and not self._in_flight

    async def aclose(self) -> None:
        """Stop polling; interrupt attempts in flight and give their leases back, so the
        next start runs them at once (at least once: they may have run partly)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        held = dict(self._in_flight)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        if held:
            await self.queue.release(list(held.values()))

    # -- the poller -------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.time()
            filling = False
            for record in self.runtime.functions().values():
                room = self._room(record)
                if 0 < room < self._batch(record) and self._busy[record.name]:
                    # Take in batches: a take is a write transaction, so leasing each event
                    # alone as its predecessor finishes caps throughput at one transaction
                    # per event. While attempts run, wait until a quarter of the room is free.
                    filling = True
                    continue
                if room > 0:
                    lease_until = now + record.config.timeout + self.lease_margin
                    for event in await self.queue.take(record.name, now, room, self.owner, lease_until):
                        self._start(event)
            await self._sleep(filling)

    def _batch(self, record: FunctionRecord) -> int:
        cap = self.per_function
        if record.config.reserved_concurrency is not None:
            cap = min(cap, max(record.config.reserved_concurrency, 1))
        return max(1, cap // 4)

    def _room(self, record: FunctionRecord) -> int:
        cap = self.per_function
        reserved = record.config.reserved_concurrency
        if reserved is not None:
            cap = min(cap, max(reserved, 1))  # reserved 0: take one at a time, to throttle and age out
        return max(0, min(cap - self._busy[record.name], self.max_in_flight - len(self._in_flight)))

    async def _sleep(self, filling: bool = False) -> None:
        """Until the next event is due (a retry delay, a backoff, a lease expiring), an
        enqueue or a finished attempt wakes us, or ``idle_poll`` passes (new deploys).
        ``filling``: attempts are running and a finishing one will wake us, so do not ask
        the database when the next event is due (a query per finished attempt)."""
        ready = [r.name for r in self.runtime.functions().values() if self._room(r) > 0]
        due = None if filling else await self.queue.next_due(ready)
        delay = self.idle_poll if due is None else min(self.idle_poll, due - self.clock.time())
        if delay <= 0 or self._wake.is_set():
            return
        timer = self.clock.call_later(delay, self._wake.set)
        self._parked = True
        try:
            await self._wake.wait()
        finally:
            self._parked = False
            timer.cancel()

    def _start(self, event: QueuedEvent) -> None:
        task = asyncio.ensure_future(self._attempt(event))
        self._in_flight[task] = event
        self._busy[event.function] += 1
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        event = self._in_flight.pop(task)
        self._busy[event.function] -= 1
        if not task.cancelled() and task.exception() is not None:
            # The write-back failed (the database): the lease expires and the event runs again.
            self._log.error(
                "async attempt not recorded", request_id=event.request_id, error=repr(task.exception())
            )
        self._wake.set()

    # -- one attempt ------------------------------------------------------------------

    async def _attempt(self, event: QueuedEvent) -> None:
        name = event.function
        config = self.config_for(name)
        now = self.clock.time()
        age = now - event.enqueued_at
        expires = event.enqueued_at + config.max_event_age
        if age >= config.max_event_age:
            await self._fail(event, config, "EventAgeExceeded", event.invokes, event.attempts)
            return
        try:
            record = self.runtime.get_function(name)
            self.metrics.observe("AsyncEventAge", name, age * 1000)
            result = await self.runtime._execute(record, event.payload, event.request_id)
        except RuntimeClosed:
            return  # closing: aclose() gives the lease back
        except TooManyRequests as exc:
            await self._back_off(event, config, expires, 429, None, _dumps(exc.to_lambda()).encode())
            return
        except (ServiceError, SandboxDied, FunctionNotFound, OSError) as exc:
            body = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
            await self._back_off(event, config, expires, 500, None, _dumps(body).encode())
            return
        invokes = event.invokes + 1
        if result.error is None:
            await self._succeed(event, config, result, invokes)
            return
        attempts = event.attempts + 1
        response = _dumps(result.error.to_lambda()).encode()
        if attempts > config.max_retry_attempts:
            await self._fail(event, config, "RetriesExhausted", invokes, attempts, 200, "Unhandled", response)
            return
        run_at = min(self.clock.time() + config.retry_delay(attempts), expires)
        self._log.info(
            "async retry scheduled",
            function=name,
            request_id=event.request_id,
            attempt=attempts,
            error_type=result.error.error_type,
            run_at=run_at,
        )
        await self.queue.settle(
            event,
            Outcome(
                "queued",
                run_at=run_at,
                attempts=attempts,
                invokes=invokes,
                system_retries=event.system_retries,
                status=200,
                function_error="Unhandled",
                response=response,
            ),
            self.clock.time(),
        )

    async def _back_off(
        self,
        event: QueuedEvent,
        config: AsyncConfig,
        expires: float,
        status: int,
        function_error: str | None,
        response: bytes,
    ) -> None:
        """Throttled or a system error: queue again after a growing delay, no attempt used."""
        retries = event.system_retries + 1
        low, high = self.backoff
        delay = min(high, low * 2 ** min(retries - 1, 30))
        now = self.clock.time()
        if now >= expires:
            await self._fail(
                event, config, "EventAgeExceeded", event.invokes, event.attempts, status, None, response
            )
            return
        await self.queue.settle(
            event,
            Outcome(
                "queued",
                run_at=min(now + delay, expires),
                attempts=event.attempts,
                invokes=event.invokes,
                system_retries=retries,
                status=status,
                function_error=function_error,
                response=response,
            ),
            now,
        )

    async def _succeed(
        self, event: QueuedEvent, config: AsyncConfig, result: InvocationResult, invokes: int
    ) -> None:
        now = self.clock.time()
        outcome = Outcome(
            "done",
            attempts=event.attempts,
            invokes=invokes,
            system_retries=event.system_retries,
            status=200,
            condition="Success",
        )
        if config.on_success is not None:
            record = self._record(event, "Success", invokes, 200, None, result.raw or b"null", now)
            outcome = self._deliver(outcome, event.function, config.on_success, record)
        await self.queue.settle(event, outcome, now)

    async def _fail(
        self,
        event: QueuedEvent,
        config: AsyncConfig,
        condition: str,
        invokes: int,
        attempts: int,
        status: int | None = None,
        function_error: str | None = None,
        response: bytes | None = None,
    ) -> None:
        """The event is given up: its record goes to ``on_failure`` and the dead-letter
        sink in the transaction that marks the row ``failed``."""
        name = event.function
        now = self.clock.time()
        if status is None:  # given up at take time: report the last attempt's response
            status, function_error, response = event.last_status, event.last_error, event.last_response
        record = self._record(event, condition, invokes, status, function_error, response, now)
        outcome = Outcome(
            "failed",
            attempts=attempts,
            invokes=invokes,
            system_retries=event.system_retries,
            status=status,
            function_error=function_error,
            response=response,
            condition=condition,
            record=record,
        )
        if config.on_failure is not None:
            outcome = self._deliver(outcome, name, config.on_failure, record)
        if config.dead_letter is not None:
            message = self._dead_letter_message(event, status, response)
            sink = parse_destination(config.dead_letter)[1]
            outcome = attrs.evolve(outcome, sink_records=[*outcome.sink_records, (sink, message)])
        self.metrics.incr("AsyncEventsDropped", name)
        self._log.warning(
            "async event failed",
            function=name,
            request_id=event.request_id,
            condition=condition,
            approximate_invoke_count=invokes,
            on_failure=config.on_failure,
            dead_letter=config.dead_letter,
        )
        try:
            await self.queue.settle(event, outcome, now)
        except Exception:
            if config.dead_letter is not None:
                self.metrics.incr("DeadLetterErrors", name)
            if config.on_failure is not None:
                self.metrics.incr("DestinationDeliveryFailures", name)
            raise

    # -- records ----------------------------------------------------------------------

    def _deliver(self, outcome: Outcome, function: str, destination: str, record: str) -> Outcome:
        """Add a destination's record to the outcome's transaction: a sink row, or an
        Event for another function."""
        kind, target = parse_destination(destination)
        if kind == "sink":
            return attrs.evolve(outcome, sink_records=[*outcome.sink_records, (target, record)])
        body = record.encode()
        try:
            self.runtime.get_function(target)
        except FunctionNotFound:
            problem = f"destination function {target!r} is not registered"
        else:
            if len(body) <= EVENT_PAYLOAD_LIMIT:
                self.metrics.incr("AsyncEventsReceived", target)
                return attrs.evolve(outcome, events=[*outcome.events, (str(uuid.uuid4()), target, body)])
            problem = f"the record is {len(body)} bytes, over the {EVENT_PAYLOAD_LIMIT} byte Event limit"
        # Not delivered: the record stays on the event's row (Runtime.async_event shows it).
        self.metrics.incr("DestinationDeliveryFailures", function)
        self._log.warning("destination delivery failed", destination=destination, error=problem)
        return outcome

    def _record(
        self,
        event: QueuedEvent,
        condition: str,
        invokes: int,
        status: int | None,
        function_error: str | None,
        response: bytes | None,
        now: float,
    ) -> str:
        """The record Lambda sends to a destination."""
        response_context: dict[str, Any] = {"statusCode": status, "executedVersion": "$LATEST"}
        if function_error is not None:
            response_context["functionError"] = function_error
        return _dumps(
            {
                "version": "1.0",
                "timestamp": _timestamp(now),
                "requestContext": {
                    "requestId": event.request_id,
                    "functionArn": f"{self.runtime.config.function_arn(event.function)}:$LATEST",
                    "condition": condition,
                    "approximateInvokeCount": invokes,
                },
                "requestPayload": _json(event.payload),
                "responseContext": response_context,
                "responsePayload": _json(response),
            }
        )

    def _dead_letter_message(self, event: QueuedEvent, status: int | None, response: bytes | None) -> str:
        """Lambda's dead-letter message: the event itself, with the failure as attributes."""
        error = _json(response) or {}
        message = error.get("errorMessage") or error.get("message") or ""
        return _dumps(
            {
                "body": _json(event.payload),
                "messageAttributes": {
                    "RequestID": event.request_id,
                    "ErrorCode": str(status or 200),
                    "ErrorMessage": str(message)[:1024],
                },
            }
        )
