"""What a store must do, written for the hardest case: several hosts sharing it.

The sources (the async queue's poller, the stream pollers) use a store only through
these protocols, so SQLite (one file, any number of processes on one machine) and
PostgreSQL (any number of hosts) sit behind the same methods. One contract test suite
(``tests/test_store_contract.py``) runs against every backend through these methods only.

Every method's docstring states what it guarantees **against other writers**: other
tasks, other connections, other processes, other hosts, all at the same time. A backend
must keep those guarantees inside the database (one statement, or one transaction that
holds the rows it decides on), never by assuming it is the only writer.

Shared rules:

- Times (``now``, ``lease_until``, ``ttl``, ``before``) are seconds on the runtime's
  clock (wall-clock ``time()`` in production, a ``FakeClock`` in tests), so that they
  mean the same to the next process that opens the store. Expiry is judged in the
  writing statement by comparing stored expiries with the ``now`` given; the contract
  suite moves time only through these arguments. (A backend that prefers its server's
  clock for production must still honour them, e.g. as an offset.)
- A lease is data: an owner, an expiry and (for events) a token. Every write that only a
  lease holder may make checks the lease **inside the statement that writes**, so a
  holder that lost its lease (it stalled, another host took over) writes nothing.
- Every failure of the store itself (unreachable, locked, full, read-only, corrupt, closed)
  is raised as :class:`fnrt.errors.StoreUnavailable`; nothing was acknowledged that was not
  stored. No other backend error escapes a method.
- "Durably" means the commit is on disk (survives a power cut) before the method returns.
  Writes not said to be durable survive a crash of the process but may be lost to a power
  cut; at-least-once delivery redoes them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from ._types import Checkpoint, MappingRow, Outcome, QueuedEvent, Shard, StoredRecord


@runtime_checkable
class QueueStore(Protocol):
    """The durable queue behind ``invoke(..., "Event")`` and the destination sinks.

    An event row moves ``queued -> leased -> done | failed``, back to ``queued`` for a
    retry or a release, and from ``leased`` to ``leased`` when its lease expires and
    another poller takes it over. Each take bumps the event's lease token.
    """

    async def setup(self) -> None:
        """Make the queue ready (idempotent; opening the store already did it)."""

    def enqueue(self, request_id: str, function: str, payload: bytes, now: float) -> Awaitable[None]:
        """Store one ``queued`` event, due at ``now``. The awaitable is done only once it
        is committed durably: an enqueue that raised was not stored, one that returned is
        never lost. Concurrent enqueues may share one commit. (An ``async def`` does; a
        backend may instead return its batch's future directly, one coroutine less on
        every enqueue.)"""
        ...

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
        """Store one event as :meth:`enqueue` does (durably, maybe sharing a commit), but
        already ``leased`` to ``owner`` until ``lease_until`` with its first lease token:
        the poller that has room hands a new event straight to an attempt, without a take.

        ``started(event)`` is called exactly once: with the stored event (as a take would
        return it) once it is committed, or with ``None`` once the write failed. It is
        called in the loop, before the awaiting caller resumes, and whether or not that
        caller is still waiting, so the attempt starts even when the caller was cancelled
        meanwhile. It must not raise. A call that raises at once (the store is closed)
        stored nothing and never calls it. As with every lease, an event whose holder dies
        is taken over when ``lease_until`` has passed."""
        ...

    async def take(
        self, function: str, now: float, limit: int, owner: str, lease_until: float
    ) -> list[QueuedEvent]:
        """Lease up to ``limit`` due events of ``function`` to ``owner`` until
        ``lease_until``: queued ones whose ``run_at`` has come (earliest ``run_at`` first,
        then lowest ``id``), then leased ones whose lease expired (their holder died or
        stalled). Returned sorted by ``id``.

        Atomic against other writers: an event is leased to one taker at a time; two
        concurrent takes (any connections, any hosts) never return the same event. Each
        returned event carries a new lease token (:attr:`QueuedEvent.lease`), so the
        previous holder of an expired lease can no longer settle or release it. Not
        durable: a lease lost to a power cut only means the event is taken again."""
        ...

    async def next_due(self, functions: Sequence[str]) -> float | None:
        """The earliest time an event of these functions becomes takeable (a queued
        event's ``run_at`` or a leased one's expiry); ``None`` when there is none. A hint
        for the poller's sleep; read only."""
        ...

    def settle(self, event: QueuedEvent, outcome: Outcome, now: float) -> Awaitable[None]:
        """Write an attempt's outcome (awaitable, like :meth:`enqueue`): the event's new
        state, counters and result, and its side effects (``outcome.sink_records`` and
        ``outcome.events``, the latter enqueued as new events), all in one transaction.

        Fenced: it writes only while ``event.lease`` is still the event's current lease
        and the event is still ``leased``, checked inside the writing statement; otherwise
        it writes nothing at all (no row change, no sink record, no event), so a poller
        that lost its lease can neither overwrite a newer attempt nor deliver twice.
        Durable when it enqueues events; otherwise a lost settle is redone by running
        the event again."""
        ...

    async def release(self, events: Sequence[QueuedEvent]) -> None:
        """Give leases back unfinished (graceful close): each event is ``queued`` and due
        again at once. Fenced like :meth:`settle`: an event whose lease token moved on is
        left alone. Not durable."""

    async def discard(self, function: str, condition: str, now: float) -> list[str]:
        """Mark every ``queued`` event of ``function`` ``failed`` with ``condition``,
        finished at ``now`` (its function was deleted: what waits for it can never run);
        returns their request ids. ``leased`` events (attempts running) are left to their
        holders. Durable."""
        ...

    async def event(self, request_id: str) -> dict[str, Any] | None:
        """The latest event with ``request_id`` (``Runtime.async_event``): ``request_id``,
        ``function``, ``state``, ``enqueued_at``, ``run_at``, ``attempts``, ``invokes``,
        ``system_retries``, ``leases`` (takes so far), ``condition``, ``record`` (parsed
        JSON or ``None``), ``last_error``. Indexed by request id."""
        ...

    async def events(
        self, function: str | None = None, *, state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Events (each shaped as :meth:`event`), oldest first, optionally only one
        function's and one state's. For inspection and tests."""
        ...

    async def counts(
        self, function: str | None = None, *, states: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Events by state (``queued``, ``leased``, ``done``, ``failed``); states with
        no event are left out. ``states`` counts only those: a function's ``queued`` and
        ``leased`` events are few and indexed, while ``done`` and ``failed`` are every
        event of the retention period (a day's)."""
        ...

    async def append_sink(self, sink: str, record: str, now: float) -> None:
        """Append a JSON ``record`` to the durable sink ``sink``; durable."""

    async def sink_records(self, sink: str, *, newest: int | None = None) -> list[Any]:
        """The records of ``sink``, parsed, in the order they were appended; with
        ``newest``, only that many of the last ones (a sink can hold many large records)."""
        ...

    async def sink_count(self, sink: str) -> int:
        """How many records ``sink`` holds, without reading them."""
        ...

    async def purge_finished(self, before: float, *, limit: int = 10_000) -> int:
        """Delete up to ``limit`` ``done`` and ``failed`` events that finished before
        ``before`` (garbage collection; the runtime's maintenance calls it). Returns how
        many were deleted: call again while it returns ``limit``. Never touches a
        ``queued`` or ``leased`` event. Cheap: finished events are indexed by time."""
        ...


@runtime_checkable
class StreamStore(Protocol):
    """Streams, shards, records, mappings, checkpoints and shard leases.

    Sequence numbers are integers, one counter per stream, so they increase within a
    shard and from a parent shard to its children. A mapping's checkpoint per shard is
    the last sequence number done. A shard lease has an owner and an expiry; pollers on
    every host coordinate through these rows only.
    """

    async def create_stream(
        self, name: str, shard_count: int, retention: float, now: float, *, mode: str | None = None
    ) -> bool:
        """Create ``name`` with ``shard_count`` shards splitting the hash-key space evenly,
        ``retention`` seconds of retention and capacity ``mode`` (Kinesis' ``StreamMode``;
        ``None``: ``PROVISIONED``). ``False`` (and nothing changed) when the stream exists.
        Atomic against other writers: of two hosts creating the same stream, one creates
        it and the other gets ``False``. Durable."""
        ...

    async def stream_exists(self, name: str) -> bool: ...

    async def delete_stream(self, name: str) -> list[str]:
        """Delete ``name`` with its shards and records (Kinesis' ``DeleteStream``); its
        mappings stay, disabled (their config's ``enabled`` set false), without their
        checkpoints and leases (Lambda keeps a mapping whose stream is gone); their
        on-failure records stay (they are what a destination holds). Returns the
        mappings' uuids.
        Raises :class:`~fnrt.errors.StreamNotFound` (and changes nothing) for an unknown
        stream. Atomic against writers: a put is wholly before the delete or fails with
        ``StreamNotFound``. Durable."""
        ...

    async def stream_names(self) -> list[str]:
        """Every stream's name, sorted."""
        ...

    async def stream_info(self, name: str) -> dict[str, Any] | None:
        """``created_at``, ``retention`` (s), ``last_seq`` (-1 before the first record),
        ``mode`` (``PROVISIONED`` or ``ON_DEMAND``) and ``tags`` (a dict), or ``None`` for
        an unknown stream."""
        ...

    async def update_stream(
        self,
        name: str,
        *,
        mode: str | None = None,
        retention: float | None = None,
        tags: dict[str, str] | None = None,
    ) -> bool:
        """Set the given ones of the stream's ``mode``, ``retention`` (s) and ``tags`` (the
        whole set); ``False`` (nothing changed) for an unknown stream. Durable."""
        ...

    async def stream_retention(self, name: str) -> float:
        """The stream's retention in seconds (0.0 for an unknown stream)."""
        ...

    async def shards(self, stream: str) -> list[Shard]:
        """Every shard of ``stream`` (open and closed), by shard id."""
        ...

    async def put_records(
        self, stream: str, entries: Sequence[tuple[str, str, int]], now: float
    ) -> list[tuple[str, int]]:
        """Append ``(partition_key, base64 data, hash key)`` entries, all or none, each to
        the open shard whose range holds its hash key; returns ``(shard_id, seq)`` for
        each, in order. Raises :class:`~fnrt.errors.StreamNotFound` for an unknown stream.

        Atomic against other writers: sequence numbers are allocated in the same
        transaction that writes the records (one counter per stream, incremented in the
        writing statement), so with any number of writers they are unique and increase
        within a shard in commit order: once a reader has seen ``seq`` in a shard, no
        record with a lower number appears there later. A split or merge is either
        before or after the whole put. Durable."""
        ...

    async def read(
        self, stream: str, shard_id: str, after: int, limit: int, *, max_bytes: int | None = None
    ) -> list[StoredRecord]:
        """Up to ``limit`` records of the shard with ``seq > after``, in order. With
        ``max_bytes``, the records end with the one whose data and partition key (their
        lengths as stored: base64 text, characters) bring the total to ``max_bytes`` or
        more, so at least one record comes back and a reader of big records holds a
        bounded amount, not ``limit`` of them."""
        ...

    async def split_shard(self, stream: str, shard: Shard, new_start: int) -> list[str]:
        """Close ``shard`` and create two children splitting its range at ``new_start``;
        returns their ids. Atomic against other writers: raises
        :class:`~fnrt.errors.InvalidConfig` (and changes nothing) when the shard is no
        longer open (another host split or merged it first). Durable."""
        ...

    async def merge_shards(self, stream: str, shard: Shard, adjacent: Shard) -> str:
        """Close two adjacent shards and create one child covering both; returns its id.
        Atomic like :meth:`split_shard`."""
        ...

    async def trim(self, stream: str, before: float, *, limit: int | None = None) -> int:
        """Delete records that arrived before ``before`` (past the stream's retention),
        oldest first in each shard, at most ``limit`` per shard; returns how many. Cheap:
        it walks each shard from its oldest record and stops at the first one to keep."""
        ...

    async def trim_expired(self, now: float, *, limit: int | None = None) -> int:
        """:meth:`trim` every stream by its own retention; returns how many records
        were deleted. The runtime's maintenance calls it."""
        ...

    async def mapping(self, stream: str, function: str) -> MappingRow | None: ...

    async def mappings(self) -> list[MappingRow]:
        """Every mapping (any host's), by stream then function."""
        ...

    async def create_mapping(
        self,
        uuid: str,
        stream: str,
        function: str,
        config: dict[str, Any],
        start: str,
        timestamp: float | None,
        now: float,
        *,
        filters: Sequence[str] = (),
    ) -> MappingRow:
        """Insert the mapping, or update the config and ``filters`` (its FilterCriteria
        patterns, kept as given) of the one for (stream, function) that exists and
        return it (a restarted host resumes from its checkpoints). A new
        mapping gets a checkpoint per existing shard according to ``start``
        (``TRIM_HORIZON``, ``LATEST``, ``AT_TIMESTAMP`` with ``timestamp``); shards created
        later are read from their beginning. Atomic against other writers: hosts adding
        the same mapping at once all end with the one row."""
        ...

    async def delete_mapping(self, uuid: str) -> None:
        """Delete the mapping, its checkpoints and its leases."""

    async def checkpoints(self, mapping: str) -> dict[str, Checkpoint]: ...

    async def acquire_lease(self, mapping: str, shard_id: str, owner: str, now: float, ttl: float) -> bool:
        """Take the shard's lease until ``now + ttl`` if it is free, expired, or ``owner``'s
        already. Atomic against other writers: of concurrent acquirers of a free or
        expired lease exactly one gets ``True``; a live lease of another owner is never
        taken. Expiry is judged in the writing statement. Not durable."""
        ...

    async def heartbeat(
        self, mapping: str, owner: str, shard_ids: Sequence[str], now: float, ttl: float
    ) -> set[str]:
        """Extend ``owner``'s leases on ``shard_ids`` to ``now + ttl``; returns the shards
        whose lease ``owner`` still holds. Fenced: a lease another owner took over is
        neither extended nor returned (checked in the writing statement). Not durable."""
        ...

    async def release_lease(self, mapping: str, shard_id: str, owner: str) -> None:
        """Drop ``owner``'s lease on the shard (fenced: another owner's lease stays)."""

    async def steal_lease(
        self, mapping: str, shard_id: str, owner: str, victim: str, now: float, ttl: float
    ) -> bool:
        """Take the shard's lease from ``victim`` until ``now + ttl``, even while it is
        live (balancing across hosts, KCL's lease stealing). Fenced: ``True`` only if
        ``victim`` still held it at the write (checked in the writing statement); of two
        stealers one wins. From then on ``victim``'s heartbeat no longer returns the
        shard and its checkpoints write nothing. Not durable."""
        ...

    async def register_host(self, host: str, info: dict[str, Any], now: float, ttl: float) -> None:
        """Record that ``host`` (a unique id per running host) is alive until
        ``now + ttl`` (judged like a lease), with ``info`` (JSON: name, pid, port...).
        Called as a heartbeat. Not durable."""

    async def unregister_host(self, host: str) -> None:
        """Forget ``host`` (a graceful stop)."""

    async def live_hosts(self, now: float) -> list[dict[str, Any]]:
        """The registered hosts whose registration has not expired, by host id: ``host``,
        ``info``, ``started_at``, ``seen_at``, ``expires_at``. Read only."""
        ...

    async def leases(self, mapping: str, now: float | None = None) -> dict[str, tuple[str, float]]:
        """``shard_id -> (owner, expires_at)`` for the mapping's leases. Without ``now``,
        ``expires_at`` is what the holder wrote (its own clock). With ``now`` (the caller's
        clock), it is in the caller's frame as the store judges expiry: ``now`` plus the
        time the lease has left by the judging clock, so a host compares it with its own
        ``now`` and sees a lease expire when the store does, whatever the holder's clock
        said (a holder whose clock ran ahead must not keep a dead lease looking alive)."""
        ...

    async def checkpoint(
        self,
        mapping: str,
        shard_id: str,
        owner: str,
        seq: int,
        *,
        finished: bool = False,
        failure: tuple[str | None, dict[str, Any], float] | None = None,
    ) -> bool:
        """Move the shard's checkpoint to ``seq`` (never backwards; ``finished``: the
        closed shard was read to its end), with the on-failure record ``failure``
        (``(destination, record, now)``) in the same transaction.

        Fenced: it writes only while ``owner`` holds the shard's lease, checked inside the
        writing statement; ``False`` (and nothing written, the failure record neither)
        when the lease was taken over. Not durable: a lost checkpoint redelivers from the
        one before."""
        ...

    async def failure_records(
        self, *, mapping: str | None = None, destination: str | None = None, newest: int | None = None
    ) -> list[dict[str, Any]]:
        """On-failure records of one mapping, or sent to one destination, oldest first;
        with ``newest``, only that many of the last ones."""
        ...

    async def failure_count(self, *, mapping: str) -> int:
        """How many on-failure records ``mapping`` wrote, without reading them."""
        ...


@runtime_checkable
class Store(Protocol):
    """One store: a queue and streams on one backend, opened and closed together.

    ``open_store(spec)`` (in ``fnrt.store``) picks the backend from ``spec``; each backend
    class opens with ``await Backend.open(spec, **options)``. Opening
    refuses anything that is not a usable fnrt store (a file that is not one, a schema
    written by a newer fnrt, a store it cannot write) with ``StoreUnavailable`` or
    ``InvalidConfig``, overwriting nothing, and creates the schema when it is new.

    Optional: a store shared by several hosts may offer wake-ups,
    ``await add_wake_listener(callback)`` / ``remove_wake_listener(callback)``, calling
    ``callback(kind, name)`` when any host enqueues (``"event"``, function) or puts
    (``"stream"``, stream), and ``("*", "")`` when it may have missed some. The runtime
    subscribes when they exist; polling stays the fallback.
    """

    @property
    def location(self) -> str:
        """Where the store is (a file path, a URL without its password), for messages."""
        ...

    @property
    def queue(self) -> QueueStore: ...

    @property
    def streams(self) -> StreamStore: ...

    async def close(self) -> None:
        """Commit what callers already wait for, then release the connections. Safe to
        call twice; every method raises ``StoreUnavailable`` afterwards."""

    def stats(self) -> dict[str, Any]:
        """Counters for ``fnrt stats`` and tests: at least ``backend``, ``location`` and
        ``commits`` (transactions committed by this instance)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


__all__ = ["QueueStore", "Store", "StreamStore"]
