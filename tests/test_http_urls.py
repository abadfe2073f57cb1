"""Function URLs and API Gateway events: real HTTP requests in, HTTP responses out."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import uuid

import pytest

import fnrt

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("aws_lambda_powertools")

from yarl import URL

from fnrt._runtime import SYNC_PAYLOAD_LIMIT
from fnrt.errors import FunctionNotFound, InvalidConfig
from fnrt.http import InvokeServer, add_url

from .conftest import wait_until


@pytest.fixture
async def served():
    async with fnrt.Runtime(concurrency_limit=10, unreserved_minimum=0) as rt:
        await rt.deploy("handlers.web")
        async with InvokeServer(rt, port=0) as server, aiohttp.ClientSession() as session:
            yield rt, server, session


ANSWERING = '''
import json


def answer(event, context):
    """The result the request's body spells, as JSON: any shape a test needs."""
    return json.loads(event["body"])


def ids(event, context):
    """The request ids the function sees, in a result valid for both payload formats."""
    ids = {
        "event": event["requestContext"]["requestId"],
        "extended": event["requestContext"].get("extendedRequestId"),
        "context": context.aws_request_id,
    }
    return {"statusCode": 200, "body": json.dumps(ids)}
'''


@pytest.fixture
async def answering(tmp_path):
    """``served``, with functions ``answer`` and ``ids`` (``ANSWERING``) deployed too."""
    module = f"answering_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(ANSWERING)
    sys.path.insert(0, str(tmp_path))  # before the runtime starts: its sandboxes import from it
    try:
        async with fnrt.Runtime(concurrency_limit=10, unreserved_minimum=0) as rt:
            await rt.deploy("handlers.web")
            await rt.add_function("answer", f"{module}:answer")
            await rt.add_function("ids", f"{module}:ids")
            async with InvokeServer(rt, port=0) as server, aiohttp.ClientSession() as session:
                yield rt, server, session
    finally:
        sys.path.remove(str(tmp_path))


# -- payload format 2.0 ---------------------------------------------------------------------


async def test_v2_event_has_the_function_url_shape(served):
    rt, server, session = served
    server.add_url("show_event", path_prefix="/show")
    async with session.post(
        server.url + "/show/a%20b/c?x=1&x=2&y=&z=3",
        data=b'{"k": "v"}',
        headers=[
            ("Content-Type", "application/json"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
            ("Cookie", "c1=v1; c2=v2"),
            ("User-Agent", "tester/1.0"),
        ],
    ) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        event = await resp.json()
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/a%20b/c"
    assert event["rawQueryString"] == "x=1&x=2&y=&z=3"
    assert event["queryStringParameters"] == {"x": "1,2", "y": "", "z": "3"}
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    headers = event["headers"]
    assert headers["x-multi"] == "one,two" and "cookie" not in headers
    assert all(k == k.lower() for k in headers)
    assert event["body"] == '{"k": "v"}' and event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["http"] == {
        "method": "POST",
        "path": "/a b/c",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "tester/1.0",
    }
    assert ctx["accountId"] == "anonymous" and ctx["routeKey"] == "$default" and ctx["stage"] == "$default"
    assert ctx["domainName"] == f"127.0.0.1:{server.port}" and ctx["domainPrefix"] == "127"
    assert len(ctx["apiId"]) == 32 and ctx["requestId"]
    assert isinstance(ctx["timeEpoch"], int) and ctx["time"].endswith("+0000")


async def test_v2_raw_path_and_query_string_are_as_sent(served):
    rt, server, session = served
    server.add_url("show_event", path_prefix="/show")
    server.add_url("show_event", path_prefix="/deep/er")
    # sent exactly so (encoded=True): the client re-quotes nothing, and the prefix itself is
    # encoded (%73 is "s"), so raw and decoded lengths differ before the part below it
    sent = "/%73how/a%20b/%7Ec?y=a%20b&z=a+b&q=%E2%82%AC"
    async with session.get(URL(server.url + sent, encoded=True)) as resp:
        event = await resp.json()
    assert event["rawPath"] == "/a%20b/%7Ec"
    assert event["rawQueryString"] == "y=a%20b&z=a+b&q=%E2%82%AC"
    assert event["requestContext"]["http"]["path"] == "/a b/~c"
    assert event["queryStringParameters"]["y"] == "a b" and event["queryStringParameters"]["q"] == "€"
    for sent, raw_path in (
        ("/d%65ep/%65r/x%2Fy", "/x%2Fy"),  # a prefix of two segments; an encoded slash below it
        ("/deep/er", "/"),
        ("/deep/er/", "/"),
        ("/deep/er/%C3%A9/", "/%C3%A9/"),
    ):
        async with session.get(URL(server.url + sent, encoded=True)) as resp:
            event = await resp.json()
        assert event["rawPath"] == raw_path, sent
        assert event["rawQueryString"] == ""


async def test_v2_raw_path_is_the_path_alone_whatever_form_the_target_takes(served):
    """An absolute-form target (as proxies send) and a fragment: the event's rawPath and
    rawQueryString are still the path and the query as sent, and nothing else."""
    rt, server, session = served
    server.add_url("show_event", path_prefix="/show")
    targets = (
        (f"http://127.0.0.1:{server.port}/show/a%2Fb?q=%7E", "/a%2Fb", "q=%7E", "/a/b"),
        ("/show/a%20b?x=%41+b#frag", "/a%20b", "x=%41+b", "/a b"),
        ("/show/c#frag", "/c", "", "/c"),
    )
    for target, raw_path, raw_query, path in targets:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer
        event = json.loads(body)
        assert event["rawPath"] == raw_path and event["rawQueryString"] == raw_query, target
        assert event["requestContext"]["http"]["path"] == path


@pytest.mark.parametrize("payload_format", ["2.0", "1.0"])
async def test_header_bytes_that_are_not_utf8_reach_the_handler_as_text(answering, payload_format):
    """Latin-1 bytes in a header (a cookie, a user agent): the handler gets U+FFFD where
    they were, text it can print, log and encode, not lone surrogates that fail there."""
    rt, server, session = answering
    await rt.add_function("printer", "handlers.web:print_headers")
    server.add_url("printer", payload_format=payload_format)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /printer/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"X-Name: Jos\xe9\r\nUser-Agent: caf\xe9/1\r\nCookie: n=Ren\xe9e\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    seen = json.loads(body)
    assert seen["x-name"] == "Jos\ufffd" and seen["user-agent"] == "caf\ufffd/1"
    assert seen["cookie"] == "n=Ren\ufffde"


async def test_v2_binary_body_is_base64(served):
    rt, server, session = served
    server.add_url("show_event", path_prefix="/show")
    blob = bytes(range(256))
    async with session.put(
        server.url + "/show", data=blob, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        event = await resp.json()
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == blob
    assert event["rawPath"] == "/" and "body" in event
    async with session.get(server.url + "/show") as resp:
        event = await resp.json()
    assert "body" not in event and event["isBase64Encoded"] is False and "cookies" not in event


async def test_v2_result_mapping(served):
    rt, server, session = served
    server.add_url("respond", path_prefix="/r")
    async with session.get(server.url + "/r") as resp:
        assert resp.status == 203 and await resp.text() == "made it"
        assert resp.headers["Content-Type"] == "text/plain"
        assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2; HttpOnly"]
    async with session.get(server.url + "/r?kind=binary") as resp:
        assert resp.headers["Content-Type"] == "image/png" and await resp.read() == b"\x89PNG\x00\x01"
    async with session.get(server.url + "/r?kind=framing") as resp:  # the server frames bodies
        assert resp.status == 200 and await resp.text() == "ok"
    async with session.get(server.url + "/r?kind=string") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == "just a string"


async def test_errors_are_what_aws_front_doors_answer(served):
    rt, server, session = served
    server.add_url("respond", path_prefix="/r")
    await rt.add_function("slow", "handlers.web:respond", timeout=0.3)
    server.add_url("slow")
    async with session.get(server.url + "/r?kind=malformed") as resp:
        assert resp.status == 502 and await resp.json() == {"message": "Internal Server Error"}
    async with session.get(server.url + "/r?kind=fail") as resp:
        assert resp.status == 502 and await resp.json() == {"message": "Internal Server Error"}
        assert resp.headers["x-amzn-ErrorType"]
    async with session.get(server.url + "/slow?kind=slow") as resp:
        # the function's own timeout is a function error: 502, not API Gateway's 504
        assert resp.status == 502 and await resp.json() == {"message": "Internal Server Error"}
        assert resp.headers["x-amzn-ErrorType"] == "InternalServerErrorException"
        timed_out = rt.recent.get(resp.headers["x-amzn-RequestId"])
    assert timed_out is not None and timed_out.function == "slow" and timed_out.outcome == "timeout"
    # a prefix that is mounted, but no route under it matches: API Gateway's 404
    server.add_url("respond", path_prefix="/only", route="GET /exact")
    async with session.get(server.url + "/only/other") as resp:
        assert resp.status == 404 and await resp.json() == {"message": "Not Found"}


@pytest.mark.parametrize(("payload_format", "message"), [
    ("2.0", "Internal Server Error"),  # Function URLs and HTTP APIs
    ("1.0", "Internal server error"),  # REST APIs
])
async def test_internal_errors_are_worded_as_the_payload_formats_front_door(
    served, payload_format, message
):
    rt, server, session = served
    await rt.add_function("slow", "handlers.web:respond", timeout=0.3)
    server.add_url("respond", path_prefix="/r", payload_format=payload_format)
    server.add_url("slow", payload_format=payload_format)
    for url in ("/r?kind=fail", "/r?kind=malformed", "/slow?kind=slow"):
        async with session.get(server.url + url) as resp:
            assert resp.status == 502 and await resp.json() == {"message": message}, url
            assert resp.headers["x-amzn-ErrorType"] == "InternalServerErrorException"
            # even a failed invocation is found by the id the response carries
            assert rt.recent.get(resp.headers["x-amzn-RequestId"]) is not None


@pytest.mark.parametrize("payload_format", ["2.0", "1.0"])
async def test_one_request_id_names_the_invocation(answering, payload_format):
    rt, server, session = answering
    server.add_url("ids", payload_format=payload_format)
    seen = set()
    for _ in range(2):
        async with session.get(server.url + "/ids/x") as resp:
            assert resp.status == 200
            ids = await resp.json()
            header = resp.headers["x-amzn-RequestId"]
        # the event's requestId, the handler's context.aws_request_id and the response's
        # header are one id, so a request's logs can be found from any of them
        assert ids["event"] == ids["context"] == header
        if payload_format == "1.0":
            assert ids["extended"] == header
        entry = rt.recent.get(header)
        assert entry is not None and entry.function == "ids" and header in entry.log
        seen.add(header)
    assert len(seen) == 2  # one id per request


async def test_throttle_is_429(served, release_file):
    rt, server, session = served
    await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=1)
    server.add_url("hold")
    first = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
    await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 1)
    async with session.get(server.url + "/hold") as resp:
        assert resp.status == 429 and await resp.json() == {"message": "Too Many Requests"}
        assert resp.headers["x-amzn-ErrorType"] == "TooManyRequestsException"
    open(release_file, "w").close()
    await first


# -- payload format 1.0 and route templates ---------------------------------------------------


async def test_v1_event_with_route_templates(served):
    rt, server, session = served
    server.add_url("wrap_event", path_prefix="/v1", payload_format="1.0", route="GET /orders/{id}")
    server.add_url("wrap_event", path_prefix="/v1", payload_format="1.0", route="/files/{proxy+}")
    server.add_url("show_event", path_prefix="/v1", payload_format="1.0", route="/bare")
    async with session.get(
        server.url + "/v1/orders/17?a=1&a=2&b=3", headers=[("X-Multi", "one"), ("X-Multi", "two")]
    ) as resp:
        assert resp.status == 200
        event = await resp.json()
    assert event["resource"] == "/orders/{id}" and event["path"] == "/orders/17"
    assert event["httpMethod"] == "GET" and event["pathParameters"] == {"id": "17"}
    assert event["headers"]["X-Multi"] == "two"
    assert event["multiValueHeaders"]["X-Multi"] == ["one", "two"]
    assert event["queryStringParameters"] == {"a": "2", "b": "3"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["3"]}
    assert event["stageVariables"] is None and event["body"] is None and event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["resourcePath"] == "/orders/{id}" and ctx["httpMethod"] == "GET"
    assert ctx["identity"]["sourceIp"] == "127.0.0.1" and ctx["requestId"]
    async with session.post(server.url + "/v1/files/a/b/c.txt", data=b"hello",
                            headers={"Content-Type": "text/plain"}) as resp:
        event = await resp.json()
    assert event["resource"] == "/files/{proxy+}" and event["pathParameters"] == {"proxy": "a/b/c.txt"}
    assert event["body"] == "hello" and event["queryStringParameters"] is None
    async with session.post(server.url + "/v1/orders/17") as resp:  # the route is GET only
        assert resp.status == 403 and await resp.json() == {"message": "Missing Authentication Token"}
    async with session.get(server.url + "/v1/bare") as resp:  # 1.0 needs a statusCode
        assert resp.status == 502 and await resp.json() == {"message": "Internal server error"}


@pytest.mark.parametrize("route", [None, "$default", "/{proxy+}"])
async def test_v1_the_root_is_the_root_resource_not_the_proxy(served, route):
    rt, server, session = served
    server.add_url("wrap_event", path_prefix="/v1", payload_format="1.0", route=route)
    for path in ("/v1", "/v1/"):
        async with session.get(server.url + path) as resp:
            event = await resp.json()
        assert event["resource"] == "/" and event["requestContext"]["resourcePath"] == "/"
        assert event["path"] == "/" and event["pathParameters"] is None
    async with session.get(server.url + "/v1/a/b") as resp:
        event = await resp.json()
    assert event["resource"] == "/{proxy+}" and event["pathParameters"] == {"proxy": "a/b"}


@pytest.mark.parametrize("payload_format", ["1.0", "2.0"])
async def test_stage_variables_reach_the_event(served, payload_format):
    rt, server, session = served
    variables = {"env": "dev", "table_Name": "orders-v2", "url": "https://x.example/a?b=c&d=e,f"}
    server.add_url("wrap_event", path_prefix="/s", payload_format=payload_format, stage="prod",
                   stage_variables=variables)
    server.add_url("wrap_event", path_prefix="/plain", payload_format=payload_format)
    async with session.get(server.url + "/s/x") as resp:
        event = await resp.json()
    assert event["stageVariables"] == variables and event["requestContext"]["stage"] == "prod"
    async with session.get(server.url + "/plain/x") as resp:
        event = await resp.json()
    assert event.get("stageVariables") is None
    for bad in ({"bad-name": "v"}, {"ok": "no spaces"}, {"ok": ""}, {"ok": "x" * 2049}, {"ok": 5}, ["env"]):
        with pytest.raises(InvalidConfig, match="stage"):
            server.add_url("wrap_event", path_prefix="/bad", stage_variables=bad)


async def test_v1_unmatched_path_is_missing_authentication_token(served):
    rt, server, session = served
    server.add_url("respond", path_prefix="/v1", payload_format="1.0", route="GET /orders/{id}")
    for method, path in (("GET", "/v1/nothing"), ("DELETE", "/v1/orders/3"), ("GET", "/v1/orders/3/x")):
        async with session.request(method, server.url + path) as resp:
            # a REST API answers an unknown resource or method with this gateway response
            assert resp.status == 403, path
            assert await resp.json() == {"message": "Missing Authentication Token"}
            assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert rt.stats()["functions"]["respond"]["invocations"] == 0
    # a prefix that 2.0 routes share answers as an HTTP API: 404
    server.add_url("respond", path_prefix="/mixed", payload_format="1.0", route="/a")
    server.add_url("respond", path_prefix="/mixed", route="GET /b")
    async with session.get(server.url + "/mixed/c") as resp:
        assert resp.status == 404 and await resp.json() == {"message": "Not Found"}
        assert resp.headers["x-amzn-ErrorType"] == "NotFoundException"


BAD_HEADERED_RESULTS = [
    {"statusCode": 200, "headers": {"X-A": "a\r\nX-Injected: 1"}, "body": "x"},  # response splitting
    {"statusCode": 200, "headers": {"X-A": "a\nb"}, "body": "x"},
    {"statusCode": 200, "headers": {"X-A": "a\x00b"}, "body": "x"},
    {"statusCode": 200, "multiValueHeaders": {"X-A": ["ok", "b\rc"]}, "body": "x"},
    {"statusCode": 200, "headers": {"X-A\r\nX-B": "a"}, "body": "x"},
    {"statusCode": 200, "headers": {"X A": "a"}, "body": "x"},  # not an HTTP token
    {"statusCode": 200, "headers": {"": "a"}, "body": "x"},
    {"statusCode": 200, "headers": {"X-A:": "a"}, "body": "x"},
    {"statusCode": 200, "multiValueHeaders": {"X B": ["a"]}, "body": "x"},
    {"statusCode": 200, "headers": {"Set-Cookie": "a=1\r\nX-Injected: 1"}, "body": "x"},
    {"statusCode": 200, "headers": {"X-A": "\ud800"}, "body": "x"},  # a lone surrogate: no UTF-8
    {"statusCode": 200, "body": "lone \udce9 surrogate"},
    {"statusCode": 100, "body": "x"},  # no final response: the client would wait forever
    {"statusCode": 199, "body": "x"},
]


@pytest.mark.parametrize("payload_format", ["2.0", "1.0"])
async def test_a_result_http_cannot_carry_is_a_502(answering, payload_format):
    """A handler's bad header or body is its error (502), never a dropped connection, a
    500, a malformed or split response, nor a hang; the server goes on serving."""
    rt, server, session = answering
    server.add_url("answer", payload_format=payload_format)
    message = {"2.0": "Internal Server Error", "1.0": "Internal server error"}[payload_format]
    results = BAD_HEADERED_RESULTS
    if payload_format == "2.0":
        results = [*results, {"statusCode": 200, "cookies": ["a=1\r\nX-Injected: 1"], "body": "x"}]
    for result in results:
        async with asyncio.timeout(10):
            async with session.post(server.url + "/answer", json=result) as resp:
                assert resp.status == 502, result
                assert await resp.json() == {"message": message}
                assert "X-Injected" not in resp.headers and "X-B" not in resp.headers
                assert rt.recent.get(resp.headers["x-amzn-RequestId"]) is not None
    ok = {"statusCode": 200, "headers": {"X-A": "tab\tis fine", "X-Num": 7}, "body": "fine"}
    async with session.post(server.url + "/answer", json=ok) as resp:
        assert resp.status == 200 and await resp.text() == "fine"
        assert resp.headers["X-A"] == "tab\tis fine" and resp.headers["X-Num"] == "7"


@pytest.mark.parametrize("payload_format", ["2.0", "1.0"])
async def test_is_base64_encoded_given_as_a_string_is_read_as_its_words(answering, payload_format):
    rt, server, session = answering
    server.add_url("answer", payload_format=payload_format)
    for flag, body in ((True, b"hi"), ("true", b"hi"), ("TRUE", b"hi"), (False, b"aGk="),
                       ("false", b"aGk="), ("False", b"aGk="), (None, b"aGk=")):
        result = {"statusCode": 200, "body": "aGk=", "isBase64Encoded": flag}
        async with session.post(server.url + "/answer", json=result) as resp:
            assert resp.status == 200 and await resp.read() == body, flag


async def test_v1_multi_value_headers_in_the_result(served):
    rt, server, session = served
    server.add_url("respond", path_prefix="/m", payload_format="1.0")
    async with session.get(server.url + "/m?kind=multi") as resp:
        assert resp.status == 200 and await resp.text() == "multi"
        assert resp.headers["X-One"] == "1" and resp.headers.getall("X-Many") == ["a", "b"]


@pytest.mark.parametrize("payload_format", ["1.0", "2.0"])
async def test_result_headers_merge_with_multi_value_headers(answering, payload_format):
    rt, server, session = answering
    server.add_url("answer", payload_format=payload_format)
    result = {
        "statusCode": 200,
        "headers": {"X-Both": "single", "X-Same": "s", "x-case": "lower", "X-Only": "1"},
        "multiValueHeaders": {"X-Both": ["m1", "m2"], "X-Same": ["s", "t"], "X-Case": ["upper"]},
        "body": "merged",
    }
    async with session.post(server.url + "/answer", json=result) as resp:
        assert resp.status == 200 and await resp.text() == "merged"
        # one list per name; a pair in both lists appears once, as multiValueHeaders has it
        assert sorted(resp.headers.getall("X-Both")) == ["m1", "m2", "single"]
        assert resp.headers.getall("X-Same") == ["s", "t"]
        assert sorted(resp.headers.getall("X-Case")) == ["lower", "upper"]  # names are case-blind
        assert resp.headers.getall("X-Only") == ["1"]


async def test_powertools_rest_resolver_works_unchanged(served):
    rt, server, session = served
    await rt.deploy("handlers.rest_api")
    server.add_url("rest_api", path_prefix="/rest", payload_format="1.0")
    async with session.get(server.url + "/rest/orders/42?verbose=yes&tag=a&tag=b") as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body == {
        "id": "42", "path": "/orders/42", "method": "GET", "verbose": "yes", "all_tags": ["a", "b"]
    }
    async with session.put(server.url + "/rest/orders/9", json={"qty": 2}) as resp:
        assert resp.status == 200 and await resp.json() == {"id": "9", "set": {"qty": 2}}


@pytest.mark.parametrize("size", [SYNC_PAYLOAD_LIMIT + 1, 2 * SYNC_PAYLOAD_LIMIT + 1])
async def test_a_body_too_large_is_the_urls_413(served, size):
    """Over Lambda's 6 MB and over the server's own 12 MB body limit alike."""
    rt, server, session = served
    server.add_url("show_event", path_prefix="/show")
    body = b"x" * size
    async with session.post(server.url + "/show", data=body, headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 413 and await resp.json() == {"message": "Request Entity Too Large"}
        assert resp.headers["x-amzn-ErrorType"] == "RequestEntityTooLarge"
    assert rt.stats()["functions"]["show_event"]["invocations"] == 0


# -- Powertools apps, unchanged -----------------------------------------------------------------


@pytest.mark.parametrize("function", ["api", "http_api"])
async def test_powertools_v2_resolvers_work_unchanged(served, function):
    rt, server, session = served
    await rt.deploy("handlers.api")
    server.add_url(function, path_prefix="/app")
    async with session.get(server.url + "/app/orders/42") as resp:
        assert resp.status == 200 and await resp.json() == {"id": "42", "item": "apple", "qty": 3}
    async with session.get(server.url + "/app/orders/7") as resp:
        assert resp.status == 404 and await resp.json() == {"message": "no order 7"}
    async with session.post(
        server.url + "/app/orders", json={"item": "pear"}, headers={"User-Agent": "pt/1"}
    ) as resp:
        assert resp.status == 201 and resp.headers["Location"] == "/orders/new"
        assert await resp.json() == {"created": {"item": "pear"}, "user_agent": "pt/1"}
        assert resp.headers.getall("Set-Cookie") == ["session=abc; Path=/", "theme=dark"]
    async with session.get(
        server.url + "/app/search?q=x&tag=a&tag=b",
        headers={"Cookie": "k=v", "X-Custom": "c"},
    ) as resp:
        assert await resp.json() == {"q": "x", "tags": "a,b", "cookies": ["k=v"], "header": "c"}
    async with session.get(server.url + "/app/nope") as resp:
        assert resp.status == 404  # Powertools' own not-found
    async with session.get(server.url + "/app/boom") as resp:
        assert resp.status == 502


# -- CORS ----------------------------------------------------------------------------------------


async def test_cors_preflight_and_responses(served):
    rt, server, session = served
    server.add_url(
        "respond",
        path_prefix="/c",
        cors={
            "AllowOrigins": ["https://app.example"],
            "AllowMethods": ["GET", "POST"],
            "AllowHeaders": ["x-token", "content-type"],
            "ExposeHeaders": ["x-request"],
            "MaxAge": 300,
            "AllowCredentials": True,
        },
    )
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "X-Token"}
    async with session.options(server.url + "/c/x", headers=pre) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert resp.headers["Access-Control-Allow-Methods"] == "GET,POST"
        assert resp.headers["Access-Control-Allow-Headers"] == "x-token,content-type"
        assert resp.headers["Access-Control-Max-Age"] == "300"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert rt.stats()["functions"]["respond"]["invocations"] == 0  # answered by the URL
    bad_origin = {**pre, "Origin": "https://evil.example"}
    for bad in (bad_origin, {**pre, "Access-Control-Request-Method": "DELETE"}):
        async with session.options(server.url + "/c/x", headers=bad) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
    async with session.get(server.url + "/c", headers={"Origin": "https://app.example"}) as resp:
        # the URL's CORS headers replace the function's own
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert resp.headers["Access-Control-Expose-Headers"] == "x-request"
    async with session.get(server.url + "/c", headers={"Origin": "https://evil.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with session.get(server.url + "/c") as resp:  # no Origin: still none of the function's
        assert resp.status == 203 and "Access-Control-Allow-Origin" not in resp.headers


async def test_a_preflight_without_cors_does_not_run_a_route_of_other_methods(served):
    rt, server, session = served
    server.add_url("respond", path_prefix="/g", route="GET /only")
    server.add_url("respond", path_prefix="/c", route="GET /only", cors={"AllowOrigins": ["*"],
                                                                        "AllowMethods": ["GET"]})
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    async with session.options(server.url + "/g/only", headers=pre) as resp:
        assert resp.status == 404 and await resp.json() == {"message": "Not Found"}
    async with session.options(server.url + "/c/only", headers=pre) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    # a page's request for a path no route takes: the URL's 404, not fnrt's API guard's 403
    async with session.get(server.url + "/g/other", headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 404 and await resp.json() == {"message": "Not Found"}
    assert rt.stats()["functions"]["respond"]["invocations"] == 0


async def test_cors_keeps_the_functions_vary_and_takes_only_a_boolean_for_credentials(answering):
    rt, server, session = answering
    server.add_url("answer", cors={"AllowOrigins": ["https://app.example"], "AllowMethods": ["POST"]})
    result = {"statusCode": 200, "headers": {"Vary": "Accept-Encoding"}, "body": "x"}
    async with session.post(
        server.url + "/answer", json=result, headers={"Origin": "https://app.example"}
    ) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert resp.headers.getall("Vary") == ["Accept-Encoding, Origin"]  # a cache keys on both
    result["headers"] = {"Vary": "origin"}
    async with session.post(
        server.url + "/answer", json=result, headers={"Origin": "https://app.example"}
    ) as resp:
        assert resp.headers.getall("Vary") == ["origin"]
    for bad in ("false", "true", 1):
        with pytest.raises(InvalidConfig, match="AllowCredentials"):
            server.add_url("answer", path_prefix="/c", cors={"AllowOrigins": ["*"], "AllowCredentials": bad})


# -- the embedding API ---------------------------------------------------------------------------


async def test_add_url_validates_eagerly(served):
    rt, server, session = served
    with pytest.raises(FunctionNotFound):
        server.add_url("ghost")
    for bad in (
        {"payload_format": "3.0"},
        {"route": "/a/{x+}/b"},
        {"path_prefix": "no-slash"},
        {"cors": {"AllowOrigin": ["*"]}},
        {"cors": {"MaxAge": -1}},
        {"auth_type": "OPEN"},
    ):
        with pytest.raises(InvalidConfig):
            server.add_url("respond", **bad)
    server.add_url("respond")
    with pytest.raises(InvalidConfig, match="mounted already"):
        server.add_url("respond")
    for own in ("/console", "/console/x", "/2015-03-31", "/2015-03-31/functions"):
        with pytest.raises(InvalidConfig, match="fnrt's own"):  # never reached: fnrt's routes win
            server.add_url("respond", path_prefix=own)


async def test_a_url_refused_after_the_start_leaves_every_other_route_serving(served):
    rt, server, session = served
    assert (await session.get(f"{server.url}/hello/")).status == 200
    assert sorted(await rt.deploy("handlers.bad_url")) == ["fine", "grab"]  # deployed after the start
    for _ in range(2):  # the refusal is once, not at every request
        assert (await session.get(f"{server.url}/hello/")).status == 200
        assert (await session.get(f"{server.url}/console/")).status == 200
        assert (await session.get(f"{server.url}/nope")).status == 404
    assert "fnrt's own" in server.refused_urls["grab"]
    assert await rt.invoke("fine", {}) == "fine"
    await rt.remove_function("grab")
    assert (await session.get(f"{server.url}/hello/")).status == 200
    assert "grab" not in server.refused_urls


async def test_a_url_that_cannot_be_mounted_fails_the_start():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.bad_url")
        with pytest.raises(InvalidConfig, match="fnrt's own"):
            async with InvokeServer(rt, port=0):
                pass


async def test_add_url_on_your_own_aiohttp_app():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.api")
        app = aiohttp.web.Application()
        add_url(app, "api", path_prefix="/shop", runtime=rt)
        add_url(app, "api", path_prefix="/rest", payload_format="1.0", route="GET /only", runtime=rt)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/shop/orders/42") as resp:
                    assert resp.status == 200 and (await resp.json())["item"] == "apple"
                async with session.get(f"http://127.0.0.1:{port}/rest/other") as resp:
                    assert resp.status == 403
                    assert await resp.json() == {"message": "Missing Authentication Token"}
        finally:
            await runner.cleanup()


# -- the command line ------------------------------------------------------------------------


async def start_serve(*args: str) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    """``python -m fnrt serve ...`` on an ephemeral port; returns it once it listens."""
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fnrt", "serve", *args, "--port", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        if not line:
            raise AssertionError("serve exited: " + "".join(lines))
        lines.append(line)
        if line.startswith("listening on "):
            return proc, line.split()[2], lines


async def stop_serve(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 30)


async def test_cli_serve_url():
    proc, url, lines = await start_serve("handlers.api", "handlers.rest_api", "handlers.web", "--url", "api",
                                         "--url", "rest_api=/v1@1.0")
    try:
        assert any(line.startswith("url api: ") for line in lines)
        assert f"url hello_url: {url}/hello/  (payload format 2.0)\n" in lines  # declared by its handler
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/api/orders/42") as resp:
                assert resp.status == 200 and (await resp.json())["qty"] == 3
            async with session.get(url + "/v1/orders/5") as resp:
                assert resp.status == 200 and (await resp.json())["path"] == "/orders/5"
    finally:
        await stop_serve(proc)


async def test_a_handler_that_declares_its_url_is_mounted_by_the_server():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.web")
        async with InvokeServer(rt, port=0) as server, aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/hello/there") as resp:
                assert resp.status == 200
                assert await resp.text() == "hello from /there"
    with pytest.raises(fnrt.InvalidConfig, match="unknown url options"):
        fnrt.handler(url={"prefix": "/x"})(lambda event, context: None)
