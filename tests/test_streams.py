"""Sharded streams and event source mappings, as a Lambda user would use them.

Real SQLite files and real subprocess sandboxes; time-driven behaviour (retry backoff,
lease expiry, record age) runs on a FakeClock moved by the test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

import fnrt
from fnrt import FakeClock, InvalidConfig, Runtime, StreamMappingConfig, StreamNotFound
from fnrt.sources._streams import _failed_suffix
from fnrt.store import open_store
from fnrt.store._streams import StoredRecord, hash_key, seq_int, seq_str

from .conftest import read_jsonl, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _quiet_logs() -> Any:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


async def until(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    clock: FakeClock | tuple[FakeClock, ...] | None = None,
    *,
    step: float = 0.25,
    limit: float = 15.0,
    what: str = "condition",
) -> Any:
    """Wait (really) for a state, moving the fake clock by ``step`` between looks."""
    return await wait_until(check, what, limit, clock=clock, step=step, poll=0.003)


def ledger(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path)


def key_for_shard(index: int, shard_count: int, prefix: str = "k") -> str:
    """A partition key whose MD5 falls in shard ``index`` of an evenly split stream."""
    step = 2**128 // shard_count
    n = 0
    while True:
        key = f"{prefix}{n}"
        if int.from_bytes(hashlib.md5(key.encode()).digest(), "big") // step == index:
            return key
        n += 1


def order(i: int, **extra: Any) -> str:
    return json.dumps({"id": i, **extra})


async def orders_function(
    rt: Runtime, tmp_path: Path, name: str = "orders", attr: str = "process_orders"
) -> Path:
    path = tmp_path / f"{name}.jsonl"
    attempts = tmp_path / "attempts"
    attempts.mkdir(exist_ok=True)
    await rt.add_function(
        name,
        f"handlers.orders:{attr}",
        timeout=600,
        environment={"ORDERS_LEDGER": str(path), "ORDERS_ATTEMPTS": str(attempts)},
    )
    return path


# -- the stream itself ----------------------------------------------------------------


async def test_put_record_picks_shard_by_md5_and_numbers_records_in_order(tmp_path: Path) -> None:
    async with Runtime(state_dir=tmp_path) as rt:
        stream = await rt.create_stream("orders", shard_count=4)
        shards = await stream.shards()
        assert [s["ShardId"] for s in shards] == [f"shardId-00000000000{i}" for i in range(4)]
        assert shards[-1]["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)

        placed = [await stream.put_record(f"order {i}".encode(), f"customer-{i}") for i in range(20)]
        placed += await stream.put_records([(f"order {i}", f"customer-{i}") for i in range(20, 60)])
        for i, (shard_id, seq) in enumerate(placed):
            hashed = int.from_bytes(hashlib.md5(f"customer-{i}".encode()).digest(), "big")
            shard = next(s for s in shards if s["ShardId"] == shard_id)
            rng = shard["HashKeyRange"]
            assert int(rng["StartingHashKey"]) <= hashed <= int(rng["EndingHashKey"])
            assert len(seq) == 56 and seq.isdigit()
        seqs = [seq for _, seq in placed]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # increasing, as strings

        with pytest.raises(StreamNotFound):
            await rt.get_stream("nope")
        assert (await rt.create_stream("orders", shard_count=4)).name == "orders"  # opens it
        with pytest.raises(fnrt.InvalidPayload):
            await stream.put_record(b"x" * (1024 * 1024 + 1), "k")
        with pytest.raises(fnrt.InvalidPayload):
            await stream.put_record(b"x", "")


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"max_batching_window": 301},
        {"parallelization_factor": 11},
        {"max_retry_attempts": -2},
        {"max_retry_attempts": 10_001},
        {"max_record_age": 59},
        {"max_record_age": 604_801},
        {"starting_position": "EARLIEST"},
        {"starting_position": "AT_TIMESTAMP"},
        {"bisect_on_error": "yes"},
        {"batch_sizes": 10},
    ],
)
def test_mapping_config_rejects_values_outside_lambdas_ranges(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidConfig):
        StreamMappingConfig.from_kwargs(bad)
    ok = StreamMappingConfig(max_retry_attempts=-1, max_record_age=-1, batch_size=10_000)
    assert ok.parallelization_factor == 1


async def test_event_has_lambdas_kinesis_shape(tmp_path: Path) -> None:
    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path, "archive", "archive_events")
        stream = await rt.create_stream("orders", shard_count=1)
        shard_id, seq = await stream.put_record(b'{"id": 7}', "customer-7")
        await rt.add_stream_mapping("orders", "archive", batch_size=10)
        [event] = await until(lambda: ledger(path), what="event")
        [record] = event["Records"]
        assert record["eventSource"] == "aws:kinesis"
        assert record["eventName"] == "aws:kinesis:record"
        assert record["eventID"] == f"{shard_id}:{seq}"
        assert record["eventSourceARN"] == "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
        kinesis = record["kinesis"]
        assert kinesis["kinesisSchemaVersion"] == "1.0"
        assert kinesis["partitionKey"] == "customer-7"
        assert kinesis["sequenceNumber"] == seq
        assert base64.b64decode(kinesis["data"]) == b'{"id": 7}'
        assert isinstance(kinesis["approximateArrivalTimestamp"], float)


async def test_each_record_carries_its_own_arrival_time(tmp_path: Path) -> None:
    """The event formats an arrival time once per run of equal times (the records of one
    put share theirs): records put apart still carry their own, exactly as stored."""
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path, "archive", "archive_events")
        stream = await rt.create_stream("orders", shard_count=1)
        put_at = [clock.time()]
        await stream.put_record(b"1", "k")
        await clock.advance(1.25)
        put_at.append(clock.time())
        await stream.put_records([(b"2", "k"), (b"3", "k")])
        await clock.advance(0.5)
        put_at.append(clock.time())
        await stream.put_record(b"4", "k")
        await rt.add_stream_mapping("orders", "archive", batch_size=10)
        [event] = await until(lambda: ledger(path), what="event")
        records = event["Records"]
        assert [base64.b64decode(r["kinesis"]["data"]) for r in records] == [b"1", b"2", b"3", b"4"]
        times = [r["kinesis"]["approximateArrivalTimestamp"] for r in records]
        assert times == [put_at[0], put_at[1], put_at[1], put_at[2]]


@pytest.mark.parametrize(
    ("stream_name", "key", "data_bytes", "count"),
    [
        ("orders", "k", 150, 10_000),  # many small records: the event's own fields weigh most
        ("o" * 128, "\U0001f600" * 256, 10, 2_500),  # long ARNs; keys JSON escapes (12 bytes a character)
        ("orders", "k", 1024 * 1024 - 1, 6),  # 1 MB records
    ],
)
async def test_a_batch_event_is_at_most_6_mb(
    tmp_path: Path, stream_name: str, key: str, data_bytes: int, count: int
) -> None:
    """Lambda's 6 MB invoke payload bounds a batch, whatever its BatchSize: measured on
    the event the handler gets, with every field of every record."""
    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path, "measure", "measure_batches")
        stream = await rt.create_stream(stream_name, shard_count=1)
        await stream.put_records([(os.urandom(data_bytes), key) for _ in range(count)])
        await rt.add_stream_mapping(stream_name, "measure", batch_size=10_000)
        await until(lambda: sum(b["records"] for b in ledger(path)) == count, what="every record")
        batches = ledger(path)
        assert max(b["bytes"] for b in batches) <= 6 * 1024 * 1024, batches
        assert len(batches) <= 2 * (sum(b["bytes"] for b in batches) // (6 * 1024 * 1024) + 1)  # full ones


async def test_a_batch_of_6_mb_does_not_wait_out_the_batching_window(tmp_path: Path) -> None:
    """Lambda invokes at the batching window's end, at BatchSize records, or when the batch
    reaches 6 MB, whichever comes first: here the clock stands still, so only the last can."""
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path, "measure", "measure_batches")
        stream = await rt.create_stream("orders", shard_count=1)
        await stream.put_records([(os.urandom(1024 * 1024 - 1), "k") for _ in range(5)])
        await rt.add_stream_mapping("orders", "measure", batch_size=10_000, max_batching_window=300)
        await until(lambda: ledger(path), what="a full batch, with no time passed")
        assert ledger(path)[0]["records"] == 4  # 4 x 1.33 MB of base64 fit in 6 MB, 5 do not


async def test_a_backlog_of_big_records_is_read_a_batch_at_a_time(tmp_path: Path) -> None:
    """BatchSize 10,000 over a backlog of 1 MB records: the poller holds about a batch
    (6 MB), never the backlog (here 27 MB of base64), in the host's memory."""
    import tracemalloc

    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path, "measure", "measure_batches")
        stream = await rt.create_stream("orders", shard_count=1)
        for _ in range(2):
            await stream.put_records([(os.urandom(1024 * 1024 - 1), "k") for _ in range(10)])
        tracemalloc.start()
        try:
            await rt.add_stream_mapping("orders", "measure", batch_size=10_000)
            await until(lambda: sum(b["records"] for b in ledger(path)) == 20, what="every record")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 38 * 1024 * 1024, f"{peak / 2**20:.0f} MB held at once"


# -- ordering, blocking, retries, bisect, on-failure ----------------------------------


async def test_failing_batch_blocks_its_shard_only_then_goes_to_on_failure(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=2)
        bad_key, good_key = key_for_shard(0, 2), key_for_shard(1, 2)
        records = [(order(i, poison=(i == 2)), bad_key) for i in range(4)]
        records += [(order(i), good_key) for i in range(4, 8)]
        placed = await stream.put_records(records)
        await clock.advance(5)  # the records wait 5 s before the mapping reads them
        mapping = await rt.add_stream_mapping(
            "orders", "orders", batch_size=10, max_retry_attempts=2, on_failure="orders-dlq"
        )
        await until(lambda: len(ledger(path)) == 4, what="the good shard")
        assert [e["id"] for e in ledger(path)] == [4, 5, 6, 7]  # in order; shard 0 is blocked
        assert await mapping.failure_records() == []
        await clock.advance(0.5)
        assert len(ledger(path)) == 4  # still blocked: retries wait with backoff

        [failure] = await until(mapping.failure_records, clock, what="on-failure record")
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["approximateInvokeCount"] == 3  # 1 try + 2 retries
        info = failure["KinesisBatchInfo"]
        assert info["shardId"] == placed[0][0]
        assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (placed[0][1], placed[3][1])
        assert info["batchSize"] == 4 and info["streamArn"] == stream.arn
        assert "Records" not in failure
        # ... and delivered to the destination, not only kept on the mapping
        assert await rt.destination_records("orders-dlq") == [failure]

        # The checkpoint moved past the skipped batch: the shard goes on with new records.
        await stream.put_record(order(8), bad_key)
        await until(lambda: len(ledger(path)) == 5, clock, what="shard 0 unblocked")
        assert ledger(path)[-1]["id"] == 8

        async def moved() -> bool:
            return (await mapping.checkpoints())[placed[0][0]] > placed[3][1]

        await until(moved, clock, what="the checkpoint")
        assert mapping.iterator_age()["max"] >= 5000  # IteratorAge, in ms, per mapping
        assert rt.metrics.summary("IteratorAge", mapping.uuid)["count"] >= 2


async def test_bisect_isolates_the_poison_record(tmp_path: Path) -> None:
    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        placed = await stream.put_records([(order(i, poison=(i == 5)), "customer") for i in range(8)])
        mapping = await rt.add_stream_mapping(
            "orders", "orders", batch_size=8, bisect_on_error=True, max_retry_attempts=0, on_failure="dlq"
        )
        [failure] = await until(mapping.failure_records, what="the poison record")
        info = failure["KinesisBatchInfo"]
        assert info["batchSize"] == 1
        assert info["startSequenceNumber"] == info["endSequenceNumber"] == placed[5][1]
        await until(lambda: len(ledger(path)) == 7, what="the rest")
        assert [e["id"] for e in ledger(path)] == [0, 1, 2, 3, 4, 6, 7]  # each once, in order


async def test_records_older_than_max_record_age_go_to_on_failure(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        await stream.put_records([(order(0, poison=True), "c"), (order(1), "c")])
        mapping = await rt.add_stream_mapping("orders", "orders", max_record_age=60, on_failure="dlq")
        [failure] = await until(mapping.failure_records, clock, step=1.0, what="expiry")
        assert failure["requestContext"]["condition"] == "RecordAgeExceeded"
        assert failure["KinesisBatchInfo"]["batchSize"] == 2
        await stream.put_record(order(2), "c")
        await until(lambda: ledger(path), clock, what="the next record")
        assert [e["id"] for e in ledger(path)] == [2]


async def test_a_retention_another_host_increased_is_the_one_a_mapping_keeps_to(tmp_path: Path) -> None:
    # Host B increases the stream's retention to 48 hours; host A had read it as 24. A
    # record 30 hours old is within the stream's retention: A's mapping (max_record_age -1,
    # "until the record expires") delivers it. A kept its own first reading and skipped it
    # to on-failure as RecordAgeExceeded.
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as a:
        path = await orders_function(a, tmp_path)
        stream = await a.create_stream("orders", shard_count=1)
        await stream.put_record(order(0), "c")
        # what host B's IncreaseStreamRetentionPeriod writes (a second host, without the
        # cost of its heartbeats over 30 fake hours)
        assert await (await a._state.store()).streams.update_stream("orders", retention=48 * 3600.0)
        await clock.advance(30 * 3600)
        mapping = await a.add_stream_mapping("orders", "orders", on_failure="dlq")
        await until(lambda: ledger(path), clock, what="the 30-hour-old record")
        assert [e["id"] for e in ledger(path)] == [0] and await mapping.failure_records() == []


async def test_partial_batch_response_checkpoints_before_the_lowest_failure(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path, attr="process_orders_partial")
        stream = await rt.create_stream("orders", shard_count=1)
        await stream.put_records([(order(i, fail_times=2 if i == 3 else 0), "c") for i in range(6)])
        mapping = await rt.add_stream_mapping(
            "orders", "orders", batch_size=6, report_batch_item_failures=True, max_retry_attempts=5
        )
        await until(lambda: len(ledger(path)) == 6, clock, what="all orders")
        await rt.wait_idle()  # the last invocation is counted after its ledger write
        assert [e["id"] for e in ledger(path)] == [0, 1, 2, 3, 4, 5]  # no duplicates
        assert await mapping.failure_records() == []
        assert rt.metrics.counter("Invocations", "orders") == 3  # 0-2 + fail, fail, 3-5


async def test_a_partial_failure_is_a_retry_of_its_remainder(tmp_path: Path) -> None:
    """Lambda treats a partial batch response as a failure and retries from the lowest
    failed record "based on your retry strategy": with MaximumRetryAttempts=1 the failing
    record runs twice in all (not once more per partial success), then its part goes to
    on-failure."""
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path, attr="process_orders_partial")
        stream = await rt.create_stream("orders", shard_count=1)
        placed = await stream.put_records([(order(i, poison=(i == 2)), "c") for i in range(5)])
        mapping = await rt.add_stream_mapping(
            "orders",
            "orders",
            batch_size=5,
            report_batch_item_failures=True,
            max_retry_attempts=1,
            on_failure="dlq",
        )
        [failure] = await until(mapping.failure_records, clock, step=1.0, what="the failed part")
        await rt.wait_idle()
        assert rt.metrics.counter("Invocations", "orders") == 2  # 0-4, then 2-4 once
        assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert failure["requestContext"]["approximateInvokeCount"] == 2
        info = failure["KinesisBatchInfo"]
        assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (placed[2][1], placed[4][1])
        assert [e["id"] for e in ledger(path)] == [0, 1]


def test_partial_batch_response_rules() -> None:
    part = [StoredRecord(seq, "k", "", 0.0) for seq in (10, 11, 12)]
    assert _failed_suffix(part, None) == []
    assert _failed_suffix(part, {"batchItemFailures": []}) == []
    assert _failed_suffix(part, {"batchItemFailures": [{"itemIdentifier": ""}]}) == part
    assert _failed_suffix(part, {"batchItemFailures": [{"itemIdentifier": seq_str(99)}]}) == part
    assert _failed_suffix(part, {"batchItemFailures": [{"itemIdentifier": "garbage"}]}) == part
    failures = [{"itemIdentifier": seq_str(12)}, {"itemIdentifier": seq_str(11)}]
    assert _failed_suffix(part, {"batchItemFailures": failures}) == part[1:]
    assert seq_int(seq_str(12)) == 12


async def test_parallelization_factor_keeps_order_per_partition_key(tmp_path: Path) -> None:
    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        placed = await stream.put_records([(order(i), f"customer-{i % 8}") for i in range(160)])
        await rt.add_stream_mapping("orders", "orders", batch_size=5, parallelization_factor=4)
        await until(lambda: len(ledger(path)) == 160, what="all records")
        entries = ledger(path)
        assert sorted(e["id"] for e in entries) == list(range(160))
        for key in {e["key"] for e in entries}:
            seqs = [e["seq"] for e in entries if e["key"] == key]
            assert seqs == sorted(seqs)
        assert [e["seq"] for e in entries] != [seq for _, seq in placed]  # lanes interleave
        assert rt.stats()["functions"]["orders"]["cold_starts"] > 1  # batches ran at once


async def test_throttled_invokes_block_the_shard_and_retry_in_order(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(concurrency_limit=1, unreserved_minimum=1, state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        await rt.add_function("report", "handlers.orders:nightly_report", timeout=600)
        stream = await rt.create_stream("orders", shard_count=1)
        report = asyncio.ensure_future(rt.invoke("report", {"seconds": 0.5}))
        await until(lambda: rt.stats()["concurrency"].get("in_flight", 0) >= 1, what="the report runs")
        # max_retry_attempts=0: were a throttle counted as an attempt, the batch would be dropped.
        mapping = await rt.add_stream_mapping("orders", "orders", max_retry_attempts=0, on_failure="dlq")
        await stream.put_records([(order(i), "c") for i in range(5)])
        await until(lambda: rt.metrics.counter("Throttles", "orders") >= 1, what="a throttle")
        assert ledger(path) == []
        await report
        await until(lambda: len(ledger(path)) == 5, clock, what="the retry")
        assert [e["id"] for e in ledger(path)] == [0, 1, 2, 3, 4]
        assert await mapping.failure_records() == []


# -- starting positions ----------------------------------------------------------------


async def test_starting_positions(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        latest = await orders_function(rt, tmp_path, "latest")
        at_time = await orders_function(rt, tmp_path, "at_time")
        horizon = await orders_function(rt, tmp_path, "horizon")
        stream = await rt.create_stream("orders", shard_count=2)
        await stream.put_records([(order(i), f"c{i}") for i in range(4)])
        await clock.advance(10)
        middle = clock.time()
        await stream.put_records([(order(i), f"c{i}") for i in range(4, 8)])
        await rt.add_stream_mapping("orders", "latest", starting_position="LATEST")
        await rt.add_stream_mapping(
            "orders", "at_time", starting_position="AT_TIMESTAMP", starting_position_timestamp=middle
        )
        await rt.add_stream_mapping("orders", "horizon", starting_position="TRIM_HORIZON")
        await stream.put_records([(order(i), f"c{i}") for i in range(8, 10)])
        await until(lambda: len(ledger(horizon)) == 10, clock, what="trim horizon")
        await until(lambda: len(ledger(at_time)) == 6 and len(ledger(latest)) == 2, clock, what="others")
        assert sorted(e["id"] for e in ledger(latest)) == [8, 9]
        assert sorted(e["id"] for e in ledger(at_time)) == [4, 5, 6, 7, 8, 9]


async def test_at_timestamp_in_the_future_skips_what_arrives_before_it(tmp_path: Path) -> None:
    """AT_TIMESTAMP reads the records that arrived at or after the timestamp: with one still
    to come, records put before it are passed over, also in a shard split off meanwhile."""
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        await stream.put_record(order(0), "c")
        start = clock.time() + 60
        mapping = await rt.add_stream_mapping(
            "orders", "orders", starting_position="AT_TIMESTAMP", starting_position_timestamp=start
        )
        await clock.advance(30)
        await stream.put_records([(order(i), f"c{i}") for i in (1, 2)])
        await stream.split_shard("shardId-000000000000", 2**127)
        await stream.put_records([(order(i), f"c{i}") for i in (3, 4)])
        await rt.wait_idle()
        await clock.advance(31)  # past the timestamp
        await stream.put_records([(order(i), f"c{i}") for i in (5, 6)])
        await until(lambda: len(ledger(path)) >= 2, clock, what="the records after the timestamp")
        await rt.wait_idle()
        assert sorted(e["id"] for e in ledger(path)) == [5, 6]
        assert all(seq is not None for seq in (await mapping.checkpoints()).values())  # passed over


@pytest.mark.parametrize("position", ["LATEST", "AT_TIMESTAMP", "TRIM_HORIZON"])
async def test_an_updated_mapping_goes_on_from_its_checkpoints(tmp_path: Path, position: str) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=2)
        await stream.put_records([(order(i), f"c{i}") for i in range(4)])
        await clock.advance(10)
        start: dict[str, Any] = {"starting_position": position}
        if position == "AT_TIMESTAMP":
            start["starting_position_timestamp"] = clock.time()
        mapping = await rt.add_stream_mapping("orders", "orders", batch_size=10, **start)
        await stream.put_records([(order(i), f"c{i}") for i in range(4, 6)])
        first = 0 if position == "TRIM_HORIZON" else 4
        await until(lambda: len(ledger(path)) == 6 - first, clock, what="the first records")
        await rt.wait_idle()
        before = await mapping.checkpoints()

        updated = await rt.update_stream_mapping(mapping, batch_size=5)
        assert updated.uuid == mapping.uuid and updated.config.batch_size == 5
        assert await updated.checkpoints() == before  # the update moved no checkpoint
        await stream.put_records([(order(i), f"c{i}") for i in range(6, 8)])
        await until(lambda: len(ledger(path)) == 8 - first, clock, what="records after the update")

        # disabled, then enabled again: the records put meanwhile, each once
        await rt.update_stream_mapping(mapping.uuid, enabled=False)
        await stream.put_records([(order(i), f"c{i}") for i in range(8, 10)])
        await clock.advance(5)
        await rt.wait_idle()
        assert len(ledger(path)) == 8 - first
        enabled = await rt.update_stream_mapping(mapping.uuid, enabled=True)
        assert enabled.config.enabled and rt.stream_mappings() == [enabled]
        await until(lambda: len(ledger(path)) == 10 - first, clock, what="records put while disabled")
        await rt.wait_idle()
        assert sorted(e["id"] for e in ledger(path)) == list(range(first, 10))


async def test_a_failed_update_leaves_the_mapping_polling_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        mapping = await rt.add_stream_mapping("orders", "orders", starting_position="LATEST")
        store = await rt._streams.store()

        async def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise fnrt.StoreUnavailable("the disk is gone")

        monkeypatch.setattr(store, "create_mapping", unavailable)
        with pytest.raises(fnrt.StoreUnavailable):
            await rt.update_stream_mapping(mapping, batch_size=5)
        assert rt.stream_mappings() == [mapping] and mapping.config.batch_size == 100
        await stream.put_record(order(1), "c")
        await until(lambda: len(ledger(path)) == 1, clock, what="the mapping still polls")


async def test_a_failed_stream_delete_leaves_its_mappings_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        mapping = await rt.add_stream_mapping("orders", "orders")
        await stream.put_record(order(1), "c")
        await until(lambda: len(ledger(path)) == 1, clock, what="the first order")
        store = await rt._streams.store()

        async def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise fnrt.StoreUnavailable("the disk is gone")

        monkeypatch.setattr(store, "delete_stream", unavailable)
        with pytest.raises(fnrt.StoreUnavailable):
            await rt.delete_stream("orders")
        [again] = rt.stream_mappings()
        assert again.uuid == mapping.uuid and await rt.list_streams() == ["orders"]
        await stream.put_record(order(2), "c")
        await until(lambda: len(ledger(path)) == 2, clock, what="the mapping still polls")
        assert [e["id"] for e in ledger(path)] == [1, 2]  # from its checkpoint: nothing twice
        monkeypatch.undo()
        await rt.delete_stream("orders")
        assert await rt.list_streams() == []
        [kept] = rt.stream_mappings()  # as Lambda keeps it: disabled, polling nothing
        assert kept.uuid == mapping.uuid and kept.stream_deleted and not kept.config.enabled
        with pytest.raises(StreamNotFound):
            await rt.delete_stream("orders")


async def test_stream_names_follow_kinesis_pattern(tmp_path: Path) -> None:
    async with Runtime(state_dir=tmp_path) as rt:
        for bad in ("a/b", "a b", "", "x" * 129, "caf\u00e9", "a:b"):
            with pytest.raises(InvalidConfig):
                await rt.create_stream(bad)
        assert await rt.list_streams() == []
        name = "Orders_v2.eu-west-1" + "x" * 109  # 128 characters, every allowed kind
        assert (await rt.create_stream(name)).name == name


async def test_hash_keys_are_ascii_decimal_numbers(tmp_path: Path) -> None:
    async with Runtime(state_dir=tmp_path) as rt:
        stream = await rt.create_stream("orders", shard_count=2)
        for bad in ("\u00b2", "\u0661", "-1", "1.5", str(2**128), True):
            with pytest.raises(fnrt.InvalidPayload):
                await stream.put_record(b"x", "k", explicit_hash_key=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidConfig):
                await stream.split_shard("shardId-000000000000", bad)  # type: ignore[arg-type]
        shard_id, _ = await stream.put_record(b"x", "k", explicit_hash_key=2**128 - 1)
        assert shard_id == "shardId-000000000001"
        assert len(await stream.split_shard("shardId-000000000000", str(2**126))) == 2


# -- resharding -----------------------------------------------------------------------


async def test_child_shards_are_read_only_after_their_parents(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        # The parent's third record fails twice: its children must wait for it.
        await stream.put_records([(order(i, fail_times=2 if i == 2 else 0), f"c{i}") for i in range(5)])
        children = await stream.split_shard("shardId-000000000000", 2**127)
        assert children == ["shardId-000000000001", "shardId-000000000002"]
        await stream.put_records([(order(i), f"c{i}") for i in range(5, 15)])
        grandchild = await stream.merge_shards(*children)
        await stream.put_records([(order(i), f"c{i}") for i in range(15, 20)])
        shards = {s["ShardId"]: s for s in await stream.shards()}
        assert shards[grandchild]["ParentShardId"] == children[0]
        assert shards[grandchild]["AdjacentParentShardId"] == children[1]
        assert "EndingSequenceNumber" in shards["shardId-000000000000"]["SequenceNumberRange"]

        await rt.add_stream_mapping("orders", "orders", batch_size=3)
        await until(lambda: len(ledger(path)) == 20, clock, what="every generation")
        ids = [e["id"] for e in ledger(path)]
        assert ids[:5] == [0, 1, 2, 3, 4]  # the parent first, to its end
        assert sorted(ids[5:15]) == list(range(5, 15))  # then its children
        assert ids[15:] == [15, 16, 17, 18, 19]  # then theirs
        with pytest.raises(InvalidConfig):
            await stream.split_shard("shardId-000000000000", 5)  # closed


async def test_update_shard_count_keeps_each_keys_records_in_order_for_a_mapping(tmp_path: Path) -> None:
    # Resharding 2 -> 3 -> 2 while a mapping reads: every order of a customer is delivered
    # once, in the order it was put, across the splits and merges that made the new shards.
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=2)
        await rt.add_stream_mapping("orders", "orders", batch_size=4)
        customers = [f"c{i}" for i in range(6)]
        n = 0
        for target in (3, 2):
            await stream.put_records([(order(n + i), c) for i, c in enumerate(customers * 2)])
            n += 2 * len(customers)
            await stream.update_shard_count(target)
            shards = await stream.shards()
            assert sum(1 for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]) == target
        await stream.put_records([(order(n + i), c) for i, c in enumerate(customers)])
        n += len(customers)
        await until(lambda: len(ledger(path)) == n, clock, what="every record")
        delivered = ledger(path)
        assert sorted(e["id"] for e in delivered) == list(range(n))
        for customer in customers:
            ids = [e["id"] for e in delivered if e["key"] == customer]
            assert ids == sorted(ids), customer


async def test_stream_tags_of_the_wrong_shape_are_refused_and_change_nothing(tmp_path: Path) -> None:
    # Stored as given, tags that were not a dict of strings made every later info() (and
    # so DescribeStream and ListStreams over HTTP) fail with ValueError.
    async with Runtime(state_dir=tmp_path) as rt:
        stream = await rt.create_stream("tagged", shard_count=1)
        await stream.update(tags={"team": "a"})
        for bad in ("team", ["team"], {"team": 1}, {1: "a"}, {"": "a"}, {"k": "v" * 257},
                    {f"k{i}": "v" for i in range(51)}):
            with pytest.raises(InvalidConfig):
                await stream.update(tags=bad)  # type: ignore[arg-type]
        assert (await stream.info())["tags"] == {"team": "a"}


async def test_update_shard_count_of_many_shards_lists_them_once(tmp_path: Path) -> None:
    # It listed every shard of the stream again for each split and merge (and twice more
    # in each one's checks): 250 -> 500 shards took 40 s, past boto3's read timeout at
    # a few hundred more. One listing now, then one write per split and merge.
    async with Runtime(state_dir=tmp_path) as rt:
        stream = await rt.create_stream("wide", shard_count=48)
        await stream.put_records([(f"r{i}", f"k{i}") for i in range(96)])
        store = (await rt._state.store()).streams
        listings = 0
        listed = store.shards

        async def counted(name: str) -> Any:
            nonlocal listings
            listings += 1
            return await listed(name)

        store.shards = counted  # type: ignore[method-assign]
        for target in (96, 50, 25):
            listings = 0
            await stream.update_shard_count(target)
            assert listings <= 2, (target, listings)
            shards = await stream.shards()
            opened = sorted(
                (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]))
                for s in shards
                if "EndingSequenceNumber" not in s["SequenceNumberRange"]
            )
            step = 2**128 // target  # as a stream created with the target count
            ends = [(i + 1) * step - 1 for i in range(target - 1)] + [2**128 - 1]
            assert opened == [(i * step, end) for i, end in enumerate(ends)]
        kept = [r for s in shards for r in await stream.read(s["ShardId"], None, 1000)]
        assert sorted(r["PartitionKey"] for r in kept) == sorted(f"k{i}" for i in range(96))


# -- leases ---------------------------------------------------------------------------


async def test_a_lease_not_heartbeated_is_taken_over(tmp_path: Path) -> None:
    """Two hosts share one state file. B joins while A holds both shards: B steals one to
    even the spread (A's share is ceil(2 / 2) = 1). Then A stalls (its clock stops: no
    heartbeats, no polling); B takes A's other shard once that lease expires. When A wakes
    up it finds its leases gone, and steals one back: nothing is delivered twice."""
    state = tmp_path / "state"
    clock_a, clock_b = FakeClock(), FakeClock()
    async with Runtime(state_dir=state, clock=clock_a) as a, Runtime(state_dir=state, clock=clock_b) as b:
        path = await orders_function(a, tmp_path)
        await orders_function(b, tmp_path)
        stream_a = await a.create_stream("orders", shard_count=2)
        stream_b = await b.get_stream("orders")
        await stream_a.put_records([(order(i), f"c{i}") for i in range(6)])
        mapping_a = await a.add_stream_mapping("orders", "orders", lease_seconds=10)
        await until(lambda: len(ledger(path)) == 6, clock_a, what="host A")
        await a.wait_idle()  # and checkpointed
        mapping_b = await b.add_stream_mapping("orders", "orders", lease_seconds=10)
        assert mapping_b.uuid == mapping_a.uuid  # the same mapping, resumed
        assert len(mapping_a.shards_owned) == 2
        await until(lambda: len(mapping_b.shards_owned) == 1, clock_b, step=0.5, what="B steals one")
        await clock_b.advance(1)
        assert len(mapping_b.shards_owned) == 1  # one steal: A's other lease is live

        await clock_b.advance(11)  # A stalled: its other lease expired on B's (shared wall) clock
        await until(lambda: len(mapping_b.shards_owned) == 2, clock_b, what="takeover")
        await stream_b.put_records([(order(i), f"c{i}") for i in range(6, 12)])
        await until(lambda: len(ledger(path)) == 12, clock_b, what="host B")

        await stream_b.put_records([(order(i), f"c{i}") for i in range(12, 16)])
        await until(lambda: {e["id"] for e in ledger(path)} == set(range(16)), clock_b, what="B goes on")
        await b.wait_idle()  # checkpointed (a steal in mid-batch may deliver that batch again)
        clock_a._now = clock_b.monotonic() - 1  # A wakes up and finds its leases gone
        both = (clock_a, clock_b)  # from here on, time passes for both hosts: slowly, so
        # that each heartbeats well within its lease (a lease that expires between two
        # heartbeats is taken over, and the batch in flight delivered again: at least once)
        await until(lambda: len(mapping_a.shards_owned) == len(mapping_b.shards_owned) == 1, both, step=0.02)
        owned = {*mapping_a.shards_owned, *mapping_b.shards_owned}
        assert owned == {"shardId-000000000000", "shardId-000000000001"}
        await stream_a.put_records([(order(i), f"c{i}") for i in range(16, 24)])
        await until(lambda: {e["id"] for e in ledger(path)} == set(range(24)), both, step=0.02, what="both")
        assert sorted(e["id"] for e in ledger(path)) == list(range(24))  # nothing twice


async def test_a_stream_deleted_by_another_host_stops_this_hosts_pollers(tmp_path: Path) -> None:
    """Host B deletes the stream that host A's mapping reads: A's pollers find their shards
    gone and stop, and A's mapping stays, polling nothing, saying its stream is gone (as
    Lambda's does); A runs on, and closes cleanly."""
    state = tmp_path / "state"
    async with Runtime(state_dir=state) as a:
        async with Runtime(state_dir=state) as b:
            path = await orders_function(a, tmp_path)
            stream = await a.create_stream("orders", shard_count=2)
            await stream.put_records([(order(i), f"c{i}") for i in range(4)])
            # A's coordinator heartbeats every 10 s; its idle pollers poll every 60 s
            mapping = await a.add_stream_mapping("orders", "orders", poll_interval=60, lease_seconds=30)
            await until(lambda: len(ledger(path)) == 4, what="delivered")
            await a.wait_idle()
            await b.delete_stream("orders")
            assert await a.list_streams() == []
            # the pollers look before the coordinator's next heartbeat would stop them (as a
            # put on a third host would wake them)
            for poller in mapping._poller_objects.values():
                poller.waker.set()
            await until(lambda: not mapping.shards_owned, what="A's pollers stopped")
            mapping.wake()
            # kept, disabled, as B's DeleteStream left the stored mapping
            await until(lambda: a.stream_mappings()[0].stream_deleted, what="A sees its stream gone")
            [kept] = a.stream_mappings()
            assert kept.uuid == mapping.uuid and not kept.config.enabled
            assert kept.last_processing_result.startswith("PROBLEM")
            with pytest.raises(StreamNotFound):
                await a.get_stream("orders")
            await a.wait_idle()
            assert await a.invoke("orders", {"Records": []}) == {"processed": 0}  # A runs on
    assert len(ledger(path)) == 4


async def test_a_mapping_whose_stream_another_host_deleted_and_made_again_stays_disabled(
    tmp_path: Path,
) -> None:
    # B's DeleteStream disables the stored mapping (its own copy too); A's copy stayed
    # enabled, and read the stream B made again under the name from its start, while the
    # store, B, and A after a restart all called the mapping disabled.
    state = tmp_path / "state"
    async with Runtime(state_dir=state) as a:
        async with Runtime(state_dir=state) as b:
            path = await orders_function(a, tmp_path)
            stream = await a.create_stream("orders", shard_count=1)
            await stream.put_record(order(0), "c")
            mapping = await a.add_stream_mapping("orders", "orders", poll_interval=60, lease_seconds=30)
            await until(lambda: len(ledger(path)) == 1, what="delivered")
            await b.delete_stream("orders")
            again = await b.create_stream("orders", shard_count=1)  # before A's next turn
            await again.put_record(order(1), "c")
            mapping.wake()
            await until(lambda: not a.stream_mappings()[0].config.enabled, what="A's mapping disabled")
            for _ in range(3):  # turns that would take the new stream's shard
                for m in a.stream_mappings():
                    m.wake()
                await a.wait_idle()
            [kept] = a.stream_mappings()
            assert kept.uuid == mapping.uuid and kept.shards_owned == []
            assert len(ledger(path)) == 1  # the new stream's record is not read
            # enabled by the user, it reads the new stream from its start
            await a.update_stream_mapping(kept.uuid, enabled=True)
            await until(lambda: len(ledger(path)) == 2, what="read once enabled")


async def test_a_mapping_another_host_disabled_stops_polling_here(tmp_path: Path) -> None:
    # UpdateEventSourceMapping(Enabled=false) on host B: host A, which ran the mapping
    # too, went on invoking the function for every new record.
    state = tmp_path / "state"
    async with Runtime(state_dir=state) as a:
        async with Runtime(state_dir=state) as b:
            path = await orders_function(a, tmp_path)
            await orders_function(b, tmp_path)
            stream = await a.create_stream("orders", shard_count=1)
            # A short lease: B's coordinator may have taken the shard before it was disabled,
            # and then A takes it over once that lease expires.
            mapping = await a.add_stream_mapping("orders", "orders", poll_interval=60, lease_seconds=3)
            [theirs] = await b.resume_stream_mappings()
            await b.update_stream_mapping(theirs.uuid, enabled=False)
            mapping.wake()
            await until(lambda: not a.stream_mappings()[0].config.enabled, what="A's mapping disabled")
            await stream.put_record(order(0), "c")
            for _ in range(3):
                for m in a.stream_mappings():
                    m.wake()
                await a.wait_idle()
            [kept] = a.stream_mappings()
            assert kept.uuid == mapping.uuid and not kept.stream_deleted and kept.shards_owned == []
            assert ledger(path) == []
            await a.update_stream_mapping(kept.uuid, enabled=True)  # and back on: it reads from there
            await until(lambda: len(ledger(path)) == 1, what="read once enabled", limit=30)


# -- crash safety ---------------------------------------------------------------------


async def test_kill_9_mid_stream_and_restart_loses_nothing(tmp_path: Path) -> None:
    state, path, count = tmp_path / "state", tmp_path / "ledger.jsonl", 400
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.stream_host", str(state), str(path), str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert await asyncio.to_thread(child.stdout.readline) == b"ready\n"
        await until(lambda: len(ledger(path)) >= 40, what="the child consuming")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    text = path.read_text()  # the kill may have cut the last line short
    path.write_text(text[: text.rfind("\n") + 1])
    done_before = len(ledger(path))
    assert done_before < count, "the host finished before the kill; make the test stream longer"

    async with await open_store(state) as store:
        row = await store.streams.mapping("orders", "orders")
        assert row is not None
        checkpoints = await store.streams.checkpoints(row.uuid)
        shards = await store.streams.shards("orders")

    def shard_of_key(key: str) -> str:
        hashed = hash_key(key)
        return next(s.shard_id for s in shards if s.start_hash <= hashed <= s.end_hash)

    async with Runtime(state_dir=state) as rt:
        await rt.add_function(
            "orders", "handlers.orders:process_orders", environment={"ORDERS_LEDGER": str(path)}
        )
        await rt.create_stream("orders", shard_count=2)
        await rt.add_stream_mapping(
            "orders", "orders", batch_size=5, lease_seconds=1.5, poll_interval=0.05
        )
        await until(lambda: {e["id"] for e in ledger(path)} == set(range(count)), what="every record")

    entries = ledger(path)
    seen: dict[str, int] = {}
    for entry in entries:
        seen[entry["seq"]] = seen.get(entry["seq"], 0) + 1
    shard_of = {e["seq"]: e["key"] for e in entries}
    for seq, times in seen.items():
        if times > 1:  # a duplicate only of what came after its own shard's checkpoint
            checkpoint = checkpoints.get(shard_of_key(shard_of[seq]))
            assert checkpoint is None or seq_int(seq) > checkpoint.seq, seq
    for key in set(shard_of.values()):
        firsts = []
        for e in entries:
            if e["key"] == key and e["seq"] not in firsts:
                firsts.append(e["seq"])
        assert firsts == sorted(firsts)  # per key, first deliveries in order


# -- the whole thing ------------------------------------------------------------------


async def test_remove_mapping_stops_and_forgets_it(tmp_path: Path) -> None:
    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        mapping = await rt.add_stream_mapping("orders", "orders")
        with pytest.raises(InvalidConfig):
            await rt.add_stream_mapping("orders", "orders")
        await rt.remove_stream_mapping(mapping)
        await stream.put_record(order(1), "c")
        await asyncio.sleep(0.1)
        assert ledger(path) == [] and rt.stream_mappings() == []
        assert os.path.exists(tmp_path / "fnrt.sqlite3")


async def test_stored_mappings_are_resumed_from_their_checkpoints_after_a_restart(tmp_path: Path) -> None:
    # Lambda's mappings outlive a restart: one created before (here, or by the control
    # plane, or by another host on a shared store) goes on from its checkpoints once its
    # function is deployed again and resume_stream_mappings() runs (fnrt serve does).
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=2)
        created = await rt.add_stream_mapping("orders", "orders", batch_size=7)
        await stream.put_records([(order(i), f"c{i}") for i in range(4)])
        await until(lambda: len(ledger(path)) == 4, clock, what="the first records")
        await rt.wait_idle()
        assert await rt.resume_stream_mappings() == []  # it runs already
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        await rt.create_stream("ignored")  # a mapping's stream is not all there is
        assert await rt.resume_stream_mappings() == []  # its function is not deployed yet
        await orders_function(rt, tmp_path)
        [resumed] = await rt.resume_stream_mappings()
        assert resumed.uuid == created.uuid and resumed.config.batch_size == 7
        assert rt.stream_mappings() == [resumed]
        stream = await rt.get_stream("orders")
        await stream.put_records([(order(i), f"c{i}") for i in range(4, 6)])
        await until(lambda: len(ledger(path)) == 6, clock, what="records after the restart")
        await rt.wait_idle()
        assert sorted(e["id"] for e in ledger(path)) == list(range(6))  # none again


async def test_a_mapping_whose_stream_was_deleted_outlives_a_restart_disabled(tmp_path: Path) -> None:
    # Lambda keeps the mapping of a deleted stream; so does the store, and a restarted host
    # lists it again, disabled and polling nothing, until it is enabled or removed. It used
    # to go with the stream.
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        created = await rt.add_stream_mapping("orders", "orders", batch_size=7)
        await stream.put_record(order(0), "c")
        await until(lambda: len(ledger(path)) == 1, clock, what="the first record")
        await rt.delete_stream("orders")
        [kept] = rt.stream_mappings()
        assert kept.uuid == created.uuid and kept.stream_deleted and not kept.config.enabled
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        await orders_function(rt, tmp_path)
        assert await rt.resume_stream_mappings() == []  # nothing started
        [kept] = rt.stream_mappings()
        assert (kept.uuid, kept.config.batch_size, kept.config.enabled) == (created.uuid, 7, False)
        assert kept.stream_deleted and kept.last_processing_result == "PROBLEM: Stream not found"
        # enabled while its stream is gone: it polls nothing, and fails nothing
        enabled = await rt.update_stream_mapping(kept.uuid, enabled=True)
        await clock.advance(30)
        await rt.wait_idle()
        assert enabled.stream_deleted and rt.stats()["background_failures"] == 0
        # a stream made again under the name: the enabled mapping reads it from its start
        stream = await rt.create_stream("orders", shard_count=1)
        await stream.put_record(order(1), "c")
        await until(lambda: len(ledger(path)) == 2, clock, what="a record of the new stream")
        assert not enabled.stream_deleted
        await rt.remove_stream_mapping(enabled)
        assert rt.stream_mappings() == []
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        await orders_function(rt, tmp_path)
        assert await rt.resume_stream_mappings() == [] and rt.stream_mappings() == []


async def test_a_batch_refused_because_the_runtime_is_closing_ends_its_poller_quietly(tmp_path: Path) -> None:
    # The close refuses calls that reach the invoker after it began (or a sandbox is killed
    # under one): RuntimeClosed. A shard poller meeting it stops without moving the
    # checkpoint; it used to fail the runtime, whose close then raised it.
    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders")
        await rt.add_stream_mapping("orders", "orders", batch_size=10)
        invoke, calls = rt._invoker.invoke, [0]

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return await invoke(*args, **kwargs)

        rt._invoker.invoke = counted  # type: ignore[method-assign]
        rt._invoker.closing = True  # as the close sets it
        await stream.put_records([(order(i), "k") for i in range(3)])
        await until(lambda: calls[0] >= 2, what="the batch refused, and tried again by a new poller")
        assert ledger(path) == []
        rt._invoker.closing = False
        await until(lambda: len(ledger(path)) == 3, what="the records, none skipped")


async def test_two_adds_of_one_mapping_at_once_start_it_once(tmp_path: Path) -> None:
    # A resume beside a user's add (or two control-plane calls) of one (stream, function):
    # both found none and both started, under one uuid; the second replaced the first in
    # the runtime's list, so removing the mapping left the first polling and delivering.
    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders")
        results = await asyncio.gather(
            rt.add_stream_mapping("orders", "orders"),
            rt.add_stream_mapping("orders", "orders"),
            return_exceptions=True,
        )
        [mapping] = [r for r in results if not isinstance(r, BaseException)]
        [refused] = [r for r in results if isinstance(r, BaseException)]
        assert isinstance(refused, InvalidConfig) and "exists already" in str(refused)
        assert rt.stream_mappings() == [mapping]
        await stream.put_records([(order(i), "k") for i in range(3)])
        await until(lambda: len(ledger(path)) == 3, what="delivered")
        await rt.remove_stream_mapping(mapping)
        pollers = [t for t in asyncio.all_tasks() if mapping.uuid in t.get_name()]
        await until(lambda: all(t.done() for t in pollers), what="every poller of the mapping ended")
        await rt.wait_idle()
    assert sorted(e["id"] for e in ledger(path)) == [0, 1, 2]


async def test_a_mapping_removed_by_another_host_stops_here_without_delivering_again(tmp_path: Path) -> None:
    # Both hosts run the mapping (B resumed it); B removes it, and its checkpoints and leases
    # go. A took the shard again and read it from the beginning (no checkpoint): every record
    # a second time, and A kept the mapping for good.
    state = tmp_path / "state"
    async with Runtime(state_dir=state) as a, Runtime(state_dir=state) as b:
        path = await orders_function(a, tmp_path)
        await orders_function(b, tmp_path)
        stream = await a.create_stream("orders")
        await stream.put_records([(order(i), "k") for i in range(3)])
        await a.add_stream_mapping("orders", "orders", lease_seconds=3, poll_interval=60)
        [theirs] = await b.resume_stream_mappings()
        await until(lambda: len(ledger(path)) == 3, what="delivered")
        await b.remove_stream_mapping(theirs)
        await stream.put_records([(order(3), "k")])  # wakes A's mapping
        await until(lambda: a.stream_mappings() == [], what="A forgets the mapping")
        await a.wait_idle()
        assert (await a.get_stream("orders")).name == "orders"  # the stream stays
    assert sorted(e["id"] for e in ledger(path)) == [0, 1, 2]


async def test_an_update_cannot_move_the_starting_position(tmp_path: Path) -> None:
    # The starting position is a new mapping's only (Lambda's UpdateEventSourceMapping has
    # none). An update to AT_TIMESTAMP with a timestamp to come was accepted: the new
    # pollers passed over, and checkpointed past, every record put before it.
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders")
        mapping = await rt.add_stream_mapping("orders", "orders", starting_position="TRIM_HORIZON")
        for change in (
            {"starting_position": "AT_TIMESTAMP", "starting_position_timestamp": clock.time() + 600},
            {"starting_position": "LATEST"},
        ):
            with pytest.raises(InvalidConfig, match="starting position"):
                await rt.update_stream_mapping(mapping, **change)
        same = await rt.update_stream_mapping(mapping, starting_position="TRIM_HORIZON", batch_size=5)
        assert same.config.batch_size == 5 and same.config.starting_position == "TRIM_HORIZON"
        await stream.put_records([(order(i), "k") for i in range(3)])
        await until(lambda: len(ledger(path)) == 3, clock, what="every record")
        await rt.wait_idle()
    assert sorted(e["id"] for e in ledger(path)) == [0, 1, 2]


async def test_adding_a_stored_mapping_again_resumes_it_from_its_checkpoints(tmp_path: Path) -> None:
    # A host that adds its mapping at each start "from now" (AT_TIMESTAMP, the time of the
    # start) resumes the stored one from its checkpoints: what arrived while it was down is
    # delivered. The new timestamp replaced the stored one, and the pollers passed over,
    # and checkpointed past, every record put before the restart.
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders")
        await rt.add_stream_mapping(
            "orders", "orders", starting_position="AT_TIMESTAMP", starting_position_timestamp=clock.time()
        )
        await stream.put_records([(order(0), "k")])
        await until(lambda: len(ledger(path)) == 1, clock, what="the first record")
        await rt.wait_idle()
    await clock.advance(60)
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        await orders_function(rt, tmp_path)
        stream = await rt.get_stream("orders")
        await stream.put_records([(order(1), "k")])  # while no mapping runs
        await clock.advance(60)
        mapping = await rt.add_stream_mapping(
            "orders", "orders", starting_position="AT_TIMESTAMP", starting_position_timestamp=clock.time()
        )
        await stream.put_records([(order(2), "k")])
        await until(lambda: len(ledger(path)) == 3, clock, what="the records since the restart")
        await rt.wait_idle()
        assert mapping.config.starting_position_timestamp < clock.time() - 60  # the stored one
    assert sorted(e["id"] for e in ledger(path)) == [0, 1, 2]


# -- event filtering (FilterCriteria) --------------------------------------------------

BUYS = {"data": {"type": ["buy"]}}


def kind(i: int) -> str:
    return "buy" if i % 2 == 0 else "sell"


async def test_filters_send_only_matching_records_and_checkpoint_past_the_rest(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        records: list[tuple[str | bytes, str]] = [
            (order(i, type="buy" if i % 3 == 0 else "sell"), "c") for i in range(9)
        ]
        records.insert(4, (b"\x00not json: the handler would fail on it", "c"))
        records.append((order(9, type="sell"), "vip"))  # the last record passes no filter
        placed = await stream.put_records(records)
        vip = {"partitionKey": ["vip"], "data": {"id": [3]}}
        mapping = await rt.add_stream_mapping("orders", "orders", batch_size=3, filters=[BUYS, vip])
        assert mapping.config.filters == (json.dumps(BUYS), json.dumps(vip))
        await until(lambda: len(ledger(path)) == 3, clock, what="the buy orders")

        async def checkpointed() -> bool:
            return (await mapping.checkpoints()).get(placed[0][0]) == placed[-1][1]

        await until(checkpointed, clock, what="the checkpoint at the last (filtered out) record")
        await rt.wait_idle()
        assert [e["id"] for e in ledger(path)] == [0, 3, 6]  # in order, nothing else
        # one batch of the three: a batch is of records that pass (not a batch read, then filtered)
        assert rt.metrics.counter("Invocations", "orders") == 1
        assert await mapping.failure_records() == []


async def test_a_round_of_only_filtered_out_records_invokes_nothing_and_still_checkpoints(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        mapping = await rt.add_stream_mapping("orders", "orders", batch_size=2, filters=[BUYS])
        placed = await stream.put_records([(order(i, type="sell"), "c") for i in range(5)])

        async def checkpointed() -> bool:
            return (await mapping.checkpoints()).get(placed[0][0]) == placed[-1][1]

        await until(checkpointed, clock, what="the checkpoint past the filtered-out records")
        await rt.wait_idle()
        assert rt.metrics.counter("Invocations", "orders") == 0 and ledger(path) == []
        await stream.put_records([(order(5, type="buy"), "c")])
        await until(lambda: ledger(path), clock, what="the next buy")
        assert [e["id"] for e in ledger(path)] == [5]


async def test_bisect_works_on_the_filtered_batch(tmp_path: Path) -> None:
    async with Runtime(state_dir=tmp_path) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        # the sells are poison too, but never delivered: only the buy with id 6 fails
        records = [(order(i, type=kind(i), poison=i % 2 == 1 or i == 6), "c") for i in range(12)]
        placed = await stream.put_records(records)
        mapping = await rt.add_stream_mapping(
            "orders",
            "orders",
            batch_size=12,
            bisect_on_error=True,
            max_retry_attempts=0,
            on_failure="dlq",
            filters=[BUYS],
        )
        [failure] = await until(mapping.failure_records, what="the poison buy")
        info = failure["KinesisBatchInfo"]
        assert info["batchSize"] == 1
        assert info["startSequenceNumber"] == info["endSequenceNumber"] == placed[6][1]
        await until(lambda: len(ledger(path)) == 5, what="the other buys")
        assert [e["id"] for e in ledger(path)] == [0, 2, 4, 8, 10]

        async def checkpointed() -> bool:
            return (await mapping.checkpoints()).get(placed[0][0]) == placed[-1][1]

        await until(checkpointed, what="the checkpoint past the last (filtered out) sell")


async def test_a_partial_batch_response_works_on_the_filtered_batch(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path, attr="process_orders_partial")
        stream = await rt.create_stream("orders", shard_count=1)
        records = [(order(i, type=kind(i), fail_times=1 if i == 4 else 0), "c") for i in range(8)]
        await stream.put_records(records)
        mapping = await rt.add_stream_mapping(
            "orders",
            "orders",
            batch_size=8,
            report_batch_item_failures=True,
            max_retry_attempts=3,
            filters=[BUYS],
        )
        await until(lambda: len(ledger(path)) == 4, clock, what="the buys")
        await rt.wait_idle()
        assert [e["id"] for e in ledger(path)] == [0, 2, 4, 6]  # each once, in order
        assert rt.metrics.counter("Invocations", "orders") == 2  # 0, 2 + fail at 4; then 4, 6
        assert await mapping.failure_records() == []


async def test_filters_are_changed_by_an_update_and_kept_over_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        mapping = await rt.add_stream_mapping("orders", "orders", filters=[BUYS])
        await stream.put_records([(order(0, type="sell"), "c"), (order(1, type="buy"), "c")])
        await until(lambda: len(ledger(path)) == 1, clock, what="the buy")
        await rt.wait_idle()
        updated = await rt.update_stream_mapping(mapping, batch_size=5)  # filters stay
        assert updated.config.filters == (json.dumps(BUYS),)
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        await orders_function(rt, tmp_path)
        [resumed] = await rt.resume_stream_mappings()
        assert resumed.config.filters == (json.dumps(BUYS),) and resumed.config.batch_size == 5
        stream = await rt.get_stream("orders")
        await stream.put_records([(order(2, type="sell"), "c"), (order(3, type="buy"), "c")])
        await until(lambda: len(ledger(path)) == 2, clock, what="the buy after the restart")
        await rt.wait_idle()
        unfiltered = await rt.update_stream_mapping(resumed, filters=[])  # removed
        assert unfiltered.config.filters == ()
        await stream.put_records([(order(4, type="sell"), "c")])
        await until(lambda: len(ledger(path)) == 3, clock, what="a sell, now that nothing filters")
        assert [e["id"] for e in ledger(path)] == [1, 3, 4]
        with pytest.raises(InvalidConfig, match="filter pattern"):
            await rt.update_stream_mapping(unfiltered, filters=['{"data": ["x"]}'])
        assert rt.stream_mappings()[0].config.filters == ()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        await orders_function(rt, tmp_path)
        [again] = await rt.resume_stream_mappings()
        assert again.config.filters == ()  # the removal was stored too


async def test_a_batching_window_counts_only_the_records_that_pass(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        await rt.add_stream_mapping("orders", "orders", batch_size=2, max_batching_window=60, filters=[BUYS])
        await stream.put_records([(order(i, type="buy" if i == 0 else "sell"), "c") for i in range(4)])
        await clock.advance(1)
        await rt.wait_idle()
        # four records read, one passes: the batch of two is not full, so it waits the window
        assert rt.metrics.counter("Invocations", "orders") == 0
        await stream.put_records([(order(4, type="buy"), "c")])
        await until(lambda: ledger(path), what="the full batch (the clock stands still)")
        await rt.wait_idle()
        assert [e["id"] for e in ledger(path)] == [0, 4]
        assert rt.metrics.counter("Invocations", "orders") == 1


async def test_filters_on_large_records_decode_them_off_the_event_loop(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Runtime(state_dir=tmp_path, clock=clock) as rt:
        path = await orders_function(rt, tmp_path)
        stream = await rt.create_stream("orders", shard_count=1)
        pad = "x" * 150_000  # four of these are over what is decoded on the loop
        await stream.put_records([(order(i, type=kind(i), pad=pad), "c") for i in range(4)])
        await rt.add_stream_mapping("orders", "orders", batch_size=4, filters=[BUYS])
        await until(lambda: len(ledger(path)) == 2, clock, what="the large buys")
        await rt.wait_idle()
        assert [e["id"] for e in ledger(path)] == [0, 2]
        assert rt.metrics.counter("Invocations", "orders") == 1
