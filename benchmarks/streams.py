"""Streams: records/s through a 4-shard mapping with batch size 100, and put -> handler latency.

Baseline, same run: a plain aiosqlite loop that does the stream's bookkeeping without the
runtime (read 100 records of a shard, commit a checkpoint, per batch), over the same number
of records: the storage floor of a durable, checkpointed consumer.
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from pathlib import Path

import aiosqlite

import fnrt

from ._common import Report, median, ms, pct


async def _plain(path: Path, records: int, shards: int, batch: int) -> float:
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("CREATE TABLE records (shard INT, seq INT, data BLOB, PRIMARY KEY (shard, seq))")
        await db.execute("CREATE TABLE checkpoints (shard INT PRIMARY KEY, seq INT)")
        await db.execute("BEGIN")
        await db.executemany(
            "INSERT INTO records VALUES (?, ?, ?)", [(i % shards, i, b'{"id": 1}') for i in range(records)]
        )
        await db.execute("COMMIT")
        started = time.perf_counter()

        async def consume(shard: int) -> None:
            last = -1
            while True:
                async with db.execute(
                    "SELECT seq, data FROM records WHERE shard = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (shard, last, batch),
                ) as cursor:
                    rows = list(await cursor.fetchall())
                if not rows:
                    return
                last = rows[-1][0]
                await db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (shard, last))

        await asyncio.gather(*(consume(s) for s in range(shards)))
        return records / (time.perf_counter() - started)


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(report: Report, quick: bool = False) -> None:
    section = "streams"
    records = 10_000 if quick else 50_000
    with tempfile.TemporaryDirectory(prefix="fnrt-bench-") as tmp:
        floor = await _plain(Path(tmp) / "plain.db", records, 4, 100)
        async with fnrt.Runtime(state_dir=Path(tmp) / "fnrt") as rt:
            await rt.add_function("discard", "handlers.orders:discard", provisioned_concurrency=4)
            stream = await rt.create_stream("orders", shard_count=4)
            last: dict[str, str] = {}
            started = time.perf_counter()
            for start in range(0, records, 500):
                batch = [(b'{"id": %d}' % i, f"customer-{i % 97}") for i in range(start, start + 500)]
                for shard_id, seq in await stream.put_records(batch):
                    last[shard_id] = max(last.get(shard_id, seq), seq)
            put_rate = records / (time.perf_counter() - started)

            main_cpu, process_cpu = time.thread_time(), _process_cpu()
            started = time.perf_counter()
            mapping = await rt.add_stream_mapping("orders", "discard", batch_size=100)
            while (await mapping.checkpoints()) != last:
                await asyncio.sleep(0.01)
            consume_rate = records / (time.perf_counter() - started)
            main_cpu = time.thread_time() - main_cpu
            other_cpu = _process_cpu() - process_cpu - main_cpu

            latencies = []
            for i in range(10 if quick else 40):
                before = rt.stats()["functions"]["discard"]["invocations"]
                t = time.perf_counter()
                await stream.put_record(b'{"id": -1}', f"latency-{i}")
                while rt.stats()["functions"]["discard"]["invocations"] == before:
                    await asyncio.sleep(0.0005)
                latencies.append(time.perf_counter() - t)
        report.add(
            section,
            "records/s through a 4-shard mapping, batch 100, no-op handler",
            f"{consume_rate:,.0f}/s",
            baseline=f"aiosqlite read+checkpoint loop {floor:,.0f}/s",
            ratio=f"{consume_rate / floor:.2f}x floor",
        )
        report.add(
            section,
            "  host CPU per record while consuming (less noisy than the rate)",
            f"{main_cpu / records * 1e6:.1f} µs loop thread, "
            f"{other_cpu / records * 1e6:.1f} µs other threads (SQLite)",
        )
        report.add(section, "  put_records (batches of 500), records/s", f"{put_rate:,.0f}/s")
        report.add(
            section,
            "  put -> handler invoked, idle stream (single record)",
            f"{ms(median(latencies))} p50, {ms(pct(latencies, 0.99))} p99",
        )
