"""The PostgreSQL stores against a real server that the test session starts (tests/pg.py).

The same behaviours as the SQLite stores, each shown with several "hosts" (separate
stores, so separate pools and connections) where the point is atomicity between them;
plus wake-ups over LISTEN/NOTIFY, the cross-host counting service, and what a caller sees
when the server cannot be reached. Lease expiry is driven with explicit clock values
(``db_clock=False``) or judged by the server's clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

if not os.environ.get("CI"):  # under CI a missing driver is a failure, not a skip
    pytest.importorskip("asyncpg", reason="pip install 'fnrt[postgres]'")

from fnrt.errors import InvalidConfig, StoreUnavailable, StreamNotFound
from fnrt.store._queue import Outcome, QueuedEvent
from fnrt.store._streams import MAX_HASH_KEY, Checkpoint, hash_key
from fnrt.store.postgres import PostgresStore, open_postgres
from tests.conftest import wait_until

pytest_plugins = ["tests.pg"]

Opener = Callable[..., Any]


@pytest.fixture
async def hosts(postgres_url: str) -> AsyncIterator[Opener]:
    """``await hosts(n, db_clock=False)``: n stores on the test's database, closed after."""
    opened: list[PostgresStore] = []

    async def open_hosts(
        n: int = 1, *, db_clock: bool = False, url: str = postgres_url
    ) -> list[PostgresStore]:
        stores = [await open_postgres(url, db_clock=db_clock, max_connections=4) for _ in range(n)]
        opened.extend(stores)
        return stores

    yield open_hosts
    for store in opened:
        await store.close()


async def one(hosts: Opener, **kwargs: Any) -> PostgresStore:
    [store] = await hosts(1, **kwargs)
    return store


def done(attempts: int = 0, **kwargs: Any) -> Outcome:
    return Outcome(state="done", attempts=attempts, invokes=1, status=200, **kwargs)


# -- schema and connections ---------------------------------------------------------------


async def test_hosts_starting_together_create_one_schema(hosts: Opener) -> None:
    stores = await asyncio.gather(*(hosts(1) for _ in range(4)))
    store = stores[0][0]
    async with store.pg.durable.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM fnrt_schema") == 1
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "30s"
    async with store.pg.relaxed.acquire() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == "off"


async def test_a_newer_schema_is_refused_with_a_clear_error(hosts: Opener, postgres_url: str) -> None:
    store = await one(hosts)
    await store.pg.durable.execute("INSERT INTO fnrt_schema (version) VALUES (999)")
    with pytest.raises(StoreUnavailable, match="schema version 999"):
        await open_postgres(postgres_url)


async def test_deployments_in_separate_schemas_share_nothing(hosts: Opener, postgres_url: str) -> None:
    other_url = postgres_url + "_b"  # fnrt_schema=... is the URL's last parameter
    a = await one(hosts)
    b = await one(hosts, url=other_url)
    heard: list[tuple[str, str]] = []
    await b.add_wake_listener(lambda kind, name: heard.append((kind, name)))
    await a.queue.enqueue("r", "f", b"{}", 0.0)
    await b.queue.enqueue("r", "g", b"{}", 0.0)
    assert await a.queue.counts() == {"queued": 1} and await b.queue.counts() == {"queued": 1}
    await wait_until(lambda: bool(heard), "b's own wake-up")
    assert heard == [("event", "g")]  # not a's
    async with b.pg.durable.acquire() as conn:
        await conn.execute(f'DROP SCHEMA "{b.schema}" CASCADE')
    with pytest.raises(InvalidConfig, match="schema must be"):
        await open_postgres(postgres_url, schema="Robert'); DROP TABLE x")


async def test_a_schema_from_before_mapping_filters_gains_the_column(hosts: Opener) -> None:
    # A database of the same schema version made before mappings had filters: the next
    # host to start adds the column (no version bump: older hosts still open it).
    first = await one(hosts)
    await first.streams.create_stream("s", 1, 86_400.0, 0.0)
    await first.streams.create_mapping("m", "s", "f", {"batch_size": 7}, "TRIM_HORIZON", None, 0.0)
    await first.pg.durable.execute("ALTER TABLE fnrt_stream_mappings DROP COLUMN filters")
    version = await first.pg.durable.fetchval("SELECT max(version) FROM fnrt_schema")
    second = await one(hosts)
    [row] = await second.streams.mappings()
    assert (row.uuid, row.config, row.filters) == ("m", {"batch_size": 7}, ())
    pattern = '{"data": {"type": ["buy"]}}'
    await second.streams.create_mapping("m", "s", "f", {}, "TRIM_HORIZON", None, 0.0, filters=[pattern])
    found = await first.streams.mapping("s", "f")
    assert found is not None and found.filters == (pattern,)
    assert await second.pg.durable.fetchval("SELECT max(version) FROM fnrt_schema") == version


async def test_an_unreachable_server_is_store_unavailable() -> None:
    with tempfile.TemporaryDirectory() as nowhere:
        url = f"postgresql://fnrt:secret@/fnrt?host={nowhere}"
        with pytest.raises(StoreUnavailable) as caught:
            await open_postgres(url, connect_timeout=2)
    assert "secret" not in str(caught.value) and "secret" not in caught.value.path
    assert caught.value.cause is not None


async def test_a_store_url_the_server_refuses_is_a_clear_fnrt_error(postgres_server: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from .pg import with_database

    with pytest.raises(StoreUnavailable, match="create the database") as missing:
        await open_postgres(with_database(postgres_server, "no_such_database"), connect_timeout=5)
    assert missing.value.cause is not None
    parts = urlsplit(postgres_server)
    stranger = urlunsplit(parts._replace(netloc=f"no_such_role@{parts.hostname or ''}"))
    with pytest.raises(StoreUnavailable, match="role"):
        await open_postgres(stranger, connect_timeout=5)
    joiner = "&" if "?" in postgres_server else "?"
    for malformed in (
        "postgresql://[::1/db",
        f"{postgres_server}{joiner}sslmode=bogus",
        f"{postgres_server}{joiner}no_such_setting=1",
    ):
        with pytest.raises(InvalidConfig, match="PostgreSQL store"):  # the URL itself
            await open_postgres(malformed, connect_timeout=5)


# -- the async queue ----------------------------------------------------------------------


async def test_enqueue_take_settle(hosts: Opener) -> None:
    q = (await one(hosts)).queue
    await asyncio.gather(*(q.enqueue(f"r{i}", "f", b'{"i": %d}' % i, 100.0) for i in range(5)))
    await q.enqueue("g1", "g", b"{}", 100.0)
    assert await q.counts() == {"queued": 6}
    taken = await q.take("f", 100.0, 3, "host-a", 130.0)
    assert [e.request_id for e in taken] == ["r0", "r1", "r2"]  # oldest first
    assert all(e.lease == 1 and e.function == "f" and e.enqueued_at == 100.0 for e in taken)
    assert json.loads(taken[1].payload) == {"i": 1}
    assert await q.counts("f") == {"queued": 2, "leased": 3}
    await q.settle(taken[0], done(record='{"ok": true}'), 101.0)
    row = await q.event("r0")
    assert row is not None and row["state"] == "done" and row["record"] == {"ok": True}
    assert row["invokes"] == 1 and row["leases"] == 1
    assert await q.event("nope") is None
    assert await q.next_due(["f", "g"]) == 100.0


async def test_retry_waits_for_run_at_and_keeps_its_counters(hosts: Opener) -> None:
    q = (await one(hosts)).queue
    await q.enqueue("r", "f", b"{}", 0.0)
    [event] = await q.take("f", 0.0, 10, "a", 30.0)
    await q.settle(
        event,
        Outcome(
            state="queued",
            run_at=60.0,
            attempts=1,
            invokes=1,
            status=200,
            function_error="Unhandled",
            response=b'{"errorMessage": "x"}',
        ),
        1.0,
    )
    assert await q.take("f", 59.0, 10, "a", 89.0) == []
    assert await q.next_due(["f"]) == 60.0
    [again] = await q.take("f", 60.0, 10, "a", 90.0)
    assert (again.attempts, again.invokes, again.lease) == (1, 1, 2)
    assert again.last_error == "Unhandled" and again.last_response == b'{"errorMessage": "x"}'


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(hosts: Opener) -> None:
    q = (await one(hosts)).queue
    await q.enqueue("r", "f", b"{}", 0.0)
    [old] = await q.take("f", 0.0, 10, "dead-host", 30.0)
    assert await q.take("f", 29.0, 10, "b", 59.0) == []  # still leased
    [new] = await q.take("f", 30.0, 10, "b", 60.0)  # expired: taken over
    assert new.lease == old.lease + 1
    # The old holder wakes up and settles: nothing it writes lands, destinations included.
    await q.settle(old, done(sink_records=[("sink", '{"stale": true}')], events=[("x", "next", b"{}")]), 31.0)
    assert await q.counts() == {"leased": 1}
    assert await q.sink_records("sink") == []
    await q.settle(
        new,
        done(sink_records=[("sink", '{"n": 1}'), ("sink", '{"n": 2}')], events=[("x", "next", b"{}")]),
        32.0,
    )
    assert await q.sink_records("sink") == [{"n": 1}, {"n": 2}]
    assert await q.counts("next") == {"queued": 1}
    await q.append_sink("sink", '{"n": 3}', 33.0)
    assert [r["n"] for r in await q.sink_records("sink")] == [1, 2, 3]


async def test_settles_sharing_a_statement_are_fenced_one_by_one(hosts: Opener) -> None:
    q = (await one(hosts)).queue
    for i in range(20):
        await q.enqueue(f"r{i}", "f", b"{}", 0.0)
    [old] = await q.take("f", 0.0, 1, "dead-host", 30.0)
    [new] = await q.take("f", 30.0, 1, "b", 60.0)  # r0, taken over
    rest = await q.take("f", 30.0, 19, "b", 60.0)
    await asyncio.gather(
        q.settle(old, done(sink_records=[("sink", '{"from": "old"}')], events=[("x", "g", b"{}")]), 31.0),
        q.settle(new, done(sink_records=[("sink", '{"from": "new"}')]), 31.0),
        *(q.settle(e, done(sink_records=[("sink", '{"from": "rest"}')]), 31.0) for e in rest),
    )
    records = await q.sink_records("sink")
    assert {"from": "old"} not in records and records.count({"from": "new"}) == 1
    assert records.count({"from": "rest"}) == 19
    assert await q.counts() == {"done": 20}


async def test_release_makes_events_due_at_once(hosts: Opener) -> None:
    q = (await one(hosts)).queue
    for i in range(3):
        await q.enqueue(f"r{i}", "f", b"{}", 0.0)
    taken = await q.take("f", 0.0, 10, "a", 1000.0)
    await q.release(taken[:2])
    await q.release([])
    again = await q.take("f", 1.0, 10, "b", 1000.0)
    assert [e.request_id for e in again] == ["r0", "r1"]


async def test_two_hosts_taking_at_once_never_share_an_event(hosts: Opener) -> None:
    a, b = await hosts(2)
    await asyncio.gather(*(a.queue.enqueue(f"r{i}", "f", b"{}", 0.0) for i in range(300)))
    got: dict[str, list[QueuedEvent]] = {"a": [], "b": []}

    async def drain(store: PostgresStore, owner: str) -> None:
        while True:
            batch = await store.queue.take("f", 0.0, 7, owner, 1000.0)
            if not batch:
                if (await store.queue.counts("f")).get("queued", 0) == 0:
                    return
                continue
            got[owner].extend(batch)

    await asyncio.gather(*(drain(s, o) for s, o in [(a, "a"), (b, "b")] for _ in range(3)))
    ids_a = {e.id for e in got["a"]}
    ids_b = {e.id for e in got["b"]}
    assert len(got["a"]) == len(ids_a) and len(got["b"]) == len(ids_b)
    assert not ids_a & ids_b
    assert len(ids_a | ids_b) == 300
    assert await a.queue.counts() == {"leased": 300}


async def test_a_bad_row_fails_only_its_own_enqueue(hosts: Opener) -> None:
    q = (await one(hosts)).queue
    results = await asyncio.gather(
        q.enqueue("good-1", "f", b"{}", 0.0),
        q.enqueue("bad\x00id", "f", b"{}", 0.0),  # PostgreSQL text cannot hold NUL
        q.enqueue("good-2", "f", b"{}", 0.0),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Exception)
    assert await q.counts() == {"queued": 2}


async def test_close_commits_the_enqueues_in_flight(hosts: Opener, postgres_url: str) -> None:
    store = await open_postgres(postgres_url, db_clock=False)
    pending = [asyncio.ensure_future(store.queue.enqueue(f"r{i}", "f", b"{}", 0.0)) for i in range(50)]
    await asyncio.sleep(0)  # the enqueues are waiting for their commit
    await store.close()
    assert all(task.done() and task.exception() is None for task in pending)
    assert await (await one(hosts)).queue.counts() == {"queued": 50}


async def test_purge_finished_deletes_only_old_finished_events(hosts: Opener) -> None:
    q = (await one(hosts)).queue
    for i in range(4):
        await q.enqueue(f"r{i}", "f", b"{}", 0.0)
    taken = await q.take("f", 0.0, 3, "a", 100.0)
    await q.settle(taken[0], done(), 10.0)
    await q.settle(taken[1], Outcome(state="failed", attempts=3, invokes=3), 20.0)
    await q.settle(taken[2], done(), 30.0)
    assert await q.purge_finished(25.0) == 2
    assert await q.counts() == {"done": 1, "queued": 1}
    assert await q.event("r0") is None and await q.event("r2") is not None


async def test_an_expired_lease_is_judged_by_the_database_clock(hosts: Opener) -> None:
    q = (await one(hosts, db_clock=True)).queue
    await q.enqueue("r", "f", b"{}", 0.0)
    [first] = await q.take("f", 0.0, 1, "a", 3600.0)  # an hour, by the server's clock
    # A host whose clock runs far ahead cannot take it over: the server says it is live.
    assert await q.take("f", 1e12, 1, "skewed", 1e12 + 30) == []
    await q.settle(first, Outcome(state="queued", run_at=0.0, attempts=1, invokes=1), 1.0)
    [second] = await q.take("f", 0.0, 1, "a", -1.0)  # a lease that ends before it starts
    [third] = await q.take("f", 0.0, 1, "b", 30.0)  # ...is expired by the server's clock
    assert third.lease == second.lease + 1


# -- streams ------------------------------------------------------------------------------


def entries(n: int, prefix: str = "k") -> list[tuple[str, str, int]]:
    return [(f"{prefix}{i}", f"ZGF0YQ{i}", hash_key(f"{prefix}{i}")) for i in range(n)]


async def test_create_stream_once_and_route_records(hosts: Opener) -> None:
    s = (await one(hosts)).streams
    assert await s.create_stream("orders", 4, 86400.0, 1.0)
    assert not await s.create_stream("orders", 2, 1.0, 2.0)
    assert await s.stream_exists("orders") and not await s.stream_exists("other")
    assert await s.stream_retention("orders") == 86400.0
    shards = await s.shards("orders")
    assert [sh.shard_id for sh in shards] == [f"shardId-{i:012d}" for i in range(4)]
    assert shards[0].start_hash == 0 and shards[-1].end_hash == MAX_HASH_KEY
    placed = await s.put_records("orders", entries(20), 5.0)
    assert [seq for _, seq in placed] == list(range(20))
    for (key, data, hashed), (shard_id, seq) in zip(entries(20), placed, strict=True):
        shard = next(sh for sh in shards if sh.shard_id == shard_id)
        assert shard.start_hash <= hashed <= shard.end_hash
        [record] = [r for r in await s.read("orders", shard_id, seq - 1, 1)]
        assert (record.seq, record.partition_key, record.data, record.arrival) == (seq, key, data, 5.0)
    assert await s.put_records("orders", [], 5.0) == []
    with pytest.raises(StreamNotFound):
        await s.put_records("nope", entries(1), 5.0)
    with pytest.raises(StreamNotFound):
        await s.split_shard("nope", shards[0], 5)


async def test_sequence_numbers_stay_unique_and_in_order_with_many_writers(hosts: Opener) -> None:
    a, b = await hosts(2)
    assert await a.streams.create_stream("s", 3, 86400.0, 0.0)
    returned: list[list[int]] = []

    async def writer(store: PostgresStore, w: int) -> None:
        mine = []
        for i in range(15):
            placed = await store.streams.put_records("s", entries(4, f"w{w}-{i}-"), float(i))
            mine.extend(seq for _, seq in placed)
        returned.append(mine)

    await asyncio.gather(*(writer(store, w) for w, store in enumerate([a, b] * 4)))
    every = [seq for mine in returned for seq in mine]
    assert len(every) == len(set(every)) == 8 * 15 * 4
    assert all(mine == sorted(mine) for mine in returned)  # each writer sees its own order
    stored = []
    for shard in await a.streams.shards("s"):
        seqs = [r.seq for r in await a.streams.read("s", shard.shard_id, -1, 10_000)]
        assert seqs == sorted(seqs)
        stored.extend(seqs)
    assert sorted(stored) == sorted(every)


async def test_split_and_merge_keep_sequence_ranges_and_parents(hosts: Opener) -> None:
    s = (await one(hosts)).streams
    await s.create_stream("s", 2, 86400.0, 0.0)
    await s.put_records("s", entries(10), 1.0)
    first, second = await s.shards("s")
    children = await s.split_shard("s", first, first.start_hash + (first.end_hash - first.start_hash) // 2)
    assert children == ["shardId-000000000002", "shardId-000000000003"]
    shards = {sh.shard_id: sh for sh in await s.shards("s")}
    assert shards[first.shard_id].end_seq == 9 and not shards[first.shard_id].open
    assert all(shards[c].parent == first.shard_id and shards[c].start_seq == 10 for c in children)
    with pytest.raises(InvalidConfig, match="not all open"):
        await s.split_shard("s", first, first.start_hash + 1)  # closed by the split above
    placed = await s.put_records("s", entries(10, "after"), 2.0)
    assert {shard_id for shard_id, _ in placed} <= {*children, second.shard_id}
    assert min(seq for _, seq in placed) == 10
    merged = await s.merge_shards("s", shards[children[1]], second)
    shards = {sh.shard_id: sh for sh in await s.shards("s")}
    assert shards[merged].parents == (children[1], second.shard_id)
    assert shards[merged].start_hash == shards[children[1]].start_hash
    assert shards[merged].end_hash == MAX_HASH_KEY
    assert shards[merged].start_seq == 20 and shards[second.shard_id].end_seq == 19


async def test_trim_drops_records_past_retention(hosts: Opener) -> None:
    s = (await one(hosts)).streams
    await s.create_stream("s", 1, 10.0, 0.0)
    await s.put_records("s", entries(3), 1.0)
    await s.put_records("s", entries(2), 20.0)
    assert await s.trim("s", 15.0) == 3
    assert [r.arrival for r in await s.read("s", "shardId-000000000000", -1, 100)] == [20.0, 20.0]


async def test_mappings_are_created_once_and_start_where_asked(hosts: Opener) -> None:
    a, b = await hosts(2)
    await a.streams.create_stream("s", 2, 86400.0, 0.0)
    await a.streams.put_records("s", entries(6), 1.0)
    await a.streams.put_records("s", entries(2, "late"), 9.0)
    rows = await asyncio.gather(
        a.streams.create_mapping("uuid-a", "s", "f", {"batch": 1}, "LATEST", None, 1.0),
        b.streams.create_mapping("uuid-b", "s", "f", {"batch": 2}, "LATEST", None, 1.0),
    )
    assert rows[0].uuid == rows[1].uuid  # one of the racing hosts won, the other got its row
    uuid = rows[0].uuid
    found = await a.streams.mapping("s", "f")
    assert found is not None and found.uuid == uuid and found.config in ({"batch": 1}, {"batch": 2})
    latest = await a.streams.checkpoints(uuid)
    for shard in await a.streams.shards("s"):
        records = await a.streams.read("s", shard.shard_id, -1, 100)
        assert latest[shard.shard_id].seq == (records[-1].seq if records else -1)
    at = await a.streams.create_mapping("uuid-t", "s", "g", {}, "AT_TIMESTAMP", 5.0, 1.0)
    before = {sh: cp.seq for sh, cp in (await a.streams.checkpoints(at.uuid)).items()}
    for shard_id, seq in before.items():
        for record in await a.streams.read("s", shard_id, seq, 100):
            assert record.arrival >= 5.0
    horizon = await a.streams.create_mapping("uuid-h", "s", "h", {}, "TRIM_HORIZON", None, 1.0)
    assert await a.streams.checkpoints(horizon.uuid) == {}
    await a.streams.delete_mapping(uuid)
    assert await a.streams.mapping("s", "f") is None and await a.streams.checkpoints(uuid) == {}


async def test_shard_leases_heartbeats_and_checkpoints(hosts: Opener) -> None:
    a, b = await hosts(2)
    s = a.streams
    await s.create_stream("s", 2, 86400.0, 0.0)
    m = (await s.create_mapping("m", "s", "f", {}, "TRIM_HORIZON", None, 0.0)).uuid
    assert await s.acquire_lease(m, "shardId-000000000000", "a", 0.0, 10.0)
    assert await s.acquire_lease(m, "shardId-000000000000", "a", 1.0, 10.0)  # ours already
    assert not await b.streams.acquire_lease(m, "shardId-000000000000", "b", 5.0, 10.0)
    assert await s.heartbeat(m, "a", ["shardId-000000000000", "shardId-000000000001"], 8.0, 10.0) == {
        "shardId-000000000000"
    }
    assert (await s.leases(m))["shardId-000000000000"] == ("a", 18.0)
    assert not await b.streams.acquire_lease(m, "shardId-000000000000", "b", 17.0, 10.0)
    # The checkpoint moves only with the lease, never backwards, with its failure record.
    assert await s.checkpoint(m, "shardId-000000000000", "a", 5)
    assert await s.checkpoint(m, "shardId-000000000000", "a", 3)
    assert await s.checkpoint(
        m, "shardId-000000000000", "a", 7, failure=("sqs:dlq", {"shard": 0, "seq": 7}, 9.0)
    )
    assert not await b.streams.checkpoint(
        m, "shardId-000000000000", "b", 9, failure=("sqs:dlq", {"stale": True}, 9.0)
    )
    assert await s.checkpoints(m) == {"shardId-000000000000": Checkpoint(7, False)}
    assert await s.failure_records(mapping=m) == [{"shard": 0, "seq": 7}]
    assert await s.failure_records(destination="sqs:dlq") == [{"shard": 0, "seq": 7}]
    # Expired: another host takes it over, and the old holder can no longer checkpoint.
    assert await b.streams.acquire_lease(m, "shardId-000000000000", "b", 18.5, 10.0)
    assert not await s.checkpoint(m, "shardId-000000000000", "a", 100)
    assert await s.heartbeat(m, "a", ["shardId-000000000000"], 19.0, 10.0) == set()
    assert await b.streams.checkpoint(m, "shardId-000000000000", "b", 8, finished=True)
    cp = (await s.checkpoints(m))["shardId-000000000000"]
    assert (cp.seq, cp.finished) == (8, True)
    await s.release_lease(m, "shardId-000000000000", "a")  # not ours: nothing happens
    assert (await s.leases(m))["shardId-000000000000"][0] == "b"
    await b.streams.release_lease(m, "shardId-000000000000", "b")
    assert await s.leases(m) == {}
    async with a.pg.durable.acquire() as conn:  # the fencing token counts changes of hands
        await s.acquire_lease(m, "shardId-000000000001", "a", 0.0, 1.0)
        await b.streams.acquire_lease(m, "shardId-000000000001", "b", 2.0, 1.0)
        await s.acquire_lease(m, "shardId-000000000001", "a", 4.0, 1.0)
        assert (
            await conn.fetchval(
                "SELECT token FROM fnrt_stream_leases WHERE shard_id = $1", "shardId-000000000001"
            )
            == 3
        )


async def test_racing_hosts_get_one_lease_per_shard(hosts: Opener) -> None:
    stores = await hosts(4)
    s = stores[0].streams
    await s.create_stream("s", 8, 86400.0, 0.0)
    m = (await s.create_mapping("m", "s", "f", {}, "TRIM_HORIZON", None, 0.0)).uuid
    shard_ids = [sh.shard_id for sh in await s.shards("s")]
    wins = await asyncio.gather(
        *(
            st.streams.acquire_lease(m, sid, f"host-{i}", 0.0, 30.0)
            for i, st in enumerate(stores)
            for sid in shard_ids
        )
    )
    assert sum(wins) == len(shard_ids)
    assert set(await s.leases(m)) == set(shard_ids)


async def test_a_shard_lease_is_judged_by_the_database_clock(hosts: Opener) -> None:
    a, b = await hosts(2, db_clock=True)
    await a.streams.create_stream("s", 1, 86400.0, 0.0)
    m = (await a.streams.create_mapping("m", "s", "f", {}, "TRIM_HORIZON", None, 0.0)).uuid
    assert await a.streams.acquire_lease(m, "shardId-000000000000", "a", 0.0, 3600.0)
    # b's clock is far ahead: by its own clock the lease expired long ago; not by the server's.
    assert not await b.streams.acquire_lease(m, "shardId-000000000000", "b", 1e12, 30.0)
    assert (await a.streams.leases(m))["shardId-000000000000"] == ("a", 3600.0)  # the holder's frame
    # in b's frame, as the server judges: b's now plus the hour the lease has left
    owner, expires = (await b.streams.leases(m, now=1e12))["shardId-000000000000"]
    assert owner == "a" and 1e12 + 3500 < expires <= 1e12 + 3600
    assert await a.streams.heartbeat(m, "a", ["shardId-000000000000"], 0.0, -1.0) == {"shardId-000000000000"}
    assert await b.streams.acquire_lease(m, "shardId-000000000000", "b", 0.0, 30.0)


# -- wake-ups -------------------------------------------------------------------------------


async def test_an_enqueue_or_put_on_one_host_wakes_a_listener_on_another(hosts: Opener) -> None:
    a, b = await hosts(2)
    heard: list[tuple[str, str]] = []
    arrived = asyncio.Event()

    def listener(kind: str, name: str) -> None:
        heard.append((kind, name))
        arrived.set()

    await b.add_wake_listener(listener)
    await a.queue.enqueue("r", "orders-fn", b"{}", 0.0)
    await asyncio.wait_for(arrived.wait(), 10)
    assert heard == [("event", "orders-fn")]
    arrived.clear()
    await a.streams.create_stream("orders", 1, 86400.0, 0.0)
    await a.streams.put_records("orders", entries(3), 1.0)
    await asyncio.wait_for(arrived.wait(), 10)
    assert heard[-1] == ("stream", "orders")
    # A settle that hands an event on (a function destination) and a release wake too.
    arrived.clear()
    [event] = await a.queue.take("orders-fn", 0.0, 1, "a", 30.0)
    await a.queue.settle(event, done(events=[("next", "destination-fn", b"{}")]), 1.0)
    await asyncio.wait_for(arrived.wait(), 10)
    assert heard[-1] == ("event", "destination-fn")
    arrived.clear()
    await a.queue.release(await a.queue.take("destination-fn", 1.0, 1, "a", 30.0))
    await asyncio.wait_for(arrived.wait(), 10)
    assert heard[-1] == ("event", "destination-fn")
    b.remove_wake_listener(listener)
    b.remove_wake_listener(listener)  # twice: harmless


async def test_a_listener_hears_again_after_its_connection_is_killed(hosts: Opener) -> None:
    a, b = await hosts(2)
    heard: list[tuple[str, str]] = []
    arrived = asyncio.Event()

    def listener(kind: str, name: str) -> None:
        heard.append((kind, name))
        arrived.set()

    await b.add_wake_listener(listener)
    assert b.pg._listen_conn is not None
    pid = b.pg._listen_conn.get_server_pid()
    await a.pg.durable.execute("SELECT pg_terminate_backend($1)", pid)
    await asyncio.wait_for(arrived.wait(), 10)
    assert heard == [("*", "")]  # reconnected: look at everything, something may be missed
    arrived.clear()
    await a.queue.enqueue("r", "f", b"{}", 0.0)
    await asyncio.wait_for(arrived.wait(), 10)
    assert heard[-1] == ("event", "f")


# -- the counting service ---------------------------------------------------------------


async def test_slots_follow_lambdas_reserved_and_shared_pools(hosts: Opener) -> None:
    a, b = await hosts(2)
    # limit 10; "r" reserves 4, so unreserved functions share 6.
    assert await a.slots.try_acquire("a", "r", 10, 10, 4, 30.0, now=0.0) == 4
    assert await b.slots.try_acquire("b", "r", 1, 10, 4, 30.0, now=0.0) == 0
    assert await a.slots.try_acquire("a", "u1", 5, 10, None, 30.0, now=0.0) == 5
    assert await b.slots.try_acquire("b", "u2", 5, 10, None, 30.0, now=0.0) == 1
    assert await b.slots.try_acquire("b", "u1", 1, 10, None, 30.0, now=0.0) == 0
    assert await a.slots.in_use(now=1.0) == {"r": {"a": 4}, "u1": {"a": 5}, "u2": {"b": 1}}
    await a.slots.release("a", "u1", 2)
    assert await b.slots.try_acquire("b", "u2", 5, 10, None, 30.0, now=1.0) == 2
    await a.slots.release("a", "r", 99)  # never below zero
    assert await b.slots.try_acquire("b", "r", 9, 10, 4, 30.0, now=1.0) == 4
    await b.slots.forget("r")  # its reservation goes back to the shared pool
    assert await a.slots.try_acquire("a", "u1", 9, 10, None, 30.0, now=1.0) == 0  # r's 4 are shared now
    await b.slots.release("b", "r", 4)
    assert await a.slots.try_acquire("a", "u1", 9, 10, None, 30.0, now=1.0) == 4


async def test_a_dead_hosts_slots_come_back_when_its_lease_expires(hosts: Opener) -> None:
    a, b = await hosts(2)
    assert await a.slots.try_acquire("dead", "f", 5, 5, None, 10.0, now=0.0) == 5
    assert await b.slots.try_acquire("b", "f", 1, 5, None, 10.0, now=5.0) == 0
    assert await b.slots.renew("b", 10.0, now=5.0) == {}
    assert await b.slots.try_acquire("b", "f", 3, 5, None, 10.0, now=10.5) == 3
    # The dead host comes back too late: its expired lease is not revived.
    assert await a.slots.renew("dead", 10.0, now=11.0) == {}
    assert await b.slots.renew("b", 10.0, now=12.0) == {"f": 3}
    assert await a.slots.try_acquire("dead", "f", 5, 5, None, 10.0, now=12.0) == 2


async def test_two_hosts_together_never_exceed_the_limit(hosts: Opener) -> None:
    a, b = await hosts(2, db_clock=True)
    limit = 7
    held = {"a": 0, "b": 0}
    peak = 0
    grants = 0

    async def worker(store: PostgresStore, host: str, rounds: int) -> None:
        nonlocal peak, grants
        for i in range(rounds):
            got = await store.slots.try_acquire(host, "f", 1 + i % 3, limit, None, 60.0)
            held[host] += got
            grants += got
            usage = await store.slots.in_use()
            peak = max(peak, sum(usage.get("f", {}).values()))
            assert sum(held.values()) <= limit
            if got:
                await asyncio.sleep(0)
                held[host] -= got
                await store.slots.release(host, "f", got)

    await asyncio.gather(*(worker(s, h, 25) for s, h in [(a, "a"), (b, "b")] for _ in range(4)))
    assert 0 < peak <= limit and grants > limit
    assert await a.slots.in_use() == {}


# -- an unreachable server ----------------------------------------------------------------


class Proxy:
    """A loopback TCP proxy to the server's unix socket that the test can cut and restore.

    A cut aborts every link, including one accepted while its upstream was still being
    opened, and waits a bounded time for the server to close (Python 3.12+'s
    ``Server.wait_closed`` waits for every connection, so one stray link would hang it).
    """

    def __init__(self, socket_dir: str) -> None:
        self.socket_path = str(Path(socket_dir) / ".s.PGSQL.5432")
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = self.server
        if server is None:  # accepted just before a cut
            writer.transport.abort()
            return
        self.links.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            writer.transport.abort()
            return
        if writer not in self.links or self.server is not server:  # cut while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.links.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        if hasattr(server, "abort_clients"):  # Python 3.13+
            server.abort_clients()
        for link in self.links:
            link.transport.abort()
        self.links.clear()
        await asyncio.wait_for(server.wait_closed(), 10)


async def test_every_method_is_store_unavailable_while_the_server_is_unreachable(
    hosts: Opener, postgres_url: str
) -> None:
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(postgres_url)
    query = parse_qs(parts.query)
    if "host" not in query:
        pytest.skip("needs the session's own unix-socket server")
    proxy = Proxy(query["host"][0])
    await proxy.start()
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}{parts.path}?fnrt_schema={query['fnrt_schema'][0]}"
    store = await one(hosts, url=url)
    await store.streams.create_stream("s", 1, 86400.0, 0.0)
    await store.streams.put_records("s", entries(1), 0.0)
    await store.queue.enqueue("r", "f", b"{}", 0.0)
    await proxy.cut()
    event = QueuedEvent(1, "r", "f", b"{}", 0.0, 0, 0, 0, 1)
    shard = (await one(hosts)).streams  # a healthy store, to build arguments
    [first_shard] = await shard.shards("s")
    q, st, sl = store.queue, store.streams, store.slots
    calls = [
        q.enqueue("r2", "f", b"{}", 0.0),
        q.take("f", 0.0, 1, "a", 30.0),
        q.next_due(["f"]),
        q.settle(event, done(), 1.0),
        q.release([event]),
        q.event("r"),
        q.counts(),
        q.purge_finished(1.0),
        q.append_sink("sink", "{}", 0.0),
        q.sink_records("sink"),
        st.create_stream("t", 1, 1.0, 0.0),
        st.stream_exists("s"),
        st.stream_retention("s"),
        st.shards("s"),
        st.put_records("s", entries(1), 0.0),
        st.read("s", first_shard.shard_id, -1, 10),
        st.split_shard("s", first_shard, 2**127),
        st.merge_shards("s", first_shard, first_shard),
        st.trim("s", 1.0),
        st.mapping("s", "f"),
        st.create_mapping("m", "s", "f", {}, "LATEST", None, 0.0),
        st.delete_mapping("m"),
        st.checkpoints("m"),
        st.acquire_lease("m", first_shard.shard_id, "a", 0.0, 30.0),
        st.heartbeat("m", "a", [first_shard.shard_id], 0.0, 30.0),
        st.release_lease("m", first_shard.shard_id, "a"),
        st.leases("m"),
        st.checkpoint("m", first_shard.shard_id, "a", 1),
        st.failure_records(mapping="m"),
        q.events("f"),
        st.trim_expired(1.0),
        st.mappings(),
        st.steal_lease("m", first_shard.shard_id, "b", "a", 0.0, 30.0),
        st.register_host("h", {}, 0.0, 15.0),
        st.unregister_host("h"),
        st.live_hosts(0.0),
        sl.try_acquire("a", "f", 1, 10, None, 30.0),
        sl.release("a", "f", 1),
        sl.renew("a", 30.0),
        sl.forget("f"),
        sl.in_use(),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as caught:
            await call
        assert caught.value.path.startswith("postgresql://postgres@127.0.0.1")
    with pytest.raises(StoreUnavailable):
        await store.add_wake_listener(lambda kind, name: None)
    await proxy.start()  # back: the store recovers by itself
    assert (await store.queue.counts())["queued"] == 1
    for _ in range(3):  # connections broken while it was down are replaced as they fail
        with contextlib.suppress(StoreUnavailable):
            await store.queue.enqueue("r3", "f", b"{}", 0.0)
            break
    assert (await store.queue.counts())["queued"] >= 2
    await proxy.cut()


async def test_a_database_from_before_the_stream_mode_gets_its_columns_and_keeps_its_streams(
    hosts: Opener, postgres_url: str
) -> None:
    store = await one(hosts)
    assert await store.streams.create_stream("old", 1, 86_400.0, 0.0)
    # as an fnrt of the same schema version before the columns left it
    await store.pg.durable.execute("ALTER TABLE fnrt_streams DROP COLUMN mode, DROP COLUMN tags")
    [again] = await hosts(1)
    old = await again.streams.stream_info("old")
    assert old is not None and (old["mode"], old["tags"]) == ("PROVISIONED", {})
    assert await again.streams.create_stream("new", 1, 86_400.0, 0.0, mode="ON_DEMAND")
    assert await again.streams.update_stream("old", tags={"team": "a"})
    new, old = await again.streams.stream_info("new"), await again.streams.stream_info("old")
    assert new is not None and new["mode"] == "ON_DEMAND"
    assert old is not None and old["tags"] == {"team": "a"}
    # an older fnrt's own insert (naming the columns it knows) still works
    await again.pg.durable.execute(
        "INSERT INTO fnrt_streams (name, next_seq, next_shard, retention, created_at) "
        "VALUES ('older', 0, 1, 1, 1)"
    )
    older = await again.streams.stream_info("older")
    assert older is not None and older["mode"] == "PROVISIONED"
