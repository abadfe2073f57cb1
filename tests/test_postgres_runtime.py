"""The runtime on PostgreSQL: the behaviours of one host, and several hosts sharing one
database (wake-ups across hosts, shards balanced over the live hosts).

Every test runs against the real server ``tests.pg`` starts, each on a fresh schema.
Retry delays and event ages run on a :class:`fnrt.FakeClock` with a store that judges
leases by the ``now`` it is given (``db_clock=False``); the multi-host tests run on real
time with short leases and bounded waits (no wall-clock assertions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncpg", reason="pip install 'fnrt[postgres]'")

from fnrt import FakeClock, Runtime
from fnrt.store import Store, open_store

from .conftest import read_jsonl, wait_until

pytest_plugins = ["tests.pg"]


@pytest.fixture
async def fake_store(postgres_url: str) -> AsyncIterator[Store]:
    """A store for FakeClock-driven runtimes: leases judged by the runtime's clock."""
    store = await open_store(postgres_url, db_clock=False)
    try:
        yield store
    finally:
        await store.close()


def order(i: int, **extra: Any) -> bytes:
    return json.dumps({"id": i, **extra}).encode()


async def orders_function(rt: Runtime, tmp_path: Path, name: str = "orders") -> Path:
    path = tmp_path / f"{name}.jsonl"
    attempts = tmp_path / "attempts"
    attempts.mkdir(exist_ok=True)
    await rt.add_function(
        name,
        "handlers.orders:process_orders",
        timeout=60,
        environment={"ORDERS_LEDGER": str(path), "ORDERS_ATTEMPTS": str(attempts)},
    )
    return path


async def event_state(rt: Runtime, request_id: str, state: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        event = await rt.async_event(request_id)
        if event is not None and event["state"] == state:
            return event
        if loop.time() > deadline:
            raise AssertionError(f"event {request_id} never reached {state}: {event}")
        await asyncio.sleep(0.01)


async def until(check: Callable[[], Any], clock: FakeClock | None = None, *, limit: float = 20.0) -> Any:
    """Wait (really) for ``check()`` (sync or async) to be truthy, moving ``clock``."""
    return await wait_until(check, "a condition", limit, clock=clock, poll=0.01)


# -- one host on PostgreSQL -----------------------------------------------------------


async def test_runtime_opens_a_postgresql_url_and_reports_it(postgres_url: str) -> None:
    async with Runtime(store=postgres_url) as rt:
        await rt.deploy("handlers.echo")
        request_id = await rt.invoke("echo", {"hello": 1}, "Event")
        event = await event_state(rt, request_id, "done")
        assert event["condition"] == "Success"
        hosts = await until(lambda: _hosts(rt))
        assert [h["host"] for h in hosts] == [rt.host_id]
        cluster = await rt.cluster_stats()
        assert cluster["store"]["backend"] == "postgres"
        assert cluster["queue"]["total"] == {"done": 1}
        # slots leased from the counting service (an idle surplus until it is given back)
        assert set(cluster["in_flight"]) <= {"echo"}


async def _hosts(rt: Runtime) -> list[dict[str, Any]]:
    return list((await rt.cluster_stats())["hosts"])


async def test_event_retries_then_on_failure_and_dead_letter(fake_store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    ledger = tmp_path / "ledger"
    async with Runtime(store=fake_store, clock=clock) as rt:
        await rt.deploy("handlers.payments")  # 2 retries, after 60 s and 120 s
        rt.configure_async("charge", on_failure="sink:failed-payments", dead_letter="sink:payments-dlq")
        payload = {"order": "A-7", "amount": 30, "card": "declined", "ledger": str(ledger)}
        request_id = await rt.invoke("charge", payload, "Event")
        await wait_until(lambda: ledger.exists(), "the first attempt")
        await rt.wait_idle()
        event = await rt.async_event(request_id)
        assert event is not None and (event["state"], event["attempts"], event["invokes"]) == ("queued", 1, 1)
        await clock.advance(59)
        await rt.wait_idle()
        assert (await rt.async_event(request_id))["invokes"] == 1  # type: ignore[index]
        await clock.advance(1)
        await wait_until(lambda: len(ledger.read_text().split()) == 2, "the first retry")
        await rt.wait_idle()
        await clock.advance(120)
        event = await event_state(rt, request_id, "failed")
        assert event["condition"] == "RetriesExhausted" and event["invokes"] == 3
        (record,) = await rt.destination_records("failed-payments")
        assert record == event["record"]
        assert record["requestContext"]["condition"] == "RetriesExhausted"
        assert record["responsePayload"]["errorType"] == "CardDeclined"
        (dead,) = await rt.destination_records("payments-dlq")
        assert dead["body"] == payload


async def test_a_success_goes_to_a_function_destination(fake_store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(store=fake_store, clock=clock) as rt:
        await rt.deploy("handlers.payments")
        rt.configure_async("charge", retry_delays=[5], on_success="function:audit")
        rt.configure_async("audit", on_success="sink:audited")
        ledger = tmp_path / "ledger"
        payload = {"order": "A-8", "amount": 12, "gateway_failures": 1, "ledger": str(ledger)}
        request_id = await rt.invoke("charge", payload, "Event")
        await event_state(rt, request_id, "queued")
        await rt.wait_idle()
        await clock.advance(5)
        event = await event_state(rt, request_id, "done")
        assert (event["attempts"], event["invokes"]) == (1, 2)
        (audited,) = await until(lambda: rt.destination_records("audited"))
        assert audited["requestPayload"]["requestContext"]["requestId"] == request_id


async def test_stream_mapping_bisects_a_poisoned_batch_and_sends_it_on(
    fake_store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    async with Runtime(store=fake_store, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        await stream.put_records([(order(i, poison=(i == 5)), "customer-1") for i in range(8)])
        mapping = await rt.add_stream_mapping(
            "orders",
            "orders",
            batch_size=8,
            bisect_on_error=True,
            max_retry_attempts=0,
            on_failure="sink:orders-dlq",
        )
        [failure] = await until(mapping.failure_records, clock)
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["KinesisBatchInfo"]["batchSize"] == 1  # bisected down to the poisoned record
        await until(lambda: len(read_jsonl(path)) == 7, clock)
        assert [e["id"] for e in read_jsonl(path)] == [0, 1, 2, 3, 4, 6, 7]  # in order, 5 skipped
        assert await rt.destination_records("orders-dlq") == [failure]
        assert rt.metrics.counter("StreamBisects", mapping.uuid) >= 1


async def test_a_restarted_host_resumes_queued_events_and_checkpoints(
    postgres_url: str, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    # Another host (here: a bare store) queued events while no fnrt host was running.
    async with await open_store(postgres_url) as other:
        for n in range(3):
            body = json.dumps({"order": f"early-{n}", "outbox": str(outbox)}).encode()
            await other.queue.enqueue(f"early-{n}", "send_receipt", body, time.time())
    async with Runtime(store=postgres_url) as rt:
        await rt.deploy("handlers.payments")
        await wait_until(lambda: len(read_jsonl(outbox)) == 3, "the queued events")
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=2)
        await stream.put_records([(order(i), f"c{i}") for i in range(10)])
        mapping = await rt.add_stream_mapping("orders", "orders", lease_seconds=2)
        await until(lambda: len(read_jsonl(path)) == 10)
        await rt.wait_idle()
        uuid = mapping.uuid
    async with Runtime(store=postgres_url) as rt:  # the same host, restarted
        path = await orders_function(rt, tmp_path)
        stream = await rt.get_stream("orders")
        await stream.put_records([(order(i), f"c{i}") for i in range(10, 15)])
        mapping = await rt.add_stream_mapping("orders", "orders", lease_seconds=2)
        assert mapping.uuid == uuid  # resumed from its checkpoints
        await until(lambda: len(read_jsonl(path)) == 15)
        await rt.wait_idle()
        assert sorted(e["id"] for e in read_jsonl(path)) == list(range(15))  # nothing twice
    assert sorted(json.loads(line)["order"] for line in outbox.read_text().splitlines()) == [
        "early-0",
        "early-1",
        "early-2",
    ]


# -- several hosts on one database ----------------------------------------------------


async def test_an_enqueue_elsewhere_wakes_this_hosts_poller_at_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Host B polls only once an hour; an event another host enqueues runs on B within
    seconds, so B was woken by the notification, not by its poll."""
    outbox = tmp_path / "outbox.jsonl"
    async with Runtime(store=postgres_url) as b, await open_store(postgres_url) as a:
        b._async.idle_poll = 3600.0
        await b.deploy("handlers.payments")
        await b.async_queue_counts()  # the queue is open and the poller parked
        await until(lambda: b._async.idle)
        body = json.dumps({"order": "from-a", "outbox": str(outbox)}).encode()
        await a.queue.enqueue("from-a", "send_receipt", body, time.time())
        await wait_until(lambda: len(read_jsonl(outbox)) == 1, "B to run A's event", limit=20)
        # the handler writes the outbox before its result reaches B and is counted
        await wait_until(lambda: b.metrics.counter("Invocations", "send_receipt") == 1, "B's count")


async def test_a_put_elsewhere_wakes_this_hosts_stream_mapping(postgres_url: str, tmp_path: Path) -> None:
    """B's shard poller looks for records every 300 s; records another host puts are
    delivered on B within seconds (A has no mapping of its own)."""
    async with Runtime(store=postgres_url) as a, Runtime(store=postgres_url) as b:
        stream_a = await a.create_stream("orders", shard_count=1)
        path = await orders_function(b, tmp_path)
        mapping = await b.add_stream_mapping("orders", "orders", poll_interval=300, lease_seconds=900)
        await until(lambda: mapping.shards_owned and mapping.idle)
        await stream_a.put_records([(order(i), "k") for i in range(3)])
        await until(lambda: len(read_jsonl(path)) == 3, limit=20)
        await until(lambda: b.metrics.counter("Invocations", "orders") >= 1)  # counted after the write
        assert a.metrics.counter("Invocations", "orders") == 0


async def test_shards_spread_over_the_hosts_and_move_when_one_stops(
    postgres_url: str, tmp_path: Path
) -> None:
    """Three hosts, six shards: each ends with two. One stops without handing its leases
    back (as a crashed host would); the other two take its shards after the lease time."""
    lease = 1.5
    hosts = [Runtime(store=postgres_url) for _ in range(3)]
    for rt in hosts:
        await rt.start()
    try:
        paths = []
        for n, rt in enumerate(hosts):
            (tmp_path / f"h{n}").mkdir()
            paths.append(await orders_function(rt, tmp_path / f"h{n}"))
        stream = await hosts[0].create_stream("orders", shard_count=6)
        mappings = [await rt.add_stream_mapping("orders", "orders", lease_seconds=lease) for rt in hosts]

        def spread() -> list[int]:
            return sorted(len(m.shards_owned) for m in mappings)

        await until(lambda: spread() == [2, 2, 2], limit=30)
        owned = {s for m in mappings for s in m.shards_owned}
        assert len(owned) == 6
        await stream.put_records([(order(i), f"c{i}") for i in range(30)])
        await until(lambda: sum(len(read_jsonl(p)) for p in paths) >= 30, limit=30)

        # host 2 stalls: its coordinator and pollers stop, its leases stay in the table
        dead = mappings[2]
        for task in [dead._coordinator, *dead._pollers.values()]:
            assert task is not None
            task.cancel()
        dead._pollers.clear()
        dead._poller_objects.clear()
        survivors = mappings[:2]
        await until(lambda: sorted(len(m.shards_owned) for m in survivors) == [3, 3], limit=30)
        await stream.put_records([(order(i), f"c{i}") for i in range(30, 60)])
        await until(lambda: {e["id"] for p in paths for e in read_jsonl(p)} == set(range(60)), limit=30)
        cluster = await hosts[0].cluster_stats()
        (view,) = cluster["streams"].values()
        assert sorted(view["leases_per_host"].values()) == [3, 3]
        assert set(view["leases_per_host"]) == {hosts[0].host_id, hosts[1].host_id}
        assert {h["host"] for h in cluster["hosts"]} == {rt.host_id for rt in hosts}
    finally:
        for rt in reversed(hosts):
            await rt.aclose()


async def test_a_lock_timeout_while_another_session_holds_a_table_is_store_unavailable(
    postgres_url: str, tmp_path: Path
) -> None:
    """The database runs with a ``lock_timeout`` (a DBA's setting, here in the URL) and
    another session holds a table fnrt uses. A statement that times out waiting is the
    store being unavailable, as a held SQLite lock is: an Event invoke fails with
    StoreUnavailable (not asyncpg's LockNotAvailableError), the background loops retry
    instead of the runtime dying, and everything goes on once the lock is gone."""
    import asyncpg

    from fnrt.errors import StoreUnavailable

    schema = postgres_url.rsplit("fnrt_schema=", 1)[1]
    url = f"{postgres_url}&options=-c%20lock_timeout%3D100"
    ledger, outbox = tmp_path / "ledger.jsonl", tmp_path / "outbox.jsonl"
    async with Runtime(store=url) as rt:
        await rt.add_function(
            "orders", "handlers.orders:process_orders", environment={"ORDERS_LEDGER": str(ledger)}
        )
        await rt.deploy("handlers.payments")
        stream = await rt.create_stream("orders", shard_count=2)
        await rt.add_stream_mapping("orders", "orders", lease_seconds=2, poll_interval=0.05)
        await stream.put_records([(order(i), f"c{i}") for i in range(4)])
        await wait_until(lambda: len(read_jsonl(ledger)) >= 4, "the first records")
        admin = await asyncpg.connect(postgres_url.rsplit("fnrt_schema=", 1)[0].rstrip("?&"))
        try:
            async with admin.transaction():
                await admin.execute(
                    f'LOCK TABLE "{schema}".fnrt_async_events, "{schema}".fnrt_stream_leases, '
                    f'"{schema}".fnrt_stream_checkpoints IN ACCESS EXCLUSIVE MODE'
                )
                with pytest.raises(StoreUnavailable, match="lock timeout"):
                    await rt.invoke("send_receipt", {"order": "refused", "outbox": str(outbox)}, "Event")
                failures = rt.stats()["background_failures"]
                await until(lambda: rt.stats()["background_failures"] > failures)  # loops retry
        finally:
            await admin.close()
        await rt.invoke("send_receipt", {"order": "after", "outbox": str(outbox)}, "Event")
        await stream.put_records([(order(i), f"c{i}") for i in range(4, 8)])
        await wait_until(lambda: [e["order"] for e in read_jsonl(outbox)] == ["after"], "the event after")
        await wait_until(lambda: {e["id"] for e in read_jsonl(ledger)} == set(range(8)), "every record")


async def test_a_role_refused_on_reconnect_is_store_unavailable_until_it_may_log_in_again(
    postgres_url: str, tmp_path: Path
) -> None:
    """The DBA disables fnrt's role (or rotates its password) and its connections are cut:
    the pool's new connections are refused. That is the store being unavailable, with the
    hint an open gives, not a programming error that takes the runtime down; once the
    role may log in again, Event invokes go through and run."""
    import asyncpg

    from fnrt.errors import StoreUnavailable

    if "//postgres@" not in postgres_url:
        pytest.skip("needs the session's own throwaway server (trust authentication)")
    role = f"fnrt_r_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_url.rsplit("fnrt_schema=", 1)[0].rstrip("?&"))
    await admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    outbox = tmp_path / "outbox.jsonl"
    try:
        async with Runtime(store=postgres_url.replace("//postgres@", f"//{role}@")) as rt:
            await rt.deploy("handlers.payments")
            await rt.invoke("send_receipt", {"order": "before", "outbox": str(outbox)}, "Event")
            await wait_until(lambda: len(read_jsonl(outbox)) == 1, "the first event")
            await admin.execute(f"ALTER ROLE {role} NOLOGIN")
            await admin.execute(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
            )

            async def refused() -> bool:
                try:
                    await rt.invoke("send_receipt", {"order": "refused", "outbox": str(outbox)}, "Event")
                except StoreUnavailable as exc:  # a connection cut under it, then the refusal
                    return "not permitted to log in" in str(exc) and "pg_hba.conf" in str(exc)
                raise AssertionError("an Event was acknowledged while the role may not log in")

            await until(refused)
            failures = rt.stats()["background_failures"]
            await until(lambda: rt.stats()["background_failures"] > failures)  # loops retry
            await admin.execute(f"ALTER ROLE {role} LOGIN")

            async def sent_after() -> bool:
                with contextlib.suppress(StoreUnavailable):
                    await rt.invoke("send_receipt", {"order": "after", "outbox": str(outbox)}, "Event")
                    return True
                return False

            await until(sent_after)
            await wait_until(lambda: len(read_jsonl(outbox)) == 2, "the event after")
            assert [e["order"] for e in read_jsonl(outbox)] == ["before", "after"]
    finally:
        await admin.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        )
        await admin.execute(f"DROP OWNED BY {role} CASCADE")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_a_dead_hosts_shards_move_within_the_lease_even_if_its_clock_ran_ahead(
    postgres_url: str, tmp_path: Path
) -> None:
    """A host whose wall clock runs ten minutes ahead dies holding both shards (1 s
    leases, judged by the database's clock). The survivor takes them over after about
    the lease time, as the database judges, not ten minutes later by the dead host's
    clock; ``cluster_stats`` shows the leases as the database sees them too."""
    shards = ["shardId-000000000000", "shardId-000000000001"]
    async with Runtime(store=postgres_url) as rt, await open_store(postgres_url) as dead:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=2)
        row = await dead.streams.create_mapping(
            "m-1", "orders", "orders", {}, "TRIM_HORIZON", None, time.time()
        )
        ahead = time.time() + 600  # the dead host's clock
        for shard in shards:
            assert await dead.streams.acquire_lease(row.uuid, shard, "dead-host/1", ahead, 1.0)
        (view,) = (await rt.cluster_stats())["streams"].values()
        assert all(s["expires_in"] < 5 for s in view["shards"].values())  # not 600 s
        await stream.put_records([(order(i), f"c{i}") for i in range(10)])
        mapping = await rt.add_stream_mapping("orders", "orders", lease_seconds=1, poll_interval=0.05)
        assert mapping.uuid == row.uuid
        await until(lambda: mapping.shards_owned == shards, limit=10)
        await until(lambda: {e["id"] for e in read_jsonl(path)} == set(range(10)), limit=10)


def test_fnrt_stats_prints_the_cluster() -> None:
    import contextlib
    import io

    from fnrt._cli import _print_cluster

    out = io.StringIO()
    cluster = {
        "host": "h1",
        "store": {"backend": "postgres", "location": "postgresql://x@/db"},
        "hosts": [
            {"host": "h1", "info": {"url": "http://127.0.0.1:9001"}, "seen_at": 1.0, "seen_ago": 0.5},
            {"host": "h2", "info": {}, "seen_at": 2.0, "seen_ago": 4.0},
        ],
        "streams": {"u": {"stream": "s", "function": "f", "leases_per_host": {"h1": 3, "h2": 5}}},
        "queue": {"total": {"queued": 4, "done": 10}},
        "in_flight": None,
    }
    with contextlib.redirect_stdout(out):
        _print_cluster(cluster)
    text = out.getvalue()
    assert "2 host(s) alive on postgres" in text
    assert "h1 (this host)" in text and "http://127.0.0.1:9001" in text
    assert "shard leases h1: 3, h2: 5" in text
    assert "queue: done 10, queued 4" in text
    assert "4.0 s ago" in text


async def test_fnrt_serve_on_a_postgresql_url_and_fnrt_stats_show_the_cluster(postgres_url: str) -> None:
    """``python -m fnrt serve --state postgresql://...`` twice: ``fnrt stats`` against
    either host lists both, and the shard leases per host of the mapping they share."""
    import sys

    root = Path(__file__).resolve().parent.parent
    servers = []
    try:
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fnrt",
                "serve",
                "handlers.orders",
                "--state",
                postgres_url,
                "--port",
                "0",
                "--stream",
                "orders:4",
                "--mapping",
                "orders=process_orders",
                cwd=root,
                stderr=asyncio.subprocess.PIPE,
            )
            servers.append(proc)
            assert proc.stderr is not None
            while True:
                line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
                assert line, "serve exited"
                if line.startswith("listening on "):
                    url = line.split()[2]
                    break

        async def stats() -> str:
            done = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fnrt",
                "stats",
                "--endpoint",
                url,
                cwd=root,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await done.communicate()
            text = out.decode()
            wanted = ("2 host(s) alive on postgres", "shard leases", url)  # the URL: next heartbeat
            return text if all(w in text for w in wanted) else ""

        text = await until(stats, limit=40)
        assert "(this host)" in text
        assert "mapping orders -> process_orders" in text
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            await proc.wait()


async def test_a_database_that_goes_away_is_store_unavailable_and_work_resumes(
    postgres_url: str, tmp_path: Path
) -> None:
    """While the server cannot be reached an Event invoke fails with StoreUnavailable
    (nothing acknowledged that was not stored) and the background loops retry; when it is
    back, the runtime goes on by itself: new Events run, and so do queued ones."""
    from urllib.parse import parse_qs, urlsplit

    from fnrt.errors import StoreUnavailable

    from .test_postgres_store import Proxy

    parts = urlsplit(postgres_url)
    query = parse_qs(parts.query)
    if "host" not in query:
        pytest.skip("needs the session's own unix-socket server")
    proxy = Proxy(query["host"][0])
    await proxy.start()
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}{parts.path}?fnrt_schema={query['fnrt_schema'][0]}"
    outbox = tmp_path / "outbox.jsonl"
    try:
        async with Runtime(store=url) as rt:
            await rt.deploy("handlers.payments")
            await rt.invoke("send_receipt", {"order": "before", "outbox": str(outbox)}, "Event")
            await wait_until(lambda: len(read_jsonl(outbox)) == 1, "the first event")
            await proxy.cut()
            with pytest.raises(StoreUnavailable):
                await rt.invoke("send_receipt", {"order": "lost", "outbox": str(outbox)}, "Event")
            failures = rt.stats()["background_failures"]
            await until(lambda: rt.stats()["background_failures"] > failures)  # loops retry
            await proxy.start()  # back
            async with await open_store(postgres_url) as other:  # another host queued one meanwhile
                body = json.dumps({"order": "queued", "outbox": str(outbox)}).encode()
                await other.queue.enqueue("queued", "send_receipt", body, time.time())

            async def send_after() -> bool:
                with contextlib.suppress(StoreUnavailable):  # a connection broken while down
                    await rt.invoke("send_receipt", {"order": "after", "outbox": str(outbox)}, "Event")
                    return True
                return False

            await until(send_after)
            await wait_until(lambda: len(read_jsonl(outbox)) == 3, "the events after the outage")
            assert sorted(e["order"] for e in read_jsonl(outbox)) == ["after", "before", "queued"]
    finally:
        await proxy.cut()


async def test_connections_killed_under_work_are_store_unavailable_and_work_goes_on(
    postgres_url: str, tmp_path: Path
) -> None:
    """An operator (or a failover) kills fnrt's connections with pg_terminate_backend while
    streams and the async queue are busy. asyncpg then reports some of the broken
    connections in its own words (InterfaceError, InternalClientError "cannot switch to
    state ..."): those are the store being unavailable too, never a programming error that
    takes the runtime down. Every record and every event is delivered, each key in order."""
    import asyncpg

    from fnrt.errors import StoreUnavailable

    ledger, outbox = tmp_path / "ledger.jsonl", tmp_path / "outbox.jsonl"
    admin = await asyncpg.connect(postgres_url.split("&fnrt_schema=")[0].split("?fnrt_schema=")[0])
    stop = asyncio.Event()
    killed = 0

    async def kill_fnrt_connections() -> None:
        nonlocal killed
        while not stop.is_set():
            rows = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fnrt' "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            killed += len(rows)
            await asyncio.sleep(0.2)

    put, sent = 0, 0
    try:
        async with Runtime(store=postgres_url) as rt:
            rt._async.lease_margin = 0.5  # an attempt whose write-back was cut runs again soon
            await rt.add_function(
                "orders", "handlers.orders:process_orders", environment={"ORDERS_LEDGER": str(ledger)}
            )
            await rt.deploy("handlers.payments")
            stream = await rt.create_stream("orders", shard_count=2)
            await rt.add_stream_mapping("orders", "orders", batch_size=5, lease_seconds=2, poll_interval=0.05)
            killer = asyncio.ensure_future(kill_fnrt_connections())
            loop = asyncio.get_running_loop()
            until_time = loop.time() + 1.5
            # 1.5 s of kills, longer if nothing got through yet (a loaded machine), 11.5 s at most
            while loop.time() < until_time or (not (put and sent) and loop.time() < until_time + 10):
                with contextlib.suppress(StoreUnavailable):  # refused, so not acknowledged
                    await stream.put_records([(order(put + i), f"c{(put + i) % 3}") for i in range(5)])
                    put += 5
                with contextlib.suppress(StoreUnavailable):
                    await rt.invoke("send_receipt", {"order": sent, "outbox": str(outbox)}, "Event")
                    sent += 1
                await asyncio.sleep(0.01)
            stop.set()
            await killer
            assert killed > 0 and put > 0 and sent > 0
            await wait_until(
                lambda: (
                    {e["id"] for e in read_jsonl(ledger)} >= set(range(put))
                    and {e["order"] for e in read_jsonl(outbox)} >= set(range(sent))
                ),
                "every record and event after the kills",
                20,
            )
    finally:
        stop.set()
        await admin.close()
    entries = read_jsonl(ledger)
    for key in {e["key"] for e in entries}:
        firsts: list[int] = []
        for e in entries:
            if e["key"] == key and e["id"] not in firsts:
                firsts.append(e["id"])
        assert firsts == sorted(firsts)  # per key, first deliveries in order


async def test_a_mapping_whose_stream_another_host_deleted_stays_disabled_here(
    postgres_url: str, tmp_path: Path
) -> None:
    """B deletes the stream A's mapping reads and makes it again under the name: the store
    keeps the mapping disabled, and so does A (it read the new stream from its start)."""
    async with Runtime(store=postgres_url) as a, Runtime(store=postgres_url) as b:
        path = await orders_function(a, tmp_path)
        stream = await a.create_stream("orders", shard_count=1)
        await stream.put_records([(order(0), "k")])
        mapping = await a.add_stream_mapping("orders", "orders", poll_interval=300, lease_seconds=900)
        await until(lambda: len(read_jsonl(path)) == 1)
        await b.delete_stream("orders")
        again = await b.create_stream("orders", shard_count=1)
        await again.put_records([(order(1), "k")])
        mapping.wake()
        await until(lambda: not a.stream_mappings()[0].config.enabled)
        for _ in range(3):
            for m in a.stream_mappings():
                m.wake()
            await a.wait_idle()
        [kept] = a.stream_mappings()
        assert kept.uuid == mapping.uuid and kept.shards_owned == []
        assert len(read_jsonl(path)) == 1
