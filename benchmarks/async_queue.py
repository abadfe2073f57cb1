"""Async invoke end to end: durable enqueue rate and enqueue -> handler-done rate.

Baselines, same run, same disk, same SQLite settings (WAL, synchronous=FULL): a plain
aiosqlite loop that inserts and commits one row per event (what a naive durable queue
costs), and the same rows inserted in one transaction (the ceiling group commit aims at).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiosqlite

import fnrt

from ._common import Report

PAYLOAD = {"order": "A-7", "amount": 30, "card": "ok"}


async def _plain_inserts(path: Path, events: int, per_commit: int) -> float:
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, fn TEXT, payload BLOB)")
        body = b'{"order":"A-7","amount":30,"card":"ok"}'
        started = time.perf_counter()
        for start in range(0, events, per_commit):
            await db.execute("BEGIN")
            await db.executemany(
                "INSERT INTO events (fn, payload) VALUES (?, ?)",
                [("charge", body)] * min(per_commit, events - start),
            )
            await db.execute("COMMIT")
        return events / (time.perf_counter() - started)


async def _fnrt(tmp: Path, events: int, callers: int, durability: str = "fsync") -> tuple[float, float]:
    async with fnrt.Runtime(state_dir=tmp, durability=durability) as rt:  # type: ignore[arg-type]
        await rt.add_function("noop", "handlers.echo:noop", provisioned_concurrency=4)
        rt.configure_async("noop", max_retry_attempts=0)
        await rt.invoke("noop", PAYLOAD, invocation_type="Event")  # open the queue
        per_caller = events // callers

        async def caller() -> None:
            for _ in range(per_caller):
                await rt.invoke("noop", PAYLOAD, invocation_type="Event")

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        enqueued = time.perf_counter() - started
        total = per_caller * callers + 1
        # Waits in memory (polling the queue's counts would scan the table each time,
        # on the same SQLite thread the pipeline uses), then checks every event is done.
        await rt.wait_idle(600)
        finished = time.perf_counter() - started
        done = (await rt.async_queue_counts("noop")).get("done", 0)
        assert done == total, f"{done} of {total} events done"
        return per_caller * callers / enqueued, total / finished


async def run(report: Report, quick: bool = False) -> None:
    section = "async invoke"
    events = 4000 if quick else 20000
    with tempfile.TemporaryDirectory(prefix="fnrt-bench-") as tmp:
        one_by_one = await _plain_inserts(Path(tmp) / "plain.db", min(events, 2000), 1)
        batched = await _plain_inserts(Path(tmp) / "batched.db", events, events)
        runs = [(8, "fsync"), (64, "fsync"), (256, "fsync"), (8, "process"), (256, "process")]
        for callers, durability in runs:
            state = Path(tmp) / f"fnrt-{callers}-{durability}"
            enqueue_rate, end_to_end = await _fnrt(state, events, callers, durability)
            kind = "durable" if durability == "fsync" else "durability='process'"
            report.add(
                section,
                f"{kind} Event enqueues/s, {callers} concurrent callers",
                f"{enqueue_rate:,.0f}/s",
                baseline=f"aiosqlite commit per row {one_by_one:,.0f}/s; one txn {batched:,.0f}/s",
                ratio=f"{enqueue_rate / one_by_one:.1f}x per-row",
            )
            report.add(
                section,
                f"  enqueue -> no-op handler done, {callers} callers ({durability})",
                f"{end_to_end:,.0f} events/s",
                notes="includes the enqueue phase",
            )
