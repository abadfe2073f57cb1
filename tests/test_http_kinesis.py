"""Kinesis' data plane on the fnrt port, driven by boto3's ``kinesis`` client."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import pytest

import fnrt

aiohttp = pytest.importorskip("aiohttp")
boto3 = pytest.importorskip("boto3")
from botocore.config import Config

from fnrt.http import InvokeServer

from .conftest import read_jsonl, wait_until


def kinesis_client(url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "kinesis",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="fnrt",
        aws_secret_access_key="fnrt",
        config=Config(retries={"total_max_attempts": 1}),
    )


async def call(fn, **kwargs):
    return await asyncio.to_thread(fn, **kwargs)


@pytest.fixture
async def served():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt, InvokeServer(rt, port=0) as server:
        yield rt, server, kinesis_client(server.url), clock


async def test_create_describe_list(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="orders", ShardCount=3)
    await call(kinesis.create_stream, StreamName="audit", ShardCount=1)
    with pytest.raises(kinesis.exceptions.ResourceInUseException):
        await call(kinesis.create_stream, StreamName="orders", ShardCount=1)
    desc = (await call(kinesis.describe_stream, StreamName="orders"))["StreamDescription"]
    assert desc["StreamStatus"] == "ACTIVE" and len(desc["Shards"]) == 3 and desc["HasMoreShards"] is False
    assert desc["StreamARN"] == "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
    assert desc["RetentionPeriodHours"] == 24
    summary = (await call(kinesis.describe_stream_summary, StreamARN=desc["StreamARN"]))[
        "StreamDescriptionSummary"
    ]
    assert summary["OpenShardCount"] == 3 and summary["StreamName"] == "orders"
    listed = await call(kinesis.list_streams)
    assert listed["StreamNames"] == ["audit", "orders"] and listed["HasMoreStreams"] is False
    page = await call(kinesis.list_streams, Limit=1)
    assert page["StreamNames"] == ["audit"] and page["HasMoreStreams"] is True
    shards = await call(kinesis.list_shards, StreamName="orders", MaxResults=2)
    assert len(shards["Shards"]) == 2 and shards["NextToken"]
    rest = await call(kinesis.list_shards, NextToken=shards["NextToken"])
    assert [s["ShardId"] for s in shards["Shards"] + rest["Shards"]] == [s["ShardId"] for s in desc["Shards"]]
    with pytest.raises(kinesis.exceptions.ResourceNotFoundException) as info:
        await call(kinesis.describe_stream, StreamName="ghost")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_put_and_get_records_in_order(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    shard = (await call(kinesis.list_shards, StreamName="s"))["Shards"][0]["ShardId"]
    latest = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=shard,
                         ShardIteratorType="LATEST"))["ShardIterator"]
    one = await call(kinesis.put_record, StreamName="s", Data=b"\x00first", PartitionKey="k")
    assert one["ShardId"] == shard and one["SequenceNumber"].isdigit()
    many = await call(
        kinesis.put_records,
        StreamName="s",
        Records=[{"Data": f"r{i}".encode(), "PartitionKey": f"p{i}"} for i in range(5)],
    )
    assert many["FailedRecordCount"] == 0 and len(many["Records"]) == 5
    horizon = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=shard,
                          ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    got = await call(kinesis.get_records, ShardIterator=horizon, Limit=4)
    assert [r["Data"] for r in got["Records"]] == [b"\x00first", b"r0", b"r1", b"r2"]
    assert got["Records"][0]["PartitionKey"] == "k"
    rest = await call(kinesis.get_records, ShardIterator=got["NextShardIterator"])
    assert [r["Data"] for r in rest["Records"]] == [b"r3", b"r4"]
    empty = await call(kinesis.get_records, ShardIterator=rest["NextShardIterator"])
    assert empty["Records"] == [] and empty["NextShardIterator"]
    # LATEST was taken before any put: it sees every record put after it
    assert len((await call(kinesis.get_records, ShardIterator=latest))["Records"]) == 6
    seq = many["Records"][2]["SequenceNumber"]
    at = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=shard,
                     ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=seq))["ShardIterator"]
    assert (await call(kinesis.get_records, ShardIterator=at, Limit=1))["Records"][0]["Data"] == b"r2"
    after = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=shard,
                        ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=seq))
    first = (await call(kinesis.get_records, ShardIterator=after["ShardIterator"], Limit=1))["Records"][0]
    assert first["Data"] == b"r3"


async def test_iterators_expire_after_five_minutes(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    it = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId="shardId-000000000000",
                     ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    await clock.advance(301)
    with pytest.raises(kinesis.exceptions.ExpiredIteratorException):
        await call(kinesis.get_records, ShardIterator=it)
    with pytest.raises(kinesis.exceptions.InvalidArgumentException):
        await call(kinesis.get_records, ShardIterator="not-a-token")


async def test_put_records_reports_per_record_throughput_failures(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    batch = [{"Data": b"x", "PartitionKey": str(i)} for i in range(500)]
    assert (await call(kinesis.put_records, StreamName="s", Records=batch))["FailedRecordCount"] == 0
    assert (await call(kinesis.put_records, StreamName="s", Records=batch))["FailedRecordCount"] == 0
    # the shard's 1,000 records/s are used up (the fake clock does not move)
    third = await call(kinesis.put_records, StreamName="s", Records=batch[:3])
    assert third["FailedRecordCount"] == 3
    assert third["Records"][0]["ErrorCode"] == "ProvisionedThroughputExceededException"
    assert "Rate exceeded" in third["Records"][0]["ErrorMessage"]
    with pytest.raises(kinesis.exceptions.ProvisionedThroughputExceededException):
        await call(kinesis.put_record, StreamName="s", Data=b"x", PartitionKey="k")
    await clock.advance(0.01)  # 10 records' worth of allowance refills
    partial = await call(kinesis.put_records, StreamName="s", Records=batch[:15])
    assert partial["FailedRecordCount"] == 5
    assert [("ShardId" in r) for r in partial["Records"]] == [True] * 10 + [False] * 5


async def test_bad_requests_are_kinesis_errors(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    with pytest.raises(kinesis.exceptions.InvalidArgumentException):
        await call(kinesis.put_record, StreamName="s", Data=b"x", PartitionKey="k",
                   ExplicitHashKey=str(2**128))  # the pattern's digits, past the range
    with pytest.raises(kinesis.exceptions.ResourceNotFoundException):
        await call(kinesis.put_record, StreamName="nope", Data=b"x", PartitionKey="k")
    async with aiohttp.ClientSession() as session:
        for target, body, error in (
            ("Kinesis_20131202.NoSuchOp", b"{}", "UnknownOperationException"),
            ("Kinesis_20131202.PutRecord", b"{nope", "SerializationException"),
        ):
            async with session.post(server.url + "/", data=body, headers={
                "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"
            }) as resp:
                assert resp.status == 400
                assert (await resp.json(content_type=None))["__type"] == error
        async with session.post(server.url + "/", data=b"\xa0", headers={
            "X-Amz-Target": "Kinesis_20131202.ListStreams", "Content-Type": "application/x-amz-cbor-1.1"
        }) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 400 and "CBOR" in body["message"]


async def test_split_and_merge_then_read_the_closed_parent_to_its_end(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    await call(kinesis.put_record, StreamName="s", Data=b"before", PartitionKey="k")
    parent = "shardId-000000000000"
    await call(kinesis.split_shard, StreamName="s", ShardToSplit=parent,
               NewStartingHashKey=str(2**127))
    shards = (await call(kinesis.list_shards, StreamName="s"))["Shards"]
    children = [s["ShardId"] for s in shards if s.get("ParentShardId") == parent]
    assert len(children) == 2
    it = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=parent,
                     ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    page = await call(kinesis.get_records, ShardIterator=it)
    assert [r["Data"] for r in page["Records"]] == [b"before"]
    end = await call(kinesis.get_records, ShardIterator=page["NextShardIterator"])
    assert end["Records"] == [] and "NextShardIterator" not in end
    assert sorted(c["ShardId"] for c in end["ChildShards"]) == sorted(children)
    await call(kinesis.merge_shards, StreamName="s", ShardToMerge=children[0],
               AdjacentShardToMerge=children[1])
    summary = (await call(kinesis.describe_stream_summary, StreamName="s"))["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 1
    with pytest.raises(kinesis.exceptions.InvalidArgumentException) as closed:
        await call(kinesis.merge_shards, StreamName="s", ShardToMerge=children[0],
                   AdjacentShardToMerge=children[1])  # closed now
    assert "has already been merged or split" in str(closed.value)
    with pytest.raises(kinesis.exceptions.InvalidArgumentException):
        await call(kinesis.split_shard, StreamName="s", ShardToSplit=parent, NewStartingHashKey="1")
    for unknown in (
        lambda: kinesis.split_shard(StreamName="s", ShardToSplit="shardId-000000000099",
                                    NewStartingHashKey="1"),
        lambda: kinesis.merge_shards(StreamName="s", ShardToMerge="shardId-000000000003",
                                     AdjacentShardToMerge="shardId-000000000099"),
    ):
        with pytest.raises(kinesis.exceptions.ResourceNotFoundException):
            await asyncio.to_thread(unknown)


async def test_list_shards_filters_as_kinesis_does(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=2)
    first, second = "shardId-000000000000", "shardId-000000000001"
    await call(kinesis.split_shard, StreamName="s", ShardToSplit=first, NewStartingHashKey=str(2**126))

    async def listed(**options):
        return [s["ShardId"] for s in (await call(kinesis.list_shards, StreamName="s", **options))["Shards"]]

    everything = await listed()
    assert len(everything) == 4 and everything[:2] == [first, second]
    assert await listed(ShardFilter={"Type": "AT_LATEST"}) == everything[1:]  # the closed parent goes
    assert await listed(ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": second}) == everything[2:]
    assert await listed(ShardFilter={"Type": "FROM_TRIM_HORIZON"}) == everything
    # the filter and a new MaxResults hold across pages
    page = await call(kinesis.list_shards, StreamName="s", MaxResults=1, ShardFilter={"Type": "AT_LATEST"})
    rest = await call(kinesis.list_shards, NextToken=page["NextToken"], MaxResults=5)
    assert [s["ShardId"] for s in page["Shards"] + rest["Shards"]] == everything[1:]
    with pytest.raises(kinesis.exceptions.InvalidArgumentException, match="AT_TIMESTAMP"):
        await listed(ShardFilter={"Type": "AT_TIMESTAMP", "Timestamp": 0})


async def test_records_put_with_boto3_reach_a_mapped_function(served):
    rt, server, kinesis, clock = served
    await rt.deploy("handlers.orders")
    await call(kinesis.create_stream, StreamName="orders", ShardCount=1)
    await rt.add_stream_mapping("orders", "discard", batch_size=10)
    await call(kinesis.put_records, StreamName="orders",
               Records=[{"Data": b'{"id": 1}', "PartitionKey": "c"}])
    await wait_until(lambda: rt.stats()["functions"]["discard"]["invocations"] == 1)


async def test_a_forged_iterator_is_invalid_argument(served):
    import base64 as b64
    import json as js

    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    forged = b64.urlsafe_b64encode(js.dumps(
        {"s": "s", "h": "shardId-000000000000", "a": "12", "t": clock.time()}
    ).encode()).decode()
    with pytest.raises(kinesis.exceptions.InvalidArgumentException):
        await call(kinesis.get_records, ShardIterator=forged)


async def test_at_timestamp_iterator(served):
    import datetime

    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    await call(kinesis.put_record, StreamName="s", Data=b"old", PartitionKey="k")
    await clock.advance(10)
    middle = clock.time() - 5
    await call(kinesis.put_record, StreamName="s", Data=b"new", PartitionKey="k")
    it = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId="shardId-000000000000",
                     ShardIteratorType="AT_TIMESTAMP",
                     Timestamp=datetime.datetime.fromtimestamp(middle, datetime.UTC)))["ShardIterator"]
    got = await call(kinesis.get_records, ShardIterator=it)
    assert [r["Data"] for r in got["Records"]] == [b"new"]
    arrival = got["Records"][0]["ApproximateArrivalTimestamp"].timestamp()
    assert arrival == pytest.approx(clock.time(), abs=1)


def error_code(exc: pytest.ExceptionInfo[Exception]) -> tuple[str, int]:
    response = exc.value.response  # type: ignore[attr-defined]
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


async def test_stream_names_must_match_kinesis_pattern(served):
    rt, server, kinesis, clock = served
    for bad in ("a/b", "a b", "x" * 129, "caf\u00e9"):
        with pytest.raises(kinesis.exceptions.ClientError) as info:
            await call(kinesis.create_stream, StreamName=bad, ShardCount=1)
        assert error_code(info) == ("ValidationException", 400), bad
    assert (await call(kinesis.list_streams))["StreamNames"] == []
    await call(kinesis.create_stream, StreamName="Orders_v2.eu-1" + "x" * 114, ShardCount=1)


async def test_hash_keys_off_the_pattern_are_validation_errors(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    shard = "shardId-000000000000"
    for bad in ("\u00b2", "\u0661", "-1", "01", "1e3", "1" * 40):
        with pytest.raises(kinesis.exceptions.ClientError) as info:
            await call(kinesis.put_record, StreamName="s", Data=b"x", PartitionKey="k", ExplicitHashKey=bad)
        assert error_code(info) == ("ValidationException", 400), bad
        with pytest.raises(kinesis.exceptions.ClientError) as info:
            await call(kinesis.put_records, StreamName="s",
                       Records=[{"Data": b"x", "PartitionKey": "k", "ExplicitHashKey": bad}])
        assert error_code(info) == ("ValidationException", 400), bad
        with pytest.raises(kinesis.exceptions.ClientError) as info:
            await call(kinesis.split_shard, StreamName="s", ShardToSplit=shard, NewStartingHashKey=bad)
        assert error_code(info) == ("ValidationException", 400), bad
    with pytest.raises(kinesis.exceptions.InvalidArgumentException):  # in the pattern, not the shard
        await call(kinesis.split_shard, StreamName="s", ShardToSplit=shard, NewStartingHashKey="0")
    assert len((await call(kinesis.list_shards, StreamName="s"))["Shards"]) == 1
    put = await call(kinesis.put_record, StreamName="s", Data=b"x", PartitionKey="k",
                     ExplicitHashKey=str(2**128 - 1))
    assert put["ShardId"] == shard


async def test_get_records_limit_outside_its_range_is_invalid_argument(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    it = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId="shardId-000000000000",
                     ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    async with aiohttp.ClientSession() as session:  # boto3 refuses Limit=0 before sending it
        for limit in (0, 10_001, -1):
            async with session.post(server.url + "/", json={"ShardIterator": it, "Limit": limit}, headers={
                "X-Amz-Target": "Kinesis_20131202.GetRecords", "Content-Type": "application/x-amz-json-1.1"
            }) as resp:
                assert resp.status == 400
                assert (await resp.json(content_type=None))["__type"] == "InvalidArgumentException"
    assert (await call(kinesis.get_records, ShardIterator=it, Limit=10_000))["Records"] == []


async def test_get_records_returns_at_most_10_mib_per_call(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    stream = await rt.get_stream("s")
    mib = 1024 * 1024
    # twelve records of 1 MiB each (data and partition key), put past the write limits
    await stream.put_records([(bytes([i]) * (mib - 1), "k") for i in range(12)])
    it = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId="shardId-000000000000",
                     ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    first = await call(kinesis.get_records, ShardIterator=it)
    assert [r["Data"][0] for r in first["Records"]] == list(range(10))  # 10 MiB exactly: not past it
    rest = await call(kinesis.get_records, ShardIterator=first["NextShardIterator"])
    assert [r["Data"][0] for r in rest["Records"]] == [10, 11]  # on after the last returned
    # one byte more per record: the tenth would pass 10 MiB
    await stream.put_records([(bytes([i]) * mib, "k") for i in range(12, 23)])
    page = await call(kinesis.get_records, ShardIterator=rest["NextShardIterator"], Limit=10)
    assert [r["Data"][0] for r in page["Records"]] == list(range(12, 21))


async def test_a_sequence_number_outside_the_shards_range_is_invalid_argument(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    parent = "shardId-000000000000"
    old = (await call(kinesis.put_record, StreamName="s", Data=b"old", PartitionKey="k"))["SequenceNumber"]
    await call(kinesis.split_shard, StreamName="s", ShardToSplit=parent, NewStartingHashKey=str(2**127))
    new = await call(kinesis.put_record, StreamName="s", Data=b"new", PartitionKey="k")
    for kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
        with pytest.raises(kinesis.exceptions.InvalidArgumentException):  # before the child's start
            await call(kinesis.get_shard_iterator, StreamName="s", ShardId=new["ShardId"],
                       ShardIteratorType=kind, StartingSequenceNumber=old)
        with pytest.raises(kinesis.exceptions.InvalidArgumentException):  # past the parent's end
            await call(kinesis.get_shard_iterator, StreamName="s", ShardId=parent,
                       ShardIteratorType=kind, StartingSequenceNumber=new["SequenceNumber"])
    at = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=parent,
                     ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=old))["ShardIterator"]
    assert [r["Data"] for r in (await call(kinesis.get_records, ShardIterator=at))["Records"]] == [b"old"]
    at = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=new["ShardId"],
                     ShardIteratorType="AT_SEQUENCE_NUMBER",
                     StartingSequenceNumber=new["SequenceNumber"]))["ShardIterator"]
    assert [r["Data"] for r in (await call(kinesis.get_records, ShardIterator=at))["Records"]] == [b"new"]


@pytest.mark.parametrize("position", ["LATEST", "AT_TIMESTAMP"])
async def test_update_event_source_mapping_keeps_its_place(served, tmp_path: Path, position: str):
    rt, server, kinesis, clock = served
    ledger = tmp_path / "ledger.jsonl"
    await rt.add_function("orders", "handlers.orders:process_orders",
                          environment={"ORDERS_LEDGER": str(ledger)})
    lam = boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="fnrt", aws_secret_access_key="fnrt",
                       config=Config(retries={"total_max_attempts": 1}))
    await call(kinesis.create_stream, StreamName="orders", ShardCount=2)
    arn = (await call(kinesis.describe_stream_summary, StreamName="orders"))[
        "StreamDescriptionSummary"]["StreamARN"]

    async def put(i: int) -> None:
        await call(kinesis.put_record, StreamName="orders", Data=json.dumps({"id": i}).encode(),
                   PartitionKey=f"c{i}")

    await put(0)  # before the mapping: not delivered
    await clock.advance(10)
    start: dict = {"StartingPosition": position}
    if position == "AT_TIMESTAMP":
        start["StartingPositionTimestamp"] = datetime.datetime.fromtimestamp(clock.time(), datetime.UTC)
    uuid = (await call(lam.create_event_source_mapping, EventSourceArn=arn, FunctionName="orders",
                       BatchSize=10, **start))["UUID"]
    await put(1)
    await wait_until(lambda: len(read_jsonl(ledger)) == 1, "the first order", clock=clock)

    updated = await call(lam.update_event_source_mapping, UUID=uuid, BatchSize=5)
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 202 and updated["BatchSize"] == 5
    assert (await call(lam.get_event_source_mapping, UUID=uuid))["State"] == "Enabled"
    await put(2)
    await wait_until(lambda: len(read_jsonl(ledger)) == 2, "an order after the update", clock=clock)

    await call(lam.update_event_source_mapping, UUID=uuid, Enabled=False)
    await put(3)
    await rt.wait_idle()
    assert len(read_jsonl(ledger)) == 2
    enabling = await call(lam.update_event_source_mapping, UUID=uuid, Enabled=True)
    assert enabling["State"] == "Enabling"
    assert (await call(lam.get_event_source_mapping, UUID=uuid))["State"] == "Enabled"
    await wait_until(lambda: len(read_jsonl(ledger)) == 3, "the order put while disabled", clock=clock)
    await rt.wait_idle()
    assert sorted(line["id"] for line in read_jsonl(ledger)) == [1, 2, 3]


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:kinesis:eu-west-1:000000000000:stream/orders",  # another region
        "arn:aws:kinesis:us-east-1:999999999999:stream/orders",  # another account
    ],
)
async def test_another_regions_or_accounts_stream_arn_is_not_found(served, arn):
    rt, server, kinesis, clock = served
    await rt.create_stream("orders", shard_count=1)
    with pytest.raises(kinesis.exceptions.ResourceNotFoundException):
        await call(kinesis.describe_stream_summary, StreamARN=arn)


async def test_delete_stream_takes_its_records_and_keeps_its_mappings_disabled(served, tmp_path: Path):
    # Lambda keeps a mapping whose stream is deleted: listed, disabled by Lambda, its last
    # result saying the stream is gone. fnrt deleted the mappings with the stream.
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    lam = boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="fnrt", aws_secret_access_key="fnrt",
                       config=Config(retries={"total_max_attempts": 1}))
    release = tmp_path / "release"
    await rt.add_function(
        "held", "handlers.orders:process_when_released", environment={"ORDERS_RELEASE": str(release)}
    )
    await call(kinesis.create_stream, StreamName="orders", ShardCount=2)
    await call(kinesis.create_stream, StreamName="other", ShardCount=1)
    mapping = await rt.add_stream_mapping("orders", "held")
    kept = await rt.add_stream_mapping("other", "held")
    await call(kinesis.put_record, StreamName="orders", Data=b'{"id": 1}', PartitionKey="c")
    await wait_until(lambda: rt.stats()["functions"]["held"]["in_flight"] == 1, "a batch in flight")

    # deleted while its batch runs: the mapping stops polling, and stays
    assert await call(kinesis.delete_stream, StreamName="orders", EnforceConsumerDeletion=True) is not None
    assert sorted(m.uuid for m in rt.stream_mappings()) == sorted([mapping.uuid, kept.uuid])
    assert await rt.list_streams() == ["other"]
    shape = await call(lam.get_event_source_mapping, UUID=mapping.uuid)
    assert (shape["State"], shape["StateTransitionReason"]) == ("Disabled", "Lambda initiated")
    assert shape["LastProcessingResult"] == "PROBLEM: Stream not found"
    assert shape["EventSourceArn"].endswith(":stream/orders")
    listed = (await call(lam.list_event_source_mappings, FunctionName="held"))["EventSourceMappings"]
    assert sorted(m["UUID"] for m in listed) == sorted([mapping.uuid, kept.uuid])
    assert (await call(lam.get_event_source_mapping, UUID=kept.uuid))["State"] == "Enabled"
    for request in (
        lambda: kinesis.describe_stream_summary(StreamName="orders"),
        lambda: kinesis.put_record(StreamName="orders", Data=b"x", PartitionKey="c"),
        lambda: kinesis.delete_stream(StreamName="orders"),
    ):
        with pytest.raises(ClientError) as raised:
            await asyncio.to_thread(request)
        assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(fnrt.StreamNotFound):
        await rt.get_stream("orders")
    release.touch()
    await rt.wait_idle()  # nothing polls the gone stream, and nothing failed
    assert rt.stats()["background_failures"] == 0

    # the name can be used again: the old mapping holds the (stream, function) pair until
    # it is deleted, as Lambda's does; then a new one reads the new, empty stream
    await call(kinesis.create_stream, StreamName="orders", ShardCount=1)
    arn = (await call(kinesis.describe_stream_summary, StreamName="orders"))["StreamDescriptionSummary"][
        "StreamARN"
    ]
    with pytest.raises(lam.exceptions.ResourceConflictException):
        await call(lam.create_event_source_mapping, EventSourceArn=arn, FunctionName="held",
                   StartingPosition="TRIM_HORIZON")
    deleted = await call(lam.delete_event_source_mapping, UUID=mapping.uuid)
    assert deleted["State"] == "Deleting"
    again = await rt.add_stream_mapping("orders", "held")
    assert again.uuid != mapping.uuid and await again.checkpoints() == {}
    await call(kinesis.put_record, StreamName="orders", Data=b'{"id": 2}', PartitionKey="c")
    await wait_until(again.checkpoints, "the new stream's checkpoint")


async def test_create_stream_takes_its_capacity_mode(served):
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    # on demand: no ShardCount; the capacity it starts with, four shards' worth of writes
    await call(kinesis.create_stream, StreamName="auto", StreamModeDetails={"StreamMode": "ON_DEMAND"})
    assert len((await call(kinesis.list_shards, StreamName="auto"))["Shards"]) == 4
    provisioned = {"StreamMode": "PROVISIONED"}
    await call(kinesis.create_stream, StreamName="set", ShardCount=2, StreamModeDetails=provisioned)
    assert len((await call(kinesis.list_shards, StreamName="set"))["Shards"]) == 2
    for request, code in (
        ({"StreamModeDetails": {"StreamMode": "SERVERLESS"}}, "ValidationException"),
        ({"StreamModeDetails": {"StreamMode": "ON_DEMAND"}, "ShardCount": 2}, "InvalidArgumentException"),
    ):
        with pytest.raises(ClientError) as raised:
            await call(kinesis.create_stream, StreamName="bad", **request)
        assert raised.value.response["Error"]["Code"] == code, request
    assert await rt.list_streams() == ["auto", "set"]  # nothing half made


async def test_shards_past_the_account_limit_are_limit_exceeded(served, monkeypatch):
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served

    async def error_code(fn, **kwargs):
        with pytest.raises(ClientError) as raised:
            await call(fn, **kwargs)
        return raised.value.response["Error"]["Code"]

    huge = await error_code(kinesis.create_stream, StreamName="huge", ShardCount=10_001)
    assert huge == "LimitExceededException"
    # the limit counts open shards over every stream: a split opens one more
    monkeypatch.setattr("fnrt._http_kinesis.SHARD_LIMIT", 3)
    await call(kinesis.create_stream, StreamName="a", ShardCount=2)
    assert await error_code(kinesis.create_stream, StreamName="b", ShardCount=2) == "LimitExceededException"
    split = kinesis.split_shard
    await call(split, StreamName="a", ShardToSplit="shardId-000000000000", NewStartingHashKey="1")
    second = {"ShardToSplit": "shardId-000000000001", "NewStartingHashKey": str(2**127 + 1)}  # in its range
    code = await error_code(split, StreamName="a", **second)
    assert code == "LimitExceededException"
    assert await rt.list_streams() == ["a"]
    assert len(await (await rt.get_stream("a")).shards()) == 4  # 3 open, 1 closed


async def test_a_stream_another_host_deleted_is_gone_here_too(tmp_path: Path):
    # Two hosts on one store: B deletes the stream that A's HTTP face had answered for. A
    # kept it in its cache: Describe answered a stream without shards, and CreateStream
    # refused to make it again ("already exists").
    from botocore.exceptions import ClientError

    state = tmp_path / "state"
    async with fnrt.Runtime(state_dir=state) as a, fnrt.Runtime(state_dir=state) as b:
        async with InvokeServer(a, port=0) as server:
            kinesis = kinesis_client(server.url)
            await call(kinesis.create_stream, StreamName="orders", ShardCount=2)
            await call(kinesis.put_record, StreamName="orders", Data=b"x", PartitionKey="c")
            await b.delete_stream("orders")
            with pytest.raises(ClientError) as raised:
                await call(kinesis.describe_stream_summary, StreamName="orders")
            assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
            with pytest.raises(fnrt.StreamNotFound):
                await a.get_stream("orders")
            await call(kinesis.create_stream, StreamName="orders", ShardCount=1)
            summary = await call(kinesis.describe_stream_summary, StreamName="orders")
            assert summary["StreamDescriptionSummary"]["OpenShardCount"] == 1


async def test_the_capacity_mode_is_kept_reported_and_updated(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="auto", StreamModeDetails={"StreamMode": "ON_DEMAND"})
    await call(kinesis.create_stream, StreamName="set", ShardCount=1)

    async def modes() -> list[tuple[str, str, str]]:
        out = []
        for name in ("auto", "set"):
            described = (await call(kinesis.describe_stream, StreamName=name))["StreamDescription"]
            summary = await call(kinesis.describe_stream_summary, StreamName=name)
            mode = summary["StreamDescriptionSummary"]["StreamModeDetails"]["StreamMode"]
            out.append((described["StreamModeDetails"]["StreamMode"], mode))
        listed = (await call(kinesis.list_streams))["StreamSummaries"]
        return [(*m, s["StreamModeDetails"]["StreamMode"]) for m, s in zip(out, listed, strict=True)]

    assert await modes() == [("ON_DEMAND",) * 3, ("PROVISIONED",) * 3]
    arn = (await call(kinesis.describe_stream_summary, StreamName="auto"))["StreamDescriptionSummary"][
        "StreamARN"
    ]
    await call(kinesis.update_stream_mode, StreamARN=arn, StreamModeDetails={"StreamMode": "PROVISIONED"})
    set_arn = arn.replace("/auto", "/set")
    await call(kinesis.update_stream_mode, StreamARN=set_arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    assert await modes() == [("PROVISIONED",) * 3, ("ON_DEMAND",) * 3]
    assert len((await call(kinesis.list_shards, StreamName="auto"))["Shards"]) == 4  # shards stay
    from botocore.exceptions import ClientError

    for request, code in (
        ({"StreamARN": arn, "StreamModeDetails": {"StreamMode": "SERVERLESS"}}, "ValidationException"),
        ({"StreamARN": arn.replace("/auto", "/ghost"), "StreamModeDetails": {"StreamMode": "ON_DEMAND"}},
         "ResourceNotFoundException"),
    ):
        with pytest.raises(ClientError) as raised:
            await call(kinesis.update_stream_mode, **request)
        assert raised.value.response["Error"]["Code"] == code, request
    assert (await (await rt.get_stream("auto")).info())["mode"] == "PROVISIONED"


async def test_retention_is_increased_and_decreased_and_records_past_it_go(served):
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)

    async def hours() -> int:
        summary = (await call(kinesis.describe_stream_summary, StreamName="s"))["StreamDescriptionSummary"]
        return int(summary["RetentionPeriodHours"])

    await call(kinesis.increase_stream_retention_period, StreamName="s", RetentionPeriodHours=72)
    assert await hours() == 72
    for fn, value in (
        (kinesis.increase_stream_retention_period, 48),  # not an increase
        (kinesis.decrease_stream_retention_period, 100),  # not a decrease
        (kinesis.decrease_stream_retention_period, 23),  # under the minimum
        (kinesis.increase_stream_retention_period, 8761),  # over the maximum
    ):
        with pytest.raises(ClientError) as raised:
            await call(fn, StreamName="s", RetentionPeriodHours=value)
        assert raised.value.response["Error"]["Code"] == "InvalidArgumentException", (fn, value)
    with pytest.raises(kinesis.exceptions.ResourceNotFoundException):
        await call(kinesis.increase_stream_retention_period, StreamName="ghost", RetentionPeriodHours=48)
    assert await hours() == 72

    # a record older than the retention goes at the next trim; under it, it stays
    await call(kinesis.put_record, StreamName="s", Data=b"old", PartitionKey="k")
    await clock.advance(50 * 3600)
    await call(kinesis.put_record, StreamName="s", Data=b"new", PartitionKey="k")
    shard = (await call(kinesis.list_shards, StreamName="s"))["Shards"][0]["ShardId"]

    async def trimmed_then_read() -> list[bytes]:
        await (await rt._state.store()).streams.trim_expired(clock.time())  # the maintenance's trim
        iterator = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=shard,
                               ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
        return [r["Data"] for r in (await call(kinesis.get_records, ShardIterator=iterator))["Records"]]

    assert await trimmed_then_read() == [b"old", b"new"]  # 50 h < 72 h
    await call(kinesis.decrease_stream_retention_period, StreamName="s", RetentionPeriodHours=24)
    assert await hours() == 24
    assert await trimmed_then_read() == [b"new"]


async def test_create_stream_with_too_many_tags_makes_no_stream(served):
    # The tags were checked after the stream was made: CreateStream failed, and the stream
    # was there all the same (its retry: ResourceInUseException).
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    too_many = {f"k{i}": "v" for i in range(51)}
    with pytest.raises(ClientError) as raised:
        await call(kinesis.create_stream, StreamName="s", ShardCount=1, Tags=too_many)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert (await call(kinesis.list_streams))["StreamNames"] == []
    await call(kinesis.create_stream, StreamName="s", ShardCount=1, Tags={f"k{i}": "v" for i in range(50)})
    assert len((await call(kinesis.list_tags_for_stream, StreamName="s"))["Tags"]) == 50


async def test_stream_tags_are_added_listed_and_removed(served):
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1, Tags={"team": "a"})
    await call(kinesis.add_tags_to_stream, StreamName="s", Tags={"env": "prod", "team": "b", "empty": ""})
    listed = await call(kinesis.list_tags_for_stream, StreamName="s")
    assert listed["Tags"] == [{"Key": "empty", "Value": ""}, {"Key": "env", "Value": "prod"},
                              {"Key": "team", "Value": "b"}]
    assert listed["HasMoreTags"] is False
    page = await call(kinesis.list_tags_for_stream, StreamName="s", Limit=1, ExclusiveStartTagKey="empty")
    assert page["Tags"] == [{"Key": "env", "Value": "prod"}] and page["HasMoreTags"] is True
    await call(kinesis.remove_tags_from_stream, StreamName="s", TagKeys=["env", "absent"])
    listed = await call(kinesis.list_tags_for_stream, StreamName="s")
    assert [t["Key"] for t in listed["Tags"]] == ["empty", "team"]
    with pytest.raises(ClientError) as raised:  # 50 tags a stream at most
        await call(kinesis.add_tags_to_stream, StreamName="s", Tags={f"k{i}": "v" for i in range(49)})
    assert raised.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert len((await call(kinesis.list_tags_for_stream, StreamName="s"))["Tags"]) == 2  # nothing added
    with pytest.raises(kinesis.exceptions.ResourceNotFoundException):
        await call(kinesis.list_tags_for_stream, StreamName="ghost")


@pytest.mark.parametrize(("start", "target"), [(1, 2), (2, 4), (3, 5), (4, 2), (5, 3), (3, 3)])
async def test_update_shard_count_makes_uniform_shards_from_the_open_ones(served, start, target):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=start)
    keys = [f"k{i}" for i in range(40)]
    await call(kinesis.put_records, StreamName="s",
               Records=[{"Data": key.encode(), "PartitionKey": key} for key in keys])
    answer = await call(kinesis.update_shard_count, StreamName="s", TargetShardCount=target,
                        ScalingType="UNIFORM_SCALING")
    assert (answer["CurrentShardCount"], answer["TargetShardCount"]) == (start, target)
    assert answer["StreamARN"].endswith(":stream/s")
    shards = (await call(kinesis.list_shards, StreamName="s"))["Shards"]
    open_ranges = [
        (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]))
        for s in shards
        if "EndingSequenceNumber" not in s["SequenceNumberRange"]
    ]
    step = 2**128 // target  # as a stream created with the target count
    assert sorted(open_ranges) == [
        (i * step, 2**128 - 1 if i == target - 1 else (i + 1) * step - 1) for i in range(target)
    ]
    summary = (await call(kinesis.describe_stream_summary, StreamName="s"))["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == target
    # every record is still there, each in the shard (open or closed) its key was put to
    seen = []
    for shard in shards:
        iterator = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId=shard["ShardId"],
                               ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
        records = (await call(kinesis.get_records, ShardIterator=iterator))["Records"]
        seen += [r["Data"].decode() for r in records]
    assert sorted(seen) == sorted(keys)


async def test_update_shard_count_keeps_kinesis_limits(served):
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=2)
    await call(kinesis.create_stream, StreamName="auto", StreamModeDetails={"StreamMode": "ON_DEMAND"})
    for request, code in (
        ({"StreamName": "s", "TargetShardCount": 5, "ScalingType": "UNIFORM_SCALING"},
         "LimitExceededException"),
        ({"StreamName": "s", "TargetShardCount": 4, "ScalingType": "OTHER"}, "ValidationException"),
        ({"StreamName": "ghost", "TargetShardCount": 2, "ScalingType": "UNIFORM_SCALING"},
         "ResourceNotFoundException"),
        ({"StreamName": "auto", "TargetShardCount": 5, "ScalingType": "UNIFORM_SCALING"},
         "ValidationException"),
    ):
        with pytest.raises(ClientError) as raised:
            await call(kinesis.update_shard_count, **request)
        assert raised.value.response["Error"]["Code"] == code, request
    with pytest.raises(ClientError) as raised:  # resharding is the provisioned mode's
        await call(kinesis.split_shard, StreamName="auto", ShardToSplit="shardId-000000000000",
                   NewStartingHashKey="1")
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert len((await call(kinesis.list_shards, StreamName="s"))["Shards"]) == 2  # nothing changed
    await call(kinesis.update_shard_count, StreamName="s", TargetShardCount=1, ScalingType="UNIFORM_SCALING")
    summary = (await call(kinesis.describe_stream_summary, StreamName="s"))["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 1


async def test_millis_behind_latest_is_zero_once_a_page_reaches_the_newest_record(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    await call(kinesis.put_records, StreamName="s", Records=[{"Data": b"x", "PartitionKey": "k"}] * 5)
    await clock.advance(10)
    iterator = (await call(kinesis.get_shard_iterator, StreamName="s", ShardId="shardId-000000000000",
                           ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    first = await call(kinesis.get_records, ShardIterator=iterator, Limit=2)
    assert len(first["Records"]) == 2 and first["MillisBehindLatest"] == 10_000  # behind
    # exactly the rest: a full page (Limit records) that is caught up
    rest = await call(kinesis.get_records, ShardIterator=first["NextShardIterator"], Limit=3)
    assert len(rest["Records"]) == 3 and rest["MillisBehindLatest"] == 0
    empty = await call(kinesis.get_records, ShardIterator=rest["NextShardIterator"], Limit=3)
    assert empty["Records"] == [] and empty["MillisBehindLatest"] == 0


async def test_list_shards_pages_as_kinesis_does(served):
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="wide", ShardCount=1001)
    # past 1,000 MaxResults (and 100 for DescribeStream's Limit), at most that many
    page = await call(kinesis.list_shards, StreamName="wide", MaxResults=5000)
    assert len(page["Shards"]) == 1000 and page["NextToken"]
    described = (await call(kinesis.describe_stream, StreamName="wide", Limit=500))["StreamDescription"]
    assert len(described["Shards"]) == 100 and described["HasMoreShards"] is True
    arn = described["StreamARN"]
    for member in ({"StreamARN": arn}, {"ExclusiveStartShardId": "shardId-000000000000"}):
        with pytest.raises(ClientError) as raised:  # the token names the stream and the place
            await call(kinesis.list_shards, NextToken=page["NextToken"], **member)
        assert raised.value.response["Error"]["Code"] == "InvalidArgumentException", member
    rest = await call(kinesis.list_shards, NextToken=page["NextToken"])
    assert [s["ShardId"] for s in rest["Shards"]] == ["shardId-000000001000"] and "NextToken" not in rest
    # a token is good for 300 seconds
    await clock.advance(301)
    with pytest.raises(ClientError) as raised:
        await call(kinesis.list_shards, NextToken=page["NextToken"])
    assert raised.value.response["Error"]["Code"] == "ExpiredNextTokenException"


async def test_describe_limits_list_stream_consumers_and_sequence_number_for_ordering(served):
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="set", ShardCount=3)
    await call(kinesis.create_stream, StreamName="auto", StreamModeDetails={"StreamMode": "ON_DEMAND"})
    limits = await call(kinesis.describe_limits)
    assert (limits["OpenShardCount"], limits["OnDemandStreamCount"]) == (7, 1)
    assert limits["ShardLimit"] >= 7 and limits["OnDemandStreamCountLimit"] >= 1
    summary = await call(kinesis.describe_stream_summary, StreamName="set")
    arn = summary["StreamDescriptionSummary"]["StreamARN"]
    assert (await call(kinesis.list_stream_consumers, StreamARN=arn))["Consumers"] == []
    with pytest.raises(kinesis.exceptions.ResourceNotFoundException):
        await call(kinesis.list_stream_consumers, StreamARN=arn.replace("/set", "/ghost"))
    # a key's records are strictly ordered: what SequenceNumberForOrdering asks for
    first = await call(kinesis.put_record, StreamName="set", Data=b"1", PartitionKey="k")
    second = await call(kinesis.put_record, StreamName="set", Data=b"2", PartitionKey="k",
                        SequenceNumberForOrdering=first["SequenceNumber"])
    assert int(second["SequenceNumber"]) > int(first["SequenceNumber"])
    with pytest.raises(ClientError) as raised:
        await call(kinesis.put_record, StreamName="set", Data=b"3", PartitionKey="k",
                   SequenceNumberForOrdering="not-a-number")
    assert raised.value.response["Error"]["Code"] == "ValidationException"


async def test_a_sequence_number_of_another_shard_or_not_yet_given_is_invalid_argument(served):
    from botocore.exceptions import ClientError

    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=2)
    low = {"Data": b"a", "PartitionKey": "k", "ExplicitHashKey": "1"}  # shard 0
    high = {"Data": b"b", "PartitionKey": "k", "ExplicitHashKey": str(2**128 - 1)}  # shard 1
    placed = (await call(kinesis.put_records, StreamName="s", Records=[low, high, low, high]))["Records"]
    assert [p["ShardId"][-1] for p in placed] == ["0", "1", "0", "1"]
    numbers = [p["SequenceNumber"] for p in placed]

    async def code(shard: str, number: str) -> str | None:
        try:
            await call(kinesis.get_shard_iterator, StreamName="s", ShardId=f"shardId-00000000000{shard}",
                       ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=number)
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return None

    assert await code("0", numbers[2]) is None and await code("1", numbers[3]) is None  # their own
    assert await code("0", numbers[3]) == "InvalidArgumentException"  # shard 1's
    assert await code("1", numbers[2]) == "InvalidArgumentException"  # shard 0's
    not_yet = str(int(numbers[3]) + 1)
    assert await code("0", not_yet) == "InvalidArgumentException"  # given to no record yet


async def test_list_shards_at_trim_horizon_lists_the_shards_open_at_the_oldest_record_kept(served):
    rt, server, kinesis, clock = served
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    parent = "shardId-000000000000"

    async def at_trim_horizon() -> list[str]:
        shards = await call(kinesis.list_shards, StreamName="s", ShardFilter={"Type": "AT_TRIM_HORIZON"})
        return [s["ShardId"] for s in shards["Shards"]]

    assert await at_trim_horizon() == [parent]  # no record yet: the open shards
    await call(kinesis.put_record, StreamName="s", Data=b"old", PartitionKey="k")
    await call(kinesis.split_shard, StreamName="s", ShardToSplit=parent, NewStartingHashKey=str(2**127))
    await clock.advance(2 * 3600)
    await call(kinesis.put_record, StreamName="s", Data=b"new", PartitionKey="k")
    assert await at_trim_horizon() == [parent]  # the oldest record kept is the parent's
    await clock.advance(23 * 3600)  # the parent's record is past the 24 hours, the child's is not
    await (await rt._state.store()).streams.trim_expired(clock.time())
    assert await at_trim_horizon() == ["shardId-000000000001", "shardId-000000000002"]
