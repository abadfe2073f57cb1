"""Shared pieces of the benchmarks: percentiles, rows, the Markdown table, quiet logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import structlog


def quiet() -> None:
    """Invocation logs off: the benchmarks measure the runtime, not the terminal."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    section: str
    case: str
    value: str
    baseline: str = ""
    ratio: str = ""
    notes: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # for the plot

    def add(self, *args: str, **kwargs: str) -> None:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(f"  {row.case:<58} {row.value:<34} {row.baseline:<30} {row.ratio}", flush=True)

    def markdown(self) -> str:
        lines = [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{sys.version.split()[0]}, {platform.system()} {platform.release()}",
            "",
            "| section | case | fnrt | baseline (same run) | ratio | notes |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.rows:
            lines.append(f"| {r.section} | {r.case} | {r.value} | {r.baseline} | {r.ratio} | {r.notes} |")
        return "\n".join(lines) + "\n"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@contextlib.asynccontextmanager
async def postgres_url(report: Report, section: str) -> AsyncIterator[tuple[str | None, str]]:
    """A PostgreSQL to measure against: ``$FNRT_POSTGRES``, or a throwaway local cluster
    started (and stopped) here. Yields ``(url, where)``; ``url`` is ``None`` after a
    "skipped" row was added when neither can be had."""
    url = os.environ.get("FNRT_POSTGRES")
    if url:
        yield url, "FNRT_POSTGRES"
        return
    try:
        from fnrt.store.postgres._cluster import ThrowawayCluster, missing_reason
    except ImportError:
        report.add(section, "skipped", "-", notes="pip install 'fnrt[postgres]'")
        yield None, ""
        return
    reason = missing_reason()
    if reason is not None:
        report.add(section, "skipped", "-", notes=reason)
        yield None, ""
        return
    cluster = ThrowawayCluster(durable=True)
    started = await asyncio.to_thread(cluster.start)
    try:
        yield started, "local cluster, unix socket, fsync on"
    finally:
        await asyncio.to_thread(cluster.stop)
