"""The store contract, against every backend, through the protocols only (no SQL here).

Each test opens stores on one shared location (``store_factory``): where a test opens
two, they are two connections on the same data, as two hosts sharing it would be. Times
are arguments (the runtime's clock), so leases expire by passing a later ``now``, never by
sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fnrt.errors import InvalidConfig, StoreUnavailable, StreamNotFound
from fnrt.store import Outcome, QueuedEvent, QueueStore, Store, StreamStore
from fnrt.store._types import MAX_HASH_KEY, hash_key
from fnrt.testing import wait_until

from .store_backends import BACKENDS, Stores, location, server_for

pytest_plugins = ["tests.pg"]

T0 = 1_700_000_000.0
LEASE = 30.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    return request.param, server_for(request.param, request)


@pytest.fixture
async def store_factory(backend: tuple[str, str | None], tmp_path: Path) -> AsyncIterator[Stores]:
    async with location(backend[0], tmp_path, backend[1]) as stores:
        yield stores


@pytest.fixture
async def store(store_factory: Stores) -> Store:
    return await store_factory.open()


@pytest.fixture
async def queue(store: Store) -> QueueStore:
    await store.queue.setup()
    return store.queue


@pytest.fixture
async def streams(store: Store) -> StreamStore:
    return store.streams


_ids = itertools.count()


def rid(prefix: str = "r") -> str:
    return f"{prefix}-{next(_ids)}"


async def enqueue(queue: QueueStore, function: str = "f", n: int = 1, now: float = T0) -> list[str]:
    """``n`` events, one after the other (so their order is defined)."""
    ids = [rid() for _ in range(n)]
    for i in ids:
        await queue.enqueue(i, function, json.dumps({"i": i}).encode(), now)
    return ids


def done(event: QueuedEvent, **kw: object) -> Outcome:
    return Outcome(state="done", invokes=event.invokes + 1, status=200, condition="Success", **kw)  # type: ignore[arg-type]


# -- the protocols ---------------------------------------------------------------------


async def test_the_store_implements_the_protocols(store: Store) -> None:
    assert isinstance(store, Store)
    assert isinstance(store.queue, QueueStore)
    assert isinstance(store.streams, StreamStore)
    stats = store.stats()
    assert {"backend", "location", "commits"} <= set(stats)
    assert store.location


async def test_a_closed_store_raises_store_unavailable(store_factory: Stores) -> None:
    store = await store_factory.open()
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.queue.enqueue("x", "f", b"{}", T0)
    with pytest.raises(StoreUnavailable):
        await store.streams.stream_exists("s")


# -- queue: the state machine -------------------------------------------------------


async def test_enqueue_take_settle_done(queue: QueueStore) -> None:
    (request_id,) = await enqueue(queue)
    assert (await queue.event(request_id))["state"] == "queued"  # type: ignore[index]
    assert await queue.counts() == {"queued": 1}

    taken = await queue.take("f", T0, 10, "host-a", T0 + LEASE)
    assert [e.request_id for e in taken] == [request_id]
    event = taken[0]
    assert event.function == "f" and json.loads(event.payload) == {"i": request_id}
    assert event.attempts == 0 and event.invokes == 0 and event.lease >= 1
    assert await queue.take("f", T0, 10, "host-b", T0 + LEASE) == []  # leased: nobody else gets it
    info = await queue.event(request_id)
    assert info is not None and info["state"] == "leased" and info["leases"] == 1

    await queue.settle(event, done(event), T0 + 1)
    info = await queue.event(request_id)
    assert info is not None
    assert info["state"] == "done" and info["condition"] == "Success" and info["invokes"] == 1
    assert await queue.counts("f") == {"done": 1}
    assert await queue.take("f", T0 + 100, 10, "host-a", T0 + 200) == []


async def test_counts_of_some_states_only(queue: QueueStore) -> None:
    """The queue's depth (queued, leased) is counted without the finished events, which
    are every event of the retention period."""
    (finished,) = await enqueue(queue, "f", 1)
    [event] = await queue.take("f", T0, 10, "a", T0 + LEASE)
    await queue.settle(event, done(event), T0 + 1)
    await enqueue(queue, "f", 3)
    await queue.take("f", T0, 1, "a", T0 + LEASE)
    await enqueue(queue, "g", 1)
    live = ("queued", "leased")
    assert await queue.counts("f") == {"queued": 2, "leased": 1, "done": 1}
    assert await queue.counts("f", states=live) == {"queued": 2, "leased": 1}
    assert await queue.counts("f", states=("done", "failed")) == {"done": 1}
    assert await queue.counts(states=live) == {"queued": 3, "leased": 1}
    assert await queue.counts("f", states=()) == {}


async def test_take_is_oldest_first_limited_and_per_function(queue: QueueStore) -> None:
    first = await enqueue(queue, "f", 3, now=T0)
    later = await enqueue(queue, "f", 2, now=T0 + 5)
    other = await enqueue(queue, "g", 1, now=T0)
    assert await queue.take("f", T0 - 1, 10, "a", T0 + LEASE) == []  # nothing due yet
    two = await queue.take("f", T0 + 10, 2, "a", T0 + LEASE)
    assert [e.request_id for e in two] == first[:2]
    assert [e.id for e in two] == sorted(e.id for e in two)
    rest = await queue.take("f", T0 + 10, 10, "a", T0 + LEASE)
    assert [e.request_id for e in rest] == [first[2], *later]
    assert await queue.take("f", T0 + 10, 0, "a", T0 + LEASE) == []
    assert [e.request_id for e in await queue.take("g", T0, 10, "a", T0 + LEASE)] == other
    assert await queue.counts() == {"leased": 6}
    assert await queue.counts("g") == {"leased": 1}


async def test_a_retry_waits_for_its_run_at(queue: QueueStore) -> None:
    (request_id,) = await enqueue(queue)
    (event,) = await queue.take("f", T0, 1, "a", T0 + LEASE)
    await queue.settle(
        event,
        Outcome(
            state="queued", run_at=T0 + 60, attempts=1, invokes=1, status=200, function_error="Unhandled"
        ),
        T0 + 1,
    )
    info = await queue.event(request_id)
    assert info is not None and info["state"] == "queued" and info["run_at"] == T0 + 60
    assert info["attempts"] == 1 and info["last_error"] == "Unhandled"
    assert await queue.next_due(["f"]) == T0 + 60
    assert await queue.take("f", T0 + 59, 1, "a", T0 + LEASE) == []
    (again,) = await queue.take("f", T0 + 60, 1, "b", T0 + 60 + LEASE)
    assert again.request_id == request_id and again.attempts == 1 and again.invokes == 1
    assert again.lease > event.lease and again.last_error == "Unhandled"


async def test_next_due_sees_queued_and_leased_events(queue: QueueStore) -> None:
    assert await queue.next_due(["f"]) is None
    assert await queue.next_due([]) is None
    await enqueue(queue, "f", 1, now=T0 + 7)
    await enqueue(queue, "g", 1, now=T0 + 3)
    assert await queue.next_due(["f"]) == T0 + 7
    assert await queue.next_due(["f", "g"]) == T0 + 3
    (event,) = await queue.take("f", T0 + 8, 1, "a", T0 + 20)
    assert await queue.next_due(["f"]) == T0 + 20  # the lease's expiry
    await queue.settle(event, done(event), T0 + 9)
    assert await queue.next_due(["f"]) is None


async def test_failed_settle_writes_its_destinations_atomically(queue: QueueStore) -> None:
    (request_id,) = await enqueue(queue)
    (event,) = await queue.take("f", T0, 1, "a", T0 + LEASE)
    record = json.dumps({"requestContext": {"requestId": request_id, "condition": "RetriesExhausted"}})
    await queue.settle(
        event,
        Outcome(
            state="failed",
            attempts=3,
            invokes=3,
            condition="RetriesExhausted",
            record=record,
            sink_records=[("dlq", record), ("audit", json.dumps({"n": 1}))],
            events=[("dest-1", "on-failure", record.encode())],
        ),
        T0 + 1,
    )
    info = await queue.event(request_id)
    assert info is not None and info["state"] == "failed" and info["condition"] == "RetriesExhausted"
    assert info["record"] == json.loads(record)
    assert await queue.sink_records("dlq") == [json.loads(record)]
    assert await queue.sink_records("audit") == [{"n": 1}]
    dest = await queue.event("dest-1")
    assert dest is not None and dest["function"] == "on-failure" and dest["state"] == "queued"


async def test_sink_records_keep_their_order(queue: QueueStore) -> None:
    await asyncio.gather(*[queue.append_sink("s", json.dumps(n), T0) for n in range(5)])
    for n in range(5, 10):
        await queue.append_sink("s", json.dumps(n), T0)
    assert sorted(await queue.sink_records("s")) == list(range(10))
    assert (await queue.sink_records("s"))[5:] == list(range(5, 10))
    assert await queue.sink_records("nothing") == []


async def test_the_newest_sink_records_and_the_count_are_read_alone(queue: QueueStore) -> None:
    """A sink can hold many large records: the console reads the count and the newest few
    each second, never the whole sink."""
    for n in range(10):
        await queue.append_sink("s", json.dumps(n), T0)
    await queue.append_sink("other", json.dumps("x"), T0)
    assert await queue.sink_records("s", newest=3) == [7, 8, 9]  # still oldest first
    assert await queue.sink_records("s", newest=50) == list(range(10))
    assert await queue.sink_records("s", newest=0) == []
    assert (await queue.sink_count("s"), await queue.sink_count("other"), await queue.sink_count("none")) == (
        10,
        1,
        0,
    )


async def test_release_makes_events_due_at_once(queue: QueueStore) -> None:
    ids = await enqueue(queue, n=3)
    taken = await queue.take("f", T0, 3, "a", T0 + LEASE)
    await queue.release(taken[:2])
    assert await queue.counts() == {"queued": 2, "leased": 1}
    again = await queue.take("f", T0 + 1, 10, "b", T0 + LEASE)
    assert sorted(e.request_id for e in again) == sorted(ids[:2])
    await queue.release(taken[:2])  # stale: the events were taken again since
    assert await queue.counts() == {"leased": 3}


# -- queue: leases, fencing and takeover --------------------------------------------


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(queue: QueueStore) -> None:
    (request_id,) = await enqueue(queue)
    (old,) = await queue.take("f", T0, 1, "host-a", T0 + 10)
    assert await queue.take("f", T0 + 9, 1, "host-b", T0 + 9 + LEASE) == []  # still alive
    (new,) = await queue.take("f", T0 + 10, 1, "host-b", T0 + 10 + LEASE)  # expired: taken over
    assert new.request_id == request_id and new.lease > old.lease

    # host-a comes back and settles with its stale lease: nothing at all is written
    await queue.settle(
        old,
        done(old, sink_records=[("dlq", json.dumps({"stale": True}))], events=[("stale-1", "g", b"{}")]),
        T0 + 11,
    )
    info = await queue.event(request_id)
    assert info is not None and info["state"] == "leased" and info["leases"] == 2
    assert await queue.sink_records("dlq") == []
    assert await queue.event("stale-1") is None
    await queue.release([old])
    assert (await queue.event(request_id))["state"] == "leased"  # type: ignore[index]

    await queue.settle(new, done(new, sink_records=[("dlq", json.dumps({"fresh": True}))]), T0 + 12)
    info = await queue.event(request_id)
    assert info is not None and info["state"] == "done"
    assert await queue.sink_records("dlq") == [{"fresh": True}]
    await queue.settle(new, Outcome(state="queued", run_at=T0), T0 + 13)  # settled already: no-op
    assert (await queue.event(request_id))["state"] == "done"  # type: ignore[index]


async def test_fenced_and_current_settles_in_one_group_commit(queue: QueueStore) -> None:
    ids = await enqueue(queue, n=4)
    stale = await queue.take("f", T0, 4, "a", T0 + 1)
    fresh = await queue.take("f", T0 + 2, 2, "b", T0 + LEASE)  # takes over the first two
    current = fresh + stale[2:]
    outcomes = [
        (e, done(e, sink_records=[("s", json.dumps(e.request_id))], events=[(f"d-{e.request_id}", "g", b"")]))
        for e in stale[:2] + current
    ]
    await asyncio.gather(*[queue.settle(e, o, T0 + 3) for e, o in outcomes])  # interleaved
    assert sorted(await queue.sink_records("s")) == sorted(ids)  # once each, from the current holders
    assert None not in [await queue.event(f"d-{i}") for i in ids]
    assert len(await queue.events("g")) == 4
    assert await queue.counts("f") == {"done": 4}


async def test_an_event_handed_off_is_stored_leased_and_fenced_like_a_taken_one(queue: QueueStore) -> None:
    started: list[QueuedEvent | None] = []
    payloads = [json.dumps({"n": n}).encode() for n in range(5)]
    handoffs = [
        queue.enqueue_leased(f"h-{n}", "f", p, T0, "host-a", T0 + 10, started.append)
        for n, p in enumerate(payloads)
    ]
    await asyncio.gather(*handoffs)
    # Called once each with the stored event, before its caller resumed.
    assert len(started) == 5 and None not in started
    handed = {e.request_id: e for e in started if e is not None}
    assert sorted(handed) == [f"h-{n}" for n in range(5)]
    assert len({e.id for e in handed.values()}) == 5
    first = handed["h-0"]
    assert json.loads(first.payload) == {"n": 0} and first.enqueued_at == T0
    assert (first.attempts, first.invokes, first.system_retries) == (0, 0, 0)
    info = await queue.event("h-0")
    assert info is not None and info["state"] == "leased" and info["leases"] == first.lease == 1
    assert await queue.take("f", T0 + 9, 10, "host-b", T0 + 9 + LEASE) == []  # held
    assert await queue.next_due(["f"]) == T0 + 10

    # Its holder settles it with the handed event, as with a taken one.
    await queue.settle(first, done(first), T0 + 1)
    assert (await queue.event("h-0"))["state"] == "done"  # type: ignore[index]

    # Its holder died: the lease expires and another host takes it over; the old holder
    # is fenced.
    stale = handed["h-1"]
    over = await queue.take("f", T0 + 10, 10, "host-b", T0 + 10 + LEASE)
    assert sorted(e.request_id for e in over) == ["h-1", "h-2", "h-3", "h-4"]
    assert all(e.lease == 2 for e in over)
    await queue.settle(stale, done(stale, sink_records=[("s", json.dumps("stale"))]), T0 + 11)
    assert (await queue.event("h-1"))["state"] == "leased"  # type: ignore[index]
    assert await queue.sink_records("s") == []


async def test_a_handoff_into_a_closed_store_raises_at_once_and_calls_nothing(store_factory: Stores) -> None:
    store = await store_factory.open()
    await store.close()
    started: list[QueuedEvent | None] = []
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.queue.enqueue_leased("x", "f", b"{}", T0, "a", T0 + 10, started.append)
    assert started == []


async def test_a_handoff_whose_caller_stopped_waiting_is_still_stored_and_started(queue: QueueStore) -> None:
    started: list[QueuedEvent | None] = []
    waiter = asyncio.ensure_future(queue.enqueue_leased("gone", "f", b"{}", T0, "a", T0 + 10, started.append))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await wait_until(lambda: started, "the commit ends on its own, caller or no caller")
    assert [e.request_id for e in started if e is not None] == ["gone"]
    assert (await queue.event("gone"))["state"] == "leased"  # type: ignore[index]


async def test_two_stores_taking_at_once_never_lease_an_event_twice(store_factory: Stores) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    total = 240
    await asyncio.gather(*[(one, two)[n % 2].queue.enqueue(f"e-{n}", "f", b"{}", T0) for n in range(total)])
    got: dict[str, list[QueuedEvent]] = {"one": [], "two": []}

    async def taker(name: str, store: Store, owner: str, now: float) -> None:
        while True:
            batch = await store.queue.take("f", now, 7, owner, now + 5)
            if not batch:
                return
            got[name].extend(batch)

    async def race(now: float) -> None:
        got["one"].clear()
        got["two"].clear()
        await asyncio.gather(
            *[taker("one", one, f"one-{k}", now) for k in range(3)],
            *[taker("two", two, f"two-{k}", now) for k in range(3)],
        )
        first = {e.request_id for e in got["one"]}
        second = {e.request_id for e in got["two"]}
        assert len(first) == len(got["one"]) and len(second) == len(got["two"])  # no repeats
        assert not first & second  # never leased to both
        assert first | second == {f"e-{n}" for n in range(total)}

    await race(T0)
    await race(T0 + 10)  # every lease expired: taken over, again exactly once each
    events = await one.queue.events("f")
    assert len(events) == total and all(e["leases"] == 2 and e["state"] == "leased" for e in events)


async def test_concurrent_enqueues_from_two_stores_are_all_kept(store_factory: Stores) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await asyncio.gather(
        *[(one if n % 2 else two).queue.enqueue(f"c-{n}", "f", b"{}", T0) for n in range(300)]
    )
    assert await one.queue.counts() == {"queued": 300}
    assert await two.queue.counts("f") == {"queued": 300}
    info = await two.queue.event("c-7")
    assert info is not None and info["function"] == "f"


async def test_events_and_lookup_by_request_id(queue: QueueStore) -> None:
    await queue.enqueue("same", "f", b"1", T0)
    await queue.enqueue("other", "g", b"2", T0)
    await queue.enqueue("same", "f", b"3", T0 + 1)  # a request id seen twice: the latest wins
    (first, _) = await queue.take("f", T0 + 1, 2, "a", T0 + LEASE)
    await queue.settle(first, done(first), T0 + 2)
    latest = await queue.event("same")
    assert latest is not None and latest["state"] == "leased" and latest["enqueued_at"] == T0 + 1
    assert await queue.event("missing") is None
    assert [e["state"] for e in await queue.events("f")] == ["done", "leased"]
    assert [e["request_id"] for e in await queue.events(state="queued")] == ["other"]
    assert len(await queue.events()) == 3
    assert len(await queue.events(limit=1)) == 1


# -- queue: retention -----------------------------------------------------------------


async def test_purge_finished_deletes_only_old_finished_events(queue: QueueStore) -> None:
    ids = await enqueue(queue, n=6)
    taken = {e.request_id: e for e in await queue.take("f", T0, 6, "a", T0 + LEASE)}
    await queue.settle(taken[ids[0]], done(taken[ids[0]]), T0 + 10)
    await queue.settle(taken[ids[1]], Outcome(state="failed", condition="RetriesExhausted"), T0 + 20)
    await queue.settle(taken[ids[2]], done(taken[ids[2]]), T0 + 100)
    await queue.settle(taken[ids[3]], Outcome(state="queued", run_at=T0), T0 + 5)  # a retry: kept
    await queue.release([taken[ids[4]]])  # queued again
    # ids[5] stays leased
    assert await queue.purge_finished(T0 + 50, limit=1) == 1  # oldest finished first
    assert await queue.event(ids[0]) is None
    assert await queue.purge_finished(T0 + 50) == 1
    assert await queue.event(ids[1]) is None
    assert await queue.purge_finished(T0 + 50) == 0
    assert (await queue.event(ids[2]))["state"] == "done"  # type: ignore[index]
    assert await queue.counts() == {"done": 1, "queued": 2, "leased": 1}
    assert await queue.purge_finished(T0 + 10_000) == 1
    assert await queue.counts() == {"queued": 2, "leased": 1}


async def test_discard_fails_a_functions_queued_events_only(queue: QueueStore) -> None:
    ids = await enqueue(queue, n=3)
    other = await enqueue(queue, "g")
    running = (await queue.take("f", T0, 1, "a", T0 + LEASE))[0]  # an attempt holds it
    retry = (await queue.take("f", T0, 1, "a", T0 + LEASE))[0]
    await queue.settle(retry, Outcome(state="queued", run_at=T0 + 3600), T0 + 1)  # due later
    discarded = await queue.discard("f", "FunctionDeleted", T0 + 2)
    assert sorted(discarded) == sorted([ids[1], ids[2]])
    assert running.request_id == ids[0]
    for request_id in discarded:
        event = await queue.event(request_id)
        assert event is not None and event["state"] == "failed" and event["condition"] == "FunctionDeleted"
    assert await queue.counts("f") == {"failed": 2, "leased": 1}
    assert await queue.counts("g") == {"queued": 1}
    assert [e.request_id for e in await queue.take("g", T0, 5, "a", T0 + LEASE)] == other
    assert await queue.discard("f", "FunctionDeleted", T0 + 3) == []
    assert await queue.purge_finished(T0 + 10) == 2  # finished when discarded: collected in time


# -- streams: streams, shards, records ------------------------------------------------


async def test_create_stream_once_with_shards_covering_the_key_space(streams: StreamStore) -> None:
    assert await streams.create_stream("s", 3, 86_400.0, T0) is True
    assert await streams.create_stream("s", 5, 10.0, T0) is False
    assert await streams.stream_exists("s") and not await streams.stream_exists("t")
    assert await streams.stream_retention("s") == 86_400.0
    assert await streams.stream_retention("t") == 0.0
    shards = await streams.shards("s")
    assert len(shards) == 3 and all(s.open for s in shards)
    assert shards[0].start_hash == 0 and shards[-1].end_hash == MAX_HASH_KEY
    for left, right in itertools.pairwise(shards):
        assert left.end_hash + 1 == right.start_hash
    assert await streams.shards("t") == []


async def test_a_streams_mode_retention_and_tags_are_kept_and_updated(streams: StreamStore) -> None:
    assert await streams.create_stream("auto", 4, 86_400.0, T0, mode="ON_DEMAND")
    assert await streams.create_stream("set", 1, 86_400.0, T0)
    auto, plain = await streams.stream_info("auto"), await streams.stream_info("set")
    assert auto is not None and (auto["mode"], auto["tags"]) == ("ON_DEMAND", {})
    assert plain is not None and plain["mode"] == "PROVISIONED"
    assert await streams.update_stream("auto", mode="PROVISIONED", retention=7_200.0, tags={"k": "v"})
    auto = await streams.stream_info("auto")
    assert auto is not None
    assert (auto["mode"], auto["retention"], auto["tags"]) == ("PROVISIONED", 7_200.0, {"k": "v"})
    assert await streams.stream_retention("auto") == 7_200.0
    assert await streams.update_stream("auto", tags={})  # what is not given stays
    auto = await streams.stream_info("auto")
    assert auto is not None
    assert (auto["mode"], auto["retention"], auto["tags"]) == ("PROVISIONED", 7_200.0, {})
    assert await streams.update_stream("ghost", mode="ON_DEMAND") is False
    assert await streams.stream_names() == ["auto", "set"]


async def test_put_records_places_by_hash_key_with_increasing_numbers(streams: StreamStore) -> None:
    await streams.create_stream("s", 2, 86_400.0, T0)
    keys = [f"k{n}" for n in range(40)]
    placed = await streams.put_records("s", [(k, "ZGF0YQ==", hash_key(k)) for k in keys], T0)
    shards = {s.shard_id: s for s in await streams.shards("s")}
    seqs = [seq for _, seq in placed]
    assert seqs == sorted(set(seqs))
    for key, (shard_id, _) in zip(keys, placed, strict=True):
        assert shards[shard_id].start_hash <= hash_key(key) <= shards[shard_id].end_hash
    for shard_id in shards:
        mine = [seq for sid, seq in placed if sid == shard_id]
        records = await streams.read("s", shard_id, -1, 100)
        assert [r.seq for r in records] == mine
        assert all(r.data == "ZGF0YQ==" and r.arrival == T0 for r in records)
        if mine:
            assert [r.seq for r in await streams.read("s", shard_id, mine[0], 2)] == mine[1:3]
    more = await streams.put_records("s", [("k0", "eA==", hash_key("k0"))], T0 + 1)
    assert more[0][1] > max(seqs)
    with pytest.raises(StreamNotFound):
        await streams.put_records("nope", [("k", "eA==", 1)], T0)


async def test_two_writers_get_unique_increasing_sequence_numbers(store_factory: Stores) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await one.streams.create_stream("s", 2, 86_400.0, T0)

    async def writer(store: Store, name: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for n in range(20):
            keys = [f"{name}-{n}-{k}" for k in range(5)]
            out += await store.streams.put_records("s", [(k, "eA==", hash_key(k)) for k in keys], T0 + n)
        return out

    placed = await asyncio.gather(*[writer(s, name) for s, name in ((one, "a"), (two, "b"), (one, "c"))])
    everything = [p for part in placed for p in part]
    assert len({seq for _, seq in everything}) == len(everything) == 300  # unique
    for part in placed:  # each writer's own puts come back in increasing order
        assert [seq for _, seq in part] == sorted(seq for _, seq in part)
    for shard in await two.streams.shards("s"):
        records = await two.streams.read("s", shard.shard_id, -1, 1000)
        assert [r.seq for r in records] == sorted({seq for sid, seq in everything if sid == shard.shard_id})


async def test_read_stops_at_max_bytes(streams: StreamStore) -> None:
    await streams.create_stream("s", 1, 86_400.0, T0)
    # data of 8, 4 and 12 base64 characters, keys of 2, 1 (one character, not one byte) and 2
    entries = [("k0", "eHh4eA==", 1), ("é", "eA==", 1), ("k2", "eHh4eHh4eA==", 1)]
    placed = await streams.put_records("s", entries, T0)
    shard, seqs = placed[0][0], [seq for _, seq in placed]

    async def read(max_bytes: int | None, limit: int = 10) -> list[int]:
        return [r.seq for r in await streams.read("s", shard, -1, limit, max_bytes=max_bytes)]

    assert await read(None) == seqs
    assert await read(1) == seqs[:1]  # at least one record, however big
    assert await read(10) == seqs[:1]  # the first reaches it: 8 + 2
    assert await read(11) == seqs[:2]  # 10 + 5 passes it
    assert await read(15) == seqs[:2]
    assert await read(16) == seqs
    assert await read(1000, limit=2) == seqs[:2]  # and never past the limit
    assert [r.seq for r in await streams.read("s", shard, seqs[0], 10, max_bytes=5)] == seqs[1:2]


async def test_split_and_merge(streams: StreamStore) -> None:
    await streams.create_stream("s", 2, 86_400.0, T0)
    before = await streams.put_records("s", [("a", "eA==", 5), ("b", "eA==", MAX_HASH_KEY)], T0)
    parent, right = await streams.shards("s")
    middle = (parent.start_hash + parent.end_hash) // 2
    children = await streams.split_shard("s", parent, middle)
    assert len(children) == 2
    shards = {s.shard_id: s for s in await streams.shards("s")}
    assert not shards[parent.shard_id].open
    closed_at = shards[parent.shard_id].end_seq
    assert closed_at is not None and closed_at >= max(seq for _, seq in before)
    low, high = (shards[c] for c in children)
    assert (low.start_hash, low.end_hash) == (parent.start_hash, middle - 1)
    assert (high.start_hash, high.end_hash) == (middle, parent.end_hash)
    assert low.parents == (parent.shard_id,) and low.start_seq > closed_at
    (placed,) = await streams.put_records("s", [("c", "eA==", 5)], T0)
    assert placed[0] == low.shard_id and placed[1] > closed_at
    with pytest.raises(InvalidConfig, match="closed"):
        await streams.split_shard("s", parent, middle)
    merged = await streams.merge_shards("s", high, right)
    shards = {s.shard_id: s for s in await streams.shards("s")}
    child = shards[merged]
    assert child.parents == (high.shard_id, right.shard_id)
    assert (child.start_hash, child.end_hash) == (middle, MAX_HASH_KEY)
    assert not shards[high.shard_id].open and not shards[right.shard_id].open
    assert len(shards) == 5  # two, two children, one merged
    with pytest.raises(InvalidConfig, match="closed"):
        await streams.merge_shards("s", high, right)


async def test_two_stores_splitting_one_shard_at_once_split_it_once(store_factory: Stores) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await one.streams.create_stream("s", 1, 86_400.0, T0)
    (shard,) = await one.streams.shards("s")
    results = await asyncio.gather(
        one.streams.split_shard("s", shard, 2**127),
        two.streams.split_shard("s", shard, 2**100),
        return_exceptions=True,
    )
    assert sum(isinstance(r, list) for r in results) == 1
    assert sum(isinstance(r, InvalidConfig) for r in results) == 1
    assert len(await two.streams.shards("s")) == 3


async def test_trim_drops_records_past_retention(streams: StreamStore) -> None:
    await streams.create_stream("s", 2, 100.0, T0)
    await streams.create_stream("t", 1, 1000.0, T0)
    for n in range(10):
        await streams.put_records("s", [(f"k{n}", "eA==", (n % 2) * MAX_HASH_KEY)], T0 + n * 10)
        await streams.put_records("t", [(f"k{n}", "eA==", 1)], T0 + n * 10)
    assert await streams.trim("s", T0 + 30, limit=1) == 2  # one per shard, oldest first
    assert await streams.trim("s", T0 + 30) == 1
    left = [r for s in await streams.shards("s") for r in await streams.read("s", s.shard_id, -1, 100)]
    assert sorted(r.arrival for r in left) == [T0 + n * 10 for n in range(3, 10)]
    assert await streams.trim("s", T0 + 30) == 0
    # by each stream's own retention: s keeps 100 s, t keeps 1000 s
    assert await streams.trim_expired(T0 + 165) == 4
    left = [r for s in await streams.shards("s") for r in await streams.read("s", s.shard_id, -1, 100)]
    assert sorted(r.arrival for r in left) == [T0 + n * 10 for n in range(7, 10)]
    assert len(await streams.read("t", (await streams.shards("t"))[0].shard_id, -1, 100)) == 10


# -- streams: mappings, leases, checkpoints -------------------------------------------


async def test_create_mapping_positions_and_resumes(streams: StreamStore) -> None:
    await streams.create_stream("s", 1, 86_400.0, T0)
    (shard,) = await streams.shards("s")
    placed = await streams.put_records("s", [(f"k{n}", "eA==", 1) for n in range(3)], T0)
    ((_, late),) = await streams.put_records("s", [("late", "eA==", 1)], T0 + 50)
    trim = await streams.create_mapping("m-trim", "s", "f", {"batch_size": 10}, "TRIM_HORIZON", None, T0)
    assert trim.uuid == "m-trim" and trim.config == {"batch_size": 10}
    assert await streams.checkpoints("m-trim") == {}
    await streams.create_mapping("m-latest", "s", "g", {}, "LATEST", None, T0)
    latest = (await streams.checkpoints("m-latest"))[shard.shard_id]
    assert latest.seq == late and not latest.finished
    await streams.create_mapping("m-ts", "s", "h", {}, "AT_TIMESTAMP", T0 + 10, T0)
    assert (await streams.checkpoints("m-ts"))[shard.shard_id].seq == placed[-1][1]

    again = await streams.create_mapping("m-new", "s", "f", {"batch_size": 5}, "LATEST", None, T0)
    assert again.uuid == "m-trim" and again.config == {"batch_size": 5}  # the one that exists
    row = await streams.mapping("s", "f")
    assert row is not None and row.uuid == "m-trim" and row.config == {"batch_size": 5}
    assert [(m.uuid, m.function) for m in await streams.mappings()] == [
        ("m-trim", "f"),
        ("m-latest", "g"),
        ("m-ts", "h"),
    ]
    assert await streams.checkpoints("m-trim") == {}

    assert await streams.acquire_lease("m-latest", shard.shard_id, "a", T0, LEASE)
    await streams.delete_mapping("m-latest")
    assert await streams.mapping("s", "g") is None
    assert await streams.checkpoints("m-latest") == {} and await streams.leases("m-latest") == {}


async def test_delete_stream_takes_its_records_and_shards_and_disables_its_mappings(
    streams: StreamStore,
) -> None:
    await streams.create_stream("s", 2, 86_400.0, T0)
    await streams.create_stream("other", 1, 86_400.0, T0)
    await streams.put_records("s", [("a", "eA==", 1), ("b", "eA==", MAX_HASH_KEY)], T0)
    ((kept_shard, kept_seq),) = await streams.put_records("other", [("c", "eA==", 1)], T0)
    await streams.create_mapping("m", "s", "f", {"batch_size": 7}, "TRIM_HORIZON", None, T0)
    await streams.create_mapping("n", "other", "f", {}, "TRIM_HORIZON", None, T0)
    shard = (await streams.shards("s"))[0].shard_id
    failure = ("sink:failed", {"shard": shard}, T0)
    assert await streams.acquire_lease("m", shard, "a", T0, LEASE)
    assert await streams.checkpoint("m", shard, "a", 0, failure=failure)
    assert await streams.acquire_lease("n", kept_shard, "a", T0, LEASE)

    assert await streams.delete_stream("s") == ["m"]
    assert not await streams.stream_exists("s") and await streams.stream_names() == ["other"]
    assert await streams.stream_info("s") is None and await streams.shards("s") == []
    assert await streams.read("s", shard, -1, 10) == []
    kept = await streams.mapping("s", "f")  # as Lambda keeps it: disabled
    assert kept is not None and kept.uuid == "m" and kept.config == {"batch_size": 7, "enabled": False}
    assert await streams.checkpoints("m") == {} and await streams.leases("m") == {}
    assert await streams.failure_records(destination="sink:failed") == [failure[1]]  # a sink's
    with pytest.raises(StreamNotFound):
        await streams.put_records("s", [("a", "eA==", 1)], T0)
    with pytest.raises(StreamNotFound):
        await streams.delete_stream("s")
    # the other stream and its mapping are untouched
    assert [r.seq for r in await streams.read("other", kept_shard, -1, 10)] == [kept_seq]
    assert [m.uuid for m in await streams.mappings()] == ["n", "m"] and await streams.leases("n")
    assert [m.config for m in await streams.mappings()] == [{}, {"batch_size": 7, "enabled": False}]

    # a stream created again under the name starts empty
    assert await streams.create_stream("s", 1, 86_400.0, T0 + 1)
    (fresh,) = await streams.shards("s")
    assert await streams.read("s", fresh.shard_id, -1, 10) == []


@pytest.mark.parametrize("start", ["LATEST", "AT_TIMESTAMP", "TRIM_HORIZON"])
async def test_create_mapping_again_with_its_own_uuid_updates_it_and_keeps_checkpoints(
    streams: StreamStore, start: str
) -> None:
    # what an update of the mapping does: the same uuid, a new config
    await streams.create_stream("s", 2, 86_400.0, T0)
    await streams.put_records("s", [("a", "eA==", 1), ("b", "eA==", MAX_HASH_KEY)], T0)
    timestamp = T0 + 10 if start == "AT_TIMESTAMP" else None
    await streams.create_mapping("m", "s", "f", {"batch_size": 10}, start, timestamp, T0)
    shard = (await streams.shards("s"))[0].shard_id
    ((_, later),) = await streams.put_records("s", [("c", "eA==", 1)], T0 + 20)
    assert await streams.acquire_lease("m", shard, "a", T0, LEASE)
    assert await streams.checkpoint("m", shard, "a", later)
    before = await streams.checkpoints("m")

    row = await streams.create_mapping("m", "s", "f", {"batch_size": 5}, start, timestamp, T0 + 30)
    assert row.uuid == "m" and row.config == {"batch_size": 5}
    assert await streams.checkpoints("m") == before
    found = await streams.mapping("s", "f")
    assert found is not None and found.config == {"batch_size": 5}


async def test_a_mappings_filters_are_stored_replaced_and_cleared(store_factory: Stores) -> None:
    one = await store_factory.open()
    await one.streams.create_stream("s", 1, 86_400.0, T0)
    patterns = ('{"data": {"type": ["buy"]}}', '{"partitionKey": [{"prefix": "vip-"}]}')
    start = ("TRIM_HORIZON", None, T0)
    row = await one.streams.create_mapping("m", "s", "f", {"batch_size": 10}, *start, filters=patterns)
    assert row.filters == patterns and row.config == {"batch_size": 10}
    plain = await one.streams.create_mapping("n", "s", "g", {}, *start)
    assert plain.filters == ()
    two = await store_factory.open()  # another host sees them, as given and in order
    assert [(m.uuid, m.filters) for m in await two.streams.mappings()] == [("m", patterns), ("n", ())]
    updated = await two.streams.create_mapping("m", "s", "f", {}, *start, filters=patterns[1:])
    assert updated.filters == patterns[1:]
    found = await one.streams.mapping("s", "f")
    assert found is not None and found.filters == patterns[1:]
    await one.streams.create_mapping("m", "s", "f", {}, *start)  # removed
    found = await two.streams.mapping("s", "f")
    assert found is not None and found.filters == ()


async def test_two_stores_creating_one_mapping_end_with_one(store_factory: Stores) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await one.streams.create_stream("s", 1, 86_400.0, T0)
    rows = await asyncio.gather(
        one.streams.create_mapping("u-1", "s", "f", {}, "TRIM_HORIZON", None, T0),
        two.streams.create_mapping("u-2", "s", "f", {}, "TRIM_HORIZON", None, T0),
    )
    assert rows[0].uuid == rows[1].uuid


async def mapped(streams: StreamStore, uuid: str) -> str:
    """A mapping ``uuid`` (of a stream of its own): a lease is of a mapping that exists."""
    await streams.create_stream(f"leased-{uuid}", 1, 86_400.0, T0)
    return (await streams.create_mapping(uuid, f"leased-{uuid}", "f", {}, "TRIM_HORIZON", None, T0)).uuid


async def test_a_lease_is_not_taken_for_a_mapping_removed_meanwhile(streams: StreamStore) -> None:
    # Another host removed the mapping (its leases and checkpoints went with it) just as this
    # host's coordinator took a lease: the lease was taken, and its poller read the shard
    # again from the beginning (no checkpoint), delivering every record a second time.
    m, s = await mapped(streams, "m"), "shardId-000000000000"
    assert await streams.acquire_lease(m, s, "a", T0, 10)
    await streams.delete_mapping(m)
    assert not await streams.acquire_lease(m, s, "a", T0 + 1, 10)
    assert not await streams.acquire_lease("never-made", s, "a", T0 + 1, 10)
    assert await streams.leases(m) == {} and await streams.checkpoints(m) == {}


async def test_shard_leases(streams: StreamStore) -> None:
    m, s = await mapped(streams, "m"), "shardId-000000000000"
    assert await streams.acquire_lease(m, s, "a", T0, 10)
    assert await streams.acquire_lease(m, s, "a", T0 + 1, 10)  # ours: renewed
    assert not await streams.acquire_lease(m, s, "b", T0 + 5, 10)  # alive: not taken
    assert await streams.leases(m) == {s: ("a", T0 + 11)}
    assert await streams.heartbeat(m, "a", [s, "other"], T0 + 8, 10) == {s}
    assert not await streams.acquire_lease(m, s, "b", T0 + 15, 10)  # extended to T0 + 18
    assert await streams.acquire_lease(m, s, "b", T0 + 19, 10)  # expired: taken over
    assert await streams.heartbeat(m, "a", [s], T0 + 20, 10) == set()  # a lost it
    assert await streams.leases(m) == {s: ("b", T0 + 29)}
    await streams.release_lease(m, s, "a")  # not a's: stays
    assert (await streams.leases(m))[s][0] == "b"
    await streams.release_lease(m, s, "b")
    assert await streams.leases(m) == {}
    assert await streams.acquire_lease(m, s, "c", T0 + 20, 10)
    assert await streams.heartbeat(m, "c", [], T0 + 21, 10) == set()


async def test_two_stores_acquiring_a_free_lease_one_wins(store_factory: Stores) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await mapped(one.streams, "m")
    for round_ in range(10):
        shard = f"shardId-{round_:012d}"
        won = await asyncio.gather(
            *[
                store.streams.acquire_lease("m", shard, f"{name}-{k}", T0, 10)
                for k in range(3)
                for name, store in (("one", one), ("two", two))
            ]
        )
        assert sum(won) == 1
    # every lease expired: again exactly one taker each
    for round_ in range(10):
        shard = f"shardId-{round_:012d}"
        won = await asyncio.gather(
            one.streams.acquire_lease("m", shard, "late-1", T0 + 11, 10),
            two.streams.acquire_lease("m", shard, "late-2", T0 + 11, 10),
        )
        assert sum(won) == 1


async def test_checkpoint_needs_the_lease_and_never_moves_back(streams: StreamStore) -> None:
    m, s = await mapped(streams, "m"), "shardId-000000000000"
    failure = ("sink:failed", {"shard": s, "seq": 4}, T0)
    assert not await streams.checkpoint(m, s, "a", 3)  # no lease
    assert not await streams.checkpoint(m, s, "a", 4, failure=failure)
    assert await streams.checkpoints(m) == {}
    assert await streams.failure_records(mapping=m) == []

    assert await streams.acquire_lease(m, s, "a", T0, 10)
    assert await streams.checkpoint(m, s, "a", 5)
    assert await streams.checkpoint(m, s, "a", 3)  # accepted, but never backwards
    assert (await streams.checkpoints(m))[s].seq == 5
    assert await streams.checkpoint(m, s, "a", 7, failure=failure)
    assert await streams.failure_records(mapping=m) == [failure[1]]
    assert await streams.failure_records(destination="sink:failed") == [failure[1]]

    assert await streams.acquire_lease(m, s, "b", T0 + 11, 10)  # a's lease expired: b has it
    assert not await streams.checkpoint(m, s, "a", 9, failure=("sink:failed", {"stale": 1}, T0))
    assert not await streams.checkpoint(m, s, "a", 9)
    assert (await streams.checkpoints(m))[s].seq == 7
    assert await streams.failure_records(mapping=m) == [failure[1]]  # no stale record
    assert await streams.failure_count(mapping=m) == 1 and await streams.failure_count(mapping="none") == 0
    assert await streams.failure_records(mapping=m, newest=1) == [failure[1]]
    assert await streams.failure_records(mapping=m, newest=0) == []
    assert await streams.checkpoint(m, s, "b", 12, finished=True)
    checkpoint = (await streams.checkpoints(m))[s]
    assert checkpoint.seq == 12 and checkpoint.finished


async def test_concurrent_checkpoints_each_get_their_own_answer(streams: StreamStore) -> None:
    """Pollers of several shards checkpoint at once (a store may write them together):
    each call is judged by its own lease, and a call without one writes nothing."""
    m = await mapped(streams, "m-many")
    shards = [f"shardId-{i:012d}" for i in range(6)]
    for shard in shards[:4]:
        assert await streams.acquire_lease(m, shard, "a", T0, 10)
    results = await asyncio.gather(
        *(streams.checkpoint(m, shard, "a", 10 + i) for i, shard in enumerate(shards)),
        streams.checkpoint(m, shards[0], "b", 99),  # not b's lease
    )
    assert results == [True, True, True, True, False, False, False]
    assert {k: v.seq for k, v in (await streams.checkpoints(m)).items()} == {
        shard: 10 + i for i, shard in enumerate(shards[:4])
    }


async def test_a_live_lease_is_stolen_only_from_its_holder(store_factory: Stores) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    m, s = await mapped(one.streams, "m"), "shardId-000000000000"
    assert await one.streams.acquire_lease(m, s, "a", T0, 10)
    assert not await two.streams.steal_lease(m, s, "b", "c", T0 + 1, 10)  # c does not hold it
    assert not await two.streams.steal_lease(m, "shardId-000000000009", "b", "a", T0 + 1, 10)  # no lease
    won = await asyncio.gather(
        one.streams.steal_lease(m, s, "b", "a", T0 + 1, 10),
        two.streams.steal_lease(m, s, "c", "a", T0 + 1, 10),
    )
    assert sum(won) == 1  # of two stealers one wins
    thief = "b" if won[0] else "c"
    assert await one.streams.leases(m) == {s: (thief, T0 + 11)}
    assert await one.streams.heartbeat(m, "a", [s], T0 + 2, 10) == set()  # a sees it lost
    assert not await one.streams.checkpoint(m, s, "a", 5)  # and writes nothing
    assert await two.streams.checkpoint(m, s, thief, 5)
    assert not await one.streams.steal_lease(m, s, thief, thief, T0 + 2, 10)  # not from oneself


async def test_hosts_register_expire_and_unregister(store_factory: Stores) -> None:
    one, two = await store_factory.open(), await store_factory.open()
    await one.streams.register_host("h1", {"pid": 1}, T0, 10)
    await two.streams.register_host("h2", {"pid": 2}, T0 + 1, 10)
    live = await one.streams.live_hosts(T0 + 5)
    assert [(h["host"], h["info"]) for h in live] == [("h1", {"pid": 1}), ("h2", {"pid": 2})]
    assert live[0]["started_at"] == T0 and live[0]["expires_at"] == T0 + 10
    await one.streams.register_host("h1", {"pid": 1, "port": 9}, T0 + 8, 10)  # a heartbeat
    assert [h["host"] for h in await two.streams.live_hosts(T0 + 11)] == ["h1"]  # h2 expired
    (h1,) = await two.streams.live_hosts(T0 + 11)
    assert h1["started_at"] == T0 and h1["seen_at"] == T0 + 8 and h1["info"] == {"pid": 1, "port": 9}
    await one.streams.unregister_host("h1")
    assert await two.streams.live_hosts(T0 + 11) == []
