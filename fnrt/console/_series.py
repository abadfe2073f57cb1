"""Time series over the last minutes, one point a sample, fed from the runtime's metrics.

Counters (invocations, errors, throttles, timeouts, cold starts) are cumulative in
:class:`fnrt._observe.Metrics`; a point holds what happened since the previous sample.
Duration percentiles come from the durations the recent-invocations ring sampled since the
previous point; the iterator age of a mapping is the mean of the batches read since then.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import FnrtError

if TYPE_CHECKING:
    from .._runtime import Runtime

POINTS = 300  # five minutes at one point a second
COUNTERS = {
    "invocations": "Invocations",
    "errors": "Errors",
    "throttles": "Throttles",
    "timeouts": "Timeouts",
    "cold_starts": "ColdStarts",
}


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Series:
    """A bounded history of points (oldest first)."""

    def __init__(self, points: int = POINTS) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=points)
        self._last: dict[tuple[str, str], float] = {}
        self._ages: dict[str, tuple[float, float]] = {}  # mapping -> (count, sum) seen

    def _delta(self, key: tuple[str, str], value: float) -> float:
        """What happened since the previous point. A counter first seen at the first point
        is the baseline (what came before the console); one first seen later (a function
        added since) started at zero: its first calls belong to this point."""
        previous = self._last.get(key, None if not self.points else 0.0)
        self._last[key] = value
        return value - previous if previous is not None else 0.0

    def sample(self, rt: Runtime, now: float) -> dict[str, Any]:
        """Take one point at ``now`` (seconds since the epoch) and keep it."""
        metrics = rt.metrics
        stats = rt.stats()
        durations = rt.recent.drain_durations()
        functions: dict[str, dict[str, Any]] = {}
        for name in rt.functions():
            live = stats["functions"].get(name, {})
            point: dict[str, Any] = {
                key: self._delta((metric, name), metrics.counter(metric, name))
                for key, metric in COUNTERS.items()
            }
            ordered = sorted(durations.get(name, ()))
            point["p50_ms"] = round(_percentile(ordered, 0.5), 3) if ordered else None
            point["p99_ms"] = round(_percentile(ordered, 0.99), 3) if ordered else None
            point["in_flight"] = live.get("in_flight", 0)
            point["warm"] = live.get("warm", 0)
            point["busy"] = live.get("busy", 0)
            functions[name] = point
        ages: dict[str, float | None] = {}
        try:
            mappings = rt.stream_mappings()
        except FnrtError:
            mappings = []
        for m in mappings:
            summary = metrics.summary("IteratorAge", m.uuid)
            count, total = float(summary.get("count", 0)), float(summary.get("sum", 0.0))
            seen_count, seen_total = self._ages.get(m.uuid, (0.0, 0.0))
            self._ages[m.uuid] = (count, total)
            ages[m.uuid] = (
                round((total - seen_total) / (count - seen_count), 3) if count > seen_count else None
            )
        point_all = {
            "t": round(now, 3),
            "in_flight": stats["concurrency"]["in_flight"],
            "throttles": sum(f["throttles"] for f in functions.values()),
            "functions": functions,
            "iterator_age_ms": ages,
        }
        self.points.append(point_all)
        return point_all

    def history(self) -> list[dict[str, Any]]:
        return list(self.points)
