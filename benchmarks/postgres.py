"""The event queue on PostgreSQL beside SQLite, at the store level: durable enqueues/s from
8 concurrent callers, and take -> settle drain events/s; and end to end, enqueue -> handler
events/s with 1 and 3 fnrt host processes on one PostgreSQL beside 1 host on SQLite (the
hosts of ``examples.cluster``, concurrency limit 16: on PostgreSQL one for the cluster).
Beside them, in the same run and on the same server, a Postgres-backed Python job queue,
pgqueuer (on asyncpg, like fnrt's store), doing the same no-op work: its enqueues/s from 8
concurrent callers and its enqueue -> all-done jobs/s, in a database of its own (created and
dropped here) so it shares nothing with fnrt's tables. A "skipped" row says why when it is
not installed or fails.

PostgreSQL is the server named by ``FNRT_POSTGRES``, or a throwaway local cluster started
for the run with ``fsync`` on (a commit waits for the disk, as SQLite's
``synchronous=FULL`` does). Both stores share their commits between concurrent callers
(group commit). Skipped, with a row saying why, when there is neither a server nor the
``postgresql`` package.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from fnrt.store._db import Database
from fnrt.store._queue import EventQueue, Outcome

from ._common import Report, median, postgres_url, us

PAYLOAD = b'{"order":"A-7","amount":30,"card":"ok"}'
CALLERS = 8


async def _enqueue_rate(queue: Any, events: int) -> float:
    per_caller = events // CALLERS

    async def caller(c: int) -> None:
        for i in range(per_caller):
            await queue.enqueue(f"{c}-{i}", "noop", PAYLOAD, 0.0)

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(CALLERS)))
    return per_caller * CALLERS / (time.perf_counter() - started)


async def _drain_rate(queue: Any, events: int, batch: int = 32) -> float:
    """Take in batches and settle each event as done, with 4 concurrent pollers."""
    done = 0

    async def poller(p: int) -> None:
        nonlocal done
        while done < events:
            taken = await queue.take("noop", 1.0, batch, f"p{p}", 1000.0)
            if not taken:
                await asyncio.sleep(0)
                continue
            await asyncio.gather(
                *(queue.settle(e, Outcome(state="done", invokes=1, status=200), 2.0) for e in taken)
            )
            done += len(taken)

    started = time.perf_counter()
    await asyncio.gather(*(poller(p) for p in range(4)))
    return done / (time.perf_counter() - started)


async def _sqlite(tmp: Path, events: int) -> tuple[float, float]:
    db = await Database.open(tmp / "bench.db")
    try:
        queue = EventQueue(db)
        await queue.setup()
        return await _enqueue_rate(queue, events), await _drain_rate(queue, events)
    finally:
        await db.close()


async def _slot_cost(slots: Any, rounds: int) -> tuple[float, float]:
    """Median seconds of one try_acquire(1) and of one release(1), a caller at a time:
    what a cross-host limit adds to an invoke that does not draw on a leased block."""
    acquire: list[float] = []
    release: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        await slots.try_acquire("bench-host", "noop", 1, 1000, None, 30.0)
        acquire.append(time.perf_counter() - started)
        started = time.perf_counter()
        await slots.release("bench-host", "noop", 1)
        release.append(time.perf_counter() - started)
    return median(acquire), median(release)


async def _postgres(url: str, events: int) -> tuple[float, float, tuple[float, float]]:
    from fnrt.store.postgres import open_postgres

    store = await open_postgres(url, schema=f"bench_{uuid.uuid4().hex[:12]}")
    try:
        enqueue = await _enqueue_rate(store.queue, events)
        drain = await _drain_rate(store.queue, events)
        return enqueue, drain, await _slot_cost(store.slots, max(200, events // 20))
    finally:
        async with store.pg.durable.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
        await store.close()


ROOT = Path(__file__).resolve().parent.parent
LIMIT = 16  # the concurrency limit: on PostgreSQL one for all hosts (the counting service)


def _handled(workdir: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in workdir.glob("ledger-*.jsonl"))


async def _end_to_end(spec: str, hosts: int, events: int) -> float:
    """Events/s from the first enqueue until ``events`` handlers ran, on ``hosts`` host
    processes sharing the store ``spec`` (enqueued by this process: another host)."""
    from fnrt.store import open_store

    with tempfile.TemporaryDirectory(prefix="fnrt-bench-") as tmp:
        workdir = Path(tmp)
        procs = []
        try:
            for n in range(hosts):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "examples.cluster",
                    "host",
                    spec,
                    tmp,
                    f"h{n}",
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                procs.append(proc)
                assert proc.stdout is not None
                if not await asyncio.wait_for(proc.stdout.readline(), 60):
                    raise RuntimeError("a benchmark host did not start")
            store = await open_store(spec)
            try:
                started = time.perf_counter()
                per_caller = events // CALLERS

                async def caller(c: int) -> None:
                    for i in range(per_caller):
                        body = f'{{"id": {c * per_caller + i}}}'.encode()
                        await store.queue.enqueue(f"{c}-{i}", "work", body, time.time())

                await asyncio.gather(*(caller(c) for c in range(CALLERS)))
                while await asyncio.to_thread(_handled, workdir) < per_caller * CALLERS:
                    await asyncio.sleep(0.02)
                return per_caller * CALLERS / (time.perf_counter() - started)
            finally:
                await store.close()
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                await proc.wait()


def _schema_url(url: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}fnrt_schema=bench_{uuid.uuid4().hex[:12]}"


async def _drop(spec: str) -> None:
    from fnrt.store.postgres import open_postgres

    store = await open_postgres(spec)
    try:
        async with store.pg.durable.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
    finally:
        await store.close()


async def _end_to_end_rows(report: Report, section: str, url: str, events: int) -> dict[int, float]:
    with tempfile.TemporaryDirectory(prefix="fnrt-bench-") as tmp:
        sqlite = await _end_to_end(str(Path(tmp) / "fnrt.sqlite3"), 1, events)
    rates = {}
    for hosts in (1, 3):
        spec = _schema_url(url)
        try:
            rates[hosts] = await _end_to_end(spec, hosts, events)
        finally:
            await _drop(spec)
    cores = os.cpu_count() or 1
    for hosts, rate in rates.items():
        report.add(
            section,
            f"enqueue -> handler, {hosts} host process{'es' if hosts > 1 else ''} on PostgreSQL",
            f"{rate:,.0f} events/s",
            baseline=f"1 host on SQLite {sqlite:,.0f}/s",
            ratio=f"{rate / sqlite:.2f}x",
            notes=f"{events} Events, subprocess sandboxes, concurrency limit {LIMIT}, {cores} cores",
        )
    return rates


PEER_CONCURRENCY = LIMIT  # pgqueuer's worker cap on jobs in flight: fnrt's host limit
PEER_BATCH = 8  # jobs per dequeue; pgqueuer wants max_concurrent_tasks >= 2 * batch_size


async def _pgqueuer_in(url: str, database: str, enqueues: int, events: int) -> tuple[float, float]:
    """pgqueuer in ``database`` on the server of ``url``: (enqueues/s of ``enqueues`` jobs
    from CALLERS async callers, enqueue -> all-done jobs/s of ``events`` jobs with its worker
    in this process as an asyncio task)."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Job, Queries, QueueManager

    pool = await asyncpg.create_pool(url, database=database, min_size=CALLERS, max_size=CALLERS)
    try:
        queries = Queries(AsyncpgPoolDriver(pool))
        await queries.install()

        async def enqueue_all(per_caller: int) -> float:
            async def caller() -> None:
                for _ in range(per_caller):
                    await queries.enqueue("noop", PAYLOAD)

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(CALLERS)))
            return started

        started = await enqueue_all(enqueues // CALLERS)
        enqueue = enqueues // CALLERS * CALLERS / (time.perf_counter() - started)
        await queries.clear_queue()

        # The worker: pgqueuer's QueueManager on a connection of its own (it LISTENs there).
        conn = await asyncpg.connect(url, database=database)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))
        total = events // CALLERS * CALLERS
        done = 0
        target = 1
        reached = asyncio.Event()

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal done
            done += 1
            if done >= target:
                reached.set()

        worker = asyncio.create_task(
            qm.run(
                dequeue_timeout=timedelta(seconds=1),
                batch_size=PEER_BATCH,
                max_concurrent_tasks=PEER_CONCURRENCY,
                log_aggregation_interval=timedelta(0),
            )
        )
        try:
            await queries.enqueue("noop", PAYLOAD)  # warm-up: the worker is up and has run a job
            await asyncio.wait_for(reached.wait(), 60)
            done, target = 0, total
            reached.clear()
            started = await enqueue_all(events // CALLERS)
            waiter = asyncio.ensure_future(reached.wait())
            await asyncio.wait({waiter, worker}, timeout=600, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                waiter.cancel()
                if worker.done():
                    worker.result()  # the worker's own error, if it stopped with one
                raise RuntimeError(f"pgqueuer ran {done} of {total} jobs")
            finished = total / (time.perf_counter() - started)
        finally:
            qm.shutdown.set()
            try:
                await asyncio.wait_for(worker, 30)
            finally:
                if not conn.is_closed():
                    await conn.close()
        return enqueue, finished
    finally:
        await pool.close()


async def _pgqueuer(url: str, enqueues: int, events: int) -> tuple[float, float]:
    import asyncpg

    database = f"bench_pgq_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        try:
            return await _pgqueuer_in(url, database, enqueues, events)
        finally:
            await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    finally:
        await admin.close()


async def _peer_rows(
    report: Report,
    section: str,
    url: str,
    enqueues: int,
    events: int,
    fnrt_enqueue: float,
    fnrt_1host: float,
) -> None:
    """pgqueuer beside fnrt: the same no-op work on the same server, same run."""
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        notes = "pgqueuer not installed: pip install 'fnrt[bench]'"
        report.add(section, "vs pgqueuer: skipped", "-", notes=notes)
        return
    try:
        peer_enqueue, peer_done = await _pgqueuer(url, enqueues, events)
    except Exception as exc:  # a peer that breaks never fails the whole benchmark
        report.add(section, "vs pgqueuer: skipped", "-", notes=f"{type(exc).__name__}: {exc}"[:200])
        return
    setup = f"pgqueuer in its own database, worker in-process, {PEER_CONCURRENCY} jobs in flight"
    report.add(
        section,
        f"Event enqueues/s, {CALLERS} callers: fnrt store vs pgqueuer",
        f"{fnrt_enqueue:,.0f}/s",
        baseline=f"pgqueuer {peer_enqueue:,.0f}/s",
        ratio=f"{fnrt_enqueue / peer_enqueue:.2f}x",
        notes=f"{enqueues // CALLERS * CALLERS} each, async callers, same server",
    )
    report.add(
        section,
        "enqueue -> done, 1 host: fnrt on PostgreSQL vs pgqueuer",
        f"{fnrt_1host:,.0f} events/s",
        baseline=f"pgqueuer {peer_done:,.0f} jobs/s",
        ratio=f"{fnrt_1host / peer_done:.2f}x (target >= 1x)",
        notes=f"{setup}; {events // CALLERS * CALLERS} no-op jobs",
    )


async def run(report: Report, quick: bool = False) -> None:
    section = "PostgreSQL store"
    events = 2000 if quick else 20000
    async with postgres_url(report, section) as (url, where):
        if url is None:
            return
        with tempfile.TemporaryDirectory(prefix="fnrt-bench-") as tmp:
            sqlite_enqueue, sqlite_drain = await _sqlite(Path(tmp), events)
        pg_enqueue, pg_drain, (acquire, release) = await _postgres(url, events)
        report.add(
            section,
            f"durable Event enqueues/s, {CALLERS} concurrent callers",
            f"{pg_enqueue:,.0f}/s",
            baseline=f"SQLite store {sqlite_enqueue:,.0f}/s",
            ratio=f"{pg_enqueue / sqlite_enqueue:.2f}x",
            notes=where,
        )
        report.add(
            section,
            "  take (batches of 32) -> settle done, 4 pollers",
            f"{pg_drain:,.0f} events/s",
            baseline=f"SQLite store {sqlite_drain:,.0f}/s",
            ratio=f"{pg_drain / sqlite_drain:.2f}x",
            notes="store only, no handler",
        )
        report.add(
            section,
            "cross-host slot: try_acquire(1) / release(1), median",
            f"{us(acquire)} / {us(release)}",
            notes="one round trip each; acquire commits durably",
        )
        e2e_events = 400 if quick else 3000
        rates = await _end_to_end_rows(report, section, url, e2e_events)
        await _peer_rows(report, section, url, events, e2e_events, pg_enqueue, rates[1])


if __name__ == "__main__":
    from ._common import quiet

    quiet()
    asyncio.run(run(Report(), quick=True))
