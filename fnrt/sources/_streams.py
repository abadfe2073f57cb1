"""Sharded streams and their event source mappings (the Kinesis model).

A :class:`Stream` appends records to shards chosen by the MD5 of the partition key. A
:class:`StreamMapping` reads every shard of its stream in order and invokes its function
with batches, through three small layers:

- the *coordinator* (one task per mapping) takes the lease of each shard that is ready
  (its parents read to their end), heartbeats the leases it holds, and starts a
  :class:`ShardPoller` per leased shard; a lease lost to another poller stops that poller;
- the *shard poller* reads a round of records after the checkpoint, splits it into lanes
  by partition key (``parallelization_factor``), and delivers each lane's batches in order;
- *delivery* of one batch is a short loop over explicit state: a queue of pending parts,
  the attempt count, and what to do with an error (bisect, retry with backoff, or send to
  the on-failure destination).

The checkpoint moves only past records that succeeded or were sent to the on-failure
destination, and only while the lease is held; the on-failure record is written in the same
transaction as the checkpoint that skips its records. To keep a shard's one invoke at a time
busy, the poller reads the next rounds while a round is delivered, and writes a batch's
checkpoint while the next batch is invoked (it trails by one write at most, and is written
before the poller waits for anything: a crash delivers again at most what at-least-once allows).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import operator
import os
import re
import socket
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

import attrs

from .._clock import Clock
from .._config import StreamMappingConfig
from .._filters import RecordFilter, kinesis_fields
from .._invoke import Invoker, decode_result
from .._lambda import (
    LARGE_PAYLOAD,
    MAX_BATCH_BYTES,
    MAX_RECORD_BYTES,
    backoff,
    dumps,
    function_arn,
    role_arn,
    stream_arn,
    stream_failure_record,
)
from .._observe import Metrics
from .._registry import FunctionRegistry
from .._supervise import INFRASTRUCTURE, Supervisor
from ..errors import (
    FnrtError,
    FunctionNotFound,
    InvalidConfig,
    InvalidPayload,
    RuntimeClosed,
    ServiceError,
    StreamNotFound,
    TooManyRequests,
)
from ..store import Shard, StoredRecord, StreamStore
from ..store._types import HASH_KEY_TEXT, MAX_HASH_KEY, hash_key, seq_int, seq_str

# Lambda's ``LastProcessingResult`` wording.
NO_RECORDS_PROCESSED = "No records processed"
PROCESSING_OK = "OK"
PROCESSING_FAILED = "PROBLEM: Function call failed"
STREAM_NOT_FOUND = "PROBLEM: Stream not found"  # its stream was deleted
RETRY_BACKOFF = (1.0, 30.0)  # first and longest delay before retrying a failed batch
THROTTLE_BACKOFF = (0.5, 60.0)  # the same for a throttled invoke (no attempt is used)
Deliver = Callable[[str, str, str], Awaitable[None]]
# Kinesis' StreamName pattern (1-128 of these): the name goes into ARNs and URLs as it is.
STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
#: Kinesis' capacity modes (``StreamModeDetails.StreamMode``).
STREAM_MODES = ("PROVISIONED", "ON_DEMAND")
MAX_STREAM_TAGS = 50  # Kinesis' quota of tags per stream


def _backoff(attempt: int, limits: tuple[float, float]) -> float:
    return backoff(attempt, *limits)


class _Waker:
    """An event that also fires after a timeout on the injected clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._event = asyncio.Event()

    @property
    def event(self) -> asyncio.Event:
        """The event itself (a supervised loop's backoff waits on it: :meth:`Supervisor.loop`)."""
        return self._event

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float) -> None:
        handle = self._clock.call_later(timeout, self._event.set)
        try:
            await self._event.wait()
        finally:
            handle.cancel()
            self._event.clear()


class _LeaseLost(Exception):
    pass


# -- the stream -----------------------------------------------------------------------


class Stream:
    """A sharded, durable, ordered log (Kinesis' data stream)."""

    def __init__(self, source: StreamSource, name: str) -> None:
        self._source = source
        self.name = name
        self.arn = stream_arn(source.region, source.account_id, name)

    def __repr__(self) -> str:
        return f"<Stream {self.name!r}>"

    async def put_record(
        self, data: bytes | str, partition_key: str, *, explicit_hash_key: int | None = None
    ) -> tuple[str, str]:
        """Append one record durably; returns ``(shard_id, sequence_number)``."""
        [out] = await self.put_records([(data, partition_key, explicit_hash_key)])
        return out

    async def put_records(
        self, records: Iterable[tuple[bytes | str, str] | tuple[bytes | str, str, int | None]]
    ) -> list[tuple[str, str]]:
        """Append ``(data, partition_key)`` records in one transaction (all or none);
        returns ``(shard_id, sequence_number)`` for each, in order."""
        entries = []
        for item in records:
            data, key = item[0], item[1]
            explicit = item[2] if len(item) > 2 else None
            entries.append(_entry(data, key, explicit))
        if not entries:
            return []
        store = await self._source.store()
        placed = await store.put_records(self.name, entries, self._source.clock.time())
        self._source.wake(self.name)
        return [(shard_id, seq_str(seq)) for shard_id, seq in placed]

    async def read(
        self, shard_id: str, after_seq: str | None, limit: int, *, max_bytes: int | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` records of ``shard_id`` after sequence number ``after_seq``
        (``None``: from the oldest retained), oldest first, in Kinesis' ``GetRecords``
        shape (``SequenceNumber``, ``ApproximateArrivalTimestamp``, ``Data`` as base64,
        ``PartitionKey``). ``max_bytes``: stop at the record whose base64 data and
        partition key bring the total to it (at least one record). A malformed
        ``after_seq`` is :class:`~fnrt.errors.InvalidConfig`."""
        try:
            after = -1 if after_seq is None else seq_int(after_seq)
        except (TypeError, ValueError):
            raise InvalidConfig(f"not a sequence number of stream {self.name!r}: {after_seq!r}") from None
        store = await self._source.store()
        records = await store.read(self.name, shard_id, after, limit, max_bytes=max_bytes)
        return [
            {
                "SequenceNumber": seq_str(r.seq),
                "ApproximateArrivalTimestamp": r.arrival,
                "Data": r.data,
                "PartitionKey": r.partition_key,
            }
            for r in records
        ]

    async def info(self) -> dict[str, Any]:
        """``created_at`` (epoch s), ``retention_hours``, ``last_sequence_number`` (the
        stream's newest record, ``None`` before the first), ``mode`` (Kinesis' capacity
        mode, ``PROVISIONED`` or ``ON_DEMAND``) and ``tags``."""
        store = await self._source.store()
        info = await store.stream_info(self.name)
        if info is None:
            raise StreamNotFound(self.name)
        last = int(info["last_seq"])
        return {
            "created_at": info["created_at"],
            "retention_hours": info["retention"] / 3600,
            "last_sequence_number": seq_str(last) if last >= 0 else None,
            "mode": info["mode"],
            "tags": dict(info["tags"]),
        }

    async def update(
        self,
        *,
        mode: str | None = None,
        retention_hours: float | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Change the stream's capacity ``mode``, its retention (24-8760 hours: records
        older than it go at the next trim) or its ``tags`` (the whole set)."""
        if mode is not None and mode not in STREAM_MODES:
            raise InvalidConfig(f"mode must be one of {', '.join(STREAM_MODES)}, got {mode!r}")
        retention = None
        if retention_hours is not None:
            retention = _retention_seconds(retention_hours)
        if tags is not None:
            tags = _tags_arg(tags)
        store = await self._source.store()
        if not await store.update_stream(self.name, mode=mode, retention=retention, tags=tags):
            raise StreamNotFound(self.name)
        if retention is not None:
            self._source._retention[self.name] = retention

    async def shards(self) -> list[dict[str, Any]]:
        """Kinesis' ``ListShards``: every shard with its hash-key and sequence ranges."""
        store = await self._source.store()
        return [s.to_dict() for s in await store.shards(self.name)]

    async def split_shard(self, shard_id: str, new_starting_hash_key: int | str) -> list[str]:
        """Close ``shard_id`` and create two children that split its hash-key range at
        ``new_starting_hash_key``. Returns the children's ids."""
        store = await self._source.store()
        shard = await self._open_shard(store, shard_id)
        new_start = _hash_key_arg(new_starting_hash_key, "new_starting_hash_key", InvalidConfig)
        if not shard.start_hash < new_start <= shard.end_hash:
            raise InvalidConfig(
                f"new_starting_hash_key must be inside {shard_id}'s range "
                f"({shard.start_hash + 1}..{shard.end_hash}), got {new_start}"
            )
        children = await store.split_shard(self.name, shard, new_start)
        self._source.wake(self.name)
        return children

    async def merge_shards(self, shard_id: str, adjacent_shard_id: str) -> str:
        """Close two adjacent shards and create one child covering both ranges."""
        store = await self._source.store()
        shard = await self._open_shard(store, shard_id)
        adjacent = await self._open_shard(store, adjacent_shard_id)
        if shard.end_hash + 1 != adjacent.start_hash and adjacent.end_hash + 1 != shard.start_hash:
            raise InvalidConfig(f"{shard_id} and {adjacent_shard_id} are not adjacent")
        child = await store.merge_shards(self.name, shard, adjacent)
        self._source.wake(self.name)
        return child

    async def update_shard_count(self, target: int) -> None:
        """Kinesis' ``UpdateShardCount`` with ``UNIFORM_SCALING``: the open shards become
        ``target`` shards of equal hash-key ranges (as a new stream's), by splits at the new
        boundaries and then merges within each new range, so every record keeps its
        lineage (a mapping reads children after their parents, in order)."""
        if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= 10_000:
            raise InvalidConfig(f"the target shard count must be a whole number 1-10,000, got {target!r}")
        step = (MAX_HASH_KEY + 1) // target
        bounds = [index * step for index in range(target)]  # the new ranges' starts
        store = await self._source.store()
        # One listing, then one write per split and merge: the children's ranges are known
        # (a listing per step made 250 -> 500 shards take 40 s). The store refuses to close
        # a shard another writer closed meanwhile (InvalidConfig), as SplitShard's does.
        opened = sorted((s for s in await store.shards(self.name) if s.open), key=lambda s: s.start_hash)
        try:
            pieces: list[Shard] = []
            for shard in opened:
                for start in bounds[bisect.bisect_right(bounds, shard.start_hash) :]:
                    if start > shard.end_hash:
                        break
                    left, right = await store.split_shard(self.name, shard, start)
                    pieces.append(_child(left, shard.start_hash, start - 1, shard))
                    shard = _child(right, start, shard.end_hash, shard)
                pieces.append(shard)
            # Then the pieces of each new range (adjacent, in hash-key order) merge into one.
            merged: Shard | None = None
            for piece in pieces:
                if merged is None or bisect.bisect_right(bounds, piece.start_hash) != bisect.bisect_right(
                    bounds, merged.start_hash
                ):
                    merged = piece
                    continue
                child = await store.merge_shards(self.name, merged, piece)
                merged = _child(child, merged.start_hash, piece.end_hash, merged)
        finally:
            self._source.wake(self.name)

    async def _open_shard(self, store: StreamStore, shard_id: str) -> Shard:
        for shard in await store.shards(self.name):
            if shard.shard_id == shard_id:
                if not shard.open:
                    raise InvalidConfig(f"{shard_id} is closed; only open shards can be split or merged")
                return shard
        raise InvalidConfig(f"stream {self.name!r} has no shard {shard_id!r}")


def _child(shard_id: str, start_hash: int, end_hash: int, parent: Shard) -> Shard:
    """An open shard just made from ``parent`` (what a split or merge needs of it)."""
    return Shard(shard_id, start_hash, end_hash, parent.shard_id, None, parent.start_seq, None)


def _entry(data: bytes | str, partition_key: str, explicit_hash_key: int | None) -> tuple[str, str, int]:
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidPayload(f"record data must be bytes or str, got {type(data).__name__}")
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidPayload(f"record data must be at most {MAX_RECORD_BYTES} bytes, got {len(data)}")
    if not isinstance(partition_key, str) or not 1 <= len(partition_key) <= 256:
        raise InvalidPayload(f"partition_key must be a string of 1-256 characters, got {partition_key!r}")
    if explicit_hash_key is None:
        hashed = hash_key(partition_key)
    else:
        hashed = _hash_key_arg(explicit_hash_key, "explicit_hash_key", InvalidPayload)
    return partition_key, base64.b64encode(data).decode(), hashed


def _retention_seconds(hours: object) -> float:
    """A retention period in hours (Kinesis' 24-8760) as seconds; else InvalidConfig."""
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not 24 <= hours <= 8760:
        raise InvalidConfig(f"retention_hours must be between 24 and 8760, got {hours!r}")
    return float(hours) * 3600


def _tags_arg(tags: object) -> dict[str, str]:
    """A stream's tags (Kinesis': at most 50, keys of 1-128 characters, values of at most
    256), checked before they are stored: a wrong set stored made every describe fail."""
    if (
        not isinstance(tags, dict)
        or len(tags) > MAX_STREAM_TAGS
        or not all(
            isinstance(k, str) and 1 <= len(k) <= 128 and isinstance(v, str) and len(v) <= 256
            for k, v in tags.items()
        )
    ):
        raise InvalidConfig(
            f"tags must be a dict of at most {MAX_STREAM_TAGS} string keys (1-128 characters) "
            f"and string values (at most 256 characters), got {tags!r:.200}"
        )
    return dict(tags)


def _hash_key_arg(value: object, what: str, error: type[FnrtError]) -> int:
    """A hash key given as an int or as decimal text, within 0..2**128-1; else ``error``
    (never ``int()``'s ``ValueError``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and HASH_KEY_TEXT.fullmatch(value):
        number = int(value)
    else:
        raise error(f"{what} must be a whole number within 0..2**128-1, got {value!r}")
    if not 0 <= number <= MAX_HASH_KEY:
        raise error(f"{what} must be within 0..2**128-1, got {number}")
    return number


# -- the mapping ----------------------------------------------------------------------


class StreamMapping:
    """An event source mapping: reads every shard of ``stream`` and invokes ``function``.

    Its identity (``uuid``) and checkpoints are rows in the runtime's state, so a mapping
    added again for the same stream and function after a restart resumes where it was.
    ``owner`` names this poller in leases; two runtimes sharing a state file each run one.
    """

    def __init__(
        self, source: StreamSource, uuid_: str, stream: Stream, function: str, config: StreamMappingConfig
    ) -> None:
        self._source = source
        self.uuid = uuid_
        self.stream = stream
        self.function = function
        self.config = config
        # host/instance: leases name the host, so ``fnrt stats`` can count them per host
        self.owner = f"{source.host_id}/{uuid.uuid4().hex[:8]}"
        self._stolen: dict[str, tuple[Shard, float]] = {}  # stolen shards, and when to start
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._poller_objects: dict[str, ShardPoller] = {}
        self._lease_until: dict[str, float] = {}  # when our lease of each shard runs out
        self._coordinator: asyncio.Task[None] | None = None
        self._wake_coordinator = _Waker(source.clock)
        self._log = source.log.bind(mapping=uuid_, stream=stream.name, function=function)
        self._parked = False
        self._retiring = False  # removed (or disabled) by another host: forgotten (or replaced) here
        #: Lambda's ``LastProcessingResult``: how the mapping's last invoke ended.
        self.last_processing_result = NO_RECORDS_PROCESSED
        #: Its stream was deleted: the mapping stays (as Lambda's does), disabled, polling nothing.
        self.stream_deleted = False

    def __repr__(self) -> str:
        return f"<StreamMapping {self.uuid} {self.stream.name} -> {self.function}>"

    @property
    def metric_dimension(self) -> str:
        return self.uuid

    def iterator_age(self) -> dict[str, float]:
        """The ``IteratorAge`` metric (ms): how old the last record of each batch was when
        the batch was read."""
        return self._source.metrics.summary("IteratorAge", self.uuid)

    async def failure_records(self, *, newest: int | None = None) -> list[dict[str, Any]]:
        """The on-failure records this mapping wrote (Lambda's record, no record data),
        oldest first; with ``newest``, only that many of the last ones."""
        store = await self._source.store()
        return await store.failure_records(mapping=self.uuid, newest=newest)

    async def failure_count(self) -> int:
        """How many on-failure records this mapping wrote."""
        store = await self._source.store()
        return await store.failure_count(mapping=self.uuid)

    async def checkpoints(self) -> dict[str, str | None]:
        """The durable checkpoint per shard: the last sequence number done (``None``: none yet)."""
        store = await self._source.store()
        return {
            k: (seq_str(v.seq) if v.seq >= 0 else None)
            for k, v in (await store.checkpoints(self.uuid)).items()
        }

    @property
    def shards_owned(self) -> list[str]:
        return sorted(self._pollers)

    def wake(self) -> None:
        self._wake_coordinator.set()
        for poller in self._poller_objects.values():
            poller.waker.set()

    # -- coordinator: leases and pollers ---------------------------------------------

    @property
    def idle(self) -> bool:
        """The coordinator and every shard poller wait for new records or for time to
        pass (a retry delay, the next poll): nothing can happen without either."""
        if self._coordinator is None or self._coordinator.done():
            return True
        return (
            self._parked
            and not self._wake_coordinator.is_set()
            and all(p.idle for p in self._poller_objects.values())
        )

    def start(self) -> None:
        if not self.config.enabled:  # kept with its checkpoints, not polled
            return
        # A wake-up ends a backoff too: a put that went through, a poller that ended, the
        # PostgreSQL listener back ("*") all say the store works again; without it the
        # mapping would wait out a backoff of up to 30 s after the store came back (its
        # leases lapsed meanwhile, so nothing is delivered until the next turn).
        self._coordinator = self._source.supervisor.loop(
            f"stream-mapping:{self.uuid}", self._coordinate_once, wake=self._wake_coordinator.event
        )

    async def _coordinate_once(self) -> None:
        """One turn: heartbeat what we hold, take the shards that are ready up to our fair
        share, steal one from the busiest host when the spread is uneven, then sleep."""
        clock = self._source.clock
        ttl = self.config.lease_seconds
        interval = min(ttl / 3, self.config.poll_interval)
        store = await self._source.store()
        now = clock.time()
        mine = [*self._pollers, *self._stolen]
        held = await store.heartbeat(self.uuid, self.owner, mine, now, ttl)
        self._lease_until.update(dict.fromkeys(held, now + ttl))
        for shard_id in list(self._pollers):
            if shard_id not in held:
                self._log.warning("lease lost", shard_id=shard_id)
                self._stop_poller(shard_id)
        for shard_id in [s for s in self._stolen if s not in held]:
            del self._stolen[shard_id]
        checkpoints = await store.checkpoints(self.uuid)
        ready: list[Shard] = []
        row = None if self._retiring else await store.mapping(self.stream.name, self.function)
        if not self._retiring and (row is None or row.uuid != self.uuid):
            # Another host removed the mapping: its checkpoints are gone, so a shard taken
            # now would be read again from its beginning. Forget it here too.
            self._retiring = True
            self._log.warning("mapping removed elsewhere; it goes here too")
            self._source.supervisor.spawn(self._source.forget_mapping(self), name=f"retire:{self.uuid}")
        elif row is not None and self.config.enabled and row.config.get("enabled") is False:
            # Disabled in the store by another host (its DeleteStream, which also took the
            # checkpoints, or its UpdateEventSourceMapping): disabled here too, before a
            # shard is taken (a stream made again under the name would be read from its
            # beginning by a mapping that the store and the other hosts call disabled).
            self._retiring = True
            self._log.warning("mapping disabled elsewhere; disabled here too")
            self._source.supervisor.spawn(self._source.keep_disabled(self), name=f"disable:{self.uuid}")
        # Retiring, nothing more is taken (the store refuses the leases anyway).
        shards = [] if self._retiring else await store.shards(self.stream.name)
        if not shards and not self._retiring:  # a stream has a shard always: it was deleted
            if not self.stream_deleted:
                self._log.warning("the mapping's stream was deleted; it polls nothing")
                self._stream_gone()
        elif self.stream_deleted:  # made again under its name: read from its beginning
            self.stream_deleted = False
            self.last_processing_result = NO_RECORDS_PROCESSED
        if shards:
            # The retention another host may have changed (Increase/DecreaseStreamRetentionPeriod):
            # what MaximumRecordAgeInSeconds -1 means for this turn's batches.
            self._source._retention[self.stream.name] = await store.stream_retention(self.stream.name)
        for shard in shards:
            done = checkpoints.get(shard.shard_id)
            if done and done.finished:
                continue
            parents = [checkpoints.get(p) for p in shard.parents]
            if all(p is not None and p.finished for p in parents):
                ready.append(shard)  # a child shard waits until its parents are read to the end
        # Expiries in our clock's frame as the store judges them (a holder's clock may be
        # skewed: a dead host whose clock ran ahead must not look alive for that long).
        leases = await store.leases(self.uuid, now=clock.time()) if ready else {}
        now = clock.time()
        alive = {owner: 0 for owner, expires in leases.values() if expires > now}
        alive[self.owner] = 0
        for shard in ready:
            lease = leases.get(shard.shard_id)
            if lease is not None and lease[0] in alive and lease[1] > now:
                alive[lease[0]] += 1
        # KCL's balance: each live owner's fair share is ceil(ready / owners). Take free or
        # expired shards up to it; beyond it, leave them to the others.
        share = -(-len(ready) // len(alive)) if ready else 0
        count = sum(1 for s in ready if s.shard_id in self._pollers or s.shard_id in self._stolen)
        for shard in ready:
            if count >= share:
                break
            if shard.shard_id in self._pollers or shard.shard_id in self._stolen:
                continue
            lease = leases.get(shard.shard_id)
            if lease is not None and lease[0] != self.owner and lease[1] > now:
                continue  # alive elsewhere (the store judges again as it writes)
            now = clock.time()
            if await store.acquire_lease(self.uuid, shard.shard_id, self.owner, now, ttl):
                self._lease_until[shard.shard_id] = now + ttl
                self._log.info("lease taken", shard_id=shard.shard_id)
                self._start_poller(shard)
                count += 1
        if count < share and self._source.balance:
            await self._steal_one(store, ready, leases, alive, share, now, ttl, interval)
        for shard_id, (shard, start_at) in list(self._stolen.items()):
            if clock.time() >= start_at:
                del self._stolen[shard_id]
                self._start_poller(shard)
        self._parked = True
        try:
            await self._wake_coordinator.wait(interval)
        finally:
            self._parked = False

    async def _steal_one(
        self,
        store: StreamStore,
        ready: list[Shard],
        leases: dict[str, tuple[str, float]],
        alive: dict[str, int],
        share: int,
        now: float,
        ttl: float,
        interval: float,
    ) -> None:
        """Take one shard from the busiest owner when it holds more than its fair share.
        Its poller starts one coordinator turn later: by then the owner's heartbeat has
        seen the lease gone and stopped its poller (whose checkpoints are fenced anyway),
        so the two rarely deliver the same batch at once."""
        others = [(n, owner) for owner, n in alive.items() if owner != self.owner]
        if not others:
            return
        most, victim = max(others)
        if most <= share:
            return
        theirs = [s for s in ready if leases.get(s.shard_id, ("", 0.0))[0] == victim]
        shard = theirs[-1]
        if await store.steal_lease(self.uuid, shard.shard_id, self.owner, victim, now, ttl):
            self._lease_until[shard.shard_id] = now + ttl
            self._stolen[shard.shard_id] = (shard, self._source.clock.time() + interval)
            self._log.info("lease stolen to balance", shard_id=shard.shard_id, victim=victim, share=share)

    def lease_valid(self, shard_id: str) -> bool:
        """Whether our lease of ``shard_id`` is still live by our own clock. A poller
        checks before each invoke, so a host that stalled past its lease stops at once
        instead of re-delivering what the new owner already did."""
        return self._source.clock.time() < self._lease_until.get(shard_id, 0.0)

    def _stream_gone(self) -> None:
        """The stream was deleted (here or by another host): stop the shard pollers (their
        shards and checkpoints are gone) and say so as Lambda does."""
        self.stream_deleted = True
        self.last_processing_result = STREAM_NOT_FOUND
        for shard_id in list(self._pollers):
            self._stop_poller(shard_id)
        self._stolen.clear()

    def _start_poller(self, shard: Shard) -> None:
        poller = ShardPoller(self, shard)
        task = self._source.supervisor.spawn(poller.run(), name=f"shard-poller:{self.uuid}:{shard.shard_id}")
        self._pollers[shard.shard_id] = task
        self._poller_objects[shard.shard_id] = poller

        def forget(done: asyncio.Task[None]) -> None:
            if self._pollers.get(shard.shard_id) is done:
                del self._pollers[shard.shard_id]
                del self._poller_objects[shard.shard_id]
            self._wake_coordinator.set()

        task.add_done_callback(forget)

    def _stop_poller(self, shard_id: str) -> None:
        task = self._pollers.pop(shard_id)
        self._poller_objects.pop(shard_id)
        task.cancel()

    async def stop(self) -> None:
        """Stop polling and hand the leases back, so another poller may go on at once."""
        tasks = [t for t in (self._coordinator, *self._pollers.values()) if t is not None]
        shard_ids = [*self._pollers, *self._stolen]
        self._stolen.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pollers.clear()
        self._poller_objects.clear()
        store = await self._source.store()
        for shard_id in shard_ids:
            await store.release_lease(self.uuid, shard_id, self.owner)


# -- one shard ------------------------------------------------------------------------


class ShardPoller:
    """Reads one leased shard in order and delivers its records."""

    def __init__(self, mapping: StreamMapping, shard: Shard) -> None:
        self.mapping = mapping
        self.shard = shard
        self.config = mapping.config
        self.source = mapping._source
        self.clock = self.source.clock
        self.waker = _Waker(self.clock)
        self.log = mapping._log.bind(shard_id=shard.shard_id)
        self.parked = False
        self._order: list[int] = []  # sequence numbers of the round, in order
        self._next = 0  # the first of them not done yet
        self._done: set[int] = set()  # done, after one that is not (lanes finish apart)
        self._position = -1  # the checkpoint: last sequence number done
        # The checkpoint written while the next batch is invoked: the newest position
        # wanted, the last one written, and the task writing (None: caught up).
        self._wanted = self._written_at = -1
        self._writing: asyncio.Task[None] | None = None
        source = self.source
        self._event_head = (  # what every record of the event repeats
            '"eventSource":"aws:kinesis","eventVersion":"1.0","eventName":"aws:kinesis:record",'
            f'"invokeIdentityArn":{dumps(role_arn(source.account_id))},'
            f'"awsRegion":{dumps(source.region)},"eventSourceARN":{dumps(mapping.stream.arn)},'
        )
        # FilterCriteria: None (no filters) keeps the matcher off the per-record path.
        self._filter = RecordFilter(self.config.filters) if self.config.filters else None
        # AT_TIMESTAMP's timestamp: what arrived before it is not read.
        at_timestamp = self.config.starting_position == "AT_TIMESTAMP"
        self._not_before = self.config.starting_position_timestamp if at_timestamp else None
        # What one read takes at most (data and keys): a batch of 6 MB for each lane.
        self._read_bytes = MAX_BATCH_BYTES * self.config.parallelization_factor
        # What a record of the event weighs beyond its data and quoted partition key: the
        # record of ``_event`` with both empty, the longest sequence numbers and arrival time.
        seq, at = "9" * len(seq_str(0)), "-1.2345678901234567e+308"
        self._record_overhead = len(
            f'{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":,'
            f'"sequenceNumber":"{seq}","data":"","approximateArrivalTimestamp":{at}}},'
            f'{self._event_head}"eventID":"{shard.shard_id}:{seq}"}},'
        )

    @property
    def idle(self) -> bool:
        return self.parked and not self.waker.is_set()

    async def _park(self, wait: Awaitable[None]) -> None:
        try:
            await self._written()  # parked means checkpointed: nothing is in flight
        except BaseException:
            close = getattr(wait, "close", None)
            if close is not None:
                close()  # the coroutine we will not wait for
            raise
        self.parked = True
        try:
            await wait
        finally:
            self.parked = False

    async def run(self) -> None:
        """Poll until the shard is finished or the lease is lost. A store or sandbox
        failure ends this poller with the error logged; the coordinator starts a new one
        from the durable checkpoint on its next turn (while the lease holds)."""
        try:
            await self._run()
        except* RuntimeClosed:
            # The runtime is closing under the batch (a sandbox killed, a call refused): the
            # checkpoint stays where it is and the close gives the lease back.
            self.log.info("shard poller stopped: the runtime is closing")
        except* INFRASTRUCTURE as group:
            for exc in group.exceptions:
                self.log.error("shard poller failed; restarting from the checkpoint", exc_info=exc)
            self.source.supervisor.failures += 1
            await self._park(self.clock.sleep(min(self.config.lease_seconds / 3, 1.0)))

    async def _run(self) -> None:
        store = await self.source.store()
        start = (await store.checkpoints(self.mapping.uuid)).get(self.shard.shard_id)
        if start is not None and start.finished:
            await store.release_lease(self.mapping.uuid, self.shard.shard_id, self.mapping.owner)
            return
        self._position = start.seq if start is not None else -1
        try:
            await self._poll(store)
        except* _LeaseLost:
            self.log.warning("lease lost at checkpoint; another poller goes on from there")

    async def _poll(self, store: StreamStore) -> None:
        config = self.config
        round_size = read_size = config.batch_size * config.parallelization_factor
        if self._filter is not None:
            # Filters pass over some of what is read: read more at once (up to GetRecords'
            # 10,000 records, and the bytes of a round) so the batches can still fill.
            read_size = max(round_size, min(10 * round_size, 10_000))
        # Up to four reads per read ahead while reads are small (at most 500 records,
        # or one read): a quarter of the reads' hops, and little more held in memory.
        ahead_size = max(read_size, min(4 * read_size, 500))
        ahead_bytes = self._read_bytes * (ahead_size // read_size)
        stream, shard_id = self.mapping.stream.name, self.shard.shard_id
        ahead: tuple[int, asyncio.Task[list[StoredRecord]]] | None = None
        try:
            while True:
                records = await self._gather(store, read_size, ahead)
                ahead = None
                if records and self._not_before is not None and records[0].arrival < self._not_before:
                    # AT_TIMESTAMP: records that arrived before it are passed over, not invoked
                    # (a timestamp still to come at creation, or a shard split off since).
                    skipped = next((i for i, r in enumerate(records) if r.arrival >= self._not_before), None)
                    last = records[-1 if skipped is None else skipped - 1].seq
                    await self._checkpoint(store, last)
                    self._position = last
                    continue
                if records:
                    # Read what follows while these are delivered: the read's hop overlaps
                    # the invokes. It is used only when these end with the checkpoint at
                    # their last record (always, unless a round raises).
                    after = records[-1].seq
                    reading = store.read(stream, shard_id, after, ahead_size, max_bytes=ahead_bytes)
                    ahead = (after, asyncio.ensure_future(reading))
                    if self._filter is not None:
                        await self._deliver_filtered(store, records, round_size)
                        continue
                    for start in range(0, len(records), round_size):
                        await self._deliver_round(store, records[start : start + round_size])
                    continue
                if await self._read_to_end(store):
                    await self._checkpoint(store, self._position, finished=True)
                    await store.release_lease(self.mapping.uuid, self.shard.shard_id, self.mapping.owner)
                    self.log.info("shard finished")
                    return
                await self._park(self.waker.wait(config.poll_interval))
        finally:
            if ahead is not None:
                _drop(ahead[1])
            await self._settle()

    async def _gather(
        self,
        store: StreamStore,
        limit: int,
        ahead: tuple[int, asyncio.Task[list[StoredRecord]]] | None = None,
    ) -> list[StoredRecord]:
        """Read up to ``limit`` records after the checkpoint (or take the round read
        ahead, when it starts there and found records), waiting up to
        ``max_batching_window`` for a fuller batch."""
        records: list[StoredRecord] = []
        if ahead is not None:
            after, task = ahead
            records = await task
            if after != self._position:
                records = []
        if not records:
            records = await self._read(store, limit)
        window = self.config.max_batching_window
        if not records or window <= 0 or await self._ready(records, limit):
            return records
        deadline = self.clock.monotonic() + window
        while not await self._ready(records, limit) and (left := deadline - self.clock.monotonic()) > 0:
            await self._park(self.waker.wait(left))
            records = await self._read(store, limit)
        return records

    async def _read(self, store: StreamStore, limit: int) -> list[StoredRecord]:
        """The records after the checkpoint, as many as a round's batches can take: up to
        ``limit``, and about 6 MB per lane (10,000 records of 1 MB are never read at once)."""
        stream, shard_id = self.mapping.stream.name, self.shard.shard_id
        return await store.read(stream, shard_id, self._position, limit, max_bytes=self._read_bytes)

    def _full(self, records: list[StoredRecord]) -> bool:
        """A batch is ready without waiting out the window: ``batch_size`` records, or an
        event of 6 MB (Lambda invokes at whichever comes first)."""
        if len(records) >= self.config.batch_size:
            return True
        return _event_bytes(records, self._record_overhead) > _RECORDS_BUDGET

    async def _ready(self, records: list[StoredRecord], limit: int) -> bool:
        """:meth:`_full`; with filters, of the records that pass (Lambda filters each record
        as it adds it to the batch), or a read of ``limit`` (as much as is read at once)."""
        if self._filter is None:
            return self._full(records)
        return len(records) >= limit or self._full(await self._matching(records))

    async def _matching(self, records: list[StoredRecord]) -> list[StoredRecord]:
        """The records that pass the mapping's filters (it has some): on a worker thread
        when their data is decoded and large (JSON of megabytes takes milliseconds)."""
        match = self._filter
        assert match is not None
        if match.uses_data and sum(map(len, map(_data, records))) >= LARGE_PAYLOAD:
            return await asyncio.to_thread(self._match, match, records)
        return self._match(match, records)

    def _match(self, match: RecordFilter, records: list[StoredRecord]) -> list[StoredRecord]:
        with_data, shard_id = match.uses_data, self.shard.shard_id
        return [
            r
            for r in records
            if match.matches(
                kinesis_fields(
                    shard_id, r.partition_key, seq_str(r.seq), r.data, r.arrival, with_data=with_data
                )
            )
        ]

    async def _read_to_end(self, store: StreamStore) -> bool:
        """Whether the shard is closed and every record in it was read: the shard is
        seen closed first, then read empty, so no record can slip in between."""
        if self.shard.open:
            shards = {s.shard_id: s for s in await store.shards(self.mapping.stream.name)}
            shard = shards.get(self.shard.shard_id)
            if shard is None:  # the stream was deleted (by another host), its mapping with it
                self.log.warning("shard gone with its stream; this poller stops")
                raise _LeaseLost(self.shard.shard_id)
            self.shard = shard
            if self.shard.open:
                return False
        more = await store.read(self.mapping.stream.name, self.shard.shard_id, self._position, 1)
        return not more

    async def _deliver_filtered(self, store: StreamStore, records: list[StoredRecord], size: int) -> None:
        """Deliver what passes the filters in rounds of ``size`` (batches are of records
        that pass, as Lambda fills them); once those are done, the checkpoint moves to the
        last record read (what no filter matched is done too, and a read of only those
        invokes nothing)."""
        kept = await self._matching(records)
        for start in range(0, len(kept), size):
            await self._deliver_round(store, kept[start : start + size])
        last = records[-1].seq
        if self._position < last:
            self._checkpoint_soon(store, last)
            self._position = last

    async def _deliver_round(self, store: StreamStore, records: list[StoredRecord]) -> None:
        """Deliver a round: one lane per partition-key group, each lane in order."""
        factor = self.config.parallelization_factor
        lanes: dict[int, list[StoredRecord]] = {}
        if factor > 1:
            for record in records:
                lanes.setdefault(zlib.crc32(record.partition_key.encode()) % factor, []).append(record)
        else:
            lanes[0] = records
        self._order = list(map(_seq, records))
        self._next = 0
        self._done.clear()
        if len(lanes) == 1:
            for batch in _batches(records, self.config.batch_size, self._record_overhead):
                await self._deliver(store, batch)
            return
        async with asyncio.TaskGroup() as group:
            for lane_records in lanes.values():
                group.create_task(self._deliver_lane(store, lane_records))

    async def _deliver_lane(self, store: StreamStore, records: list[StoredRecord]) -> None:
        for batch in _batches(records, self.config.batch_size, self._record_overhead):
            await self._deliver(store, batch)

    async def _deliver(self, store: StreamStore, batch: list[StoredRecord]) -> None:
        """Deliver one batch until all of it succeeded or was sent to on-failure."""
        config = self.config
        pending = deque([batch])
        attempts = 0  # failed invokes of the current records; bisect splits do not count
        throttles = 0
        while pending:
            part = pending.popleft()
            expired, part = self._split_expired(part)
            if expired:
                await self._complete(store, expired, failure=("RecordAgeExceeded", attempts))
            if not part:
                continue
            if not self.mapping.lease_valid(self.shard.shard_id):
                raise _LeaseLost(self.shard.shard_id)
            self._check_written()  # the checkpoint before found the lease taken: stop here
            try:
                failed = await self._invoke(part)
            except (TooManyRequests, FunctionNotFound, ServiceError) as exc:
                throttles += 1  # the shard waits, in order; no attempt is used
                self.log.info("throttled", error=str(exc), retry=throttles)
                pending.appendleft(part)
                await self._park(self.clock.sleep(_backoff(throttles, THROTTLE_BACKOFF)))
                continue
            throttles = 0
            succeeded = part[: len(part) - len(failed)]
            if succeeded:
                await self._complete(store, succeeded)
                attempts = 0
            if not failed:
                continue
            if succeeded and config.bisect_on_error:
                # Lambda: with bisection on, a partial success splits the batch at the
                # returned sequence number (a split, not a retry: splits use no attempt).
                pending.appendleft(failed)
            elif not succeeded and config.bisect_on_error and len(failed) > 1:
                self.source.metrics.incr("StreamBisects", self.mapping.uuid)
                half = len(failed) // 2
                pending.extendleft([failed[half:], failed[:half]])
            else:
                # A function error, or a partial success without bisection (its remainder,
                # from the lowest failed record, is retried per the retry policy: an attempt).
                attempts += 1
                if 0 <= config.max_retry_attempts < attempts:
                    await self._complete(store, failed, failure=("RetryAttemptsExhausted", attempts))
                    attempts = 0
                    continue
                pending.appendleft(failed)
                await self._park(self.clock.sleep(_backoff(attempts, RETRY_BACKOFF)))

    def _split_expired(self, part: list[StoredRecord]) -> tuple[list[StoredRecord], list[StoredRecord]]:
        max_age: float = self.config.max_record_age
        if max_age < 0:
            max_age = self.source.retention(self.mapping.stream.name)
        cutoff = self.clock.time() - max_age
        count = 0
        while count < len(part) and part[count].arrival < cutoff:
            count += 1
        return part[:count], part[count:]

    async def _invoke(self, part: list[StoredRecord]) -> list[StoredRecord]:
        """Invoke the function with ``part``; returns the records that failed (a suffix)."""
        source = self.source
        entry = source.registry.get(self.mapping.function)
        age_ms = max(0.0, (self.clock.time() - part[-1].arrival) * 1000)
        source.metrics.observe("IteratorAge", self.mapping.uuid, age_ms)
        body = self._event(part)
        result = await source.invoker.invoke(entry, body, source.invoker.request_id())
        mapping = self.mapping
        if result.error is not None:
            mapping.last_processing_result = PROCESSING_FAILED
            return part
        mapping.last_processing_result = PROCESSING_OK
        if not self.config.report_batch_item_failures:
            return []
        try:
            response = await decode_result(result.raw)
        except (ValueError, RecursionError):  # not JSON (a broken sandbox): the batch failed
            mapping.last_processing_result = PROCESSING_FAILED
            return part
        return _failed_suffix(part, response)

    def _event(self, part: list[StoredRecord]) -> bytes:
        # The hot path of a stream (a few µs per record): the constant part of each record
        # is composed once per poller, strings are quoted with json's C quoting (exactly
        # what ``dumps`` does for a string, without its per-call checks).
        # A float's repr is half of a record's cost; the records of one put share their
        # arrival time, so it is formatted once per run of equal times.
        head = self._event_head
        shard_id = self.shard.shard_id
        items = []
        last: float | None = None
        at = ""
        for number, key, data, arrival in part:
            seq = seq_str(number)
            if arrival != last:
                last, at = arrival, repr(arrival)
            items.append(
                f'{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":{_quote(key)},'
                f'"sequenceNumber":"{seq}","data":"{data}","approximateArrivalTimestamp":{at}}},'
                f'{head}"eventID":"{shard_id}:{seq}"}}'
            )
        return ('{"Records":[' + ",".join(items) + "]}").encode()

    async def _complete(
        self, store: StreamStore, records: Sequence[StoredRecord], failure: tuple[str, int] | None = None
    ) -> None:
        """Mark ``records`` done and move the checkpoint over the done prefix of the round.

        Skipped records go to the on-failure destination first (at least once: a crash
        before the checkpoint fails them again and delivers the record again). Lanes
        complete concurrently, so the position only ever moves forward."""
        failure_record = self._failure_record(records, *failure) if failure is not None else None
        destination = self.config.on_failure
        if failure_record is not None and destination is not None:
            await self.source.deliver(self.mapping.function, destination, dumps(failure_record))
        order, start, count = self._order, self._next, len(records)
        position = self._position
        if (
            not self._done
            and start + count <= len(order)
            and order[start] == records[0].seq
            and order[start + count - 1] == records[-1].seq
        ):
            # The common case: the next records of the round, in order (``records`` are
            # distinct, sorted and of this round, so first and last matching is enough).
            self._next = start + count
            position = records[-1].seq
        else:
            done = self._done
            done.update(r.seq for r in records)
            index = start
            while index < len(order) and order[index] in done:
                done.discard(order[index])
                index += 1
            if index > start:
                position = order[index - 1]
                self._next = index
        if failure_record is not None:
            await self._checkpoint(store, position, failure=failure_record)
            self._position = max(self._position, position)
        elif position != self._position:
            self._checkpoint_soon(store, position)
            self._position = max(self._position, position)
        if failure is not None:
            self.log.warning(
                "records skipped",
                condition=failure[0],
                count=len(records),
                first=seq_str(records[0].seq),
                last=seq_str(records[-1].seq),
            )
            self.source.metrics.incr("StreamRecordsSkipped", self.mapping.uuid, len(records))

    def _checkpoint_soon(self, store: StreamStore, position: int) -> None:
        """Move the checkpoint to ``position`` while the next batch is invoked: one
        writer per poller, which writes the newest position done each time (batches done
        while a write is in flight share the next one, so the durable checkpoint trails
        by one write at most). Its outcome is checked before the next invoke (a lost
        lease stops the poller there), and awaited before any other checkpoint, before
        the poller waits for anything and when it ends."""
        self._wanted = max(self._wanted, position)
        self._check_written()  # a writer that ended: its error (a lost lease) is ours now
        if self._writing is None:
            self._writing = asyncio.ensure_future(self._write_behind(store))

    async def _write_behind(self, store: StreamStore) -> None:
        while self._written_at < self._wanted:
            position = self._wanted
            await self._write_checkpoint(store, position)
            self._written_at = position

    async def _written(self) -> None:
        """Wait for the checkpoint in flight (its error, e.g. a lost lease, is raised)."""
        writing = self._writing
        if writing is not None:
            await writing
            if self._writing is writing:
                self._writing = None

    def _check_written(self) -> None:
        writing = self._writing
        if writing is not None and writing.done():
            self._writing = None
            writing.result()

    async def _settle(self) -> None:
        """The poller ends: let the checkpoint in flight finish (it is fenced by the
        lease, and a clean stop should not deliver its batch again), errors dropped."""
        writing, self._writing = self._writing, None
        if writing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(writing)
            if writing.done() and not writing.cancelled():
                writing.exception()

    async def _checkpoint(
        self,
        store: StreamStore,
        position: int,
        *,
        finished: bool = False,
        failure: dict[str, Any] | None = None,
    ) -> None:
        await self._written()
        await self._write_checkpoint(store, position, finished=finished, failure=failure)

    async def _write_checkpoint(
        self,
        store: StreamStore,
        position: int,
        *,
        finished: bool = False,
        failure: dict[str, Any] | None = None,
    ) -> None:
        destination = self.config.on_failure
        ok = await store.checkpoint(
            self.mapping.uuid,
            self.shard.shard_id,
            self.mapping.owner,
            position,
            finished=finished,
            failure=(destination, failure, self.clock.time()) if failure is not None else None,
        )
        if not ok:
            raise _LeaseLost(self.shard.shard_id)

    def _failure_record(
        self, records: Sequence[StoredRecord], condition: str, attempts: int
    ) -> dict[str, Any]:
        """Lambda's on-failure record for a stream: where the skipped records are, not them."""
        source = self.source
        return stream_failure_record(
            request_id=str(uuid.uuid4()),
            function_arn=function_arn(source.region, source.account_id, self.mapping.function),
            condition=condition,
            attempts=attempts,
            shard_id=self.shard.shard_id,
            first_seq=seq_str(records[0].seq),
            last_seq=seq_str(records[-1].seq),
            first_arrival=records[0].arrival,
            last_arrival=records[-1].arrival,
            batch_size=len(records),
            stream_arn=self.mapping.stream.arn,
            now=self.clock.time(),
        )


def _stored_config(config: StreamMappingConfig) -> dict[str, Any]:
    """The settings stored as the mapping's config: all but its filters, which have a column
    of their own (an older fnrt reads the config and would refuse a key it does not know)."""
    settings = config.to_dict()
    del settings["filters"]
    return settings


def _keep_start(config: StreamMappingConfig, stored: dict[str, Any]) -> StreamMappingConfig:
    """``config`` with the starting position of the stored mapping's config ``stored``."""
    try:
        kept = StreamMappingConfig.from_kwargs(stored)
    except InvalidConfig:  # written by another version: the given one stands
        return config
    return attrs.evolve(
        config,
        starting_position=kept.starting_position,
        starting_position_timestamp=kept.starting_position_timestamp,
    )


def _drop(task: asyncio.Task[Any]) -> None:
    """Cancel a read ahead nobody will use, and retrieve its outcome (no warning for an
    error nobody needs)."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


# ``{"Records":[`` and ``]}`` around a batch's records.
_EVENT_ENVELOPE = len('{"Records":[]}')
_RECORDS_BUDGET = MAX_BATCH_BYTES - _EVENT_ENVELOPE  # what a batch's records may weigh
# A record's fields, read in C over a whole round.
_seq, _key, _data = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


def _event_bytes(records: list[StoredRecord], overhead: int) -> int:
    """The size of the records in an event (see :func:`_batches`), in C over them all."""
    return (
        sum(map(len, map(_data, records)))
        + sum(map(len, map(_quote, map(_key, records))))
        + overhead * len(records)
    )


def _batches(records: list[StoredRecord], size: int, overhead: int) -> Iterator[list[StoredRecord]]:
    """Cut ``records`` into batches of at most ``size`` records whose event fits Lambda's
    6 MB payload: a record weighs its data, its partition key as JSON quotes it (a
    character outside ASCII is 6 or 12 bytes) and ``overhead``, the rest of its event record."""
    if len(records) <= size and _event_bytes(records, overhead) <= _RECORDS_BUDGET:
        yield records  # the common case: the round is one batch
        return
    batch: list[StoredRecord] = []
    total = 0
    for record in records:
        weight = len(record.data) + len(_quote(record.partition_key)) + overhead
        if batch and (len(batch) >= size or total + weight > _RECORDS_BUDGET):
            yield batch
            batch, total = [], 0
        batch.append(record)
        total += weight
    if batch:
        yield batch


def _failed_suffix(part: list[StoredRecord], payload: Any) -> list[StoredRecord]:
    """Lambda's partial batch response: an empty or missing list is success; an empty or
    unknown ``itemIdentifier`` fails the whole batch; otherwise everything from the lowest
    reported sequence number on is retried."""
    failures = payload.get("batchItemFailures") if isinstance(payload, dict) else None
    if not failures:
        return []
    if not isinstance(failures, list):
        return part
    seqs = {r.seq for r in part}
    lowest: int | None = None
    for item in failures:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        try:
            seq = seq_int(ident) if isinstance(ident, str) else None
        except ValueError:
            seq = None
        if seq is None or seq not in seqs:
            return part
        lowest = seq if lowest is None else min(lowest, seq)
    return [r for r in part if lowest is not None and r.seq >= lowest]


# -- the runtime's stream source ------------------------------------------------------


class StreamSource:
    """Streams and their mappings. Sees the invoker, the registry and the stream store,
    never the runtime; on-failure records go out through ``deliver`` (the async source)."""

    def __init__(
        self,
        *,
        invoker: Invoker,
        registry: FunctionRegistry,
        open_store: Callable[[], Awaitable[StreamStore]],
        deliver: Deliver,
        clock: Clock,
        metrics: Metrics,
        log: Any,
        supervisor: Supervisor,
        region: str = "us-east-1",
        account_id: str = "000000000000",
    ) -> None:
        self.invoker = invoker
        self.registry = registry
        self._open_store = open_store
        self.deliver = deliver
        self.clock = clock
        self.metrics = metrics
        self.log = log.bind(source="streams")
        self.supervisor = supervisor
        self.region = region
        self.account_id = account_id
        self._opening = asyncio.Lock()
        self._store: StreamStore | None = None
        #: Names this host in shard leases (the runtime sets its host id).
        self.host_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: Steal shards from busier hosts (KCL's balancing); off: take only free or expired.
        self.balance = True
        self._streams: dict[str, Stream] = {}
        self._retention: dict[str, float] = {}
        self.mappings: dict[str, StreamMapping] = {}
        # One update or removal of a mapping at a time: two at once would each stop the
        # same mapping and start their own, leaving one running that nothing can stop.
        self._changing = asyncio.Lock()

    async def store(self) -> StreamStore:
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    self._store = await self._open_store()
        return self._store

    @property
    def idle(self) -> bool:
        return all(m.idle for m in self.mappings.values())

    def retention(self, stream: str) -> float:
        return self._retention.get(stream, 86_400.0)

    def wake(self, stream: str) -> None:
        """Wake the mappings of ``stream`` (``"*"``: every mapping), e.g. when another
        host put records into it."""
        for mapping in self.mappings.values():
            if stream == "*" or mapping.stream.name == stream:
                mapping.wake()

    async def create_stream(
        self, name: str, shard_count: int, retention_hours: float, mode: str = "PROVISIONED"
    ) -> Stream:
        if not isinstance(name, str) or not STREAM_NAME.fullmatch(name):
            raise InvalidConfig(
                f"stream name must be 1-128 characters of a-z, A-Z, 0-9, '_', '.' and '-', got {name!r}"
            )
        if (
            isinstance(shard_count, bool)
            or not isinstance(shard_count, int)
            or not 1 <= shard_count <= 10_000
        ):
            raise InvalidConfig(f"shard_count must be a whole number 1-10,000, got {shard_count!r}")
        retention = _retention_seconds(retention_hours)
        if mode not in STREAM_MODES:
            raise InvalidConfig(f"mode must be one of {', '.join(STREAM_MODES)}, got {mode!r}")
        store = await self.store()
        await store.create_stream(name, shard_count, retention, self.clock.time(), mode=mode)
        return await self.get_stream(name)

    async def stream_names(self) -> list[str]:
        return await (await self.store()).stream_names()

    async def get_stream(self, name: str) -> Stream:
        store = await self.store()
        # Asked each time, not taken from the cache: on a shared store another host may
        # have deleted the stream (Describe answered it with no shards, and CreateStream
        # refused to make it again: "already exists").
        retention = await store.stream_retention(name)  # 0.0: no such stream (one query for both)
        if not retention:
            self._forget_stream(name)
            raise StreamNotFound(name)
        self._retention[name] = retention  # as it is now: another host may have changed it
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = Stream(self, name)
        return stream

    def _forget_stream(self, name: str) -> None:
        """Drop what this host caches of stream ``name`` (gone from the store)."""
        self._streams.pop(name, None)
        self._retention.pop(name, None)

    async def delete_stream(self, name: str) -> None:
        """Kinesis' ``DeleteStream``: this host's mappings of the stream stop (their leases
        handed back), then the stream, its records and its mappings go in one transaction.
        A failed delete changes nothing: the mappings poll on as they were."""
        async with self._changing:
            store = await self.store()
            if not await store.stream_exists(name):
                raise StreamNotFound(name)
            # Runs to its end even if the caller is cancelled: never stopped mappings of a
            # stream that is still there.
            await asyncio.shield(self._delete_stream(store, name))

    async def _delete_stream(self, store: StreamStore, name: str) -> None:
        doomed = [m for m in self.mappings.values() if m.stream.name == name]
        try:
            for mapping in doomed:
                await mapping.stop()
            await store.delete_stream(name)
        except BaseException:
            for old in doomed:  # the stream is still there: poll on from the checkpoints
                again = StreamMapping(self, old.uuid, old.stream, old.function, old.config)
                self._replace(old.uuid, old, again)
            raise
        for old in doomed:  # kept, disabled, as Lambda keeps them (the store's rows too)
            self.mappings[old.uuid] = self._orphan(old.uuid, old.stream, old.function, old.config)
        self._forget_stream(name)
        self.log.info("stream deleted", stream=name, mappings=[m.uuid for m in doomed])

    def _orphan(
        self, uuid_: str, stream: Stream, function: str, config: StreamMappingConfig
    ) -> StreamMapping:
        """The mapping of a deleted stream: listed, disabled, not polled."""
        mapping = StreamMapping(self, uuid_, stream, function, attrs.evolve(config, enabled=False))
        mapping._stream_gone()
        return mapping

    async def keep_disabled(self, mapping: StreamMapping) -> None:
        """``mapping``, which another host disabled in the store (its DeleteStream, or an
        update), kept here as there: listed, disabled, not polled."""
        async with self._changing:
            if self.mappings.get(mapping.uuid) is not mapping:
                return  # updated or removed meanwhile
            config = attrs.evolve(mapping.config, enabled=False)
            try:
                gone = not await (await self.store()).stream_exists(mapping.stream.name)
            except INFRASTRUCTURE:  # the store is down: disabled all the same
                gone = False
            if gone:
                kept = self._orphan(mapping.uuid, mapping.stream, mapping.function, config)
                self._forget_stream(mapping.stream.name)
            else:
                kept = StreamMapping(self, mapping.uuid, mapping.stream, mapping.function, config)
                kept.last_processing_result = mapping.last_processing_result
            self.mappings[mapping.uuid] = kept
            try:
                await mapping.stop()
            except INFRASTRUCTURE as exc:  # a lease not given back expires
                self.log.warning("mapping stopped, leases not released", mapping=mapping.uuid, error=str(exc))

    async def add_orphan(
        self, uuid_: str, stream_name: str, function: str, config: StreamMappingConfig
    ) -> None:
        """Take back a stored mapping whose stream was deleted (a restart): listed, disabled."""
        async with self._changing:
            if uuid_ not in self.mappings:
                self.mappings[uuid_] = self._orphan(uuid_, Stream(self, stream_name), function, config)

    async def add_mapping(
        self, stream_name: str, function: str, config: StreamMappingConfig
    ) -> StreamMapping:
        # Under the lock of every change: two adds of one (stream, function) at once (a
        # resume beside a user's add) both found none, and both started, under one uuid;
        # the one left out of ``mappings`` was never stopped, not even by its removal.
        async with self._changing:
            stream = await self.get_stream(stream_name)
            name = self.registry.get(function).name
            for mapping in self.mappings.values():
                if mapping.stream.name == stream.name and mapping.function == name:
                    raise InvalidConfig(
                        f"a mapping from {stream.name!r} to {name!r} exists already: {mapping.uuid}"
                    )
            store = await self.store()
            stored = await store.mapping(stream.name, name)
            if stored is not None:
                # The stored mapping goes on from its checkpoints (a restart; another host's):
                # its starting position stays, as an update's does. A new one (a host that
                # adds its mapping "from now" at each start) would pass over, and checkpoint
                # past, what arrived while it was down.
                config = _keep_start(config, stored.config)
            row = await store.create_mapping(
                str(uuid.uuid4()),
                stream.name,
                name,
                _stored_config(config),
                config.starting_position,
                config.starting_position_timestamp,
                self.clock.time(),
                filters=config.filters,
            )
            mapping = StreamMapping(self, row.uuid, stream, name, config)
            self.mappings[row.uuid] = mapping
            mapping.start()
            return mapping

    async def update_mapping(self, key: str, config: StreamMappingConfig) -> StreamMapping:
        """Restart mapping ``key`` with ``config``: the durable config is replaced, then
        the old pollers stop and give their leases back, and new ones go on from the
        checkpoints (an update keeps them: the starting position is a new mapping's only,
        as in Lambda). A failed write changes nothing: the mapping polls on as it was."""
        async with self._changing:
            found = self.mappings.get(key)
            if found is None:
                raise InvalidConfig(f"no stream mapping {key!r}")
            was, wanted = found.config, config
            if (was.starting_position, was.starting_position_timestamp) != (
                wanted.starting_position,
                wanted.starting_position_timestamp,
            ):
                # The pollers pass over what arrived before an AT_TIMESTAMP's timestamp: a
                # new one would move the checkpoints past records never delivered.
                raise InvalidConfig(
                    "the starting position is a new mapping's only (UpdateEventSourceMapping "
                    f"has none): mapping {key!r} starts at {was.starting_position}; remove it "
                    "and add it again to start elsewhere"
                )
            store = await self.store()
            # Written before anything stops: an error here leaves the running mapping as
            # it was, never a stopped one that the control plane still reports enabled.
            row = await store.create_mapping(
                found.uuid,
                found.stream.name,
                found.function,
                _stored_config(config),
                config.starting_position,
                config.starting_position_timestamp,
                self.clock.time(),
                filters=config.filters,
            )
            mapping = StreamMapping(self, row.uuid, found.stream, found.function, config)
            # The swap runs to its end even if the caller is cancelled (an HTTP client that
            # went away): never a half-stopped old mapping and no new one.
            await asyncio.shield(self._swap(key, found, mapping))
            return mapping

    async def _swap(self, key: str, old: StreamMapping, new: StreamMapping) -> None:
        try:
            await old.stop()
        except ServiceError as exc:
            # The config is durable, so the update stands: leases not handed back expire,
            # and the new pollers take them over then.
            self.log.warning("leases not released on update", mapping=key, error=str(exc))
        self._replace(key, old, new)

    def _replace(self, key: str, old: StreamMapping, new: StreamMapping) -> None:
        """Start ``new`` as mapping ``key`` in the place of the stopped ``old``, with its last result."""
        new.last_processing_result = old.last_processing_result
        self.mappings[key] = new
        new.start()

    async def remove_mapping(self, mapping: StreamMapping | str) -> None:
        key = mapping.uuid if isinstance(mapping, StreamMapping) else mapping
        async with self._changing:
            found = self.mappings.pop(key, None)
            if found is None:
                raise InvalidConfig(f"no stream mapping {key!r}")
            await found.stop()
            await (await self.store()).delete_mapping(found.uuid)

    async def forget_mapping(self, mapping: StreamMapping) -> None:
        """Stop and forget ``mapping`` on this host, which another host removed, or whose
        stream another host deleted (the store's rows went with it)."""
        async with self._changing:
            if self.mappings.get(mapping.uuid) is not mapping:
                return  # updated or removed meanwhile
            del self.mappings[mapping.uuid]
            try:
                await mapping.stop()
            except INFRASTRUCTURE as exc:  # its lease rows went with the stream anyway
                self.log.warning("mapping stopped, leases not released", mapping=mapping.uuid, error=str(exc))
            self._forget_stream(mapping.stream.name)

    async def aclose(self) -> None:
        for mapping in list(self.mappings.values()):
            await mapping.stop()
        self.mappings.clear()


__all__ = ["Stream", "StreamMapping", "StreamSource"]
