"""A bounded ring of recent invocations, for the console and for scripts.

The runtime adds every finished invocation (``Runtime.recent``). Memory stays bounded two
ways: at most ``max_entries`` entries, and at most ``max_bytes`` of kept payload, result
and log text in all (the oldest entries go first). Each of those three is cut to
``field_limit`` bytes on the way in (the payload and result keep their head, the log its
tail), so no payload is kept beyond the limit.

The warm path pays for an entry of a few references and two appends: a small warm result
is kept as it is, and text is decoded and the log composed only when an entry is read.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import _observe
from ._clock import Clock
from ._lambda import iso_timestamp
from .errors import FunctionTimeout

if TYPE_CHECKING:
    from ._runtime import InvocationResult


FIELD_LIMIT = 4096
MAX_ENTRIES = 500
MAX_BYTES = 4 * 1024 * 1024
DURATION_SAMPLE = 8192  # durations kept between two drains of the time series (the newest)
OUTCOMES = ("success", "error", "timeout")
_ENTRY_OVERHEAD = 512  # the entry's own fields and a log composed on read, roughly


def _head(data: bytes, limit: int) -> bytes:
    return data if len(data) <= limit else data[:limit]


def _tail(text: str, limit: int) -> str:
    if len(text) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character: no encoding needed
        return text
    return _observe.log_tail(text, limit)


class InvocationEntry:
    """One finished invocation as the ring keeps it.

    A small warm result is kept by reference (nothing is copied or composed on the warm
    path); a large one, a cold start (its log has the init phase) or an error is kept as a
    cut copy: payload and result at most ``limit`` bytes (their head), the log its tail.
    """

    __slots__ = ("at", "payload", "payload_size", "result", "result_size", "sandbox_id", "seq", "size")

    def __init__(
        self,
        seq: int,
        at: float,
        result: InvocationResult,
        sandbox_id: str | None,
        payload: bytes,
        limit: int,
    ) -> None:
        self.seq = seq
        self.at = at
        self.sandbox_id = sandbox_id
        self.payload_size = len(payload)
        self.payload = payload if len(payload) <= limit else payload[:limit]
        raw, output = result.raw, result.output
        if result.error is None and not result.cold_start and len(raw) <= limit and len(output) * 4 <= limit:
            self.result = result
            self.result_size = len(raw)
            self.size = len(self.payload) + len(raw) + 2 * len(output) + _ENTRY_OVERHEAD
            return
        if result.error is not None and not raw:
            raw = json.dumps(result.error.to_lambda()).encode()
        self.result_size = len(raw)
        log = _tail(result.log, limit)
        self.result = type(result)(
            result.request_id,
            result.function_name,
            result.status_code,
            raw[:limit],
            result.error,
            log=log,
            cold_start=result.cold_start,
            duration_ms=result.duration_ms,
            init_duration_ms=result.init_duration_ms,
            max_memory_mb=result.max_memory_mb,
            memory_size_mb=result.memory_size_mb,
        )
        self.size = len(self.payload) + min(len(raw), limit) + len(log) + _ENTRY_OVERHEAD

    @property
    def request_id(self) -> str:
        return self.result.request_id

    @property
    def function(self) -> str:
        return self.result.function_name

    @property
    def outcome(self) -> str:
        error = self.result.error
        if error is None:
            return "success"
        return "timeout" if isinstance(error, FunctionTimeout) else "error"

    @property
    def cold_start(self) -> bool:
        return self.result.cold_start

    @property
    def log(self) -> str:
        """START, the handler's output (its tail), END, REPORT."""
        return self.result.log

    def summary(self) -> dict[str, Any]:
        r = self.result
        return {
            "request_id": r.request_id,
            "function": r.function_name,
            "time": iso_timestamp(self.at),
            "timestamp": self.at,
            "outcome": self.outcome,
            "cold_start": r.cold_start,
            "duration_ms": round(r.duration_ms, 3),
            "error_type": None if r.error is None else r.error.error_type,
        }

    def detail(self) -> dict[str, Any]:
        r = self.result
        init_ms = r.init_duration_ms
        return {
            **self.summary(),
            "sandbox_id": self.sandbox_id,
            "error_message": None if r.error is None else r.error.error_message,
            "report": {
                "duration_ms": round(r.duration_ms, 3),
                "billed_duration_ms": _observe.billed_ms(r.duration_ms),
                "memory_size_mb": r.memory_size_mb,
                "max_memory_used_mb": r.max_memory_mb,
                "init_duration_ms": None if init_ms is None else round(init_ms, 3),
                "line": r.report,
            },
            "payload": self.payload.decode(errors="replace"),
            "payload_bytes": self.payload_size,
            "payload_truncated": self.payload_size > len(self.payload),
            "result": r.raw.decode(errors="replace"),
            "result_bytes": self.result_size,
            "result_truncated": self.result_size > len(r.raw),
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
        self._durations: deque[tuple[str, float]] = deque(maxlen=DURATION_SAMPLE)
        self.throttles: dict[str, dict[str, int]] = {}  # function -> reason -> count

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[InvocationEntry]:
        return iter(self._entries)

    def add(self, result: InvocationResult, sandbox_id: str | None, payload: bytes = b"") -> None:
        self.seq += 1
        entry = InvocationEntry(self.seq, self.clock.time(), result, sandbox_id, payload, self.field_limit)
        entries = self._entries
        entries.append(entry)
        self.bytes += entry.size
        while len(entries) > self.max_entries or (self.bytes > self.max_bytes and len(entries) > 1):
            self.bytes -= entries.popleft().size
        self._durations.append((result.function_name, result.duration_ms))

    def drain_durations(self) -> dict[str, list[float]]:
        """Durations (ms) by function since the last drain (the newest ``DURATION_SAMPLE``
        in all): what a time series needs for its percentiles."""
        out: dict[str, list[float]] = {}
        durations = self._durations
        while durations:
            function, duration = durations.popleft()
            out.setdefault(function, []).append(duration)
        return out

    def throttled(self, function: str, reason: str) -> None:
        by_reason = self.throttles.get(function)
        if by_reason is None:
            by_reason = self.throttles[function] = {}
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def get(self, request_id: str) -> InvocationEntry | None:
        """The newest entry for ``request_id`` (a scan: reads are rare, adds are not)."""
        for entry in reversed(self._entries):
            if entry.result.request_id == request_id:
                return entry
        return None

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
