"""Kinesis' data plane on the fnrt port, driven by boto3's ``kinesis`` client."""

from __future__ import annotations

import asyncio

import pytest

import fnrt

aiohttp = pytest.importorskip("aiohttp")
boto3 = pytest.importorskip("boto3")
from botocore.config import Config

from fnrt.http import InvokeServer

from .conftest import wait_until


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
        await call(kinesis.put_record, StreamName="s", Data=b"x", PartitionKey="k", ExplicitHashKey="-1")
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
    with pytest.raises(kinesis.exceptions.InvalidArgumentException):
        await call(kinesis.merge_shards, StreamName="s", ShardToMerge=children[0],
                   AdjacentShardToMerge=children[1])  # closed now


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
