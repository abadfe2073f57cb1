"""Memory over a long soak: host RSS and each sandbox's RSS stay flat under warm invokes.

A no-op function with 4 provisioned sandboxes takes ``total`` warm sync invokes from 4
concurrent callers. RSS (``VmRSS`` in ``/proc/<pid>/status``; a sandbox's ``Pss`` from
``smaps_rollup`` too, since sandboxes fork from one template and share its pages) is
sampled once the warm-up is over, then after every tenth of the soak. The warm-up
(10,000 invokes) fills what is bounded but not yet full after a few thousand calls, so
its filling is not counted as drift: the recent-invocations ring (500 entries) and its
sample of durations kept between two reads of the console's time series (a deque of
``DURATION_SAMPLE`` = 8,192 in ``fnrt/_recent.py``, about 0.5 MB; with a 2,000-invoke
warm-up it shows as +0.6 MB in the first tenth, flat after). The Event warm-up fills the
SQLite page cache of the state file (SQLite's default 2 MB per connection).

Rows: host RSS start/end and drift, host RSS growth per 1,000 invokes (least squares
over the samples, steadier than end - start), each sandbox's RSS start/end and drift,
invokes/s during the soak (sampling time excluded), and host RSS before/after
``events`` async ``Event`` invokes drained (the async queue keeps state in memory too).
Baseline column: the start value. A ``gc.collect()`` runs before every host sample, so
cycles waiting for the collector are not counted. Linux only (``/proc``); elsewhere the
section is skipped with a row saying so.

Sandbox pids come from ``Runtime.sandboxes(name)``, which lists each live sandbox's id
and pid.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path

import fnrt

from ._common import Report

PAYLOAD = {"order_id": "A-1001", "items": [{"sku": "apple", "qty": 3}], "note": "x" * 40}
SECTION = "memory (soak)"
CALLERS = 4


def _status_kb(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``), ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _pss_kb(pid: int | str) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _mb(kb: float) -> str:
    return f"{kb / 1024:,.1f} MB"


def _drift(start: float, end: float) -> str:
    delta = end - start
    size = f"{delta:+,.0f} kB" if abs(delta) < 1024 else f"{delta / 1024:+,.2f} MB"
    return f"{size} ({delta / start * 100:+.2f}%)"


def _has_proc() -> bool:
    return os.path.exists("/proc/self/status")


def _host_kb() -> int:
    gc.collect()
    kb = _status_kb("self", "VmRSS")
    assert kb is not None
    return kb


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


async def _calls(call_once: object, callers: int, total: int) -> None:
    per_caller = total // callers

    async def caller() -> None:
        for _ in range(per_caller):
            await call_once()  # type: ignore[operator]

    await asyncio.gather(*(caller() for _ in range(callers)))


async def run(
    report: Report,
    total: int = 100_000,
    warmup: int = 10_000,
    events: int = 20_000,
    event_warmup: int = 10_000,
) -> None:
    if not _has_proc():
        report.add(SECTION, "skipped", "-", notes="needs Linux /proc to read RSS")
        return
    with tempfile.TemporaryDirectory(prefix="fnrt-bench-mem-") as tmp:
        async with fnrt.Runtime(state_dir=Path(tmp)) as rt:
            await rt.add_function("noop", "handlers.echo:noop", provisioned_concurrency=CALLERS)

            async def sync_invoke() -> None:
                await rt.invoke("noop", PAYLOAD)

            await _calls(sync_invoke, CALLERS, warmup)
            pids = sorted(s["pid"] for s in rt.sandboxes("noop") if s["pid"] is not None)
            host = [_host_kb()]
            done = [0]
            boxes = {pid: [(_status_kb(pid, "VmRSS"), _pss_kb(pid))] for pid in pids}
            step = total // 10
            busy = 0.0
            for i in range(1, 11):
                started = time.perf_counter()
                await _calls(sync_invoke, CALLERS, step)
                busy += time.perf_counter() - started
                done.append(i * step)
                host.append(_host_kb())
                for pid in pids:
                    boxes[pid].append((_status_kb(pid, "VmRSS"), _pss_kb(pid)))
            after = sorted(s["pid"] for s in rt.sandboxes("noop") if s["pid"] is not None)

            report.add(
                SECTION,
                f"host RSS after {total:,} warm invokes ({CALLERS} callers)",
                _mb(host[-1]),
                baseline=f"after {warmup:,}-invoke warm-up {_mb(host[0])}",
                ratio=_drift(host[0], host[-1]),
                notes="samples every 10%: " + ", ".join(f"{kb / 1024:.1f}" for kb in host) + " MB",
            )
            slope = _slope([d / 1000 for d in done], [kb / 1024 for kb in host])
            report.add(
                SECTION,
                "  host RSS growth per 1,000 invokes (least squares)",
                f"{slope * 1024:+,.1f} kB / 1,000 invokes",
                baseline=f"{slope * 1024 / host[0] * 100:+.3f}% of start per 1,000",
                notes=f"over {len(host)} samples",
            )
            for n, pid in enumerate(pids):
                (r0, p0), (r1, p1) = boxes[pid][0], boxes[pid][-1]
                if r0 is None or r1 is None:
                    report.add(SECTION, f"  sandbox {n} (pid {pid})", "gone", notes="replaced in the soak")
                    continue
                pss = f"Pss {_mb(p0)} -> {_mb(p1)}" if p0 is not None and p1 is not None else ""
                report.add(
                    SECTION,
                    f"  sandbox {n} (pid {pid}) RSS",
                    _mb(r1),
                    baseline=f"start {_mb(r0)}",
                    ratio=_drift(r0, r1),
                    notes=pss,
                )
            same = "same sandboxes throughout" if after == pids else f"sandboxes changed: {pids} -> {after}"
            report.add(
                SECTION,
                f"  warm invokes/s during the soak ({CALLERS} callers)",
                f"{total / busy:,.0f}/s",
                notes=same,
            )

            # The async queue: host RSS before and after `events` Event invokes drained.
            rt.configure_async("noop", max_retry_attempts=0)

            async def event_invoke() -> None:
                await rt.invoke("noop", PAYLOAD, invocation_type="Event")

            await _calls(event_invoke, CALLERS, event_warmup)  # open the queue, fill its page cache
            await rt.wait_idle(600)
            before = _host_kb()
            await _calls(event_invoke, CALLERS, events // 2)
            await rt.wait_idle(600)
            middle = _host_kb()
            await _calls(event_invoke, CALLERS, events - events // 2)
            await rt.wait_idle(600)
            end = _host_kb()
            report.add(
                SECTION,
                f"host RSS after {events:,} Event invokes drained ({CALLERS} callers)",
                _mb(end),
                baseline=f"after {event_warmup:,}-event warm-up {_mb(before)}",
                ratio=_drift(before, end),
                notes=f"halfway {_mb(middle)}",
            )
