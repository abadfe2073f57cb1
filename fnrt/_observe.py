"""Observability: Lambda's log lines, per-invocation logs, metrics.

Invocation logs are structlog events bound with function, request id, sandbox id and
cold/warm. Configure structlog as usual; at a level above INFO they cost almost nothing.
"""

from __future__ import annotations

import base64
import math
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog

LOG_TAIL_BYTES = 4096


def logger() -> Any:
    return structlog.get_logger("fnrt")


def start_line(request_id: str) -> str:
    return f"START RequestId: {request_id} Version: $LATEST"


def end_line(request_id: str) -> str:
    return f"END RequestId: {request_id}"


def billed_ms(duration_ms: float) -> int:
    return max(1, math.ceil(duration_ms))


def report_line(
    request_id: str, duration_ms: float, memory_mb: int, max_memory_mb: int, init_ms: float | None
) -> str:
    line = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
        f"Billed Duration: {billed_ms(duration_ms)} ms\tMemory Size: {memory_mb} MB\t"
        f"Max Memory Used: {max_memory_mb} MB"
    )
    if init_ms is not None:
        line += f"\tInit Duration: {init_ms:.2f} ms"
    return line


def log_tail(log: str, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log, cut on a character boundary."""
    data = log.encode()
    if len(data) <= limit:
        return log
    return data[-limit:].decode(errors="ignore")


def log_result(log: str) -> str:
    """Lambda's ``X-Amz-Log-Result``: base64 of the log's last 4 KB."""
    return base64.b64encode(log_tail(log).encode()).decode()


class _Summary:
    """Count, sum, extremes and a bounded window of recent values for percentiles."""

    __slots__ = ("count", "maximum", "minimum", "recent", "total")

    def __init__(self, window: int = 2048) -> None:
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value
        self.recent.append(value)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.recent)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def snapshot(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        return {
            "count": self.count,
            "sum": self.total,
            "avg": self.total / self.count,
            "min": self.minimum,
            "max": self.maximum,
            "p50": self.percentile(0.5),
            "p99": self.percentile(0.99),
        }


class Metrics:
    """CloudWatch-style metrics by name and dimension (usually the function name).

    Counters: Invocations, Errors, Throttles, ColdStarts, ... Summaries: Duration,
    InitDuration, ConcurrentExecutions (sampled as each call is admitted: ``max`` is the
    peak), ... Gauges are read live from their sources: ConcurrentExecutions,
    UnreservedConcurrentExecutions, ... An account-wide value has the dimension ``""``.
    """

    def __init__(self) -> None:
        self._counters: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._summaries: dict[str, dict[str, _Summary]] = defaultdict(dict)
        self._gauge_sources: list[Callable[[], Mapping[str, Mapping[str, float]]]] = []

    def add_gauges(self, source: Callable[[], Mapping[str, Mapping[str, float]]]) -> None:
        """Read ``source()`` (``{metric: {dimension: value}}``) for every gauge read."""
        self._gauge_sources.append(source)

    def gauges(self) -> dict[str, dict[str, float]]:
        """Every gauge's value now, by metric and dimension."""
        merged: dict[str, dict[str, float]] = {}
        for source in self._gauge_sources:
            for metric, values in source().items():
                merged.setdefault(metric, {}).update(values)
        return merged

    def gauge(self, metric: str, dimension: str = "") -> float:
        """A gauge's value now (``dimension`` ``""``: the account-wide one); 0 if none."""
        return self.gauges().get(metric, {}).get(dimension, 0)

    def incr(self, metric: str, dimension: str, value: float = 1) -> None:
        self._counters[metric][dimension] += value

    def observe(self, metric: str, dimension: str, value: float) -> None:
        by_dim = self._summaries[metric]
        summary = by_dim.get(dimension)
        if summary is None:
            summary = by_dim[dimension] = _Summary()
        summary.add(value)

    def counter(self, metric: str, dimension: str | None = None) -> float:
        values = self._counters.get(metric, {})
        if dimension is None:
            return sum(values.values())
        return values.get(dimension, 0)

    def summary(self, metric: str, dimension: str) -> dict[str, float]:
        summary = self._summaries.get(metric, {}).get(dimension)
        return summary.snapshot() if summary else {"count": 0}

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": {m: dict(d) for m, d in self._counters.items()},
            "summaries": {m: {k: s.snapshot() for k, s in d.items()} for m, d in self._summaries.items()},
            "gauges": self.gauges(),
        }
