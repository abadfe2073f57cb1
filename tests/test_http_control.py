"""Lambda's control plane over HTTP, driven by boto3 and the AWS CLI as a user's scripts
drive AWS: each change takes effect on what runs next."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import fnrt
from fnrt.testing import wait_until

aiohttp = pytest.importorskip("aiohttp")
boto3 = pytest.importorskip("boto3")
from botocore.config import Config
from botocore.exceptions import ClientError

from fnrt.http import InvokeServer

from .conftest import read_jsonl

SINK_ARN = "arn:aws:sqs:us-east-1:000000000000:failed-talks"


def client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDLOCAL",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}),
    )


async def call(fn: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, **kwargs)

async def orders_stream(rt: fnrt.Runtime, tmp_path: Path) -> tuple[Path, Any]:
    """``handlers.orders:process_orders`` as ``orders``, writing its ledger in ``tmp_path``,
    and a stream ``orders`` for it: the setup of the mapping tests."""
    ledger = tmp_path / "ledger.jsonl"
    await rt.add_function(
        "orders", "handlers.orders:process_orders", environment={"ORDERS_LEDGER": str(ledger)}
    )
    return ledger, await rt.create_stream("orders")



async def error_of(fn: Any, **kwargs: Any) -> dict[str, Any]:
    """The AWS error a call ends in: code, message, status and the body's extra members."""
    with pytest.raises(ClientError) as raised:
        await call(fn, **kwargs)
    response = raised.value.response
    return {
        **response,
        "Code": response["Error"]["Code"],
        "Message": response["Error"]["Message"],
        "Status": response["ResponseMetadata"]["HTTPStatusCode"],
    }


async def aws_cli(url: str, *args: str) -> Any:
    """``aws <args> --endpoint-url url``; the JSON it prints (or None)."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIDLOCAL",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_MAX_ATTEMPTS": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "awscli",
        *args,
        "--endpoint-url",
        url,
        "--region",
        "us-east-1",
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out) if out.strip() else None


@pytest.fixture
async def served():
    async with fnrt.Runtime() as rt, InvokeServer(rt, port=0) as server:
        yield rt, server


async def test_update_function_configuration_reaches_the_next_invocation(served) -> None:
    rt, server = served
    await rt.add_function("ctx", "handlers.chaos:context_info", environment={"GREETING": "one"})
    lam = client("lambda", server.url)
    first = json.loads((await call(lam.invoke, FunctionName="ctx"))["Payload"].read())
    assert first["env_custom"] == "one" and first["memory_limit_in_mb"] == "128"
    before = await call(lam.get_function_configuration, FunctionName="ctx")

    updated = await call(
        lam.update_function_configuration,
        FunctionName="ctx",
        Timeout=10,
        MemorySize=256,
        Environment={"Variables": {"GREETING": "two"}},
        Description="updated over HTTP",
    )
    assert updated["Timeout"] == 10 and updated["MemorySize"] == 256
    assert updated["Environment"] == {"Variables": {"GREETING": "two"}}
    assert updated["Description"] == "updated over HTTP"
    assert updated["LastUpdateStatus"] == "Successful" and updated["State"] == "Active"
    assert updated["LastModified"] >= before["LastModified"]
    assert (await call(lam.get_function_configuration, FunctionName="ctx"))["MemorySize"] == 256

    # the next invocation runs in a new environment initialized with the new configuration
    detailed = await rt.invoke_detailed("ctx", {})
    assert detailed.cold_start
    second = json.loads((await call(lam.invoke, FunctionName="ctx"))["Payload"].read())
    assert second["env_custom"] == "two" and second["memory_limit_in_mb"] == "256"

    # only what is named changes
    await call(lam.update_function_configuration, FunctionName="ctx", Description="again")
    assert rt.get_function("ctx").config.environment == {"GREETING": "two"}
    assert rt.get_function("ctx").config.timeout == 10


async def test_update_function_configuration_errors_are_lambdas(served) -> None:
    rt, server = served
    await rt.add_function("ctx", "handlers.chaos:context_info")
    lam = client("lambda", server.url)
    too_long = await error_of(lam.update_function_configuration, FunctionName="ctx", Timeout=1000)
    assert too_long["Code"] == "ValidationException" and too_long["Status"] == 400
    assert "Value '1000' at 'timeout' failed to satisfy constraint" in too_long["Message"]
    big = await error_of(lam.update_function_configuration, FunctionName="ctx", MemorySize=20_000)
    assert big["Code"] == "ValidationException" and "'memorySize'" in big["Message"]
    reserved = await error_of(
        lam.update_function_configuration,
        FunctionName="ctx",
        Environment={"Variables": {"AWS_REGION": "eu-west-1"}},
    )
    assert reserved["Code"] == "InvalidParameterValueException"
    assert "reserved keys" in reserved["Message"] and "AWS_REGION" in reserved["Message"]
    huge = await error_of(
        lam.update_function_configuration,
        FunctionName="ctx",
        Environment={"Variables": {"BIG": "x" * 5000}},
    )
    assert huge["Code"] == "InvalidParameterValueException" and "4KB" in huge["Message"]
    vpc = await error_of(lam.update_function_configuration, FunctionName="ctx", VpcConfig={"SubnetIds": []})
    assert vpc["Code"] == "InvalidParameterValueException" and "VpcConfig" in vpc["Message"]
    missing = await error_of(lam.update_function_configuration, FunctionName="nope", Timeout=5)
    assert missing["Code"] == "ResourceNotFoundException" and missing["Status"] == 404
    # nothing was lost or half applied
    assert rt.get_function("ctx").config.timeout == 3
    assert rt.get_function("ctx").config.environment == {}


async def test_revision_id_and_dead_letter_config(served) -> None:
    rt, server = served
    await rt.add_function("talk", "handlers.chaos:talk")
    lam = client("lambda", server.url)
    revision = (await call(lam.get_function_configuration, FunctionName="talk"))["RevisionId"]
    stale = await error_of(
        lam.update_function_configuration, FunctionName="talk", RevisionId="0" * 36, Timeout=4
    )
    assert stale["Code"] == "PreconditionFailedException" and stale["Status"] == 412
    assert rt.get_function("talk").config.timeout == 3
    dlq = "arn:aws:sqs:us-east-1:000000000000:talk-dlq"
    updated = await call(
        lam.update_function_configuration,
        FunctionName="talk",
        RevisionId=revision,
        Timeout=4,
        DeadLetterConfig={"TargetArn": dlq},
    )
    assert updated["DeadLetterConfig"] == {"TargetArn": dlq} and updated["RevisionId"] != revision
    assert rt.async_config("talk").dead_letter == dlq
    bus = await error_of(  # Lambda's DLQ is an SQS queue or an SNS topic, nothing else
        lam.update_function_configuration,
        FunctionName="talk",
        DeadLetterConfig={"TargetArn": "arn:aws:events:us-east-1:000000000000:event-bus/default"},
    )
    assert bus["Code"] == "InvalidParameterValueException"
    await call(lam.put_function_event_invoke_config, FunctionName="talk", MaximumRetryAttempts=0)
    assert rt.async_config("talk").dead_letter == dlq  # not part of the event-invoke config
    await call(lam.invoke, FunctionName="talk", InvocationType="Event", Payload=b'{"fail": true}')
    await rt.wait_idle()
    [dead] = await rt.destination_records(dlq)
    assert dead["body"] == {"fail": True}  # the event itself, as Lambda's DLQ gets it
    assert dead["messageAttributes"]["ErrorMessage"] == "asked to fail"
    cleared = await call(lam.update_function_configuration, FunctionName="talk", DeadLetterConfig={})
    assert "DeadLetterConfig" not in cleared and rt.async_config("talk").dead_letter is None


async def test_function_concurrency_throttles_with_the_reserved_reason(served) -> None:
    rt, server = served
    await rt.add_function("echo", "handlers.echo:echo")
    lam = client("lambda", server.url)
    assert "ReservedConcurrentExecutions" not in await call(lam.get_function_concurrency, FunctionName="echo")
    put = await call(lam.put_function_concurrency, FunctionName="echo", ReservedConcurrentExecutions=0)
    assert put["ReservedConcurrentExecutions"] == 0
    got = await call(lam.get_function_concurrency, FunctionName="echo")
    assert got["ReservedConcurrentExecutions"] == 0
    assert (await call(lam.get_function, FunctionName="echo"))["Concurrency"] == {
        "ReservedConcurrentExecutions": 0
    }
    throttled = await error_of(lam.invoke, FunctionName="echo", Payload=b"{}")
    assert throttled["Code"] == "TooManyRequestsException" and throttled["Status"] == 429
    assert throttled["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"

    deleted = await call(lam.delete_function_concurrency, FunctionName="echo")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert "ReservedConcurrentExecutions" not in await call(lam.get_function_concurrency, FunctionName="echo")
    assert (await call(lam.invoke, FunctionName="echo", Payload=b"{}"))["StatusCode"] == 200

    over = await error_of(
        lam.put_function_concurrency, FunctionName="echo", ReservedConcurrentExecutions=5000
    )
    assert over["Code"] == "InvalidParameterValueException"
    assert rt.get_function("echo").config.reserved_concurrency is None


async def test_provisioned_concurrency_config_reaches_ready(served) -> None:
    rt, server = served
    await rt.add_function("whoami", "handlers.chaos:whoami")
    lam = client("lambda", server.url)
    missing = await error_of(
        lam.get_provisioned_concurrency_config, FunctionName="whoami", Qualifier="$LATEST"
    )
    assert missing["Code"] == "ProvisionedConcurrencyConfigNotFoundException" and missing["Status"] == 404

    put = await call(
        lam.put_provisioned_concurrency_config,
        FunctionName="whoami",
        Qualifier="$LATEST",
        ProvisionedConcurrentExecutions=2,
    )
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert put["RequestedProvisionedConcurrentExecutions"] == 2 and put["Status"] in ("IN_PROGRESS", "READY")
    await rt.wait_idle()
    ready = await call(lam.get_provisioned_concurrency_config, FunctionName="whoami", Qualifier="$LATEST")
    assert ready["Status"] == "READY"
    assert ready["AllocatedProvisionedConcurrentExecutions"] == 2
    assert ready["AvailableProvisionedConcurrentExecutions"] == 2
    assert ready["LastModified"].endswith("+0000")
    assert not (await rt.invoke_detailed("whoami", {})).cold_start  # served by a provisioned one
    listed = await call(lam.list_provisioned_concurrency_configs, FunctionName="whoami")
    [config] = listed["ProvisionedConcurrencyConfigs"]
    assert config["FunctionArn"].endswith(":function:whoami:$LATEST") and config["Status"] == "READY"
    too_many = await error_of(lam.list_provisioned_concurrency_configs, FunctionName="whoami", MaxItems=51)
    assert (too_many["Status"], too_many["Code"]) == (400, "InvalidParameterValueException")

    alias = await error_of(
        lam.put_provisioned_concurrency_config,
        FunctionName="whoami",
        Qualifier="prod",
        ProvisionedConcurrentExecutions=1,
    )
    assert alias["Code"] == "ResourceNotFoundException"

    await call(lam.delete_provisioned_concurrency_config, FunctionName="whoami", Qualifier="$LATEST")
    gone = await error_of(lam.get_provisioned_concurrency_config, FunctionName="whoami", Qualifier="$LATEST")
    assert gone["Code"] == "ProvisionedConcurrencyConfigNotFoundException"
    assert rt.get_function("whoami").config.provisioned_concurrency == 0


async def test_event_invoke_config_routes_a_failure_to_the_sqs_arn_sink(served) -> None:
    rt, server = served
    await rt.add_function("talk", "handlers.chaos:talk")
    lam = client("lambda", server.url)
    none = await error_of(lam.get_function_event_invoke_config, FunctionName="talk")
    assert (
        none["Code"] == "ResourceNotFoundException" and "doesn't have an EventInvokeConfig" in none["Message"]
    )
    no_update = await error_of(
        lam.update_function_event_invoke_config, FunctionName="talk", MaximumRetryAttempts=1
    )
    assert no_update["Code"] == "ResourceNotFoundException"

    put = await call(
        lam.put_function_event_invoke_config,
        FunctionName="talk",
        MaximumRetryAttempts=0,
        DestinationConfig={"OnFailure": {"Destination": SINK_ARN}},
    )
    assert put["FunctionArn"].endswith(":function:talk:$LATEST")
    assert put["MaximumRetryAttempts"] == 0 and put["MaximumEventAgeInSeconds"] == 21600
    assert put["DestinationConfig"] == {"OnSuccess": {}, "OnFailure": {"Destination": SINK_ARN}}
    assert put["LastModified"].year >= 2024  # a timestamp boto3 parsed

    # Update merges: the destination stays
    merged = await call(
        lam.update_function_event_invoke_config, FunctionName="talk", MaximumEventAgeInSeconds=120
    )
    assert merged["MaximumEventAgeInSeconds"] == 120 and merged["MaximumRetryAttempts"] == 0
    assert merged["DestinationConfig"]["OnFailure"]["Destination"] == SINK_ARN
    assert (await call(lam.get_function_event_invoke_config, FunctionName="talk")) | {
        "ResponseMetadata": None
    } == merged | {"ResponseMetadata": None}
    [listed] = (await call(lam.list_function_event_invoke_configs, FunctionName="talk"))[
        "FunctionEventInvokeConfigs"
    ]
    assert listed["MaximumEventAgeInSeconds"] == 120

    sent = await call(lam.invoke, FunctionName="talk", InvocationType="Event", Payload=b'{"fail": true}')
    assert sent["StatusCode"] == 202
    await rt.wait_idle()
    [record] = await rt.destination_records(SINK_ARN)
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["responsePayload"]["errorMessage"] == "asked to fail"
    assert await rt.destination_records("failed-talks") == [record]  # the queue's name, too

    bad = await error_of(
        lam.put_function_event_invoke_config,
        FunctionName="talk",
        DestinationConfig={"OnFailure": {"Destination": "arn:aws:dynamodb:us-east-1:000000000000:table/t"}},
    )
    assert bad["Code"] == "InvalidParameterValueException"
    await call(lam.delete_function_event_invoke_config, FunctionName="talk")
    assert rt.async_config("talk") == fnrt.AsyncConfig()
    gone = await error_of(lam.get_function_event_invoke_config, FunctionName="talk")
    assert gone["Code"] == "ResourceNotFoundException"


async def test_an_event_source_mapping_created_over_http_delivers_records(served, tmp_path: Path) -> None:
    rt, server = served
    ledger = tmp_path / "ledger.jsonl"
    env = {"ORDERS_LEDGER": str(ledger)}
    await rt.add_function("orders", "handlers.orders:process_orders", environment=env)
    await rt.add_function("audit", "handlers.orders:process_orders_partial")
    lam, kinesis = client("lambda", server.url), client("kinesis", server.url)
    await call(kinesis.create_stream, StreamName="orders", ShardCount=2)
    arn = (await call(kinesis.describe_stream_summary, StreamName="orders"))["StreamDescriptionSummary"][
        "StreamARN"
    ]

    created = await call(
        lam.create_event_source_mapping,
        EventSourceArn=arn,
        FunctionName="orders",
        StartingPosition="TRIM_HORIZON",
        BatchSize=10,
        MaximumRetryAttempts=2,
        BisectBatchOnFunctionError=True,
        DestinationConfig={"OnFailure": {"Destination": SINK_ARN}},
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 202 and created["State"] == "Creating"
    uuid = created["UUID"]
    assert created["EventSourceArn"] == arn and created["FunctionArn"].endswith(":function:orders")
    assert created["BatchSize"] == 10 and created["MaximumRetryAttempts"] == 2
    assert created["BisectBatchOnFunctionError"] is True
    assert created["DestinationConfig"] == {"OnFailure": {"Destination": SINK_ARN}}
    assert created["EventSourceMappingArn"].endswith(f":event-source-mapping:{uuid}")
    got = await call(lam.get_event_source_mapping, UUID=uuid)
    assert got["State"] == "Enabled" and got["StartingPosition"] == "TRIM_HORIZON"

    # records put through the Kinesis API and through the Python API are delivered
    await call(kinesis.put_record, StreamName="orders", Data=json.dumps({"id": 1}).encode(), PartitionKey="a")
    await (await rt.get_stream("orders")).put_record(json.dumps({"id": 2}), "b")
    await wait_until(lambda: len(read_jsonl(ledger)) == 2, "two orders delivered")
    assert sorted(line["id"] for line in read_jsonl(ledger)) == [1, 2]

    # disabled: kept with its checkpoints, not polled; enabled again: goes on from them
    disabling = await call(lam.update_event_source_mapping, UUID=uuid, Enabled=False, BatchSize=5)
    assert disabling["State"] == "Disabling" and disabling["BatchSize"] == 5
    assert (await call(lam.get_event_source_mapping, UUID=uuid))["State"] == "Disabled"
    await call(kinesis.put_record, StreamName="orders", Data=json.dumps({"id": 3}).encode(), PartitionKey="a")
    await rt.wait_idle()
    assert len(read_jsonl(ledger)) == 2
    enabling = await call(lam.update_event_source_mapping, UUID=uuid, Enabled=True)
    assert enabling["State"] == "Enabling" and enabling["UUID"] == uuid and enabling["BatchSize"] == 5
    await wait_until(lambda: len(read_jsonl(ledger)) == 3, "the order put while disabled")
    assert sorted(line["id"] for line in read_jsonl(ledger)) == [1, 2, 3]

    # a second mapping on the stream; list with filters and pages
    other = await call(
        lam.create_event_source_mapping,
        EventSourceArn=arn,
        FunctionName=rt.get_function("audit").arn,
        StartingPosition="LATEST",
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    assert other["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    listed = await call(lam.list_event_source_mappings, EventSourceArn=arn)
    assert {m["UUID"] for m in listed["EventSourceMappings"]} == {uuid, other["UUID"]}
    only = await call(lam.list_event_source_mappings, FunctionName="audit")
    assert [m["UUID"] for m in only["EventSourceMappings"]] == [other["UUID"]]
    pages = lam.get_paginator("list_event_source_mappings").paginate(PaginationConfig={"PageSize": 1})
    found = await asyncio.to_thread(lambda: [m["UUID"] for p in pages for m in p["EventSourceMappings"]])
    assert sorted(found) == sorted([uuid, other["UUID"]])

    duplicate = await error_of(
        lam.create_event_source_mapping, EventSourceArn=arn, FunctionName="orders", StartingPosition="LATEST"
    )
    assert duplicate["Code"] == "ResourceConflictException" and uuid in duplicate["Message"]
    deleted = await call(lam.delete_event_source_mapping, UUID=uuid)
    assert deleted["State"] == "Deleting" and deleted["ResponseMetadata"]["HTTPStatusCode"] == 202
    gone = await error_of(lam.get_event_source_mapping, UUID=uuid)
    assert gone["Code"] == "ResourceNotFoundException" and gone["Status"] == 404
    assert [m.uuid for m in rt.stream_mappings()] == [other["UUID"]]


async def test_event_source_mapping_errors_name_what_to_fix(served) -> None:
    rt, server = served
    await rt.add_function("orders", "handlers.orders:process_orders")
    await rt.create_stream("orders")
    arn = (await rt.get_stream("orders")).arn
    lam = client("lambda", server.url)
    cases = [
        (
            {"EventSourceArn": "arn:aws:sqs:us-east-1:000000000000:q", "FunctionName": "orders"},
            "InvalidParameterValueException",
            "Kinesis",
        ),
        (
            {
                "EventSourceArn": arn.replace("/orders", "/nope"),
                "FunctionName": "orders",
                "StartingPosition": "LATEST",
            },
            "InvalidParameterValueException",
            "Stream not found",
        ),
        (
            {"EventSourceArn": arn, "FunctionName": "orders"},
            "InvalidParameterValueException",
            "StartingPosition",
        ),
        (
            {"EventSourceArn": arn, "FunctionName": "nope", "StartingPosition": "LATEST"},
            "ResourceNotFoundException",
            "nope",
        ),
        (
            {
                "EventSourceArn": arn,
                "FunctionName": "orders",
                "StartingPosition": "LATEST",
                "BatchSize": 20_000,
            },
            "ValidationException",
            "'batchSize'",
        ),
        (
            {
                "EventSourceArn": arn,
                "FunctionName": "orders",
                "StartingPosition": "LATEST",
                "MaximumRecordAgeInSeconds": 10,
            },
            "InvalidParameterValueException",
            "MaximumRecordAgeInSeconds",
        ),
        (
            {
                "EventSourceArn": arn,
                "FunctionName": "orders",
                "StartingPosition": "LATEST",
                "FilterCriteria": {"Filters": [{"Pattern": '{"data": ["not an object"]}'}]},
            },
            "InvalidParameterValueException",
            "Invalid filter pattern definition",
        ),
    ]
    for request, code, words in cases:
        error = await error_of(lam.create_event_source_mapping, **request)
        assert (error["Code"], error["Status"] < 500) == (code, True), request
        assert words in error["Message"], (request, error["Message"])
    assert rt.stream_mappings() == []  # nothing half created

    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    at = await call(
        lam.create_event_source_mapping,
        EventSourceArn=arn,
        FunctionName="orders",
        StartingPosition="AT_TIMESTAMP",
        StartingPositionTimestamp=moment,
        MaximumBatchingWindowInSeconds=2,
        ParallelizationFactor=3,
        MaximumRecordAgeInSeconds=3600,
    )
    assert at["StartingPosition"] == "AT_TIMESTAMP" and at["StartingPositionTimestamp"] == moment
    assert (at["MaximumBatchingWindowInSeconds"], at["ParallelizationFactor"]) == (2, 3)
    [mapping] = rt.stream_mappings()
    assert mapping.config.starting_position_timestamp == moment.timestamp()
    assert (mapping.config.max_batching_window, mapping.config.max_record_age) == (2, 3600)
    moved = await error_of(lam.update_event_source_mapping, UUID=at["UUID"], FunctionName="other")
    assert moved["Code"] == "ResourceNotFoundException"


async def test_filter_criteria_over_the_api_filter_what_the_function_gets(served, tmp_path: Path) -> None:
    rt, server = served
    ledger, stream = await orders_stream(rt, tmp_path)
    lam, kinesis = client("lambda", server.url), client("kinesis", server.url)
    buys = json.dumps({"data": {"type": ["buy"], "qty": [{"numeric": [">", 0]}]}})
    vip = json.dumps({"partitionKey": [{"prefix": "vip-"}]})
    criteria = {"Filters": [{"Pattern": buys}, {"Pattern": vip}]}
    created = await call(
        lam.create_event_source_mapping,
        EventSourceArn=stream.arn,
        FunctionName="orders",
        StartingPosition="TRIM_HORIZON",
        FilterCriteria=criteria,
    )
    uuid = created["UUID"]
    assert created["FilterCriteria"] == criteria
    assert (await call(lam.get_event_source_mapping, UUID=uuid))["FilterCriteria"] == criteria
    [listed] = (await call(lam.list_event_source_mappings, FunctionName="orders"))["EventSourceMappings"]
    assert listed["FilterCriteria"] == criteria

    orders = [
        ({"id": 1, "type": "buy", "qty": 2}, "a"),
        ({"id": 2, "type": "sell", "qty": 2}, "a"),
        ({"id": 3, "type": "buy", "qty": 0}, "a"),
        ({"id": 4, "type": "sell", "qty": 5}, "vip-7"),
    ]
    entries = [{"Data": json.dumps(o).encode(), "PartitionKey": k} for o, k in orders]
    entries.insert(2, {"Data": b"\xffnot json", "PartitionKey": "a"})  # would fail the batch
    await call(kinesis.put_records, StreamName="orders", Records=entries)
    await wait_until(lambda: len(read_jsonl(ledger)) == 2, "the orders that pass a filter")
    await rt.wait_idle()
    assert [e["id"] for e in read_jsonl(ledger)] == [1, 4]

    # Lambda's way to remove them: an empty FilterCriteria
    updated = await call(lam.update_event_source_mapping, UUID=uuid, FilterCriteria={})
    assert "FilterCriteria" not in updated
    assert "FilterCriteria" not in await call(lam.get_event_source_mapping, UUID=uuid)
    await call(kinesis.put_record, StreamName="orders", Data=b'{"id": 5, "type": "sell"}', PartitionKey="a")
    await wait_until(lambda: len(read_jsonl(ledger)) == 3, "a sell, now that nothing filters")

    again = await call(
        lam.update_event_source_mapping, UUID=uuid, FilterCriteria={"Filters": [{"Pattern": vip}]}
    )
    assert again["FilterCriteria"] == {"Filters": [{"Pattern": vip}]}
    too_many = {"Filters": [{"Pattern": json.dumps({"partitionKey": [str(n)]})} for n in range(6)]}
    for bad in (too_many, {"Filters": [{"Pattern": "{not json"}]}, {"Filters": [{}]}):
        error = await error_of(lam.update_event_source_mapping, UUID=uuid, FilterCriteria=bad)
        assert (error["Code"], error["Status"]) == ("InvalidParameterValueException", 400), bad
    # a refused update changed nothing
    assert (await call(lam.get_event_source_mapping, UUID=uuid))["FilterCriteria"] == again["FilterCriteria"]


async def test_a_mapping_reports_its_last_processing_result(served, tmp_path: Path) -> None:
    rt, server = served
    ledger, stream = await orders_stream(rt, tmp_path)
    lam = client("lambda", server.url)
    created = await call(
        lam.create_event_source_mapping,
        EventSourceArn=stream.arn,
        FunctionName="orders",
        StartingPosition="TRIM_HORIZON",
        MaximumRetryAttempts=0,
    )
    # Lambda's wording: before any batch, and who made the last change
    assert created["LastProcessingResult"] == "No records processed"
    assert created["StateTransitionReason"] == "User action"
    uuid = created["UUID"]

    await stream.put_record(json.dumps({"id": 1}), "a")
    await wait_until(lambda: len(read_jsonl(ledger)) == 1, "the order delivered")
    await rt.wait_idle()
    assert (await call(lam.get_event_source_mapping, UUID=uuid))["LastProcessingResult"] == "OK"

    [mapping] = rt.stream_mappings()
    await stream.put_record(json.dumps({"id": 2, "poison": True}), "a")
    await wait_until(mapping.failure_records, "the poison order skipped")
    got = await call(lam.get_event_source_mapping, UUID=uuid)
    assert got["LastProcessingResult"] == "PROBLEM: Function call failed"
    # an update keeps what the mapping last did; List says the same as Get
    updated = await call(lam.update_event_source_mapping, UUID=uuid, BatchSize=5)
    assert updated["LastProcessingResult"] == "PROBLEM: Function call failed"
    [listed] = (await call(lam.list_event_source_mappings))["EventSourceMappings"]
    assert listed["LastProcessingResult"] == "PROBLEM: Function call failed"


async def test_a_stream_event_names_the_functions_role_as_its_invoke_identity(served, tmp_path: Path) -> None:
    rt, server = served
    archive = tmp_path / "events.jsonl"
    env = {"ORDERS_LEDGER": str(archive)}
    await rt.add_function("archive", "handlers.orders:archive_events", environment=env)
    stream = await rt.create_stream("orders")
    await rt.add_stream_mapping("orders", "archive")
    await stream.put_record(b"{}", "a")
    [event] = await wait_until(lambda: read_jsonl(archive), "the event")
    lam = client("lambda", server.url)
    role = (await call(lam.get_function_configuration, FunctionName="archive"))["Role"]
    assert event["Records"][0]["invokeIdentityArn"] == role  # Lambda: the function's execution role


async def test_account_settings_and_aws_shaped_errors_on_every_path(served) -> None:
    rt, server = served
    await rt.add_function("echo", "handlers.echo:echo", reserved_concurrency=100)
    lam = client("lambda", server.url)
    settings = await call(lam.get_account_settings)
    assert settings["AccountLimit"]["ConcurrentExecutions"] == 1000
    assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == 900
    assert settings["AccountUsage"]["FunctionCount"] == 1
    async with aiohttp.ClientSession() as http:
        checks = [
            ("POST", "/2017-10-31/functions/echo/concurrency", b"{}", 405, "UnknownOperationException"),
            ("GET", "/2019-09-30/functions/echo/nothing-here", b"", 404, "UnknownOperationException"),
            (
                "PUT",
                "/2017-10-31/functions/echo/concurrency",
                b"{not json",
                400,
                "InvalidRequestContentException",
            ),
            (
                "PUT",
                "/2017-10-31/functions/echo/concurrency",
                b'{"ReservedConcurrentExecutions": "x"}',
                400,
                "ValidationException",
            ),
            ("GET", "/2015-03-31/event-source-mappings/not-a-uuid", b"", 404, "ResourceNotFoundException"),
        ]
        for method, path, body, status, code in checks:
            async with http.request(method, server.url + path, data=body) as resp:
                assert (resp.status, resp.headers.get("x-amzn-ErrorType")) == (status, code), path
                payload = await resp.json()
                # "Message" where Lambda's model names it so (ResourceNotFoundException), else "message"
                assert payload["Type"] == "User" and (payload.get("message") or payload.get("Message"))


async def test_the_aws_cli_configures_a_running_runtime(served, tmp_path: Path) -> None:
    pytest.importorskip("awscli")
    rt, server = served
    await rt.add_function("ctx", "handlers.chaos:context_info")
    ledger, stream = await orders_stream(rt, tmp_path)
    url = server.url

    updated = await aws_cli(
        url,
        "lambda",
        "update-function-configuration",
        "--function-name",
        "ctx",
        "--timeout",
        "7",
        "--environment",
        "Variables={GREETING=from-cli}",
    )
    assert updated["Timeout"] == 7 and updated["Environment"]["Variables"] == {"GREETING": "from-cli"}
    assert (await rt.invoke("ctx", {}))["env_custom"] == "from-cli"

    put = await aws_cli(
        url,
        "lambda",
        "put-function-concurrency",
        "--function-name",
        "ctx",
        "--reserved-concurrent-executions",
        "0",
    )
    assert put == {"ReservedConcurrentExecutions": 0}
    with pytest.raises(fnrt.TooManyRequests) as throttled:
        await rt.invoke("ctx", {})
    assert throttled.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"

    settings = await aws_cli(url, "lambda", "get-account-settings")
    assert settings["AccountUsage"]["FunctionCount"] == 2
    assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == 1000

    mapping = await aws_cli(
        url,
        "lambda",
        "create-event-source-mapping",
        "--function-name",
        "orders",
        "--event-source-arn",
        stream.arn,
        "--starting-position",
        "TRIM_HORIZON",
        "--batch-size",
        "5",
    )
    assert mapping["State"] == "Creating" and mapping["BatchSize"] == 5
    await stream.put_record(json.dumps({"id": 7}), "k")
    await wait_until(lambda: len(read_jsonl(ledger)) == 1, "the order delivered")
    listed = await aws_cli(url, "lambda", "list-event-source-mappings", "--event-source-arn", stream.arn)
    assert [m["UUID"] for m in listed["EventSourceMappings"]] == [mapping["UUID"]]


async def test_function_configuration_has_lambdas_fields(served) -> None:
    rt, server = served
    await rt.add_function("echo", "handlers.echo:echo")
    lam = client("lambda", server.url)
    conf = await call(lam.get_function_configuration, FunctionName="echo")
    assert conf["Runtime"] == f"python{sys.version_info.major}.{sys.version_info.minor}"  # what runs it
    assert conf["Architectures"] in (["x86_64"], ["arm64"])
    assert conf["EphemeralStorage"] == {"Size": 512}
    assert conf["Role"].startswith("arn:aws:iam::000000000000:role/")
    assert "Environment" not in conf  # Lambda leaves it out when there are no variables
    updated = await call(
        lam.update_function_configuration, FunctionName="echo", Environment={"Variables": {"A": "1"}}
    )
    assert updated["Environment"] == {"Variables": {"A": "1"}}


async def test_a_dead_letter_change_alone_is_a_new_revision(served) -> None:
    rt, server = served
    await rt.add_function("talk", "handlers.chaos:talk")
    lam = client("lambda", server.url)
    before = await call(lam.get_function_configuration, FunctionName="talk")
    dlq = "arn:aws:sqs:us-east-1:000000000000:talk-dlq"
    after = await call(
        lam.update_function_configuration, FunctionName="talk", DeadLetterConfig={"TargetArn": dlq}
    )
    assert after["RevisionId"] != before["RevisionId"]
    again = await call(lam.get_function_configuration, FunctionName="talk")
    assert again["RevisionId"] == after["RevisionId"]
    stale = await error_of(
        lam.update_function_configuration, FunctionName="talk", RevisionId=before["RevisionId"], Timeout=5
    )
    assert stale["Code"] == "PreconditionFailedException"


async def test_provisioned_concurrency_must_fit_the_unreserved_pool(served) -> None:
    """Lambda: provisioned concurrency cannot exceed the function's reserved concurrency,
    or the account's unreserved concurrency minus its minimum (100 of 1,000 here)."""
    rt, server = served
    await rt.add_function("whoami", "handlers.chaos:whoami")
    await rt.add_function("other", "handlers.echo:echo", reserved_concurrency=300)
    lam = client("lambda", server.url)
    over = await error_of(
        lam.put_provisioned_concurrency_config,
        FunctionName="whoami",
        Qualifier="$LATEST",
        ProvisionedConcurrentExecutions=601,  # 1000 - 300 reserved - 100 minimum = 600
    )
    assert over["Code"] == "InvalidParameterValueException" and over["Status"] == 400
    assert rt.get_function("whoami").config.provisioned_concurrency == 0
    assert rt.sandboxes("whoami") == []  # nothing was started for it
    with pytest.raises(fnrt.InvalidConfig):
        rt.put_provisioned_concurrency("other", 301)  # above its own reservation
    reserved = await error_of(
        lam.put_function_concurrency, FunctionName="whoami", ReservedConcurrentExecutions=901
    )
    assert "below its minimum value of [100]" in reserved["Message"]


async def test_a_dead_letter_queue_is_a_function_setting_not_an_event_invoke_config(served) -> None:
    """Lambda keeps the DLQ (UpdateFunctionConfiguration) apart from the event-invoke config:
    setting it creates no such config, and deleting that config keeps it."""
    rt, server = served
    await rt.add_function("talk", "handlers.chaos:talk")
    lam = client("lambda", server.url)
    dlq = "arn:aws:sqs:us-east-1:000000000000:talk-dlq"
    await call(lam.update_function_configuration, FunctionName="talk", DeadLetterConfig={"TargetArn": dlq})
    missing = await error_of(lam.get_function_event_invoke_config, FunctionName="talk")
    assert missing["Code"] == "ResourceNotFoundException"
    assert (await call(lam.list_function_event_invoke_configs, FunctionName="talk"))[
        "FunctionEventInvokeConfigs"
    ] == []
    await call(lam.put_function_event_invoke_config, FunctionName="talk", MaximumRetryAttempts=0)
    await call(lam.delete_function_event_invoke_config, FunctionName="talk")
    conf = await call(lam.get_function_configuration, FunctionName="talk")
    assert conf["DeadLetterConfig"] == {"TargetArn": dlq}
    assert rt.async_config("talk").dead_letter == dlq and rt.async_config("talk").max_retry_attempts == 2
    cleared = await call(lam.update_function_configuration, FunctionName="talk", DeadLetterConfig={})
    assert "DeadLetterConfig" not in cleared and rt.async_config("talk").dead_letter is None


async def test_every_destination_kind_lambda_takes_is_accepted_and_receives_its_record(served) -> None:
    """Lambda's destinations are a function, an SQS queue, an SNS topic, an EventBridge event
    bus or an S3 bucket (on failure only); its dead-letter queue an SQS queue or SNS topic.
    fnrt takes each ARN: the queue, topic, bus and bucket are durable sinks by their name."""
    rt, server = served
    await rt.add_function("talk", "handlers.chaos:talk")
    lam = client("lambda", server.url)
    topic = "arn:aws:sns:us-east-1:000000000000:talk-successes"
    bus = "arn:aws:events:us-east-1:000000000000:event-bus/talk-bus"
    bucket = "arn:aws:s3:::talk-failures.example"
    put = await call(
        lam.put_function_event_invoke_config,
        FunctionName="talk",
        MaximumRetryAttempts=0,
        DestinationConfig={"OnSuccess": {"Destination": topic}, "OnFailure": {"Destination": bus}},
    )
    assert put["DestinationConfig"] == {
        "OnSuccess": {"Destination": topic},
        "OnFailure": {"Destination": bus},
    }
    await call(lam.invoke, FunctionName="talk", InvocationType="Event", Payload=b"{}")
    await call(lam.invoke, FunctionName="talk", InvocationType="Event", Payload=b'{"fail": true}')
    await rt.wait_idle()
    [success] = await rt.destination_records(topic)
    assert success["requestContext"]["condition"] == "Success" and success["responsePayload"] == "said it"
    assert await rt.destination_records("talk-successes") == [success]
    [failure] = await rt.destination_records(bus)
    assert failure["requestContext"]["condition"] == "RetriesExhausted"

    on_s3 = await call(
        lam.update_function_event_invoke_config,
        FunctionName="talk",
        DestinationConfig={"OnFailure": {"Destination": bucket}},
    )
    assert on_s3["DestinationConfig"]["OnFailure"] == {"Destination": bucket}
    assert on_s3["DestinationConfig"]["OnSuccess"] == {"Destination": topic}  # merged
    s3_success = await error_of(
        lam.update_function_event_invoke_config,
        FunctionName="talk",
        DestinationConfig={"OnSuccess": {"Destination": bucket}},
    )
    assert s3_success["Code"] == "InvalidParameterValueException" and "on-failure" in s3_success["Message"]
    assert rt.async_config("talk").on_success == topic  # the refused change changed nothing

    dlq = "arn:aws:sns:us-east-1:000000000000:talk-dlq"
    conf = await call(
        lam.update_function_configuration, FunctionName="talk", DeadLetterConfig={"TargetArn": dlq}
    )
    assert conf["DeadLetterConfig"] == {"TargetArn": dlq}
    await call(lam.invoke, FunctionName="talk", InvocationType="Event", Payload=b'{"fail": 2}')
    await rt.wait_idle()
    [stored] = await rt.destination_records("talk-failures.example")
    assert stored["requestPayload"] == {"fail": 2}
    [dead] = await rt.destination_records(dlq)
    assert dead["body"] == {"fail": 2} and dead["messageAttributes"]["ErrorMessage"] == "asked to fail"


async def test_deleting_an_event_invoke_config_set_by_the_decorator_deletes_it(served) -> None:
    """``@fnrt.handler(async_config=...)`` is the function's event-invoke config as the API
    shows it; DeleteFunctionEventInvokeConfig removes it (Lambda's defaults apply, no
    destinations) and a second delete or a get is ResourceNotFoundException."""
    rt, server = served
    await rt.deploy("handlers.payments")  # charge: on_failure sink:failed-payments
    lam = client("lambda", server.url)
    got = await call(lam.get_function_event_invoke_config, FunctionName="charge")
    assert got["DestinationConfig"]["OnFailure"]["Destination"].endswith(":failed-payments")
    await call(lam.delete_function_event_invoke_config, FunctionName="charge")
    for operation in (lam.get_function_event_invoke_config, lam.delete_function_event_invoke_config):
        gone = await error_of(operation, FunctionName="charge")
        assert gone["Code"] == "ResourceNotFoundException" and gone["Status"] == 404
    listed = await call(lam.list_function_event_invoke_configs, FunctionName="charge")
    assert listed["FunctionEventInvokeConfigs"] == []
    config = rt.async_config("charge")
    assert (config.on_failure, config.max_retry_attempts, config.max_event_age) == (None, 2, 21_600)
    no_update = await error_of(
        lam.update_function_event_invoke_config, FunctionName="charge", MaximumRetryAttempts=0
    )
    assert no_update["Code"] == "ResourceNotFoundException"

    put = await call(lam.put_function_event_invoke_config, FunctionName="charge", MaximumRetryAttempts=1)
    assert put["MaximumRetryAttempts"] == 1 and put["DestinationConfig"] == {"OnSuccess": {}, "OnFailure": {}}
    await rt.deploy("handlers.payments")  # a redeploy keeps the function's config
    kept = await call(lam.get_function_event_invoke_config, FunctionName="charge")
    assert kept["MaximumRetryAttempts"] == 1
    await call(lam.delete_function_event_invoke_config, FunctionName="charge")
    await rt.deploy("handlers.payments")  # and its deletion
    gone = await error_of(lam.get_function_event_invoke_config, FunctionName="charge")
    assert gone["Code"] == "ResourceNotFoundException"


async def test_delete_function_removes_the_function_and_refuses_its_latest_version(served) -> None:
    """DeleteFunction: a version's qualifier deletes only that version (none exist: 204,
    nothing changes), ``$LATEST`` is refused, no qualifier deletes the function: it is
    gone from every call, and its name can be used again from scratch."""
    rt, server = served
    await rt.add_function("echo", "handlers.echo:echo", reserved_concurrency=100)
    lam = client("lambda", server.url)
    arn = "arn:aws:lambda:us-east-1:000000000000:function:echo"
    await call(lam.tag_resource, Resource=arn, Tags={"team": "talks"})

    latest = await error_of(lam.delete_function, FunctionName="echo", Qualifier="$LATEST")
    assert (latest["Status"], latest["Code"]) == (400, "InvalidParameterValueException")
    assert "$LATEST" in latest["Message"]
    mismatch = await error_of(lam.delete_function, FunctionName="echo:1", Qualifier="2")
    assert mismatch["Code"] == "InvalidParameterValueException"
    version = await call(lam.delete_function, FunctionName="echo", Qualifier="7")
    assert version["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert (await call(lam.get_function, FunctionName="echo"))["Configuration"]["FunctionName"] == "echo"

    deleted = await call(lam.delete_function, FunctionName=arn)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert "echo" not in rt.functions()
    for operation, kwargs in (
        (lam.get_function, {"FunctionName": "echo"}),
        (lam.invoke, {"FunctionName": "echo", "Payload": b"{}"}),
        (lam.delete_function, {"FunctionName": "echo"}),
        (lam.list_tags, {"Resource": arn}),
    ):
        gone = await error_of(operation, **kwargs)
        assert (gone["Status"], gone["Code"]) == (404, "ResourceNotFoundException"), operation
    assert (await call(lam.list_functions))["Functions"] == []
    # its reservation went with it: the whole pool is unreserved again
    settings = await call(lam.get_account_settings)
    assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == 1000

    await rt.add_function("echo", "handlers.echo:echo")  # a new function under the old name
    assert (await call(lam.list_tags, Resource=arn))["Tags"] == {}
    again = json.loads((await call(lam.invoke, FunctionName="echo", Payload=b'{"n": 1}'))["Payload"].read())
    assert again["event"] == {"n": 1}


async def test_tags_are_set_listed_shown_by_get_function_and_removed(served) -> None:
    rt, server = served
    await rt.add_function("echo", "handlers.echo:echo")
    lam = client("lambda", server.url)
    arn = "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert (await call(lam.list_tags, Resource=arn))["Tags"] == {}
    assert "Tags" not in await call(lam.get_function, FunctionName="echo")

    tagged = await call(lam.tag_resource, Resource=arn, Tags={"team": "talks", "env": "dev"})
    assert tagged["ResponseMetadata"]["HTTPStatusCode"] == 204
    await call(lam.tag_resource, Resource=arn, Tags={"env": "prod"})  # merges, overwrites
    assert (await call(lam.list_tags, Resource=arn))["Tags"] == {"team": "talks", "env": "prod"}
    assert (await call(lam.get_function, FunctionName="echo"))["Tags"] == {"team": "talks", "env": "prod"}
    untagged = await call(lam.untag_resource, Resource=arn, TagKeys=["env", "never-set"])
    assert untagged["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert (await call(lam.list_tags, Resource=arn))["Tags"] == {"team": "talks"}

    refusals = [
        ({"Resource": arn + ":1", "Tags": {"a": "b"}}, 400, "InvalidParameterValueException"),
        ({"Resource": arn, "Tags": {"aws:owner": "me"}}, 400, "InvalidParameterValueException"),
        ({"Resource": arn, "Tags": {f"k{i}": "v" for i in range(50)}}, 400, "InvalidParameterValueException"),
        ({"Resource": arn, "Tags": {"bad#key": "v"}}, 400, "ValidationException"),
        ({"Resource": arn + "-other", "Tags": {"a": "b"}}, 404, "ResourceNotFoundException"),
    ]
    for kwargs, status, code in refusals:
        refused = await error_of(lam.tag_resource, **kwargs)
        assert (refused["Status"], refused["Code"]) == (status, code), kwargs
    assert (await call(lam.list_tags, Resource=arn))["Tags"] == {"team": "talks"}  # nothing half-applied
    not_arn = await error_of(lam.list_tags, Resource="echo")
    assert (not_arn["Status"], not_arn["Code"]) == (400, "ValidationException")


async def test_get_policy_of_a_function_without_one_is_resource_not_found(served) -> None:
    rt, server = served
    await rt.add_function("echo", "handlers.echo:echo")
    lam = client("lambda", server.url)
    none = await error_of(lam.get_policy, FunctionName="echo")
    assert (none["Status"], none["Code"]) == (404, "ResourceNotFoundException")
    unknown = await error_of(lam.get_policy, FunctionName="nosuch")
    assert unknown["Code"] == "ResourceNotFoundException" and "nosuch" in unknown["Message"]


ROLE = "arn:aws:iam::000000000000:role/lambda-role"


def zip_package(files: dict[str, str]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


#: What every CreateFunction of a test package names besides its function and code.
ZIPPED: dict[str, Any] = {"Runtime": "python3.12", "Role": ROLE, "Handler": "lambda_function.lambda_handler"}


def package(version: int) -> bytes:
    """A deployment package whose handler imports a module of its own."""
    return zip_package(
        {
            "lambda_function.py": (
                "import os\nimport helper\n\n"
                "def lambda_handler(event, context):\n"
                "    return {'version': helper.VERSION, 'event': event,\n"
                "            'root': os.environ['LAMBDA_TASK_ROOT'], 'file': helper.__file__}\n"
            ),
            "helper.py": f"VERSION = {version}\n",
        }
    )


async def test_create_function_runs_its_zip_and_update_function_code_replaces_it(served) -> None:
    import base64
    import hashlib

    rt, server = served
    lam = client("lambda", server.url)
    first = package(1)
    created = await call(
        lam.create_function,
        FunctionName="zipped",
        **ZIPPED,
        Code={"ZipFile": first},
        Timeout=5,
        MemorySize=256,
        Environment={"Variables": {"STAGE": "dev"}},
        Description="from a zip",
        Tags={"team": "talks"},
        DeadLetterConfig={"TargetArn": SINK_ARN},
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["DeadLetterConfig"] == {"TargetArn": SINK_ARN}
    assert rt.async_config("zipped").dead_letter == SINK_ARN
    assert created["FunctionName"] == "zipped" and created["Role"] == ROLE
    assert created["Handler"] == "lambda_function.lambda_handler"
    assert (created["Timeout"], created["MemorySize"], created["Description"]) == (5, 256, "from a zip")
    assert created["Environment"] == {"Variables": {"STAGE": "dev"}}
    assert created["CodeSha256"] == base64.b64encode(hashlib.sha256(first).digest()).decode()
    assert created["CodeSize"] == len(first) and created["State"] == "Active"
    assert (await call(lam.list_tags, Resource=created["FunctionArn"]))["Tags"] == {"team": "talks"}

    out = json.loads((await call(lam.invoke, FunctionName="zipped", Payload=b'{"n": 1}'))["Payload"].read())
    assert out["version"] == 1 and out["event"] == {"n": 1}
    assert out["file"] == os.path.join(out["root"], "helper.py")  # the package's module, from its root

    again = await error_of(
        lam.create_function,
        FunctionName="zipped",
        **ZIPPED,
        Code={"ZipFile": first},
    )
    assert (again["Status"], again["Code"]) == (409, "ResourceConflictException")

    second = package(2)
    dry = await call(lam.update_function_code, FunctionName="zipped", ZipFile=second, DryRun=True)
    assert dry["CodeSha256"] == base64.b64encode(hashlib.sha256(second).digest()).decode()
    out = json.loads((await call(lam.invoke, FunctionName="zipped", Payload=b"{}"))["Payload"].read())
    assert out["version"] == 1  # a dry run changes nothing

    stale = await error_of(lam.update_function_code, FunctionName="zipped", ZipFile=second, RevisionId="x")
    assert (stale["Status"], stale["Code"]) == (412, "PreconditionFailedException")
    updated = await call(
        lam.update_function_code, FunctionName="zipped", ZipFile=second, RevisionId=created["RevisionId"]
    )
    assert updated["CodeSha256"] == dry["CodeSha256"] and updated["RevisionId"] != created["RevisionId"]
    assert (updated["Timeout"], updated["Environment"]) == (5, {"Variables": {"STAGE": "dev"}})
    out = json.loads((await call(lam.invoke, FunctionName="zipped", Payload=b"{}"))["Payload"].read())
    assert out["version"] == 2  # new environments import the new package
    got = await call(lam.get_function, FunctionName="zipped")
    assert got["Configuration"]["CodeSha256"] == updated["CodeSha256"]
    settings = await call(lam.get_account_settings)
    assert settings["AccountUsage"]["TotalCodeSize"] == len(second)

    # a deployed module's function can take a package too: its handler then comes from it
    await rt.add_function("echo", "handlers.echo:noop")
    replaced = {"handlers/__init__.py": "", "handlers/echo.py": "def noop(e, c):\n    return 'zip'\n"}
    await call(lam.update_function_code, FunctionName="echo", ZipFile=zip_package(replaced))
    assert json.loads((await call(lam.invoke, FunctionName="echo"))["Payload"].read()) == "zip"


async def test_create_function_refuses_what_it_cannot_run_and_registers_nothing(served) -> None:
    rt, server = served
    lam = client("lambda", server.url)
    good = package(1)
    base = {
        "FunctionName": "refused",
        "Runtime": "python3.12",
        "Role": ROLE,
        "Handler": "lambda_function.lambda_handler",
        "Code": {"ZipFile": good},
    }
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"Code": {"S3Bucket": "my-bucket", "S3Key": "code.zip"}}, 400, "InvalidParameterValueException"),
        ({"Code": {"ImageUri": "000000000000.dkr.ecr.us-east-1.amazonaws.com/f:1"}}, 400,
         "InvalidParameterValueException"),
        ({"Code": {"ZipFile": b"not a zip file"}}, 400, "InvalidParameterValueException"),
        ({"Code": {"ZipFile": zip_package({"../out.py": ""})}}, 400, "InvalidParameterValueException"),
        ({"Runtime": "nodejs20.x"}, 400, "InvalidParameterValueException"),
        ({"Publish": True}, 400, "InvalidParameterValueException"),
        ({"Layers": ["arn:aws:lambda:us-east-1:000000000000:layer:deps:1"]}, 400,
         "InvalidParameterValueException"),
        ({"VpcConfig": {"SubnetIds": ["subnet-1"]}}, 400, "InvalidParameterValueException"),
        ({"Role": "not-a-role"}, 400, "ValidationException"),
        ({"Timeout": 901}, 400, "ValidationException"),
        ({"MemorySize": 10_241}, 400, "ValidationException"),
        ({"Environment": {"Variables": {"AWS_REGION": "eu-west-1"}}}, 400, "InvalidParameterValueException"),
        ({"Handler": "no_dot_here"}, 400, "InvalidParameterValueException"),
        ({"Tags": {"aws:owner": "me"}}, 400, "InvalidParameterValueException"),
    ]
    for change, status, code in cases:
        refused = await error_of(lam.create_function, **{**base, **change})
        assert (refused["Status"], refused["Code"]) == (status, code), change
    no_handler = {k: v for k, v in base.items() if k != "Handler"}
    refused = await error_of(lam.create_function, **no_handler)
    assert refused["Code"] == "InvalidParameterValueException" and "Handler" in refused["Message"]
    assert rt.functions() == {}
    assert (await call(lam.list_functions))["Functions"] == []

    await call(lam.create_function, **base)
    for change in ({"S3Bucket": "my-bucket", "S3Key": "code.zip"}, {"ZipFile": b"not a zip file"}):
        refused = await error_of(lam.update_function_code, FunctionName="refused", **change)
        assert refused["Code"] == "InvalidParameterValueException", change
    out = json.loads((await call(lam.invoke, FunctionName="refused"))["Payload"].read())
    assert out["version"] == 1  # the refused updates left the code as it was


async def test_update_function_configuration_changes_the_handler_and_role(served) -> None:
    rt, server = served
    await rt.add_function("fn", "handlers.echo:noop", timeout=5)
    lam = client("lambda", server.url)
    assert json.loads((await call(lam.invoke, FunctionName="fn"))["Payload"].read()) is None
    updated = await call(
        lam.update_function_configuration,
        FunctionName="fn",
        Handler="handlers.chaos.whoami",
        Runtime="python3.13",
        Role=ROLE,
    )
    assert updated["Handler"] == "handlers.chaos.whoami" and updated["Role"] == ROLE
    assert updated["Timeout"] == 5  # the rest of the configuration stays
    out = json.loads((await call(lam.invoke, FunctionName="fn"))["Payload"].read())
    assert out is not None  # the next environment runs the new handler
    assert (await call(lam.get_function_configuration, FunctionName="fn"))["Role"] == ROLE
    for change, code in (
        ({"Runtime": "nodejs20.x"}, "InvalidParameterValueException"),
        ({"Handler": "nodot"}, "InvalidParameterValueException"),
        ({"Role": "admin"}, "ValidationException"),
    ):
        refused = await error_of(lam.update_function_configuration, FunctionName="fn", **change)
        assert (refused["Status"], refused["Code"]) == (400, code), change
    assert rt.get_function("fn").handler == "handlers.chaos.whoami"
    before = (await call(lam.get_function_configuration, FunctionName="fn"))["RevisionId"]
    other = "arn:aws:iam::000000000000:role/other"
    moved = await call(lam.update_function_configuration, FunctionName="fn", Role=other, RevisionId=before)
    assert moved["Role"] == other and moved["RevisionId"] != before  # a role change is a new revision
    stale = await error_of(lam.update_function_configuration, FunctionName="fn", Timeout=9, RevisionId=before)
    assert (stale["Status"], stale["Code"]) == (412, "PreconditionFailedException")


async def test_versions_and_aliases_show_latest_alone_and_refuse_by_name(served) -> None:
    """fnrt runs $LATEST only: listing versions shows it, listing aliases shows none, and
    publishing a version or creating an alias says why it cannot, instead of an unknown
    operation."""
    rt, server = served
    await rt.add_function("echo", "handlers.echo:echo")
    lam = client("lambda", server.url)
    [latest] = (await call(lam.list_versions_by_function, FunctionName="echo"))["Versions"]
    assert latest["Version"] == "$LATEST" and latest["FunctionArn"].endswith(":function:echo:$LATEST")
    paginator = lam.get_paginator("list_versions_by_function")
    pages = await asyncio.to_thread(lambda: list(paginator.paginate(FunctionName="echo")))
    assert [[v["Version"] for v in page["Versions"]] for page in pages] == [["$LATEST"]]
    assert (await call(lam.list_aliases, FunctionName="echo"))["Aliases"] == []

    published = await error_of(lam.publish_version, FunctionName="echo")
    assert (published["Status"], published["Code"]) == (400, "InvalidParameterValueException")
    assert "$LATEST" in published["Message"]
    to_latest = await error_of(lam.create_alias, FunctionName="echo", Name="live", FunctionVersion="$LATEST")
    assert (to_latest["Status"], to_latest["Code"]) == (400, "InvalidParameterValueException")
    to_version = await error_of(lam.create_alias, FunctionName="echo", Name="live", FunctionVersion="1")
    assert (to_version["Status"], to_version["Code"]) == (404, "ResourceNotFoundException")
    for operation, kwargs in (
        (lam.get_alias, {}),
        (lam.update_alias, {"FunctionVersion": "$LATEST"}),
        (lam.delete_alias, {}),
    ):
        missing = await error_of(operation, FunctionName="echo", Name="live", **kwargs)
        assert (missing["Status"], missing["Code"]) == (404, "ResourceNotFoundException"), operation
        assert missing["Message"].endswith(":function:echo:live")
    for operation in (lam.list_versions_by_function, lam.list_aliases, lam.publish_version):
        unknown = await error_of(operation, FunctionName="ghost")
        assert unknown["Code"] == "ResourceNotFoundException", operation


async def test_create_function_takes_a_logging_config(served) -> None:
    rt, server = served
    lam = client("lambda", server.url)
    created = await call(
        lam.create_function,
        FunctionName="logged",
        **ZIPPED,
        Code={"ZipFile": package(1)},
        LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "DEBUG", "LogGroup": "/team/logged"},
    )
    assert created["LoggingConfig"]["LogFormat"] == "JSON"
    assert created["LoggingConfig"]["ApplicationLogLevel"] == "DEBUG"
    assert created["LoggingConfig"]["LogGroup"] == "/team/logged"
    assert rt.functions()["logged"].config.log_format == "JSON"
    bad = await error_of(
        lam.create_function,
        FunctionName="badly",
        **ZIPPED,
        Code={"ZipFile": package(1)},
        LoggingConfig={"LogFormat": "XML"},
    )
    assert (bad["Status"], bad["Code"]) == (400, "ValidationException")
    assert "badly" not in rt.functions()


async def test_a_package_no_function_runs_is_not_left_unpacked(served, tmp_path: Path, monkeypatch) -> None:
    """A package unpacked for a request that then fails (a bad Handler, an environment
    Lambda refuses) or for a DryRun is removed: only the packages functions run stay on
    disk (each can be 250 MB unpacked)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the server unpacks them
    rt, server = served
    lam = client("lambda", server.url)
    base = {"FunctionName": "kept", "Runtime": "python3.12", "Role": ROLE, "Code": {"ZipFile": package(1)}}

    def unpacked() -> list[str]:
        return sorted(p.name for p in tmp_path.glob("fnrt-code-*/*"))

    for change in ({"Handler": "no_dot_here"}, {"Environment": {"Variables": {"AWS_REGION": "eu-west-1"}}}):
        request = {**base, "Handler": "lambda_function.lambda_handler", **change}
        refused = await error_of(lam.create_function, **request)
        assert refused["Code"] == "InvalidParameterValueException", change
    assert unpacked() == []
    await call(lam.create_function, **base, Handler="lambda_function.lambda_handler")
    (running,) = unpacked()
    await call(lam.update_function_code, FunctionName="kept", ZipFile=package(2), DryRun=True)
    assert unpacked() == [running]
    out = json.loads((await call(lam.invoke, FunctionName="kept"))["Payload"].read())
    assert out["version"] == 1
