"""Asynchronous invoke: the poller that drains the durable event queue.

One poller loop per runtime. Each turn it leases the due events of every registered
function (at most ``per_function`` in flight per function, ``max_in_flight`` in all, so
task creation is bounded), runs each through the invoker (the same path and concurrency
limits as sync calls), writes the outcome back to its row, and sleeps on the clock until
the next event is due or an enqueue wakes it.

A new event whose function has room, and whose queue had nothing more due at the poller's
last take, skips the queue's round trip: it is stored already leased to this poller, and
its attempt starts in the loop turn its commit ends (a *handoff*: no take, no poller
turn). Otherwise it is stored queued and the poller takes it. While handoffs feed a
function, the poller takes for it only once per ``idle_poll`` (retries that fell due,
leases of a dead host); anything put in its queue (an event that found no room, a retry,
a destination's event, another host's enqueue) ends the handoffs until a take finds the
queue drained again, so a backlog is never overtaken for long.

The poller is a supervised loop: a store
failure is logged and retried with backoff, and draining resumes when the store is back.

What an attempt's result means, as Lambda does it:

- success: the event is ``done``; the ``on_success`` destination gets a ``Success`` record.
- function error (the handler raised, timed out, exited, ran out of memory, failed its
  init phase): one retry attempt is used; with attempts left the event is queued again
  after ``retry_delays``, else it is ``failed`` with ``RetriesExhausted``.
- throttle (:class:`TooManyRequests`) or system error (no sandbox could even be created,
  the function is not registered right now): no attempt is used; the event is queued
  again with exponential backoff (1 s doubling to 5 min) until its age runs out.
- the event is older than ``max_event_age`` when taken: ``failed`` with ``EventAgeExceeded``.
- the function's reserved concurrency is 0: ``failed`` at once, without retries (Lambda
  sends such events straight to the dead-letter queue or on-failure destination).

A failed event goes to the ``on_failure`` destination and the dead-letter sink (both, when
both are set) in the same transaction that marks it failed; with neither, its row keeps
the record and the event counts as dropped (Lambda's AsyncEventsDropped) and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import attrs

from .._clock import Clock
from .._config import AsyncConfig, parse_destination
from .._invoke import Invoker, decode_or_text
from .._lambda import (
    EVENT_PAYLOAD_LIMIT,
    RESERVED_REASON,
    THROTTLE_MESSAGE,
    async_record,
    backoff,
    dead_letter_message,
    dumps,
    function_arn,
)
from .._observe import Metrics
from .._registry import FunctionEntry, FunctionRegistry
from .._supervise import INFRASTRUCTURE, Supervisor
from ..errors import FunctionNotFound, RuntimeClosed, ServiceError, TooManyRequests
from ..store import Outcome, QueuedEvent
from ..store import QueueStore as EventQueue

__all__ = ["DELETED", "AsyncInvoker", "AsyncSource"]

#: The condition of an event dropped because its function was deleted.
DELETED = "FunctionDeleted"

#: The first and the longest delay between two writes of an outcome the store refused.
WRITE_BACK_RETRY = (0.05, 5.0)
#: Lambda's response to an event of a function whose reserved concurrency is 0.
_REFUSED = dumps(TooManyRequests(RESERVED_REASON, THROTTLE_MESSAGE).to_lambda()).encode()


class AsyncSource:
    """The async invoke source, whole: enqueue, per-function config, queries, the poller
    and its retry policy, destinations. It sees the invoker, the registry and the store,
    never the runtime."""

    def __init__(
        self,
        *,
        invoker: Invoker,
        registry: FunctionRegistry,
        open_queue: Callable[[], Awaitable[EventQueue]],
        clock: Clock,
        metrics: Metrics,
        log: Any,
        supervisor: Supervisor,
        region: str = "us-east-1",
        account_id: str = "000000000000",
        max_in_flight: int = 256,
        per_function: int = 64,
        lease_margin: float = 30.0,
        idle_poll: float = 1.0,
        backoff: tuple[float, float] = (1.0, 300.0),
    ) -> None:
        self.invoker = invoker
        self.registry = registry
        self._open_queue = open_queue
        self._queue: EventQueue | None = None
        self._opening = asyncio.Lock()
        self.clock = clock
        self.metrics = metrics
        self.supervisor = supervisor
        self.region = region
        self.account_id = account_id
        self.max_in_flight = max_in_flight
        self.per_function = per_function
        # A lease lasts the function's timeout plus this margin: long enough for an attempt
        # and its write-back, short enough that a crashed host's events soon run again.
        self.lease_margin = lease_margin
        self.idle_poll = idle_poll
        self.backoff = backoff
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._log = log.bind(source="async")
        self._wake = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], QueuedEvent] = {}
        # Attempts invoking, per function (what per_function caps), and those past their
        # invocation that are writing their outcome (still in _in_flight: they hold a lease).
        self._busy: Counter[str] = Counter()
        self._writing: set[asyncio.Task[None]] = set()
        # Attempts that ended because the runtime closed under them: their leases go back
        # at aclose(), with those still in flight, so the next start runs them at once.
        self._interrupted: list[QueuedEvent] = []
        self._taking: asyncio.Future[list[QueuedEvent]] | None = None  # a take under way
        # Handoffs (the module's docstring): functions whose last take found nothing more
        # due; events put in each function's queue for the poller (a take that saw the
        # count move may have missed one); when the poller last took for each; handoffs
        # whose commit is under way (they hold their room already).
        self._clear: set[str] = set()
        self._queued: Counter[str] = Counter()
        self._swept: dict[str, float] = {}
        self._handing = 0
        self._closing = False
        self._handed_all: asyncio.Future[None] | None = None  # aclose() waits for handoffs
        # The last turn left due events for want of room (a function's or max_in_flight):
        # every attempt's end wakes the poller, not only those of functions with a backlog.
        self._starved = False
        # The last turn left a backlog (a function not known drained) waiting for room that
        # others share (max_in_flight, the shared pool): no handoff may take that room.
        self._crowded = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the poller's (set each turn)
        self._poller: asyncio.Task[None] | None = None
        self._parked = False
        # Functions deleted (remove_function) and not registered again: an attempt of theirs
        # still running when they went is dropped when it ends, never queued again.
        self._deleted: set[str] = set()

    # -- the store --------------------------------------------------------------------

    async def queue(self) -> EventQueue:
        """The queue store, opened (and its poller started) on first use."""
        if self._queue is None:
            async with self._opening:
                if self._queue is None:
                    queue = await self._open_queue()
                    await queue.setup()
                    self._queue = queue
                    self.start()
        return self._queue

    @property
    def opened(self) -> bool:
        return self._queue is not None

    # -- what callers do --------------------------------------------------------------

    async def enqueue(self, entry: FunctionEntry, body: bytes, request_id: str) -> None:
        """Store one Event durably; returns once it is committed. With room and no
        backlog, it is handed straight to an attempt (the module's docstring)."""
        queue = self._queue or await self.queue()
        name = entry.name
        now = self.clock.time()
        if name in self._clear and not self._closing and not self._crowded and self._room(entry) > 0:
            self._busy[name] += 1
            self._handing += 1
            lease_until = now + entry.record.config.timeout + self.lease_margin
            try:
                handed = functools.partial(self._handed, name)
                stored = queue.enqueue_leased(request_id, name, body, now, self.owner, lease_until, handed)
            except BaseException:  # raised at once: nothing stored, nothing will be called
                self._handed(name, None)
                raise
            await stored
        else:
            self._put_in_queue(name)
            await queue.enqueue(request_id, name, body, now)
            self._put_in_queue(name)  # again: a take that ran meanwhile may have missed it
            self._wake.set()
        self.metrics.incr("AsyncEventsReceived", name)

    def _put_in_queue(self, name: str) -> None:
        """An event of ``name`` is (being) put in its queue for the poller to take: no
        handoff overtakes it, and the next take of ``name`` must not call it drained."""
        self._clear.discard(name)
        self._queued[name] += 1

    def _handed(self, name: str, event: QueuedEvent | None) -> None:
        """A handoff's commit ended (called by the store, once): start the attempt of the
        event stored (it holds its room already), or give the room back."""
        self._handing -= 1
        task = None
        if event is not None and not self._closing:
            with contextlib.suppress(RuntimeClosed):
                task = self.supervisor.start(self._attempt(event))
        if task is not None and event is not None:
            self._in_flight[task] = event
        else:
            self._busy[name] -= 1
            if event is not None:  # stored while closing: its lease goes back at aclose()
                self._interrupted.append(event)
        if not self._handing and self._handed_all is not None and not self._handed_all.done():
            self._handed_all.set_result(None)

    def configure(self, name: str, config: AsyncConfig) -> AsyncConfig:
        """Lambda's event-invoke config for ``name``; applies to queued events too."""
        entry = self.registry.get(name)
        entry.async_override, entry.async_deleted = config, False
        return config

    def config_for(self, name: str) -> AsyncConfig:
        entry = self.registry.lookup(name)
        return entry.async_config if entry is not None else AsyncConfig()

    async def deliver(self, source: str, destination: str, record: str) -> None:
        """Hand a record to a destination on behalf of another source (a stream mapping's
        on-failure): a durable sink row, or an ``Event`` for a function. Returns once it is
        stored; raises what the store raises (the caller then does not move on)."""
        queue = self._queue or await self.queue()
        kind, target = parse_destination(destination)
        now = self.clock.time()
        if kind == "sink":
            await queue.append_sink(target, record, now)
            return
        body = record.encode()
        if target not in self.registry or len(body) > EVENT_PAYLOAD_LIMIT:
            problem = (
                "not registered" if target not in self.registry else f"{len(body)} bytes, over the limit"
            )
            self.metrics.incr("DestinationDeliveryFailures", source)
            self._log.warning("destination delivery failed", destination=destination, error=problem)
            return
        await self._putting(queue.enqueue(str(uuid.uuid4()), target, body, now), [target])
        self.metrics.incr("AsyncEventsReceived", target)

    async def discard(self, name: str) -> None:
        """``name`` was deleted (Lambda's DeleteFunction): its queued events can never run,
        so they are dropped now (``failed`` with condition ``FunctionDeleted``, counted in
        AsyncEventsDropped), and so is any attempt of it still running when it ends with a
        retry or a backoff. Its event-invoke config and destinations went with it. A
        function that is only replaced (a redeploy, an update) is not deleted: its events
        stay queued for the new generation; so do those of a function never registered
        here (a restarted host that has not deployed it yet, another host's)."""
        self._deleted.add(name)
        # Events put in its queue meanwhile (another host's): added again, it takes them
        # before any new event is handed off.
        self._put_in_queue(name)
        queue = self._queue or await self.queue()
        dropped = await queue.discard(name, DELETED, self.clock.time())
        if dropped:
            self.metrics.incr("AsyncEventsDropped", name, len(dropped))
            self._log.warning(
                "async events dropped: their function was deleted", function=name, events=len(dropped)
            )

    async def destination_records(self, sink: str, newest: int | None = None) -> list[Any]:
        return await (await self.queue()).sink_records(parse_destination(sink)[1], newest=newest)

    async def destination_count(self, sink: str) -> int:
        return await (await self.queue()).sink_count(parse_destination(sink)[1])

    async def event(self, request_id: str) -> dict[str, Any] | None:
        return await (await self.queue()).event(request_id)

    async def counts(self, name: str | None = None, states: Sequence[str] | None = None) -> dict[str, int]:
        return await (await self.queue()).counts(name, states=states)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._poller is None:
            self._poller = self.supervisor.loop("async-poller", self._poll_once, wake=self._wake)

    def wake(self, function: str | None = None) -> None:
        """Something was put in ``function``'s queue (every function's: ``None``) by
        another writer (a host sharing the store): take it."""
        if function is None:
            self._clear.clear()
        else:
            self._put_in_queue(function)
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing in flight and the poller asleep until the next due time (every due
        event has been handled). True too when the queue was never opened."""
        if self._poller is None:
            return True
        return self._parked and not self._wake.is_set() and not self._in_flight and not self._handing

    async def aclose(self) -> None:
        """Stop polling; interrupt attempts in flight and give their leases back, so the
        next start runs them at once (at least once: they may have run partly)."""
        self._closing = True  # no more handoffs; those committing now come back unstarted
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        taken: list[QueuedEvent] = []
        taking, self._taking = self._taking, None
        if taking is not None:  # the poller was cancelled while this take committed
            with contextlib.suppress(Exception):
                taken = await taking
        if self._handing:
            self._handed_all = asyncio.get_running_loop().create_future()
            await self._handed_all
        held = dict(self._in_flight)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        # Attempts cancelled before their first step never ran their own bookkeeping.
        self._in_flight.clear()
        self._writing.clear()
        self._busy.clear()
        unfinished = {e.id: e for e in (*taken, *self._interrupted, *held.values())}  # once each
        self._interrupted = []
        if unfinished and self._queue is not None:
            await self._queue.release(list(unfinished.values()))

    # -- the poller -------------------------------------------------------------------

    async def _poll_once(self) -> None:
        """One turn: take what is due for every function that has room, then sleep."""
        queue = self._queue or await self.queue()
        self._wake.clear()
        self._loop = asyncio.get_running_loop()
        now = self.clock.time()
        self._starved = False
        crowded = False
        shared = self._shared_busy()  # 0 unless the shared pool is small enough to count
        sweep: float | None = None  # the next sweep of a function skipped here
        for entry in self.registry:
            name = entry.name
            busy = self._busy[name]
            if busy and name in self._clear and now < (due := self._swept[name] + self.idle_poll):
                # Handoffs feed it and its queue was drained at the last take: a take at each
                # attempt's end would find nothing. Retries and dead hosts' leases that fell
                # due meanwhile are taken at the next sweep, ``due`` (idle_poll at the
                # latest; _sleep wakes for it: a later turn must not push it back).
                sweep = due if sweep is None else min(sweep, due)
                continue
            room = self._room(entry, shared)
            if room <= 0 or (room < self._batch(entry) and busy):
                # No room; or take in batches: a take is a write transaction, so leasing
                # each event alone as its predecessor finishes caps throughput at one
                # transaction per event. While attempts run, wait until a quarter of the
                # room is free.
                self._starved = True
                if name not in self._clear and room < self._cap(entry) - busy:
                    # Its backlog waits for room that other functions' attempts hold: their
                    # new events go to their queues behind it, not straight into that room.
                    crowded = self._crowded = True
                continue
            lease_until = now + entry.record.config.timeout + self.lease_margin
            # Shielded: the poller cancelled (closing) while the take commits would
            # leave events leased to nobody until their lease expires; aclose()
            # awaits this take and gives what it leased back.
            queued = self._queued[name]
            self._taking = taking = asyncio.ensure_future(
                queue.take(name, now, room, self.owner, lease_until)
            )
            events = await asyncio.shield(taking)
            self._taking = None
            self._swept[name] = now
            if len(events) < room and self._queued[name] == queued:
                self._clear.add(name)  # drained: new events may be handed off
            else:
                self._clear.discard(name)
            # Handoffs committed while the take did (of this function, or of one sharing
            # its pool) may have used some of its room: what no longer fits goes back to
            # the queue, due at once, rather than start beside them and be throttled by
            # its siblings. (Holding the room through the take instead sent every enqueue
            # made meanwhile to the queue, and under steady load the handoffs never came
            # back.)
            fits = min(len(events), self._room(entry))
            for event in events[:fits]:
                self._start(event)
            if entry.counter.reserved is None:
                shared += fits
            back = events[fits:]
            if back:
                self._clear.discard(name)
                try:
                    await asyncio.shield(queue.release(back))
                except asyncio.CancelledError:  # closing: aclose() gives them back
                    self._interrupted.extend(back)
                    raise
        self._crowded = crowded
        await self._sleep(queue, sweep)

    def _cap(self, entry: FunctionEntry) -> int:
        cap = self.per_function
        reserved = entry.counter.reserved
        if reserved is not None:
            cap = min(cap, max(reserved, 1))  # reserved 0: one at a time, straight to failure
        else:
            cap = min(cap, max(self.invoker.limiter.unreserved_pool, 1))
        return cap

    def _batch(self, entry: FunctionEntry) -> int:
        return max(1, self._cap(entry) // 4)

    def _shared_busy(self) -> int:
        """Attempts invoking (or being handed off) for functions without a reservation:
        they draw on the shared pool (a removed function's still do, as the limiter
        counts them). 0 when the pool is at least ``max_in_flight``: then it cannot bind."""
        if self.invoker.limiter.unreserved_pool >= self.max_in_flight:
            return 0
        busy = 0
        for name, count in self._busy.items():
            entry = self.registry.lookup(name)
            if entry is None or entry.counter.reserved is None:
                busy += count
        return busy

    def _room(self, entry: FunctionEntry, shared: int | None = None) -> int:
        """How many more of ``entry``'s events to start now. Never more than the pool its
        attempts draw on can run besides this source's attempts already running from it
        (the function's reservation, or the shared pool of all unreserved functions): an
        event started beyond that would only be throttled by its own siblings and back
        off for seconds to minutes while the capacity frees in milliseconds. Capacity
        that other callers hold still throttles, with Lambda's backoff. ``shared``: the
        :meth:`_shared_busy` count when the caller has it."""
        room = min(
            self._cap(entry) - self._busy[entry.name],
            self.max_in_flight - len(self._in_flight) - self._handing,
        )
        if entry.counter.reserved is None:
            pool = self.invoker.limiter.unreserved_pool
            if pool < self.max_in_flight:  # else the bound above is the tighter one
                # An empty pool (every slot reserved) still lets one attempt through, as
                # _cap does: it is throttled and backs off until the event ages out to its
                # failure destination, as Lambda does; it was never taken, queued for good.
                busy = self._shared_busy() if shared is None else shared
                room = min(room, max(pool, 1) - busy)
        return max(0, room)

    async def _sleep(self, queue: EventQueue, sweep: float | None = None) -> None:
        """Until the next event is due (a retry delay, a backoff, a lease expiring), an
        enqueue or a finished attempt wakes us, or ``idle_poll`` passes (new deploys), or
        the ``sweep`` of a function this turn skipped is due (a later turn must not push
        it back by another ``idle_poll``).

        While attempts run, each one's end wakes us, so the next due time is asked for once
        they are over (not a read hop per turn under load, in the store's queue beside the
        commits). An event that falls due meanwhile (a retry, a backoff) is taken at the
        next wake, or after ``idle_poll`` at the latest."""
        due = None
        if not self._in_flight:
            shared = self._shared_busy()
            due = await queue.next_due([e.name for e in self.registry if self._room(e, shared) > 0])
        if sweep is not None:
            due = sweep if due is None else min(due, sweep)
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
        # The attempt does its own bookkeeping when it ends (_finished, from its finally:
        # no done callback, one loop callback less per event). One cancelled before its
        # first step never runs it; only closing cancels attempts, and aclose() clears.
        # Outside the supervisor's group: _in_flight tracks it, aclose() cancels it, and
        # it hands an unexpected error to the supervisor itself.
        task = self.supervisor.start(self._attempt(event))
        self._in_flight[task] = event
        self._busy[event.function] += 1

    def _invoked(self, task: asyncio.Task[None]) -> None:
        """The attempt's invocation is over: its room goes to the next event while its
        outcome is written (a group commit shared with the other attempts'). It still
        holds its lease, and counts against ``max_in_flight``, until the write is done."""
        if task in self._in_flight and task not in self._writing:
            self._writing.add(task)
            name = self._in_flight[task].function
            self._busy[name] -= 1
            if self._starved or name not in self._clear:  # a backlog may wait for this room
                self._wake.set()

    def _finished(self, task: asyncio.Task[None]) -> None:
        """The attempt is over, its outcome written or given up: its lease is no longer
        held by this poller (as far as the room goes)."""
        event = self._in_flight.pop(task, None)
        if event is None:
            return
        if task in self._writing:
            self._writing.discard(task)
        else:
            self._busy[event.function] -= 1
        if self._starved or not self._in_flight or event.function not in self._clear:
            self._wake.set()  # a backlog may wait; or all is done: the next due time

    # -- one attempt ------------------------------------------------------------------

    async def _attempt(self, event: QueuedEvent) -> None:
        """One attempt: the task's whole coroutine (no wrapper frame: every resume of
        the task passes through each frame it awaits in). Each way it can go makes an
        outcome, written back in one place."""
        # the loop given: no getpid call on 3.11; a coroutine run as a task has its task
        task = cast("asyncio.Task[None]", asyncio.current_task(self._loop))
        try:
            name = event.function
            config = self.config_for(name)
            age = self.clock.time() - event.enqueued_at
            expires = event.enqueued_at + config.max_event_age
            outcome: Outcome
            if age >= config.max_event_age:
                outcome = await self._failure(
                    event, config, "EventAgeExceeded", event.invokes, event.attempts
                )
            else:
                try:
                    entry = self.registry.get(name)
                    refused = entry.counter.reserved == 0
                    if not refused:
                        self.metrics.observe("AsyncEventAge", name, age * 1000)
                        try:
                            result = await self.invoker.invoke(entry, event.payload, event.request_id)
                        finally:
                            self._invoked(task)
                except RuntimeClosed:
                    self._interrupted.append(event)  # closing: aclose() gives the lease back
                    return
                except TooManyRequests as exc:
                    throttled = dumps(exc.to_lambda()).encode()
                    outcome = await self._back_off(event, config, expires, 429, None, throttled)
                except (ServiceError, FunctionNotFound) as exc:
                    body = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
                    outcome = await self._back_off(event, config, expires, 500, None, dumps(body).encode())
                else:
                    if refused:
                        # Lambda: with reserved concurrency 0, new events go to the dead-letter
                        # queue or on-failure destination without any retries.
                        attempts = event.attempts
                        outcome = await self._failure(
                            event, config, "RetriesExhausted", event.invokes, attempts, 429, None, _REFUSED
                        )
                    elif result.error is None and config.on_success is None:  # the common case
                        outcome = _succeeded(event)
                    else:
                        outcome = await self._outcome(event, config, expires, result)
            if outcome.state == "queued" and event.function in self._deleted:
                outcome = self._unless_deleted(event, outcome)
            try:
                await self._settle(event, outcome, self.clock.time())
            except INFRASTRUCTURE as exc:
                await self._write_back(event, outcome, exc)
        except INFRASTRUCTURE as exc:
            # No outcome to write (its record could not be made): the lease expires, and the
            # event runs again.
            self._log.error("async attempt not recorded", request_id=event.request_id, exc_info=exc)
        except Exception as exc:  # a bug: loud, it fails the runtime (the lease expires)
            self.supervisor.fail(exc)
        finally:
            self._finished(task)

    async def _outcome(self, event: QueuedEvent, config: AsyncConfig, expires: float, result: Any) -> Outcome:
        """What an invocation that reached the function leaves: done (and its Success
        record), a retry after the function's error, or failed with its attempts used."""
        name = event.function
        invokes = event.invokes + 1
        if result.error is None:
            outcome = _succeeded(event)
            if config.on_success is not None:
                raw = result.raw or b"null"
                record = await self._record(event, "Success", invokes, 200, None, raw, self.clock.time())
                outcome = self._deliver(outcome, name, config.on_success, record)
            return outcome
        attempts = event.attempts + 1
        response = dumps(result.error.to_lambda()).encode()
        if attempts > config.max_retry_attempts:
            return await self._failure(
                event, config, "RetriesExhausted", invokes, attempts, 200, "Unhandled", response
            )
        run_at = min(self.clock.time() + config.retry_delay(attempts), expires)
        self._log.info(
            "async retry scheduled",
            function=name,
            request_id=event.request_id,
            attempt=attempts,
            error_type=result.error.error_type,
            run_at=run_at,
        )
        return Outcome(
            "queued",
            run_at=run_at,
            attempts=attempts,
            invokes=invokes,
            system_retries=event.system_retries,
            status=200,
            function_error="Unhandled",
            response=response,
        )

    async def _write_back(self, event: QueuedEvent, outcome: Outcome, exc: BaseException) -> None:
        """The outcome's write failed (the store is down, locked or full): write it again,
        with backoff, until it is written or the runtime closes, so that an attempt that
        ran is not run again when the store comes back. The attempt keeps its lease, and
        its place in ``max_in_flight``, meanwhile; the write is fenced by the lease (one
        made after another poller took the event over writes nothing). Closing gives the
        lease back: the event then runs again (at least once)."""
        self._log.warning(
            "async outcome not written; writing it again until the store is back",
            request_id=event.request_id,
            error=str(exc),
        )
        failures = 0
        try:
            while True:
                failures += 1
                await self.clock.sleep(backoff(failures, *WRITE_BACK_RETRY))
                if outcome.state == "queued" and event.function in self._deleted:
                    # deleted before or while the write was retried: dropped, counted once
                    outcome = self._unless_deleted(event, outcome)
                try:
                    await self._settle(event, outcome, self.clock.time())
                except INFRASTRUCTURE:
                    continue
                self._log.info("async outcome written", request_id=event.request_id, retries=failures)
                return
        except asyncio.CancelledError:
            # Closing: the records the outcome carried are not delivered (the event runs again).
            name = event.function
            if outcome.sink_records or outcome.events:
                self.metrics.incr("DestinationDeliveryFailures", name)
            raise

    async def _back_off(
        self,
        event: QueuedEvent,
        config: AsyncConfig,
        expires: float,
        status: int,
        function_error: str | None,
        response: bytes,
    ) -> Outcome:
        """Throttled or a system error: queue again after a growing delay, no attempt used."""
        retries = event.system_retries + 1
        low, high = self.backoff
        delay = min(high, low * 2 ** min(retries - 1, 30))
        now = self.clock.time()
        if now >= expires:
            return await self._failure(
                event, config, "EventAgeExceeded", event.invokes, event.attempts, status, None, response
            )
        return Outcome(
            "queued",
            run_at=min(now + delay, expires),
            attempts=event.attempts,
            invokes=event.invokes,
            system_retries=retries,
            status=status,
            function_error=function_error,
            response=response,
        )

    async def _failure(
        self,
        event: QueuedEvent,
        config: AsyncConfig,
        condition: str,
        invokes: int,
        attempts: int,
        status: int | None = None,
        function_error: str | None = None,
        response: bytes | None = None,
    ) -> Outcome:
        """The event is given up: the outcome that marks it ``failed``, with its record for
        ``on_failure`` and the dead-letter sink in the same transaction."""
        name = event.function
        now = self.clock.time()
        if status is None:  # given up at take time: report the last attempt's response
            status, function_error, response = event.last_status, event.last_error, event.last_response
        record = await self._record(event, condition, invokes, status, function_error, response, now)
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
            message = await self._dead_letter_message(event, status, response)
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
        return outcome

    # -- records ----------------------------------------------------------------------

    def _settle(self, event: QueuedEvent, outcome: Outcome, now: float) -> Awaitable[None]:
        """The outcome's write (the store's awaitable itself, no coroutine of ours, unless
        it puts events in a queue: a retry, a function destination's event)."""
        queue = self._queue
        if queue is None:  # attempts start only once the queue is open (the poller opens it)
            raise ServiceError("the async queue is not open")
        written = queue.settle(event, outcome, now)
        names = [name for _, name, _ in outcome.events]
        if outcome.state == "queued":
            names.append(event.function)
        return self._putting(written, names) if names else written

    def _unless_deleted(self, event: QueuedEvent, outcome: Outcome) -> Outcome:
        """``outcome`` (one that queues ``event`` again), or its drop if the event's
        function was deleted while the attempt ran: counted here, once, so a write of it
        retried (:meth:`_write_back`) passes the drop itself, not the retry again."""
        if event.function in self.registry:  # added again since: its events run
            self._deleted.discard(event.function)
            return outcome
        # an attempt that ran as its function was deleted: never queued again
        self.metrics.incr("AsyncEventsDropped", event.function)
        self._log.warning(
            "async event dropped: its function was deleted",
            function=event.function,
            request_id=event.request_id,
        )
        return attrs.evolve(outcome, state="failed", run_at=None, condition=DELETED)

    async def _putting(self, written: Awaitable[None], names: list[str]) -> None:
        for name in names:
            self._put_in_queue(name)
        await written
        for name in names:
            self._put_in_queue(name)
        # Their functions' queues have an event now: take it (the attempt's end wakes the
        # poller only for a backlog of its own function, and a destination's is another's).
        self._wake.set()

    def _deliver(self, outcome: Outcome, function: str, destination: str, record: str) -> Outcome:
        """Add a destination's record to the outcome's transaction: a sink row, or an
        Event for another function."""
        kind, target = parse_destination(destination)
        if kind == "sink":
            return attrs.evolve(outcome, sink_records=[*outcome.sink_records, (target, record)])
        body = record.encode()
        if target not in self.registry:
            problem = f"destination function {target!r} is not registered"
        elif len(body) <= EVENT_PAYLOAD_LIMIT:
            self.metrics.incr("AsyncEventsReceived", target)
            return attrs.evolve(outcome, events=[*outcome.events, (str(uuid.uuid4()), target, body)])
        else:
            problem = f"the record is {len(body)} bytes, over the {EVENT_PAYLOAD_LIMIT} byte Event limit"
        # Not delivered: the record stays on the event's row (Runtime.async_event shows it),
        # a success's too (a failure's is there already).
        self.metrics.incr("DestinationDeliveryFailures", function)
        self._log.warning("destination delivery failed", destination=destination, error=problem)
        return attrs.evolve(outcome, record=record)

    async def _record(
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
        return dumps(
            async_record(
                request_id=event.request_id,
                function_arn=function_arn(self.region, self.account_id, event.function),
                condition=condition,
                invokes=invokes,
                status=status,
                function_error=function_error,
                request_payload=await decode_or_text(event.payload),
                response_payload=await decode_or_text(response or b""),
                now=now,
            )
        )

    async def _dead_letter_message(
        self, event: QueuedEvent, status: int | None, response: bytes | None
    ) -> str:
        return dumps(
            dead_letter_message(
                event.request_id,
                await decode_or_text(event.payload),
                status,
                await decode_or_text(response or b""),
            )
        )


def _succeeded(event: QueuedEvent) -> Outcome:
    """The outcome of an attempt whose invocation succeeded."""
    return Outcome(
        "done",
        attempts=event.attempts,
        invokes=event.invokes + 1,
        system_retries=event.system_retries,
        status=200,
        condition="Success",
    )


#: The name this class had before 0.2 (it is the whole source now, not only the poller).
AsyncInvoker = AsyncSource
