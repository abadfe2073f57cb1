"""Observability: Lambda's log lines, per-invocation logs, metrics.

Invocation logs are structlog events bound with function, request id, sandbox id and
cold/warm. Configure structlog as usual; at a level above INFO they cost almost nothing.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog

LOG_TAIL_BYTES = 4096
LATEST = "$LATEST"


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


_SYSTEM_LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30}
#: The levels Lambda reads in a JSON log line's ``level`` (any case; the rest count as INFO).
_LINE_LEVELS = {
    "TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "FATAL": 50, "CRITICAL": 50,
}  # fmt: skip


def filter_application_log(text: str, level: str | None) -> str:
    """``text`` without the JSON lines below the application log ``level``, as Lambda's
    log-level filtering drops them: a line that is a JSON object is at its ``"level"``
    (INFO when that is missing or not a level); other lines are kept."""
    threshold = _LINE_LEVELS.get(str(level).upper(), 0) if level else 0
    if threshold <= _LINE_LEVELS["TRACE"] or "{" not in text:
        return text
    kept = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                named = record.get("level")
                at = _LINE_LEVELS.get(named.upper(), 20) if isinstance(named, str) else 20
                if at < threshold:
                    continue
        kept.append(line)
    return "".join(kept)


def _platform(event: str, record: dict[str, Any], at: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    line = {"time": f"{stamp}.{int(at * 1000) % 1000:03d}Z", "type": event, "record": record}
    return json.dumps(line, separators=(",", ":"))


def platform_log(
    system_level: str,
    request_id: str,
    output: str,
    *,
    at: float,
    duration_ms: float,
    memory_mb: int,
    max_memory_mb: int,
    init_ms: float | None,
    init_log: str = "",
    function_name: str = "",
    error_type: str | None = None,
    timed_out: bool = False,
    produced_bytes: int = 0,
    application_level: str | None = None,
) -> str:
    """An invocation's log in Lambda's JSON log format: the platform's lines are
    ``platform.initStart`` (cold starts), ``platform.start``, ``platform.runtimeDone`` and
    ``platform.report`` objects, kept by the system log level (``DEBUG`` all of them,
    ``INFO`` all but ``runtimeDone``, ``WARN`` only the report of a failed invocation);
    the function's own output comes between them as it was written, less its JSON lines
    below the ``application_level`` (:func:`filter_application_log`)."""
    output = filter_application_log(output, application_level)
    init_log = filter_application_log(init_log, application_level)
    keep = _SYSTEM_LEVELS.get(system_level, 20)
    status = "timeout" if timed_out else ("error" if error_type else "success")
    failed: dict[str, Any] = {} if error_type is None else {"errorType": error_type}
    metrics: dict[str, Any] = {
        "durationMs": round(duration_ms, 3),
        "billedDurationMs": billed_ms(duration_ms),
        "memorySizeMB": memory_mb,
        "maxMemoryUsedMB": max_memory_mb,
    }
    if init_ms is not None:
        metrics["initDurationMs"] = round(init_ms, 3)
    started = at - duration_ms / 1000  # each line stamped when it happened
    parts: list[str] = []
    if init_ms is not None and keep <= 20:
        init = {
            "initializationType": "on-demand",
            "phase": "init",
            "functionName": function_name,
            "functionVersion": LATEST,
        }
        parts.append(_platform("platform.initStart", init, started - init_ms / 1000) + "\n")
    parts.append(init_log)
    if keep <= 20:
        start = {"requestId": request_id, "version": LATEST}
        parts.append(_platform("platform.start", start, started) + "\n")
    parts.append(output)
    if output and not output.endswith("\n"):
        parts.append("\n")
    if keep <= 10:
        done = {
            "requestId": request_id,
            "status": status,
            **failed,
            "metrics": {"durationMs": round(duration_ms, 3), "producedBytes": produced_bytes},
        }
        parts.append(_platform("platform.runtimeDone", done, at) + "\n")
    if keep <= 20 or status != "success":
        report = {"requestId": request_id, "metrics": metrics, "status": status, **failed}
        parts.append(_platform("platform.report", report, at) + "\n")
    return "".join(parts)


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
        # The summaries an admitted call samples, by function (found once, not per call).
        self._admitted: dict[str, tuple[_Summary, _Summary, _Summary]] = {}
        self._provisioned: dict[str, tuple[_Summary, _Summary]] = {}

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

    def _summary(self, metric: str, dimension: str) -> _Summary:
        by_dim = self._summaries[metric]
        summary = by_dim.get(dimension)
        if summary is None:
            summary = by_dim[dimension] = _Summary()
        return summary

    def admitted(self, name: str, in_flight: int, running: int, unreserved: int | None) -> None:
        """A call of ``name`` was admitted: Lambda's ConcurrentExecutions (the function's,
        ``in_flight``, and the account's, ``running``) and, for a function without a
        reservation, UnreservedConcurrentExecutions, sampled (their ``max`` is the peak,
        as CloudWatch's Maximum). One call on the warm path for the three."""
        samples = self._admitted.get(name)
        if samples is None:
            samples = self._admitted[name] = (
                self._summary("ConcurrentExecutions", name),
                self._summary("ConcurrentExecutions", ""),
                self._summary("UnreservedConcurrentExecutions", ""),
            )
        function, account, shared = samples
        function.add(in_flight)
        account.add(running)
        if unreserved is not None:
            shared.add(unreserved)

    def provisioned(self, name: str, busy: int, allocated: int) -> None:
        """A call of ``name`` ran on a provisioned environment, ``busy`` of its ``allocated``
        serving: ProvisionedConcurrencyInvocations, ProvisionedConcurrentExecutions and
        ProvisionedConcurrencyUtilization (sampled as ConcurrentExecutions is)."""
        self._counters["ProvisionedConcurrencyInvocations"][name] += 1
        samples = self._provisioned.get(name)
        if samples is None:
            samples = self._provisioned[name] = (
                self._summary("ProvisionedConcurrentExecutions", name),
                self._summary("ProvisionedConcurrencyUtilization", name),
            )
        executions, utilization = samples
        executions.add(busy)
        if allocated:
            utilization.add(min(1.0, busy / allocated))

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
