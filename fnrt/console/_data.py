"""What the console shows, as JSON-ready dicts, read from the runtime's public face.

Reading does not change what the runtime does: the async queue is asked only once the
runtime has opened it, and streams only through their mappings (a console left open must
not create a state database or start a poller in a runtime that uses neither; listing the
mappings may create the runtime's stream source object, which opens nothing).
"""

from __future__ import annotations

import math
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._lambda import GLOBAL_REASON, RATE_REASON, RESERVED_RATE_REASON, RESERVED_REASON
from ..errors import FnrtError, FunctionNotFound

if TYPE_CHECKING:
    from .._runtime import Runtime

SINK_RECORDS_SHOWN = 20
FAILURE_RECORDS_SHOWN = 20
SANDBOXES_SHOWN = 50  # per function
THROTTLE_REASONS = (GLOBAL_REASON, RESERVED_REASON, RATE_REASON, RESERVED_RATE_REASON)


def async_open(rt: Runtime) -> bool:
    """Whether the runtime has opened its async queue (asking would otherwise open it)."""
    return rt.async_queue_open


def sandboxes(rt: Runtime, name: str) -> list[dict[str, Any]]:
    """The function's live sandboxes with their ages (``FunctionPool.sandboxes``)."""
    try:
        listing = rt.sandboxes(name)
    except FunctionNotFound:  # removed since the list of functions was read
        return []
    return [
        {**s, "age_s": round(s["age_s"], 3), "idle_s": None if s["idle_s"] is None else round(s["idle_s"], 3)}
        for s in listing[:SANDBOXES_SHOWN]
    ]


def _round(summary: dict[str, float], key: str) -> float | None:
    value = summary.get(key)
    return None if value is None else round(value, 3)


def host(rt: Runtime, started: float) -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "platform": sys.platform,
        "sandbox": rt.config.sandbox,
        "region": rt.config.region,
        "account_id": rt.config.account_id,
        "state_dir": None if rt.state_dir is None else str(rt.state_dir),
        "console_started": started,
    }


def overview(rt: Runtime, started: float) -> dict[str, Any]:
    """Functions with config and live counts, concurrency, throttles per reason."""
    stats = rt.stats()
    live = stats["functions"]
    metrics = rt.metrics
    throttles = rt.recent.throttles
    by_reason = dict.fromkeys(THROTTLE_REASONS, 0)
    functions = []
    for name, record in sorted(rt.functions().items()):
        config = record.config
        s = live.get(name, {})
        duration = metrics.summary("Duration", name)
        reasons = throttles.get(name, {})
        for reason, n in reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        functions.append(
            {
                "name": name,
                "arn": record.arn,
                "handler": record.handler,
                "sandbox_kind": record.sandbox_kind,
                "timeout": config.timeout,
                "memory_mb": config.memory_mb,
                "reserved_concurrency": config.reserved_concurrency,
                "provisioned_concurrency": config.provisioned_concurrency,
                "warm": s.get("warm", 0),
                "busy": s.get("busy", 0),
                "starting": s.get("starting", 0),
                "cold_starts": s.get("cold_starts", 0),
                "in_flight": s.get("in_flight", 0),
                "peak_concurrency": s.get("peak_concurrency", 0),
                "invocations": int(metrics.counter("Invocations", name)),
                "errors": int(metrics.counter("Errors", name)),
                "throttles": int(metrics.counter("Throttles", name)),
                "timeouts": int(metrics.counter("Timeouts", name)),
                "throttles_by_reason": dict(reasons),
                "duration_p50_ms": _round(duration, "p50"),
                "duration_p99_ms": _round(duration, "p99"),
                "sandboxes": sandboxes(rt, name),
            }
        )
    return {
        "host": host(rt, started),
        "concurrency": {**stats["concurrency"], "throttles_by_reason": by_reason},
        "functions": functions,
        "recent_seq": rt.recent.seq,
    }


def _sinks(names: list[str | None]) -> list[str]:
    return [n.split(":", 1)[1] for n in names if n and n.startswith("sink:")]


LIVE_STATES = ("queued", "leased")
FINISHED_STATES = ("done", "failed")
FINISHED_EVERY = 30.0  # seconds between two counts of the finished events


class FinishedCounts:
    """``done`` and ``failed`` events per function, counted again every
    :data:`FINISHED_EVERY` seconds: they are every event of the retention period (a day's,
    maybe millions), and counting them each second would hold the store's connection
    from the Event invokes and the pollers. The queue's depth (``queued``, ``leased``:
    few, and indexed) is counted each time."""

    def __init__(self, every: float = FINISHED_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._counts: dict[str, dict[str, int]] = {}
        self._at = -math.inf

    async def get(self, rt: Runtime, name: str) -> dict[str, int]:
        now = self.clock()
        if now - self._at >= self.every:
            self._counts, self._at = {}, now
        if name not in self._counts:
            self._counts[name] = await rt.async_queue_counts(name, states=FINISHED_STATES)
        return self._counts[name]


async def queues(rt: Runtime, finished: FinishedCounts | None = None) -> dict[str, Any]:
    """Async queue depth per function, event age, the async config and its sinks' records;
    the finished events' counts from ``finished`` (counted now without it)."""
    if not async_open(rt):
        return {"open": False, "functions": [], "sinks": []}
    functions = []
    sinks: dict[str, None] = {}
    for name in sorted(rt.functions()):
        try:
            config = rt.async_config(name)
        except FunctionNotFound:  # removed since the list of functions was read (a reload)
            continue
        age = rt.metrics.summary("AsyncEventAge", name)
        if finished is None:
            counts = await rt.async_queue_counts(name)
        else:
            live = await rt.async_queue_counts(name, states=LIVE_STATES)
            counts = {**(await finished.get(rt, name)), **live}
        for sink in _sinks([config.on_success, config.on_failure, config.dead_letter]):
            sinks[sink] = None
        functions.append(
            {
                "function": name,
                "counts": counts,
                "queued": counts.get("queued", 0),
                "leased": counts.get("leased", 0),
                "done": counts.get("done", 0),
                "failed": counts.get("failed", 0),
                "received": int(rt.metrics.counter("AsyncEventsReceived", name)),
                "dropped": int(rt.metrics.counter("AsyncEventsDropped", name)),
                "event_age_p50_ms": _round(age, "p50"),
                "event_age_max_ms": _round(age, "max"),
                "config": {
                    "max_retry_attempts": config.max_retry_attempts,
                    "retry_delays": list(config.retry_delays),
                    "max_event_age": config.max_event_age,
                    "on_success": config.on_success,
                    "on_failure": config.on_failure,
                    "dead_letter": config.dead_letter,
                },
            }
        )
    out_sinks = []
    for sink in sinks:
        # The newest few only: a sink can hold many records of up to an Event's 1 MB, and
        # the console reads them every second.
        records = await rt.destination_records(sink, newest=SINK_RECORDS_SHOWN)
        count = await rt.destination_count(sink)
        out_sinks.append({"sink": sink, "count": count, "records": records[::-1]})
    return {"open": True, "functions": functions, "sinks": out_sinks}


async def streams(rt: Runtime) -> dict[str, Any]:
    """Each stream with a mapping: shards (hash ranges, parents), mappings with checkpoints,
    iterator age and on-failure records."""
    try:
        mappings = rt.stream_mappings()
    except FnrtError:  # the runtime is closing
        return {"streams": []}
    by_stream: dict[str, list[Any]] = {}
    streams_: dict[str, Any] = {}
    for m in mappings:
        by_stream.setdefault(m.stream.name, []).append(m)
        streams_[m.stream.name] = m.stream
    out = []
    for name in sorted(streams_):
        stream = streams_[name]
        shards = await stream.shards()
        rows = []
        for m in by_stream[name]:
            age = m.iterator_age()
            failures = await m.failure_records(newest=FAILURE_RECORDS_SHOWN)
            rows.append(
                {
                    "uuid": m.uuid,
                    "function": m.function,
                    "batch_size": m.config.batch_size,
                    "checkpoints": await m.checkpoints(),
                    "shards_owned": m.shards_owned,
                    "iterator_age_ms": {
                        "count": int(age.get("count", 0)),
                        "p50": _round(age, "p50"),
                        "max": _round(age, "max"),
                    },
                    "records_skipped": int(rt.metrics.counter("StreamRecordsSkipped", m.uuid)),
                    "bisects": int(rt.metrics.counter("StreamBisects", m.uuid)),
                    "failure_count": await m.failure_count(),
                    "failure_records": failures[::-1],
                }
            )
        out.append({"name": name, "arn": stream.arn, "shards": shards, "mappings": rows})
    return {"streams": out}


async def cluster(rt: Runtime) -> dict[str, Any]:
    """The hosts sharing this runtime's store, their shard leases and the cluster-wide
    in-flight counts (``Runtime.cluster_stats``); ``shared: False`` for a host alone."""
    if not rt.shares_store:
        return {"shared": False}
    try:
        # the queue's depth: the finished events are a day's, too many to count each second
        stats = await rt.cluster_stats(queue_states=LIVE_STATES)
    except FnrtError as exc:  # the store is unavailable: say so, keep serving
        return {"shared": True, "error": str(exc)}
    return {"shared": True, **stats}
