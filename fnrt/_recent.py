"""A bounded ring of recent invocations, for the console and for scripts.

The runtime adds every finished invocation (``Runtime.recent``). Memory stays bounded two
ways: at most ``max_entries`` entries, and at most ``max_bytes`` of kept payload, result
and log text in all (the oldest entries go first). Each of those three is cut to
``field_limit`` bytes on the way in (the payload and result keep their head, the log its
tail), so no payload is kept beyond the limit.

The warm path pays for a few attribute reads and an append: text is decoded and the log
composed only when an entry is read.
"""

from __future__ import annotations

import datetime
import json
import random
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import _observe
from ._clock import Clock
from .errors import FunctionTimeout

if TYPE_CHECKING:
    from ._runtime import InvocationResult

FIELD_LIMIT = 4096
MAX_ENTRIES = 500
MAX_BYTES = 4 * 1024 * 1024
DURATION_SAMPLE = 2048  # durations kept per function between two drains (a uniform sample)
OUTCOMES = ("success", "error", "timeout")
_ENTRY_OVERHEAD = 256  # the entry's own fields, roughly


def _head(data: bytes, limit: int) -> bytes:
    return data if len(data) <= limit else data[:limit]


def _tail(text: str, limit: int) -> str:
    if len(text) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character: no encoding needed
        return text
    return _observe.log_tail(text, limit)


def _iso(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class InvocationEntry:
    """One finished invocation as the ring keeps it."""

    __slots__ = (
        "_log",
        "at",
        "cold_start",
        "duration_ms",
        "error_message",
        "error_type",
        "function",
        "init_duration_ms",
        "max_memory_mb",
        "memory_size_mb",
        "outcome",
        "output",
        "payload",
        "payload_size",
        "request_id",
        "result",
        "result_size",
        "sandbox_id",
        "seq",
        "size",
    )

    def __init__(
        self,
        seq: int,
        at: float,
        result: InvocationResult,
        sandbox_id: str | None,
        payload: bytes,
        limit: int,
    ) -> None:
        error = result.error
        self.seq = seq
        self.at = at
        self.request_id = result.request_id
        self.function = result.function_name
        self.sandbox_id = sandbox_id
        self.cold_start = result.cold_start
        self.duration_ms = result.duration_ms
        self.init_duration_ms = result.init_duration_ms
        self.max_memory_mb = result.max_memory_mb
        self.memory_size_mb = result.memory_size_mb
        if error is None:
            self.outcome = "success"
            self.error_type = self.error_message = None
            raw = result.raw
        else:
            self.outcome = "timeout" if isinstance(error, FunctionTimeout) else "error"
            self.error_type = error.error_type
            self.error_message = error.error_message
            raw = result.raw or json.dumps(error.to_lambda()).encode()
        self.payload_size = len(payload)
        self.payload = _head(payload, limit)
        self.result_size = len(raw)
        self.result = _head(raw, limit)
        # A cold start's log has the init phase in it: compose it now (rare). A warm one is
        # composed on read from the handler's output.
        if self.cold_start or error is not None:
            self._log: str | None = _tail(result.log, limit)
            self.output = ""
        else:
            self._log = None
            self.output = _tail(result.output, limit)
        self.size = len(self.payload) + len(self.result) + len(self._log or self.output) + _ENTRY_OVERHEAD

    @property
    def report(self) -> str:
        return _observe.report_line(
            self.request_id, self.duration_ms, self.memory_size_mb, self.max_memory_mb, self.init_duration_ms
        )

    @property
    def log(self) -> str:
        """START, the handler's output (its tail), END, REPORT."""
        if self._log is None:
            rid = self.request_id
            return f"{_observe.start_line(rid)}\n{self.output}{_observe.end_line(rid)}\n{self.report}\n"
        return self._log

    def summary(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "function": self.function,
            "time": _iso(self.at),
            "timestamp": self.at,
            "outcome": self.outcome,
            "cold_start": self.cold_start,
            "duration_ms": round(self.duration_ms, 3),
            "error_type": self.error_type,
        }

    def detail(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "sandbox_id": self.sandbox_id,
            "error_message": self.error_message,
            "report": {
                "duration_ms": round(self.duration_ms, 3),
                "billed_duration_ms": _observe.billed_ms(self.duration_ms),
                "memory_size_mb": self.memory_size_mb,
                "max_memory_used_mb": self.max_memory_mb,
                "init_duration_ms": (
                    None if self.init_duration_ms is None else round(self.init_duration_ms, 3)
                ),
                "line": self.report,
            },
            "payload": self.payload.decode(errors="replace"),
            "payload_bytes": self.payload_size,
            "payload_truncated": self.payload_size > len(self.payload),
            "result": self.result.decode(errors="replace"),
            "result_bytes": self.result_size,
            "result_truncated": self.result_size > len(self.result),
            "log": self.log,
        }


class RecentInvocations:
    """The last invocations (newest last), bounded by count and by kept bytes."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        field_limit: int = FIELD_LIMIT,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or field_limit < 0:
            raise ValueError("max_entries and max_bytes must be positive, field_limit not negative")
        self.clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.field_limit = field_limit
        self.bytes = 0
        self.seq = 0  # how many entries were ever added: a cheap "anything new?" for readers
        self._entries: deque[InvocationEntry] = deque()
        self._by_id: dict[str, InvocationEntry] = {}
        self._durations: dict[str, list[float]] = {}
        self._seen: dict[str, int] = {}
        self.throttles: dict[str, dict[str, int]] = {}  # function -> reason -> count

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[InvocationEntry]:
        return iter(self._entries)

    def add(self, result: InvocationResult, sandbox_id: str | None, payload: bytes = b"") -> None:
        self.seq += 1
        entry = InvocationEntry(self.seq, self.clock.time(), result, sandbox_id, payload, self.field_limit)
        self._entries.append(entry)
        self._by_id[entry.request_id] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or (
            self.bytes > self.max_bytes and len(self._entries) > 1
        ):
            old = self._entries.popleft()
            self.bytes -= old.size
            if self._by_id.get(old.request_id) is old:
                del self._by_id[old.request_id]
        self._sample_duration(entry.function, entry.duration_ms)

    def _sample_duration(self, function: str, duration_ms: float) -> None:
        sample = self._durations.get(function)
        if sample is None:
            sample = self._durations[function] = []
        seen = self._seen[function] = self._seen.get(function, 0) + 1
        if len(sample) < DURATION_SAMPLE:
            sample.append(duration_ms)
        else:  # reservoir sampling keeps a uniform sample of everything since the drain
            slot = random.randrange(seen)
            if slot < DURATION_SAMPLE:
                sample[slot] = duration_ms

    def drain_durations(self) -> dict[str, list[float]]:
        """Durations (ms) by function since the last drain (a uniform sample of at most
        ``DURATION_SAMPLE`` each): what a time series needs for its percentiles."""
        out, self._durations, self._seen = self._durations, {}, {}
        return out

    def throttled(self, function: str, reason: str) -> None:
        by_reason = self.throttles.get(function)
        if by_reason is None:
            by_reason = self.throttles[function] = {}
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def get(self, request_id: str) -> InvocationEntry | None:
        return self._by_id.get(request_id)

    def select(
        self, function: str | None = None, outcome: str | None = None, limit: int = 100
    ) -> list[InvocationEntry]:
        """Newest first, optionally of one function and one outcome."""
        out: list[InvocationEntry] = []
        for entry in reversed(self._entries):
            if function and entry.function != function:
                continue
            if outcome and entry.outcome != outcome:
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out


__all__ = ["OUTCOMES", "InvocationEntry", "RecentInvocations"]
