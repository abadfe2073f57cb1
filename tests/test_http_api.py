"""The Invoke API's fidelity and AWS-shaped errors, with raw aiohttp requests and boto3."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

import fnrt

aiohttp = pytest.importorskip("aiohttp")
boto3 = pytest.importorskip("boto3")
from botocore.config import Config

from fnrt.errors import ServiceError, StoreUnavailable
from fnrt.http import InvokeServer


def lambda_client(url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="fnrt",
        aws_secret_access_key="fnrt",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
    )


async def call(fn, **kwargs):  # boto3 blocks: run it off the event loop
    return await asyncio.to_thread(fn, **kwargs)


@pytest.fixture
async def served():
    async with fnrt.Runtime(concurrency_limit=10, unreserved_minimum=0) as rt:
        await rt.deploy("handlers.echo")
        await rt.add_function("context_info", "handlers.chaos:context_info")
        async with InvokeServer(rt, port=0) as server, aiohttp.ClientSession() as session:
            yield rt, server, lambda_client(server.url), session


def assert_aws_error(resp, body: dict, status: int, error_type: str) -> None:
    assert resp.status == status
    assert resp.headers["x-amzn-ErrorType"] == error_type
    assert resp.headers["Content-Type"].startswith("application/json")
    # The member is named as Lambda's model names it: "Message" for a few errors, else "message".
    key = "Message" if error_type in ("ResourceNotFoundException", "ServiceException") else "message"
    assert isinstance(body.get(key), str) and body[key]
    assert body["Type"] == ("User" if status < 500 else "Service")


# -- AWS-shaped errors everywhere -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/route", 404),
        ("DELETE", "/2015-03-31/functions/echo/invocations", 405),
        ("PATCH", "/2015-03-31/functions/", 405),
    ],
)
async def test_unknown_routes_and_methods_are_aws_json(served, method, path, status):
    rt, server, client, session = served
    async with session.request(method, server.url + path) as resp:
        body = await resp.json()
    assert_aws_error(resp, body, status, "UnknownOperationException")


async def test_bad_json_is_invalid_request_content(served):
    rt, server, client, session = served
    async with session.post(server.url + "/2015-03-31/functions/echo/invocations", data=b"{nope") as resp:
        assert_aws_error(resp, await resp.json(), 400, "InvalidRequestContentException")


async def test_body_over_the_server_limit_is_413_in_aws_shape(served):
    rt, server, client, session = served
    big = b"[" + b"1," * (7 * 1024 * 1024) + b"1]"
    async with session.post(server.url + "/2015-03-31/functions/echo/invocations", data=big) as resp:
        assert_aws_error(resp, await resp.json(), 413, "RequestTooLargeException")


class _Broken(fnrt.Runtime):
    """A runtime whose invoke fails the way infrastructure does (not a mock of the core:
    the real runtime, with one public method made to raise what it may raise)."""

    failure: BaseException = ServiceError("the template process died")

    async def invoke_detailed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "status", "error_type"),
    [
        (ServiceError("the template process died"), 500, "ServiceException"),
        (StoreUnavailable("disk full", path="/x/state.db"), 500, "ServiceException"),
        (KeyError("surprise"), 500, "ServiceException"),
    ],
)
async def test_service_errors_and_surprises_are_500_service_exception(failure, status, error_type):
    async with _Broken() as rt:
        rt.failure = failure
        await rt.deploy("handlers.echo")
        async with InvokeServer(rt, port=0) as server:
            async with aiohttp.ClientSession() as session:
                async with session.post(server.url + "/2015-03-31/functions/echo/invocations") as resp:
                    body = await resp.json()
            assert_aws_error(resp, body, status, error_type)
            assert "Traceback" not in body["Message"]
            with pytest.raises(lambda_client(server.url).exceptions.ServiceException) as info:
                await call(lambda_client(server.url).invoke, FunctionName="echo", Payload=b"{}")
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


# -- client context ---------------------------------------------------------------------


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@pytest.mark.parametrize(
    "header",
    [
        "not base64 !!",
        _b64(b"{not json"),
        _b64(b"5"),  # JSON, but not an object
        _b64(b"[1, 2]"),
        _b64(json.dumps({"custom": {"k": "x" * 3000}}).encode()),  # over 3,583 bytes of base64
    ],
)
async def test_a_bad_client_context_is_400_and_runs_nothing(served, header):
    rt, server, client, session = served
    async with session.post(
        server.url + "/2015-03-31/functions/echo/invocations",
        data=b"{}",
        headers={"X-Amz-Client-Context": header},
    ) as resp:
        assert_aws_error(resp, await resp.json(), 400, "InvalidRequestContentException")
    assert rt.stats()["functions"]["echo"]["invocations"] == 0


@pytest.mark.parametrize("header", [b"\xff\xfe", b"eyJhIjogMX0=\xe9", "é".encode()])
async def test_a_client_context_that_is_not_ascii_is_400(served, header):
    """Bytes no base64 holds (not UTF-8 at all, or UTF-8 beyond ASCII): 400, not a 500."""
    rt, server, client, session = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\nX-Amz-Client-Context: " + header + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"x-amzn-ErrorType: InvalidRequestContentException" in head
    assert "Base64" in json.loads(body)["message"]
    assert rt.stats()["functions"]["echo"]["invocations"] == 0


async def test_a_good_client_context_reaches_the_handler(served):
    rt, server, client, session = served
    ctx = _b64(json.dumps({"custom": {"tenant": "t-1"}}).encode())
    resp = await call(client.invoke, FunctionName="context_info", Payload=b"{}", ClientContext=ctx)
    assert json.loads(resp["Payload"].read())["client_context"] == {"tenant": "t-1"}


# -- qualifiers and the invoked ARN -----------------------------------------------------


async def test_latest_qualifier_works_and_shows_in_the_invoked_arn(served):
    rt, server, client, session = served
    arn = rt.get_function("context_info").arn
    resp = await call(client.invoke, FunctionName="context_info", Qualifier="$LATEST", Payload=b"{}")
    assert resp["StatusCode"] == 200
    assert json.loads(resp["Payload"].read())["invoked_function_arn"] == arn + ":$LATEST"
    resp = await call(client.invoke, FunctionName=arn + ":$LATEST", Payload=b"{}")
    assert json.loads(resp["Payload"].read())["invoked_function_arn"] == arn + ":$LATEST"
    resp = await call(client.invoke, FunctionName="context_info", Payload=b"{}")
    assert json.loads(resp["Payload"].read())["invoked_function_arn"] == arn


async def test_any_other_qualifier_is_resource_not_found(served):
    rt, server, client, session = served
    for kwargs in ({"FunctionName": "echo", "Qualifier": "no-such-alias"}, {"FunctionName": "echo:7"}):
        with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
            await call(client.invoke, Payload=b"{}", **kwargs)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert rt.stats()["functions"]["echo"]["invocations"] == 0
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await call(client.get_function, FunctionName="echo", Qualifier="prod")


async def test_a_throttle_carries_reason_and_retry_after_where_boto3_reads_them(served):
    rt, server, client, session = served
    await call(client.put_function_concurrency, FunctionName="echo", ReservedConcurrentExecutions=0)
    with pytest.raises(client.exceptions.TooManyRequestsException) as info:
        await call(client.invoke, FunctionName="echo", Payload=b"{}")
    response = info.value.response
    assert response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert response["retryAfterSeconds"] == "1"  # from the Retry-After header, as the model says
    assert response["Error"]["Message"] == "Rate Exceeded."


async def test_not_found_names_its_message_as_the_model_does(served):
    rt, server, client, session = served
    with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
        await call(client.invoke, FunctionName="ghost", Payload=b"{}")
    assert info.value.response["Message"].startswith("Function not found: arn:aws:lambda:")
    assert info.value.response["Type"] == "User"


@pytest.mark.parametrize(
    "name",
    [
        "arn:aws:lambda:eu-west-9:000000000000:function:echo",  # another region
        "arn:aws:lambda:us-east-1:999999999999:function:echo",  # another account
        "999999999999:function:echo",
    ],
)
async def test_another_regions_or_accounts_function_is_not_this_one(served, name):
    rt, server, client, session = served
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await call(client.invoke, FunctionName=name, Payload=b"{}")
    assert rt.stats()["functions"]["echo"]["invocations"] == 0


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/2015-03-31/functions/echo%0A/invocations", {}),  # a trailing newline in the name
        ("/2015-03-31/functions/echo/invocations?Qualifier=", {}),
        ("/2015-03-31/functions/echo/invocations?Qualifier=bad%20q", {}),
        ("/2015-03-31/functions/echo/invocations", {"X-Amz-Log-Type": "Everything"}),
    ],
)
async def test_malformed_names_qualifiers_and_log_types_are_validation_errors(served, path, headers):
    rt, server, client, session = served
    async with session.post(server.url + path, data=b"{}", headers=headers) as resp:
        body = await resp.json()
    assert_aws_error(resp, body, 400, "ValidationException")
    assert rt.stats()["functions"]["echo"]["invocations"] == 0


@pytest.mark.parametrize(
    "payload",
    ['{"a": 1}'.encode("utf-16"), b"\xef\xbb\xbf{}", b'{"a": "\xff"}'],
    ids=["utf-16", "bom", "latin-1"],
)
async def test_a_payload_that_is_not_utf8_json_is_refused_before_any_sandbox(served, payload):
    rt, server, client, session = served
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        await call(client.invoke, FunctionName="echo", Payload=payload)
    assert rt.stats()["functions"]["echo"]["invocations"] == 0


# -- the control plane ------------------------------------------------------------------


async def test_list_functions_pages_with_the_boto3_paginator(served):
    rt, server, client, session = served
    for i in range(5):
        await rt.add_function(f"f{i}", "handlers.echo:echo")
    expected = sorted(rt.functions())
    first = await call(client.list_functions, MaxItems=3)
    assert [f["FunctionName"] for f in first["Functions"]] == expected[:3]
    assert first["NextMarker"]
    second = await call(client.list_functions, MaxItems=3, Marker=first["NextMarker"])
    assert [f["FunctionName"] for f in second["Functions"]] == expected[3:6]

    def paginate() -> list[list[str]]:
        pages = client.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 2})
        return [[f["FunctionName"] for f in page["Functions"]] for page in pages]

    pages = await asyncio.to_thread(paginate)
    assert [n for page in pages for n in page] == expected
    assert all(len(page) <= 2 for page in pages) and len(pages) == (len(expected) + 1) // 2
    async with session.get(server.url + "/2015-03-31/functions/?MaxItems=0") as resp:
        assert_aws_error(resp, await resp.json(), 400, "InvalidParameterValueException")


async def test_get_function_puts_reserved_concurrency_at_top_level(served):
    rt, server, client, session = served
    await rt.add_function("limited", "handlers.echo:echo", reserved_concurrency=3)
    got = await call(client.get_function, FunctionName="limited")
    assert got["Concurrency"] == {"ReservedConcurrentExecutions": 3}
    assert "ReservedConcurrentExecutions" not in got["Configuration"]
    assert "Concurrency" not in await call(client.get_function, FunctionName="echo")


async def test_get_function_configuration(served):
    rt, server, client, session = served
    conf = await call(client.get_function_configuration, FunctionName="echo")
    assert conf["FunctionName"] == "echo" and conf["Handler"] == "handlers.echo.echo"
    assert conf["Timeout"] == 3 and conf["MemorySize"] == 128 and conf["Version"] == "$LATEST"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await call(client.get_function_configuration, FunctionName="ghost")


async def test_deeply_nested_payloads_are_clean_400s(served):
    rt, server, client, session = served
    url = server.url + "/2015-03-31/functions/echo/invocations"
    async with session.post(url, data=b"[" * 200_000 + b"]" * 200_000) as resp:
        body = await resp.json()
    assert resp.status == 400 and resp.headers["x-amzn-ErrorType"] == "InvalidRequestContentException"
    assert "Traceback" not in body["message"]


async def test_a_storm_of_bad_requests_leaves_no_sandbox_behind(served):
    rt, server, client, session = served
    url = server.url + "/2015-03-31/functions/echo/invocations"
    bad = [
        {"headers": {"X-Amz-Client-Context": "NQ=="}, "data": b"{}"},
        {"headers": {"X-Amz-Client-Context": "!!"}, "data": b"{}"},
        {"headers": {"X-Amz-Invocation-Type": "Nope"}, "data": b"{}"},
        {"headers": {}, "data": b"{bad"},
    ]
    async def post(kwargs: dict) -> int:
        async with session.post(url, **kwargs) as resp:
            await resp.read()
            return resp.status

    for _ in range(50):
        assert set(await asyncio.gather(*(post(kwargs) for kwargs in bad))) == {400}
    stats = rt.stats()["functions"]["echo"]
    assert stats["in_flight"] == 0 and stats["invocations"] == 0
    assert stats["warm"] + stats["busy"] <= 1
    resp = await call(client.invoke, FunctionName="echo", Payload=b"{}")
    assert resp["StatusCode"] == 200


MALFORMED_REQUESTS = [
    b"GARBAGE\r\n\r\n",  # no request line
    b"FOO /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # no such method
    b"GET /2015-03-31/functions HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
    b"GET /2015-03-31/functions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /2015-03-31/functions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n",  # a header flood
    b"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # smuggling framing
    b"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Length: ten\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
]


async def test_a_request_the_server_cannot_parse_is_answered_in_aws_shape(served):
    """aiohttp's parser refuses these before any route runs; the answer is still Lambda's
    JSON error (not text quoting the raw bytes), the connection is closed, and the server
    goes on serving."""
    rt, server, client, session = served
    for raw in MALFORMED_REQUESTS:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 10)  # read to the close
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", raw[:60]
        assert b"x-amzn-ErrorType: InvalidRequestContentException" in head
        assert b"Content-Type: application/json" in head
        message = json.loads(body)["message"]
        assert message.startswith("malformed HTTP request: ") and "^" not in message
        assert "aaaaaaaa" not in message and len(message) < 250
    assert rt.stats()["functions"]["echo"]["invocations"] == 0
    resp = await call(client.invoke, FunctionName="echo", Payload=b"{}")
    assert resp["StatusCode"] == 200


async def test_list_functions_answers_at_most_50_a_page_and_refuses_a_marker_it_never_gave(served):
    """Lambda's reference: "ListFunctions returns a maximum of 50 items in each response,
    even if you set the number higher"; the rest follow NextMarker."""
    rt, server, client, session = served
    for i in range(55):
        await rt.add_function(f"f{i:02d}", "handlers.echo:noop")
    expected = sorted(rt.functions())
    assert len(expected) > 50
    first = await call(client.list_functions, MaxItems=1000)
    assert [f["FunctionName"] for f in first["Functions"]] == expected[:50]
    rest = await call(client.list_functions, MaxItems=1000, Marker=first["NextMarker"])
    assert [f["FunctionName"] for f in rest["Functions"]] == expected[50:]
    assert "NextMarker" not in rest

    def everything() -> list[str]:
        pages = client.get_paginator("list_functions").paginate()
        return [f["FunctionName"] for page in pages for f in page["Functions"]]

    assert await asyncio.to_thread(everything) == expected
    for marker in ("%%%", "not base64!", "Zm9"):
        async with session.get(server.url + "/2015-03-31/functions/", params={"Marker": marker}) as resp:
            assert_aws_error(resp, await resp.json(), 400, "InvalidParameterValueException")
