"""Lambda's Invoke API over HTTP, driven by the real AWS SDK (boto3) as a client."""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import pytest

import fnrt

pytest.importorskip("aiohttp")
boto3 = pytest.importorskip("boto3")
from botocore.config import Config

from fnrt.http import InvokeServer

from .conftest import wait_until


def lambda_client(url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="fnrt",
        aws_secret_access_key="fnrt",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
    )


@pytest.fixture
async def served():
    async with fnrt.Runtime(concurrency_limit=10, unreserved_minimum=0) as rt:
        await rt.deploy("handlers.echo")
        await rt.deploy("handlers.shop")
        async with InvokeServer(rt, port=0) as server:
            yield rt, server, lambda_client(server.url)


async def call(fn, **kwargs):  # boto3 blocks: run it off the event loop
    return await asyncio.to_thread(fn, **kwargs)


async def test_request_response_returns_the_result(served):
    rt, server, client = served
    resp = await call(client.invoke, FunctionName="echo", Payload=json.dumps({"x": 1}))
    assert resp["StatusCode"] == 200
    assert resp["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in resp
    assert json.loads(resp["Payload"].read())["event"] == {"x": 1}


async def test_function_error_is_200_with_unhandled_and_lambdas_body(served):
    rt, server, client = served
    resp = await call(client.invoke, FunctionName="validate", Payload=b'{"items": []}', LogType="Tail")
    assert resp["StatusCode"] == 200
    assert resp["FunctionError"] == "Unhandled"
    body = json.loads(resp["Payload"].read())
    assert body["errorType"] == "InvalidOrder"
    assert body["errorMessage"] == "order has no items"
    assert isinstance(body["stackTrace"], list) and body["requestId"]
    log = base64.b64decode(resp["LogResult"]).decode()
    assert "[ERROR] InvalidOrder: order has no items" in log and "REPORT RequestId:" in log


async def test_log_tail_is_the_last_4kb(served):
    rt, server, client = served
    resp = await call(client.invoke, FunctionName="echo", Payload=b"{}", LogType="Tail")
    log = base64.b64decode(resp["LogResult"]).decode()
    assert log.startswith("START RequestId:") and len(log.encode()) <= 4096


async def test_dry_run_is_204(served):
    rt, server, client = served
    resp = await call(client.invoke, FunctionName="echo", InvocationType="DryRun", Payload=b"{}")
    assert resp["StatusCode"] == 204
    assert rt.stats()["functions"]["echo"]["invocations"] == 0


async def test_unknown_function_is_resource_not_found(served):
    rt, server, client = served
    with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
        await call(client.invoke, FunctionName="ghost", Payload=b"{}")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "Function not found: arn:aws:lambda:us-east-1:000000000000:function:ghost" in str(info.value)


async def test_function_name_may_be_a_partial_or_full_arn(served):
    rt, server, client = served
    for name in ("000000000000:function:echo", "arn:aws:lambda:us-east-1:000000000000:function:echo"):
        resp = await call(client.invoke, FunctionName=name, Payload=b'{"n": 1}')
        assert json.loads(resp["Payload"].read())["event"] == {"n": 1}


async def test_payload_that_is_not_json_is_400(served):
    rt, server, client = served
    with pytest.raises(client.exceptions.InvalidRequestContentException) as info:
        await call(client.invoke, FunctionName="echo", Payload=b"{nope")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_oversized_payload_is_413(served):
    rt, server, client = served
    big = json.dumps({"blob": "x" * (6 * 1024 * 1024)}).encode()
    with pytest.raises(client.exceptions.RequestTooLargeException) as info:
        await call(client.invoke, FunctionName="echo", Payload=big)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


async def test_throttle_is_429_with_a_reason(served, release_file):
    rt, server, client = served
    await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=1)
    first = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
    await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 1)
    with pytest.raises(client.exceptions.TooManyRequestsException) as info:
        await call(client.invoke, FunctionName="hold", Payload=json.dumps({"release": release_file}))
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert err["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    open(release_file, "w").close()
    await first


async def test_list_and_get_function(served):
    rt, server, client = served
    names = {f["FunctionName"] for f in (await call(client.list_functions))["Functions"]}
    assert names == {"echo", "noop", "validate", "quote"}
    conf = (await call(client.get_function, FunctionName="validate"))["Configuration"]
    assert conf["Handler"] == "handlers.shop.validate"
    assert conf["Timeout"] == 5 and conf["MemorySize"] == 256
    assert conf["FunctionArn"] == rt.get_function("validate").arn


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fnrt", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_invoke_list_and_stats(served):
    rt, server, client = served
    code, out, err = await run_cli("invoke", "echo", '{"k": "v"}', "--endpoint", server.url, "--log")
    assert code == 0 and json.loads(out)["event"] == {"k": "v"}
    assert "REPORT RequestId:" in err
    code, out, err = await run_cli(
        "invoke", "validate", "-", "--endpoint", server.url, stdin=b'{"items": []}'
    )
    assert code == 1 and json.loads(out)["errorType"] == "InvalidOrder"
    code, out, err = await run_cli("invoke", "ghost", "--endpoint", server.url)
    assert code == 2 and err.startswith("error: ResourceNotFoundException") and "Traceback" not in err
    assert "Function not found: arn:aws:lambda:" in err  # the server's message, as the model spells it
    code, out, err = await run_cli("invoke", "echo", "{bad", "--endpoint", server.url)
    assert code == 2 and "not JSON" in err
    code, out, err = await run_cli("list", "--endpoint", server.url)
    assert code == 0 and "handlers.shop.validate" in out
    code, out, err = await run_cli("stats", "--endpoint", server.url, "--json")
    assert code == 0 and json.loads(out)["functions"]["echo"]["invocations"] >= 1
    code, out, err = await run_cli("stats", "--endpoint", server.url)
    assert code == 0 and "echo" in out
    assert "cluster:" not in out  # a temporary store: no hosts to list, not "0 host(s) alive"


async def test_cli_stats_lists_this_host_on_a_durable_store(tmp_path):
    async with fnrt.Runtime(state_dir=tmp_path) as rt, InvokeServer(rt, port=0) as server:
        await rt.add_function("echo", "handlers.echo:echo")
        await rt.invoke("echo", {}, invocation_type="Event")

        async def listed() -> bool:
            code, out, err = await run_cli("stats", "--endpoint", server.url)
            return code == 0 and "cluster: 1 host(s) alive on sqlite" in out and rt.host_id in out

        await wait_until(listed, "this host listed", poll=0.2)


async def test_cli_reports_an_unreachable_server_in_one_line():
    code, out, err = await run_cli("stats", "--endpoint", "http://127.0.0.1:9")
    assert code == 2 and err.count("\n") == 1 and "cannot reach fnrt" in err


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:abc", "http://[::1"])
async def test_cli_reports_a_malformed_endpoint_in_one_line(endpoint):
    code, out, err = await run_cli("list", "--endpoint", endpoint)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "said"),
    [(["--stream", "s:abc"], "shard count must be a number"), (["--port", "99999"], "not a port")],
)
async def test_serve_refuses_bad_arguments_in_one_line(args, said):
    code, out, err = await run_cli("serve", "handlers.echo", *args)
    assert code == 2 and said in err and "Traceback" not in err


async def test_cli_invoke_in_process():
    code, out, err = await run_cli("invoke", "echo", '{"a": 1}', "--module", "handlers.echo")
    assert code == 0 and json.loads(out)["event"] == {"a": 1}


async def test_cli_invoke_in_process_runs_an_event_before_it_exits(tmp_path):
    """In process, the runtime lives as long as the command: an Event is run, not left."""
    path = tmp_path / "touched"
    event = json.dumps({"path": str(path)})
    code, out, err = await run_cli("invoke", "touch", event, "--module", "handlers.chaos", "--type", "Event")
    assert code == 0 and json.loads(out)["StatusCode"] == 202
    assert path.read_text() == json.loads(out)["RequestId"]  # it ran before the command ended


ITEM = '{"sku": "apple", "price": 1.10, "stock": 42, "rating": NaN}'  # Lambda's bytes for it


async def test_cli_invoke_prints_the_results_own_bytes_in_process_and_over_http(served):
    code, out, err = await run_cli("invoke", "item", "--module", "handlers.results")
    assert code == 0 and out.strip() == ITEM, err  # a Decimal's digits survive: not re-encoded
    rt, server, client = served
    await rt.deploy("handlers.results")
    code, out, err = await run_cli("invoke", "item", "--endpoint", server.url)
    assert code == 0 and out.strip() == ITEM, err


async def test_cli_streams_put_and_describe(served):
    rt, server, client = served
    await rt.deploy("handlers.orders")
    await rt.create_stream("orders", shard_count=2)
    mapping = await rt.add_stream_mapping("orders", "discard", batch_size=10)
    code, out, err = await run_cli(
        "streams", "put", "orders", '{"id": 1}', "--partition-key", "c-1", "--endpoint", server.url
    )
    assert code == 0, err
    placed = json.loads(out)
    assert placed["ShardId"].startswith("shardId-") and placed["SequenceNumber"].isdigit()
    await wait_until(lambda: rt.stats()["functions"]["discard"]["invocations"] == 1)
    code, out, err = await run_cli("streams", "describe", "orders", "--endpoint", server.url, "--json")
    info = json.loads(out)
    assert code == 0 and len(info["Shards"]) == 2
    [described] = info["Mappings"]
    assert described["UUID"] == mapping.uuid and described["FunctionName"] == "discard"
    code, out, err = await run_cli("streams", "describe", "nope", "--endpoint", server.url)
    assert code == 2 and "ResourceNotFoundException" in err
    code, out, err = await run_cli("stats", "--endpoint", server.url, "--json")
    stats = json.loads(out)
    assert "orders->discard" in stats["streams"] and "async" in stats


async def test_cli_list_shows_every_function_past_the_first_page(served):
    """ListFunctions answers 50 a page: ``fnrt list`` follows NextMarker for the rest."""
    rt, server, client = served
    for i in range(52):
        await rt.add_function(f"many{i:02d}", "handlers.echo:noop")
    code, out, err = await run_cli("list", "--endpoint", server.url, "--json")
    assert code == 0, err
    assert sorted(f["FunctionName"] for f in json.loads(out)) == sorted(rt.functions())
