"""Many hosts, one PostgreSQL, real processes: three ``tests.cluster_host`` processes share
one schema; clients send ``Event`` invokes and stream records to any of them over HTTP; one
host is killed with ``kill -9`` mid-way. Every event and record is processed at least once
(each handler writes a ledger line), per-key order holds, and the dead host's shards move
to the survivors within the lease time, and at most ``LIMIT`` handlers run at once
across the hosts (the limit every host is given, held cluster-wide by the counting
service).

Counts: ``FNRT_CLUSTER_EVENTS`` and ``FNRT_CLUSTER_RECORDS`` (default 2,000 each, as the
issue asks; 8 shards, 20 partition keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncpg", reason="pip install 'fnrt[postgres]'")
aiohttp = pytest.importorskip("aiohttp", reason="pip install 'fnrt[http]'")

from fnrt.store import open_store
from fnrt.testing import wait_until

from .conftest import read_jsonl

pytest_plugins = ["tests.pg"]

ROOT = Path(__file__).resolve().parent.parent
EVENTS = int(os.environ.get("FNRT_CLUSTER_EVENTS", "2000"))
RECORDS = int(os.environ.get("FNRT_CLUSTER_RECORDS", "2000"))
KEYS = 20
SHARDS = 8
LEASE = 2.0  # shard lease seconds (CLUSTER_LEASE in the hosts)
LIMIT = 8  # the concurrency limit (CLUSTER_LIMIT), one for the whole cluster
API = "/2015-03-31/functions"


async def start_host(url: str, workdir: Path, name: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    env = {**os.environ, "CLUSTER_LEASE": str(LEASE), "CLUSTER_LIMIT": str(LIMIT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.cluster_host",
        url,
        str(workdir),
        name,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line:
        raise AssertionError(f"host {name} exited before it was ready (rc {await proc.wait()})")
    return proc, json.loads(line)


def ledger(workdir: Path) -> list[dict[str, Any]]:
    return [line for path in sorted(workdir.glob("ledger-*.jsonl")) for line in read_jsonl(path)]


async def until(check: Callable[[], Any], what: str, limit: float) -> Any:
    return await wait_until(check, what, limit, poll=0.05)


async def send_events(http: Any, urls: list[str], ids: range) -> None:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with gate:
            url = urls[i % len(urls)]
            async with http.post(
                f"{url}{API}/work/invocations",
                json={"id": i},
                headers={"X-Amz-Invocation-Type": "Event"},
            ) as reply:
                assert reply.status == 202, await reply.text()

    await asyncio.gather(*(one(i) for i in ids))


async def send_records(http: Any, urls: list[str], ids: range, batch: int = 100) -> None:
    """Put in id order (one batch after the other), so per key, id order is put order."""
    for n, first in enumerate(range(ids.start, ids.stop, batch)):
        records = [
            {"Data": json.dumps({"id": i}), "PartitionKey": f"k{i % KEYS}"}
            for i in range(first, min(first + batch, ids.stop))
        ]
        async with http.post(
            f"{urls[n % len(urls)]}/fnrt/streams/orders/records", json={"Records": records}
        ) as reply:
            assert reply.status == 200, await reply.text()


async def test_three_hosts_on_one_database_survive_a_kill_9(postgres_url: str, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    begun = loop.time()
    started = [await start_host(postgres_url, tmp_path, f"h{n}") for n in range(3)]
    procs = [p for p, _ in started]
    info = [i for _, i in started]
    host_of = {i["host"]: i["name"] for i in info}
    urls = [i["url"] for i in info]
    observer = await open_store(postgres_url)
    try:
        mapping = await until(lambda: observer.streams.mapping("orders", "consume"), "the mapping", 30)

        async def spread() -> dict[str, int]:
            """Live shard leases per host name (expiries are the hosts' wall clocks)."""
            per_host: dict[str, int] = {}
            wall = time.time()
            for owner, expires in (await observer.streams.leases(mapping.uuid)).values():
                if expires > wall:
                    name = host_of.get(owner.rsplit("/", 1)[0], "?")
                    per_host[name] = per_host.get(name, 0) + 1
            return per_host

        balanced = await until(
            lambda: _check(spread(), lambda s: sorted(s.values()) == [2, 3, 3]), "an even spread", 40
        )
        print(f"shards per host: {balanced} ({loop.time() - begun:.1f} s after start)")

        half_events, half_records = EVENTS // 2, RECORDS // 2
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(
                send_events(http, urls, range(half_events)), send_records(http, urls, range(half_records))
            )
            await until(lambda: _counts(tmp_path, half_events // 3, half_records // 3), "the first third", 60)
            print(f"first third processed {loop.time() - begun:.1f} s after start")
            victim = 2
            procs[victim].send_signal(signal.SIGKILL)
            await procs[victim].wait()
            killed = loop.time()
            survivors = [info[n]["name"] for n in range(3) if n != victim]
            moved = await until(
                lambda: _check(spread(), lambda s: set(s) == set(survivors) and sum(s.values()) == SHARDS),
                "the dead host's shards to move",
                LEASE + 15,
            )
            took = loop.time() - killed
            print(f"after kill -9 of {info[victim]['name']}: {moved} in {took:.1f} s (lease {LEASE} s)")
            live_urls = [urls[n] for n in range(3) if n != victim]
            await asyncio.gather(
                send_events(http, live_urls, range(half_events, EVENTS)),
                send_records(http, live_urls, range(half_records, RECORDS)),
            )
            await until(lambda: _all_done(tmp_path), "every event and record", 120)
            print(f"all processed {loop.time() - begun:.1f} s after start")
    finally:
        await observer.close()
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    lines = ledger(tmp_path)
    events = [e for e in lines if e["kind"] == "event"]
    records = [r for r in lines if r["kind"] == "record"]
    assert {e["id"] for e in events} == set(range(EVENTS))  # at least once
    assert {r["id"] for r in records} == set(range(RECORDS))
    # per key, records are first delivered in the order they were put (at least once:
    # a batch the dead host did not checkpoint is delivered again, after the earlier ones)
    first: dict[str, list[int]] = {}
    seen: set[int] = set()
    for record in sorted(records, key=lambda r: r["t"]):
        if record["id"] not in seen:
            seen.add(record["id"])
            first.setdefault(record["key"], []).append(record["id"])
    for key, ids in first.items():
        assert ids == sorted(ids), f"key {key} out of order"
    by_host: dict[str, dict[str, int]] = {}
    for line in lines:
        by_host.setdefault(line["host"], {"event": 0, "record": 0})[line["kind"]] += 1
    print(
        f"processed per host: {by_host}; duplicates: {len(events) - EVENTS} events, "
        f"{len(records) - RECORDS} records"
    )
    # Concurrency across hosts, measured inside the handlers (marker files of the running
    # handlers on this machine): the hosts share one limit of LIMIT through the counting
    # service in PostgreSQL (fnrt._cluster_limit), so never more run at once.
    max_running = max(line["running"] for line in lines)
    print(f"most handlers running at once across hosts: {max_running} (cluster limit {LIMIT})")
    assert max_running <= LIMIT


async def _check(value: Any, predicate: Callable[[Any], bool]) -> Any:
    got = await value
    return got if predicate(got) else None


def _counts(workdir: Path, events: int, records: int) -> bool:
    lines = ledger(workdir)
    return (
        sum(1 for e in lines if e["kind"] == "event") >= events
        and sum(1 for r in lines if r["kind"] == "record") >= records
    )


def _all_done(workdir: Path) -> bool:
    lines = ledger(workdir)
    return {e["id"] for e in lines if e["kind"] == "event"} == set(range(EVENTS)) and {
        r["id"] for r in lines if r["kind"] == "record"
    } == set(range(RECORDS))
