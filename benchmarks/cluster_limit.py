"""The cost of a cross-host concurrency limit per sync invoke.

Three runtimes in the same run, each invoking a warm no-op handler: one with the
single-host limiter (the baseline), one whose concurrency is leased from PostgreSQL's
counting service in blocks (``Runtime(cluster_limit=ClusterLimit(...))``, the default
settings), and one where every acquire needs a round trip (blocks of 1, the surplus
given back between calls, off the clock). Rounds alternate between them so a noisy
machine weighs on all three alike.

PostgreSQL is the server named by ``FNRT_POSTGRES``, or a throwaway local cluster started
for the run with ``fsync`` on (a grant waits for the disk). Skipped, with a row saying why,
when there is neither a server nor the ``postgresql`` package.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import fnrt
from fnrt._cluster_limit import ClusterLimit, ClusterLimiter

from ._common import Report, pct, postgres_url, us

PAYLOAD = {"order_id": "A-1001", "items": [{"sku": "apple", "qty": 3}], "note": "x" * 40}
SECTION = "cross-host concurrency limit"


async def _latencies(call: Callable[[], Awaitable[Any]], callers: int, total: int) -> list[float]:
    out: list[float] = []

    async def caller() -> None:
        for _ in range(total // callers):
            started = time.perf_counter()
            await call()
            out.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return out


async def _measure(url: str, rounds: int, per_round: int) -> dict[str, Any]:
    from fnrt.store.postgres import open_postgres

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    stores = [await open_postgres(url, schema=schema, max_connections=4) for _ in range(2)]
    samples: dict[tuple[str, int], list[float]] = {}
    try:
        async with (
            fnrt.Runtime() as local,
            fnrt.Runtime(cluster_limit=ClusterLimit(slots=stores[0].slots, host="blocks")) as blocks,
            fnrt.Runtime(
                cluster_limit=ClusterLimit(slots=stores[1].slots, host="trips", max_block=1, hold=60, ttl=600)
            ) as trips,
        ):
            for rt in (local, blocks):
                await rt.add_function("noop", "handlers.echo:noop", provisioned_concurrency=8)
            await trips.add_function("noop", "handlers.echo:noop", provisioned_concurrency=1)
            trips_limiter = trips._limiter
            blocks_limiter = blocks._limiter
            assert isinstance(trips_limiter, ClusterLimiter) and isinstance(blocks_limiter, ClusterLimiter)

            async def one_trip() -> None:
                await trips_limiter.return_surplus(force=True)  # off the clock
                started = time.perf_counter()
                await trips.invoke("noop", PAYLOAD)
                samples.setdefault(("trips", 1), []).append(time.perf_counter() - started)

            for rt in (local, blocks):  # warm-up
                await _latencies(lambda rt=rt: rt.invoke("noop", PAYLOAD), 8, 400)
            for _ in range(20):
                await one_trip()
            samples.clear()
            trips_before = blocks_limiter.round_trips
            blocks_calls = 0
            for _ in range(rounds):
                for callers in (1, 8):
                    samples.setdefault(("local", callers), []).extend(
                        await _latencies(lambda: local.invoke("noop", PAYLOAD), callers, per_round)
                    )
                    samples.setdefault(("blocks", callers), []).extend(
                        await _latencies(lambda: blocks.invoke("noop", PAYLOAD), callers, per_round)
                    )
                    blocks_calls += per_round
                for _ in range(max(10, per_round // 10)):
                    await one_trip()
            trips_per_call = (blocks_limiter.round_trips - trips_before) / blocks_calls
    finally:
        async with stores[0].pg.durable.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        for store in stores:
            await store.close()
    return {"samples": samples, "trips_per_call": trips_per_call}


async def run(report: Report, quick: bool = False) -> None:
    rounds, per_round = (3, 200) if quick else (8, 500)
    async with postgres_url(report, SECTION) as (url, where):
        if url is None:
            return
        measured = await _measure(url, rounds, per_round)
    samples = measured["samples"]
    for callers in (1, 8):
        local = samples[("local", callers)]
        blocks = samples[("blocks", callers)]
        base, leased = pct(local, 0.5), pct(blocks, 0.5)
        report.add(
            SECTION,
            f"warm no-op p50 / p99, {callers} caller{'s' if callers > 1 else ''}, leased blocks",
            f"{us(leased)} / {us(pct(blocks, 0.99))}",
            baseline=f"single-host limiter {us(base)} / {us(pct(local, 0.99))}",
            ratio=f"{(leased - base) * 1e6:+,.0f} µs",
            notes=f"{measured['trips_per_call']:.3f} round trips per invoke; {where}",
        )
    trips = samples[("trips", 1)]
    local = samples[("local", 1)]
    report.add(
        SECTION,
        "warm no-op p50 / p99, 1 caller, a round trip every acquire",
        f"{us(pct(trips, 0.5))} / {us(pct(trips, 0.99))}",
        baseline=f"single-host limiter {us(pct(local, 0.5))} / {us(pct(local, 0.99))}",
        ratio=f"{(pct(trips, 0.5) - pct(local, 0.5)) * 1e6:+,.0f} µs",
        notes=f"blocks of 1, durable grant (fsync); {where}",
    )
