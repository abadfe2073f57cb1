"""The authenticated endpoint: SigV4 as boto3 signs it, cross-origin requests, connection floods."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys

import pytest

import fnrt

aiohttp = pytest.importorskip("aiohttp")
boto3 = pytest.importorskip("boto3")
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from fnrt.errors import InvalidConfig
from fnrt.http import InvokeServer

KEY, SECRET = "AKIDFNRTTEST", "s3cr3t/with+chars"


def client(service: str, url: str, key: str = KEY, secret: str = SECRET):  # type: ignore[no-untyped-def]
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )


async def call(fn, **kwargs):
    return await asyncio.to_thread(fn, **kwargs)


def botocore_signed(method: str, url: str, body: bytes = b"", headers: dict | None = None,
                    key: str = KEY, secret: str = SECRET) -> dict[str, str]:
    """Headers signed by botocore itself (the reference signer)."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(key, secret), "lambda", "us-east-1").add_auth(request)
    return dict(request.headers.items())


@pytest.fixture
async def secured():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        await rt.deploy("handlers.web")
        async with InvokeServer(rt, port=0, auth=[(KEY, SECRET)]) as server:
            yield rt, server


async def test_boto3_signed_requests_pass(secured):
    rt, server = secured
    lam = client("lambda", server.url)
    arn = rt.get_function("echo").arn
    resp = await call(lam.invoke, FunctionName=arn + ":$LATEST", Payload=b'{"a": 1}')
    assert json.loads(resp["Payload"].read())["event"] == {"a": 1}
    page = await call(lam.list_functions, MaxItems=1)  # a signed query string
    assert len(page["Functions"]) == 1
    ctx = base64.b64encode(json.dumps({"custom": {"k": "v w"}}).encode()).decode()
    await call(lam.invoke, FunctionName="echo", Payload=b"{}", ClientContext=ctx)
    kinesis = client("kinesis", server.url)
    await call(kinesis.create_stream, StreamName="s", ShardCount=1)
    await call(kinesis.put_record, StreamName="s", Data=b"x", PartitionKey="k")


async def test_bad_signatures_are_aws_403s(secured):
    rt, server = secured
    cases = [
        (client("lambda", server.url, secret="wrong"), "InvalidSignatureException"),
        (client("lambda", server.url, key="AKIDUNKNOWN"), "UnrecognizedClientException"),
    ]
    for lam, error in cases:
        with pytest.raises(lam.exceptions.ClientError) as info:
            await call(lam.invoke, FunctionName="echo", Payload=b"{}")
        assert info.value.response["Error"]["Code"] == error
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    url = server.url + "/2015-03-31/functions/echo/invocations"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=b"{}") as resp:
            assert resp.status == 403
            assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        incomplete = {"Authorization": "AWS4-HMAC-SHA256 Credential=x"}
        async with session.post(url, data=b"{}", headers=incomplete) as resp:
            assert resp.status == 403 and resp.headers["x-amzn-ErrorType"] == "IncompleteSignatureException"
        # a body changed after signing
        headers = botocore_signed("POST", url, b'{"n": 1}')
        async with session.post(url, data=b'{"n": 2}', headers=headers) as resp:
            assert resp.status == 403 and resp.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
        # signed 20 minutes ago: past the 15-minute skew
        request = AWSRequest(method="POST", url=url, data=b"{}")
        request.context["timestamp"] = "20200101T000000Z"
        signer = SigV4Auth(Credentials(KEY, SECRET), "lambda", "us-east-1")
        request.headers["X-Amz-Date"] = "20200101T000000Z"
        canonical = signer.canonical_request(request)
        sts = signer.string_to_sign(request, canonical)
        signer._inject_signature_to_request(request, signer.signature(sts, request))
        async with session.post(url, data=b"{}", headers=dict(request.headers.items())) as resp:
            body = await resp.json()
            assert resp.status == 403 and resp.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
            assert "Signature expired" in body["message"]
        # the correctly signed request passes (signature over path, query and body)
        headers = botocore_signed("POST", url + "?Qualifier=%24LATEST", b"{}")
        async with session.post(url + "?Qualifier=%24LATEST", data=b"{}", headers=headers) as resp:
            assert resp.status == 200
    assert rt.stats()["functions"]["echo"]["invocations"] == 1


async def test_function_urls_none_open_and_aws_iam_signed(secured):
    rt, server = secured
    server.add_url("show_event", path_prefix="/open")
    server.add_url("show_event", path_prefix="/iam", auth_type="AWS_IAM")
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/open/x") as resp:
            assert resp.status == 200 and (await resp.json())["requestContext"]["accountId"] == "anonymous"
        async with session.get(server.url + "/iam/x") as resp:
            assert resp.status == 403
        headers = botocore_signed("GET", server.url + "/iam/x?q=1")
        async with session.get(server.url + "/iam/x?q=1", headers=headers) as resp:
            assert resp.status == 200
            iam = (await resp.json())["requestContext"]["authorizer"]["iam"]
        assert iam["accessKey"] == KEY and iam["accountId"] == "000000000000"


async def test_unsigned_cross_origin_and_rebound_requests_are_refused():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        async with InvokeServer(rt, port=0) as server, aiohttp.ClientSession() as session:
            url = server.url + "/2015-03-31/functions/echo/invocations"
            for headers in (
                {"Origin": "http://evil.example", "Content-Type": "text/plain"},
                {"Origin": "http://localhost:3000"},
                {"Sec-Fetch-Site": "cross-site"},
            ):
                async with session.post(url, data=b"{}", headers=headers) as resp:
                    assert resp.status == 403 and resp.headers["x-amzn-ErrorType"] == "AccessDeniedException"
            assert rt.stats()["functions"]["echo"]["invocations"] == 0
            async with session.post(url, data=b"{}", headers={"Origin": server.url}) as resp:
                assert resp.status == 200  # the server's own origin
            async with session.post(url, data=b"{}") as resp:
                assert resp.status == 200  # not a browser (curl, scripts)
            # DNS rebinding: the attacker's own domain, resolved to 127.0.0.1
            rebound = {"Host": f"evil.example:{server.port}", "Origin": f"http://evil.example:{server.port}"}
            async with session.post(url, data=b"{}", headers=rebound) as resp:
                assert resp.status == 403 and resp.headers["x-amzn-ErrorType"] == "AccessDeniedException"
            async with session.post(url, data=b"{}", headers={"Host": f"localhost:{server.port}"}) as resp:
                assert resp.status == 200


async def test_binding_beyond_loopback_requires_credentials(tmp_path):
    async with fnrt.Runtime() as rt:
        with pytest.raises(InvalidConfig, match="without authentication"):
            InvokeServer(rt, host="0.0.0.0")
        InvokeServer(rt, host="0.0.0.0", auth=[(KEY, SECRET)])  # constructed, not started
        creds = tmp_path / "credentials"
        creds.write_text(f"[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
        assert InvokeServer(rt, host="0.0.0.0", auth_file=str(creds)).verifier is not None
        (tmp_path / "plain").write_text(f"# fnrt keys\n{KEY}:{SECRET}\n")
        assert InvokeServer(rt, auth_file=str(tmp_path / "plain")).verifier.credentials == {KEY: SECRET}
        with pytest.raises(InvalidConfig):
            InvokeServer(rt, auth=["no-colon"])
        with pytest.raises(InvalidConfig):
            InvokeServer(rt, auth_file=str(tmp_path / "missing"))


async def test_a_signed_request_with_header_bytes_that_are_not_utf8_is_judged_not_crashed(secured):
    """The signature is checked over the bytes as sent; a mismatch is AWS's 403, never a
    500 from failing to encode them."""
    rt, server = secured
    url = server.url + "/2015-03-31/functions/echo/invocations"
    signed = botocore_signed("POST", url, b"{}", headers={"X-Foo": "placeholder"})
    head = b"".join(
        f"{k}: {v}\r\n".encode() for k, v in signed.items() if k.lower() not in ("x-foo", "content-length")
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: "
        + f"127.0.0.1:{server.port}".encode() + b"\r\nConnection: close\r\n" + head
        + b"X-Foo: caf\xe9 \xff\r\nContent-Length: 2\r\n\r\n{}"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert b"x-amzn-ErrorType: InvalidSignatureException" in answer
    assert rt.stats()["functions"]["echo"]["invocations"] == 0


async def test_a_preflight_to_an_iam_url_with_cors_is_answered_unsigned(secured):
    """Browsers never sign a CORS preflight: the URL's CORS answers it (nothing runs);
    the request it clears must still be signed."""
    rt, server = secured
    server.add_url("echo", auth_type="AWS_IAM",
                   cors={"AllowOrigins": ["https://app.example"], "AllowMethods": ["POST"],
                         "AllowHeaders": ["authorization", "x-amz-date", "content-type"]})
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,x-amz-date,content-type"}
    async with aiohttp.ClientSession() as session:
        async with session.options(server.url + "/echo/x", headers=pre) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert resp.headers["Access-Control-Allow-Methods"] == "POST"
        origin = {"Origin": "https://app.example"}
        async with session.options(server.url + "/echo/x", headers=origin) as resp:
            assert resp.status == 403  # a plain OPTIONS is a request like any other
        async with session.post(server.url + "/echo/x", data=b"{}", headers=origin) as resp:
            assert resp.status == 403
    assert rt.stats()["functions"]["echo"]["invocations"] == 0


async def test_slow_header_flood_does_not_lock_out_a_real_client():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.deploy("handlers.echo")
        async with InvokeServer(rt, port=0, max_connections=16, header_timeout=10) as server:
            writers = []
            for _ in range(120):  # far more than the limit, each sending half a request head
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: x\r\n")
                writers.append((reader, writer))
            await asyncio.sleep(0)
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    server.url + "/2015-03-31/functions/echo/invocations", data=b'{"ok": 1}'
                ) as resp:
                    assert resp.status == 200 and (await resp.json())["event"] == {"ok": 1}
            stats = server.connections.stats()
            assert stats["open"] <= 16 and stats["evicted"] > 0
            # the slow ones that are left are cut off at the header timeout (the fake clock)
            await clock.advance(10)
            reader, writer = writers[-1]
            assert await asyncio.wait_for(reader.read(), 10) == b""
            for _, writer in writers:
                writer.close()


async def test_a_withheld_body_is_a_408_and_frees_its_connection():
    """Heads sent in time, bodies never finished: each request is answered 408 at the body
    timeout (the fake clock) and its connection closed, so the slots come back."""
    from .conftest import wait_until

    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.deploy("handlers.echo")
        async with InvokeServer(rt, port=0, max_connections=3, body_timeout=30) as server:
            server.add_url("echo")
            held = []
            for path in ("/echo/x", "/2015-03-31/functions/echo/invocations", "/"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                extra = "X-Amz-Target: Kinesis_20131202.ListStreams\r\n" if path == "/" else ""
                head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: 100\r\n\r\n"
                writer.write(head.encode() + b"{")  # 1 byte of 100
                held.append((reader, writer))
            guard = server.connections
            await wait_until(lambda: guard.stats()["open"] == 3 and guard.stats()["pending"] == 0)
            await clock.advance(29)
            await asyncio.sleep(0.05)
            assert guard.stats()["body_timeouts"] == 0
            await clock.advance(1)
            for reader, writer in held:
                answer = await asyncio.wait_for(reader.read(), 10)  # answered, then closed
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 "), answer
                assert b"RequestTimeoutException" in head and b"did not arrive" in body
                writer.close()
            await wait_until(lambda: guard.stats()["open"] == 0)
            assert guard.stats()["body_timeouts"] == 3
            assert rt.stats()["functions"]["echo"]["invocations"] == 0
            async with aiohttp.ClientSession() as session:
                async with session.post(server.url + "/echo/y", data=b"late but whole") as resp:
                    assert resp.status == 200 and (await resp.json())["event"]["body"]
        with pytest.raises(InvalidConfig, match="body_timeout"):
            InvokeServer(rt, body_timeout=0)


async def test_a_client_that_leaves_mid_body_is_no_error_of_fnrts():
    """Clients that hang up halfway through their body: nothing runs, no error (with a
    traceback) is logged for each, and the server goes on serving."""
    from structlog.testing import capture_logs

    from .conftest import wait_until

    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        async with InvokeServer(rt, port=0) as server:
            server.add_url("echo")
            with capture_logs() as logs:
                for path in ("/echo/x", "/2015-03-31/functions/echo/invocations"):
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
                    writer.write(head.encode() + b"{")
                    await writer.drain()
                    await wait_until(lambda: server.connections.stats()["pending"] == 0)
                    writer.close()
                    await wait_until(lambda: server.connections.stats()["open"] == 0)
                await asyncio.sleep(0.1)
            assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
            assert rt.stats()["functions"]["echo"]["invocations"] == 0
            async with aiohttp.ClientSession() as session:
                async with session.post(server.url + "/echo/y", data=b"whole") as resp:
                    assert resp.status == 200


async def test_cli_serve_refuses_open_wildcard_bind_and_signs_with_fnrt_auth():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fnrt", "serve", "handlers.echo", "--host", "0.0.0.0", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and b"without authentication" in err and b"Traceback" not in err

    from .test_http_urls import start_serve, stop_serve

    proc, url, _ = await start_serve("handlers.echo", "--auth", f"{KEY}:{SECRET}")
    try:
        env = {**os.environ, "FNRT_AUTH": f"{KEY}:{SECRET}"}
        signed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fnrt", "invoke", "echo", '{"z": 1}', "--endpoint", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        out, err = await asyncio.wait_for(signed.communicate(), 60)
        assert signed.returncode == 0, err
        assert json.loads(out)["event"] == {"z": 1}
        env.pop("FNRT_AUTH")
        env.pop("AWS_ACCESS_KEY_ID", None)
        unsigned = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fnrt", "list", "--endpoint", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        out, err = await asyncio.wait_for(unsigned.communicate(), 60)
        assert unsigned.returncode == 2 and b"MissingAuthenticationTokenException" in err
    finally:
        await stop_serve(proc)


async def aws_cli(url: str, *args: str, secret: str = SECRET) -> tuple[int, str, str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_MAX_ATTEMPTS": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "awscli", *args, "--endpoint-url", url, "--output", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_aws_cli_signs_and_is_verified(secured, tmp_path):
    pytest.importorskip("awscli")
    rt, server = secured
    out_file = str(tmp_path / "out.json")
    code, out, err = await aws_cli(
        server.url, "lambda", "invoke", "--function-name", "echo", "--payload", '{"cli": true}', out_file,
    )
    assert code == 0, err
    assert json.loads(out)["StatusCode"] == 200
    with open(out_file) as f:
        assert json.load(f)["event"] == {"cli": True}
    code, out, err = await aws_cli(server.url, "lambda", "get-function-configuration",
                                   "--function-name", "echo")
    assert code == 0 and json.loads(out)["Handler"] == "handlers.echo.echo"
    code, out, err = await aws_cli(server.url, "kinesis", "create-stream", "--stream-name", "c",
                                   "--shard-count", "1")
    assert code == 0, err
    code, out, err = await aws_cli(server.url, "kinesis", "put-record", "--stream-name", "c",
                                   "--partition-key", "k", "--data", "aGk=")
    assert code == 0 and json.loads(out)["ShardId"] == "shardId-000000000000"
    code, out, err = await aws_cli(server.url, "lambda", "list-functions", secret="wrong")
    assert code != 0 and "InvalidSignatureException" in err


async def test_a_client_that_stops_reading_is_cut_off():
    import socket

    from .conftest import wait_until

    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.deploy("handlers.echo")
        async with InvokeServer(rt, port=0, send_timeout=30) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
            body = json.dumps({"blob": "x" * (4 * 1024 * 1024)}).encode()
            head = (f"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            await asyncio.get_running_loop().sock_sendall(sock, head + body)
            guard = server.connections
            await wait_until(lambda: any(c.stalled for c in guard.open), "the response to stall")
            await clock.advance(30)
            await wait_until(lambda: guard.stats()["open"] == 0, "the stalled connection to close")
            sock.close()


async def test_idle_keep_alive_connections_make_room_for_new_ones():
    """Clients that make one request and then sit on their keep-alive connections: at the
    limit, the one idle longest is closed for a newcomer instead of turning it away."""
    from .conftest import wait_until

    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        async with InvokeServer(rt, port=0, max_connections=2) as server:
            request = (b"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Length: 2\r\n\r\n{}")
            sitting = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)  # answered; the connection stays open, idle
                sitting.append((reader, writer))
            guard = server.connections
            await wait_until(lambda: guard.stats()["idle"] == 2)
            sessions = [aiohttp.ClientSession() for _ in range(3)]
            try:
                for number, session in enumerate(sessions):  # newcomers that keep theirs open too
                    async with session.post(server.url + "/2015-03-31/functions/echo/invocations",
                                            data=b'{"n": 1}') as resp:
                        assert resp.status == 200, number
                    if number == 0:  # the one idle longest went first
                        assert await asyncio.wait_for(sitting[0][0].read(), 10) == b""
                stats = guard.stats()
                assert stats["refused"] == 0 and stats["evicted"] == 3 and stats["open"] == 2
                for reader, writer in sitting:
                    assert await asyncio.wait_for(reader.read(), 10) == b""
                    writer.close()
            finally:
                for session in sessions:
                    await session.close()


async def test_when_every_connection_serves_a_request_new_ones_get_a_503(release_file):
    from .conftest import wait_until

    async with fnrt.Runtime() as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=30)
        async with InvokeServer(rt, port=0, max_connections=2) as server:
            url = server.url + "/2015-03-31/functions/hold/invocations"
            payload = json.dumps({"release": release_file}).encode()
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                async def post() -> int:
                    async with session.post(url, data=payload) as resp:
                        await resp.read()
                        return resp.status

                held = [asyncio.ensure_future(post()) for _ in range(2)]
                await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 2)
                async with session.post(url, data=payload) as resp:
                    assert resp.status == 503 and resp.headers["x-amzn-ErrorType"] == "ServiceException"
                    assert "connection limit" in (await resp.json())["message"]
                open(release_file, "w").close()
                assert await asyncio.gather(*held) == [200, 200]
