"""The global and reserved concurrency limits hold across hosts sharing one PostgreSQL.

Each "host" is a Runtime of its own in this process with a store of its own (its own
connection pools) and its own host id, all on the test's PostgreSQL schema; the calls are
real sandboxes running ``handlers.chaos:hold``, which blocks until a release file exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

if not os.environ.get("CI"):  # under CI a missing driver is a failure, not a skip
    pytest.importorskip("asyncpg", reason="pip install 'fnrt[postgres]'")

import asyncpg

import fnrt
from fnrt._cluster_limit import ClusterLimit, ClusterLimiter
from fnrt.errors import InvalidConfig, StoreUnavailable
from fnrt.store.postgres import PostgresStore, open_postgres
from tests.conftest import wait_until

pytest_plugins = ["tests.pg"]

GLOBAL = "ConcurrentInvocationLimitExceeded"
RESERVED = "ReservedFunctionConcurrentInvocationLimitExceeded"

Hosts = Callable[..., Any]


@pytest.fixture
async def hosts(postgres_url: str) -> AsyncIterator[Hosts]:
    """``await hosts(n, limit, **lease)``: n started runtimes, each with its own store
    on the test's schema and host id ``h0``, ``h1``...; all closed after the test."""
    stack = contextlib.AsyncExitStack()
    made: list[tuple[fnrt.Runtime, PostgresStore]] = []

    async def start(
        n: int, limit: int, unreserved_minimum: int | None = None, **lease: Any
    ) -> list[tuple[fnrt.Runtime, PostgresStore]]:
        out = []
        for _ in range(n):
            store = await open_postgres(postgres_url, max_connections=2)
            stack.push_async_callback(close_quietly, store)
            options = ClusterLimit(slots=store.slots, host=f"h{len(made)}", **lease)
            floor = {} if unreserved_minimum is None else {"unreserved_minimum": unreserved_minimum}
            rt = await stack.enter_async_context(fnrt.Runtime(limit, cluster_limit=options, **floor))
            made.append((rt, store))
            out.append((rt, store))
        return out

    async with stack:
        yield start


async def close_quietly(store: PostgresStore) -> None:
    with contextlib.suppress(StoreUnavailable, asyncpg.exceptions.InterfaceError):  # closed already
        await store.close()


def limiter(rt: fnrt.Runtime) -> ClusterLimiter:
    lim = rt._limiter
    assert isinstance(lim, ClusterLimiter)
    return lim


def outcome(task: asyncio.Task[Any]) -> str:
    exc = task.exception()
    if exc is None:
        return "ran"
    assert isinstance(exc, fnrt.TooManyRequests), exc
    return exc.reason


async def held_calls(runtimes: list[fnrt.Runtime], per_host: int, release: str) -> list[asyncio.Task[Any]]:
    return [
        asyncio.ensure_future(rt.invoke("hold", {"release": release}))
        for rt in runtimes
        for _ in range(per_host)
    ]


async def settle(tasks: list[asyncio.Task[Any]], admitted: int, runtimes: list[fnrt.Runtime]) -> None:
    """Wait until ``admitted`` calls run and every other call has been throttled."""
    await wait_until(
        lambda: sum(t.done() for t in tasks) == len(tasks) - admitted
        and sum(rt.stats()["concurrency"]["in_flight"] for rt in runtimes) == admitted,
        f"{admitted} calls running, the rest throttled",
        limit=60,  # real sandboxes: under load many cold starts take a while
    )


async def test_the_global_limit_holds_across_three_hosts(hosts: Hosts, release_file: str) -> None:
    started = await hosts(3, 6)
    runtimes = [rt for rt, _ in started]
    for rt in runtimes:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=30)
    tasks = await held_calls(runtimes, 4, release_file)  # 12 calls, 6 fit
    await settle(tasks, 6, runtimes)
    throttled = [outcome(t) for t in tasks if t.done()]
    assert throttled == [GLOBAL] * 6
    in_use = await limiter(runtimes[0]).cluster_in_flight()
    assert in_use == {"hold": 6}
    assert sum(rt.stats()["functions"]["hold"]["throttles"] for rt in runtimes) == 6
    assert sum(rt.metrics.counter("Throttles", "hold") for rt in runtimes) == 6

    open(release_file, "w").close()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert [outcome(t) for t in tasks].count("ran") == 6
    # The slots come back: each host runs a call again, and the cluster holds no surplus
    # once they are idle for the hold time.
    for rt in runtimes:
        await rt.invoke("hold", {"release": release_file})
    for _ in range(500):
        if not await limiter(runtimes[0]).cluster_in_flight():
            break
        await asyncio.sleep(0.01)
    assert await limiter(runtimes[0]).cluster_in_flight() == {}


async def test_reserved_concurrency_holds_across_hosts(hosts: Hosts, release_file: str) -> None:
    started = await hosts(2, 40)
    runtimes = [rt for rt, _ in started]
    for rt in runtimes:
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=3)
    tasks = await held_calls(runtimes, 3, release_file)
    await settle(tasks, 3, runtimes)
    assert [outcome(t) for t in tasks if t.done()] == [RESERVED] * 3
    assert await limiter(runtimes[1]).cluster_in_flight() == {"hold": 3}
    # The reservation is carved out of the cluster's pool: the shared pool is 37 on both.
    for rt in runtimes:
        assert rt.stats()["concurrency"]["unreserved_pool"] == 37
    open(release_file, "w").close()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert [outcome(t) for t in tasks].count("ran") == 3


async def test_a_reservation_is_carved_out_on_every_host_before_its_first_call(
    hosts: Hosts, release_file: str
) -> None:
    # The reservation used to reach the cluster with its function's first lease request:
    # until then the other hosts gave the whole pool to the unreserved functions.
    started = await hosts(2, 10, unreserved_minimum=1)
    runtimes = [rt for rt, _ in started]
    for rt in runtimes:
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=5, timeout=60)
        await rt.add_function("other", "handlers.chaos:hold", timeout=60)
    release = {"release": release_file}
    shared = [asyncio.ensure_future(rt.invoke("other", release)) for rt in runtimes for _ in range(8)]
    await settle(shared, 5, runtimes)  # 10 less the 5 reserved, though "hold" never ran yet
    assert {outcome(t) for t in shared if t.done()} == {GLOBAL}
    reserved = await held_calls(runtimes, 4, release_file)
    await wait_until(
        lambda: sum(t.done() for t in reserved) == 3
        and sum(rt.stats()["concurrency"]["in_flight"] for rt in runtimes) == 10,
        "the reservation's 5 running beside the shared 5",
        limit=60,
    )
    open(release_file, "w").close()
    await asyncio.gather(*shared, *reserved, return_exceptions=True)


async def test_reservations_of_all_hosts_together_must_fit_the_limit(hosts: Hosts, release_file: str) -> None:
    [(first, _)] = await hosts(1, 10, unreserved_minimum=1)
    await first.add_function("hold", "handlers.chaos:hold", reserved_concurrency=6, timeout=60)
    await wait_until(lambda: not limiter(first)._unpublished, "the reservation published")
    [(second, _)] = await hosts(1, 10, unreserved_minimum=1)
    with pytest.raises(InvalidConfig, match="UnreservedConcurrentExecution below its minimum"):
        await second.add_function("mine", "handlers.chaos:hold", reserved_concurrency=6)
    await second.add_function("mine", "handlers.chaos:hold", reserved_concurrency=3)  # 6 + 3 fit in 9


async def test_one_host_removing_a_function_leaves_another_hosts_reservation_of_it(hosts: Hosts) -> None:
    (first, store), (second, _) = await hosts(2, 10, unreserved_minimum=1)
    for rt in (first, second):
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=3)
    await limiter(first).publish()
    await first.remove_function("hold")  # the row is the function's: the second still reserves it
    await limiter(first).publish(all_of_them=True)
    assert limiter(first).cluster_reserved == {"hold": 3}
    assert first.stats()["concurrency"]["unreserved_pool"] == 7  # the other host's 3 set apart
    # A reservation written by a host of schema 2 (no time it was last said) still counts.
    old_host = "INSERT INTO fnrt_slot_functions (function, reserved) VALUES ('old', 4)"
    await store.slots.pg.durable.execute(old_host)
    await limiter(second).publish()
    assert limiter(second).cluster_reserved == {"hold": 3, "old": 4}


async def test_reservations_made_at_the_same_moment_never_admit_past_the_limit(
    hosts: Hosts, release_file: str
) -> None:
    # Two hosts that reserve at once each check against what they knew: both may pass.
    # The cluster still never runs more than its limit.
    started = await hosts(2, 10, unreserved_minimum=1)
    (first, _), (second, _) = started
    await asyncio.gather(
        first.add_function("hold", "handlers.chaos:hold", reserved_concurrency=7, timeout=60),
        second.add_function("mine", "handlers.chaos:hold", reserved_concurrency=7, timeout=60),
    )
    calls = [asyncio.ensure_future(first.invoke("hold", {"release": release_file})) for _ in range(8)]
    calls += [asyncio.ensure_future(second.invoke("mine", {"release": release_file})) for _ in range(8)]
    await wait_until(lambda: sum(t.done() for t in calls) >= 6, "the calls over the limit", limit=60)
    await asyncio.sleep(0.5)
    assert sum(rt.stats()["concurrency"]["in_flight"] for rt in (first, second)) <= 10
    open(release_file, "w").close()
    await asyncio.gather(*calls, return_exceptions=True)


async def test_blocks_make_warm_invokes_local_and_surplus_goes_back(hosts: Hosts) -> None:
    [(rt, store)] = await hosts(1, 1000, hold=0.05)
    await rt.add_function("noop", "handlers.echo:noop")
    for _ in range(30):
        await rt.invoke("noop", {})
    lim = limiter(rt)
    assert lim.round_trips < 10  # blocks of up to 8: most calls drew on a held block
    stats = rt.stats()["concurrency"]["cluster"]
    assert stats["host"] == "h0" and stats["used"] == {}
    # Idle for the hold time: the surplus goes back to the cluster.
    for _ in range(500):
        if not await store.slots.in_use():
            break
        await asyncio.sleep(0.01)
    assert await store.slots.in_use() == {}
    assert rt.stats()["concurrency"]["cluster"]["held"] == {}


async def test_a_closed_host_gives_its_slots_back_at_once(hosts: Hosts, release_file: str) -> None:
    [(a, _), (b, store_b)] = await hosts(2, 2, hold=5.0, ttl=60.0)  # idle surplus kept 5 s
    for rt in (a, b):
        await rt.add_function("hold", "handlers.chaos:hold", timeout=30)
    open(release_file, "w").close()
    await asyncio.gather(*(a.invoke("hold", {"release": release_file}) for _ in range(2)))
    assert limiter(a).stats()["cluster"]["held"] == {"hold": 2}  # idle, but still held
    assert await store_b.slots.in_use() == {"hold": {"h0": 2}}
    await a.aclose()
    assert await store_b.slots.in_use() == {}
    assert (await b.invoke("hold", {"release": release_file}))["pid"]


async def test_a_dead_hosts_slots_come_back_when_its_lease_expires(
    hosts: Hosts, release_file: str
) -> None:
    # A short real lease (judged by the database's clock), so the test waits a few seconds;
    # long enough that b's first call comes before it expires on a loaded machine.
    [(a, store_a), (b, _)] = await hosts(2, 2, ttl=3.0, hold=0.05)
    for rt in (a, b):
        await rt.add_function("hold", "handlers.chaos:hold", timeout=30)
    calls = [asyncio.ensure_future(a.invoke("hold", {"release": release_file})) for _ in range(2)]
    await wait_until(lambda: a.stats()["concurrency"]["in_flight"] == 2, "host a runs 2")
    await store_a.pg.close()  # host a "dies": it can neither renew nor give back
    with pytest.raises(fnrt.TooManyRequests) as info:
        await b.invoke("hold", {"release": release_file})
    assert info.value.reason == GLOBAL
    open(release_file, "w").close()
    await asyncio.gather(*calls)
    # Once a's lease has expired, b admits into its slots.
    for _ in range(400):
        try:
            await b.invoke("hold", {"release": release_file})
            break
        except fnrt.TooManyRequests:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("host a's slots never came back")
    await limiter(b).cluster_in_flight()
    by_host = limiter(b).stats()["cluster"]["cluster_leased_by_host"]
    # a's are gone; b holds its own block, or has given it back already (idle past hold=0.05)
    assert set(by_host.get("hold", {})) <= {"h1"} and by_host.get("hold", {}).get("h1", 0) <= 2


async def test_an_unreachable_counting_service_is_store_unavailable_never_an_admit(
    hosts: Hosts, release_file: str
) -> None:
    [(rt, store)] = await hosts(1, 10)
    await rt.add_function("hold", "handlers.chaos:hold", timeout=30)
    open(release_file, "w").close()
    await store.pg.close()  # the database is gone for this host
    with pytest.raises(StoreUnavailable):
        await rt.invoke("hold", {"release": release_file})
    assert rt.stats()["concurrency"]["in_flight"] == 0
    assert rt.metrics.counter("Invocations", "hold") == 0  # no handler ran
    assert rt.stats()["functions"]["hold"]["throttles"] == 0


async def test_killed_connections_fail_invokes_as_unavailable_then_it_resumes(
    hosts: Hosts, postgres_database: str
) -> None:
    [(rt, store)] = await hosts(1, 10, hold=0.05)
    await rt.add_function("noop", "handlers.echo:noop")
    admin = await asyncpg.connect(postgres_database)
    try:  # the server kills every connection of this host's pools
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    outcomes: list[str] = []
    for _ in range(5):
        try:
            await rt.invoke("noop", {})
            outcomes.append("ran")
        except StoreUnavailable:
            outcomes.append("unavailable")
    assert outcomes[-1] == "ran"  # the pools reconnect by themselves
    assert rt.metrics.counter("Invocations", "noop") == outcomes.count("ran")
    assert await store.slots.in_use() in ({}, {"noop": {"h0": 1}}, {"noop": {"h0": 2}})


def test_lease_settings_are_checked() -> None:
    with pytest.raises(InvalidConfig):
        ClusterLimit(ttl=0)
    with pytest.raises(InvalidConfig):
        ClusterLimit(max_block=0)
    with pytest.raises(InvalidConfig):
        ClusterLimit(ttl=1.0, hold=0.5)


# -- real host processes ----------------------------------------------------------------

PROBE = '''
import json, os, time

def handler(event, context):
    started = time.time()
    time.sleep(event["sleep"])
    with open(os.path.join(event["dir"], context.aws_request_id), "w") as f:
        json.dump([started, time.time()], f)
'''

HOST = '''
import asyncio, json, logging, os, sys
import structlog
import fnrt
from fnrt._cluster_limit import ClusterLimit
from fnrt.store.postgres import open_postgres

async def main(url, host, limit, callers, attempts, out, go):
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    store = await open_postgres(url, max_connections=2)
    counts = {"ran": 0, "throttled": 0}
    async with fnrt.Runtime(limit, cluster_limit=ClusterLimit(slots=store.slots, host=host, hold=0.02)) as rt:
        await rt.add_function("probe", "cc_probe:handler")
        print("ready", flush=True)
        while not os.path.exists(go):
            await asyncio.sleep(0.005)

        async def caller():
            for _ in range(attempts):
                try:
                    await rt.invoke("probe", {"sleep": 0.01, "dir": out})
                    counts["ran"] += 1
                except fnrt.TooManyRequests:
                    counts["throttled"] += 1
                    await asyncio.sleep(0.005)

        await asyncio.gather(*(caller() for _ in range(callers)))
    await store.close()
    print(json.dumps(counts), flush=True)

asyncio.run(main(*sys.argv[1:3], *map(int, sys.argv[3:6]), *sys.argv[6:8]))
'''


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


async def test_three_host_processes_never_run_more_than_the_global_limit(
    postgres_url: str, tmp_path: Any
) -> None:
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "cc_probe.py").write_text(PROBE)
    out = tmp_path / "calls"
    out.mkdir()
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    limit, callers, attempts = 4, 6, 12
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOST, postgres_url, f"p{i}", str(limit), str(callers), str(attempts),
            str(out), str(go), cwd=root, env=env, stdout=asyncio.subprocess.PIPE,
        )
        for i in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"ready"
        go.touch()
        results = []
        for proc in procs:
            stdout, _ = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0
            results.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    intervals = [tuple(json.loads(p.read_text())) for p in out.iterdir()]
    ran = sum(r["ran"] for r in results)
    assert len(intervals) == ran > 0
    assert sum(r["ran"] + r["throttled"] for r in results) == 3 * callers * attempts
    assert sum(r["throttled"] for r in results) > 0  # 18 callers for 4 slots
    peak = max_overlap(intervals)
    print(f"peak {peak} of {limit}; ran {ran}; per host {results}")
    assert peak <= limit  # measured inside the handlers, over all hosts


async def test_a_single_host_keeps_its_own_limiter(release_file: str) -> None:
    async with fnrt.Runtime(4) as rt:
        assert not isinstance(rt._limiter, ClusterLimiter)  # no counting service: no round trips
        await rt.add_function("hold", "handlers.chaos:hold", timeout=30)
        call = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
        await wait_until(lambda: rt.stats()["concurrency"]["in_flight"] == 1)
        assert await rt._limiter.cluster_in_flight() == {"hold": 1}
        assert "cluster" not in rt.stats()["concurrency"]
        open(release_file, "w").close()
        await call
