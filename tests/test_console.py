"""The console's pages and JSON API over a real runtime and server (no browser), and the
bounded ring of recent invocations it reads."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

import fnrt

aiohttp = pytest.importorskip("aiohttp")

from fnrt._recent import RecentInvocations
from fnrt._runtime import InvocationResult
from fnrt.console import CONSOLE
from fnrt.http import InvokeServer

from .conftest import wait_until

RESERVED = "ReservedFunctionConcurrentInvocationLimitExceeded"


@pytest.fixture
async def served(release_file):
    async with fnrt.Runtime(concurrency_limit=10, unreserved_minimum=0) as rt:
        await rt.deploy("handlers.echo")
        await rt.deploy("handlers.shop")
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=1)
        async with InvokeServer(rt, port=0) as server, aiohttp.ClientSession(server.url) as http:
            yield rt, server, http


async def get_json(http, path, status=200):
    async with http.get(path) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def api_invoke(http, function, payload=None, invocation_type="RequestResponse", status=200):
    body = {"function": function, "payload": payload, "invocation_type": invocation_type}
    async with http.post("/console/api/invoke", json=body) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def test_the_page_is_server_rendered_and_needs_no_network(served):
    rt, server, http = served
    await rt.invoke("echo", {"hello": 1})
    async with http.get("/console") as resp:  # redirected to /console/
        assert resp.status == 200 and resp.url.path == "/console/"
        page = await resp.text()
    for name in ("echo", "noop", "validate", "quote", "hold"):
        assert f">{name}</a>" in page  # the functions table, without JavaScript
    assert "Recent invocations" in page and "handlers.echo.echo" in page
    assert '<label for="invoke-payload">' in page and '<label for="filter-function">' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # no CDN: every asset is ours
    for asset in (
        "vendor/uplot/uPlot.iife.min.js",
        "vendor/uplot/uPlot.min.css",
        "console.js",
        "console.css",
    ):
        async with http.get(f"/console/static/{asset}") as resp:
            assert resp.status == 200, asset
            assert len(await resp.read()) > 100


async def test_invoke_from_the_api_then_find_it_among_recent_invocations(served):
    rt, server, http = served
    out = await api_invoke(http, "echo", {"order": 7})
    assert out["status_code"] == 200 and out["function_error"] is None
    assert json.loads(out["result"])["event"] == {"order": 7}
    assert f"REPORT RequestId: {out['request_id']}" in out["log"]

    listed = (await get_json(http, "/console/api/invocations"))["invocations"]
    assert listed[0]["request_id"] == out["request_id"] and listed[0]["outcome"] == "success"
    detail = await get_json(http, f"/console/api/invocations/{out['request_id']}")
    assert json.loads(detail["payload"]) == {"order": 7}
    assert json.loads(detail["result"])["event"] == {"order": 7}
    assert detail["cold_start"] is True  # the first call after deploy is a cold start
    assert detail["report"]["billed_duration_ms"] >= 1 and detail["report"]["memory_size_mb"] == 128
    assert detail["log"].startswith(f"START RequestId: {out['request_id']}")
    async with http.get(f"/console/invocations/{out['request_id']}") as resp:
        page = await resp.text()
    assert resp.status == 200 and "Billed duration" in page and "&quot;order&quot;:7" in page
    await get_json(http, "/console/api/invocations/no-such-id", status=404)


async def test_recent_invocations_filter_by_function_and_outcome(served):
    rt, server, http = served
    await rt.invoke("echo", {})
    failed = await rt.invoke_detailed("validate", {"items": []})
    assert failed.error is not None
    errors = (await get_json(http, "/console/api/invocations?outcome=error"))["invocations"]
    assert [e["request_id"] for e in errors] == [failed.request_id]
    assert errors[0]["error_type"] == "InvalidOrder"
    echoes = (await get_json(http, "/console/api/invocations?function=echo"))["invocations"]
    assert {e["function"] for e in echoes} == {"echo"}
    detail = await get_json(http, f"/console/api/invocations/{failed.request_id}")
    assert "order has no items" in detail["result"] and "InvalidOrder" in detail["log"]
    async with http.get("/console/?function=validate&outcome=error") as resp:
        page = await resp.text()
    recent = page.split('id="sec-recent"')[1].split("</section>")[0]
    assert failed.request_id in recent and ">echo</td>" not in recent
    bogus = await get_json(http, "/console/api/invocations?outcome=bogus", status=400)
    assert bogus["error"].startswith("outcome must be one of")  # the console's words, not "Bad Request"
    await get_json(http, "/console/api/invocations?limit=0", status=400)
    async with http.get("/console/?outcome=bogus") as resp:
        assert resp.status == 400 and "outcome must be one of" in await resp.text()


async def test_invoke_api_rejects_bad_requests_clearly(served):
    rt, server, http = served
    missing = await api_invoke(http, "nope", {}, status=404)
    assert missing["error_type"] == "ResourceNotFound"
    bad_type = await api_invoke(http, "echo", {}, invocation_type="DryRunX", status=400)
    assert "invocation_type" in bad_type["error"]
    async with http.post("/console/api/invoke", data=b"function=echo") as resp:  # a cross-site form
        assert resp.status == 415
    async with http.post(
        "/console/api/invoke", data=b"[1]", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
    assert rt.recent.seq == 0  # nothing was invoked


async def test_the_form_works_without_javascript_but_not_from_another_site(served):
    rt, server, http = served
    form = {"function": "echo", "payload": '{"from": "form"}', "invocation_type": "RequestResponse"}
    async with http.post("/console/invoke", data=form) as resp:
        page = await resp.text()
    assert resp.status == 200 and "&quot;from&quot;: &quot;form&quot;" in page and "REPORT RequestId" in page
    async with http.post("/console/invoke", data={**form, "payload": "{oops"}) as resp:
        assert resp.status == 400 and "not JSON" in await resp.text()
    async with http.post("/console/invoke", data=form, headers={"Origin": "http://evil.example"}) as resp:
        assert resp.status == 403
    assert rt.recent.seq == 1


async def test_on_loopback_the_console_answers_loopback_names_only(served):
    rt, server, http = served
    async with http.get("/console/api/overview", headers={"Host": "attacker.example"}) as resp:
        assert resp.status == 403  # a page that rebound its DNS name to 127.0.0.1
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        async with http.get("/console/api/overview", headers={"Host": host}) as resp:
            assert resp.status == 200, host


async def test_throttles_are_counted_per_reason_and_in_the_series(served, release_file):
    rt, server, http = served
    console = server.app[CONSOLE]
    console.series.sample(rt, 1000.0)
    held = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
    await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 1, "hold busy")
    overview = await get_json(http, "/console/api/overview")
    (sandbox,) = next(f for f in overview["functions"] if f["name"] == "hold")["sandboxes"]
    assert sandbox["state"] == "busy" and sandbox["age_s"] >= 0 and sandbox["idle_s"] is None
    throttled = await api_invoke(http, "hold", {"release": release_file}, status=429)
    assert RESERVED in throttled["error"]
    point = console.series.sample(rt, 1001.0)
    assert point["functions"]["hold"]["throttles"] == 1 and point["throttles"] == 1
    assert point["functions"]["hold"]["in_flight"] == 1 and point["in_flight"] == 1
    overview = await get_json(http, "/console/api/overview")
    assert overview["concurrency"]["throttles_by_reason"][RESERVED] == 1
    hold = next(f for f in overview["functions"] if f["name"] == "hold")
    assert hold["throttles"] == 1 and hold["reserved_concurrency"] == 1
    assert hold["throttles_by_reason"] == {RESERVED: 1}
    open(release_file, "w").close()
    await held
    overview = await get_json(http, "/console/api/overview")
    (sandbox,) = next(f for f in overview["functions"] if f["name"] == "hold")["sandboxes"]
    assert sandbox["state"] == "warm" and sandbox["invocations"] == 1 and sandbox["idle_s"] >= 0
    point = console.series.sample(rt, 1002.0)
    assert point["functions"]["hold"]["throttles"] == 0 and point["functions"]["hold"]["invocations"] == 1
    assert point["functions"]["hold"]["p50_ms"] is not None
    series = await get_json(http, "/console/api/series")
    assert [p["t"] for p in series["points"]][-3:] == [1000.0, 1001.0, 1002.0]


async def test_the_first_calls_of_a_function_added_later_are_in_the_series(served):
    """A function deployed while the console runs: its first calls, made before the next
    point, are in the charts (not taken as what came before the console)."""
    rt, server, http = served
    console = server.app[CONSOLE]
    console.series.sample(rt, 2000.0)
    await rt.add_function("late", "handlers.echo:echo")
    await rt.invoke("late", {})
    await rt.invoke("late", {})
    console.series.sample(rt, 2001.0)
    points = (await get_json(http, "/console/api/series"))["points"]
    assert sum(p["functions"].get("late", {}).get("invocations", 0) for p in points) == 2


async def test_a_console_left_open_does_not_open_the_async_queue(served):
    rt, server, http = served
    queues = await get_json(http, "/console/api/queues")
    assert queues == {"open": False, "functions": [], "sinks": []}
    assert rt.state_dir is None  # no state database was created for the console
    await get_json(http, "/console/api/streams")
    assert rt.state_dir is None


async def test_queued_events_and_sink_records_show_in_queues(served, release_file):
    rt, server, http = served
    await rt.deploy("handlers.payments")
    held = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
    await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 1, "hold in flight")
    queued = await api_invoke(http, "hold", {"release": release_file}, invocation_type="Event")
    assert queued["status_code"] == 202 and queued["log"] is None
    queues = await get_json(http, "/console/api/queues")
    hold = next(f for f in queues["functions"] if f["function"] == "hold")
    assert queues["open"] and hold["queued"] + hold["leased"] == 1
    assert [s["sink"] for s in queues["sinks"]] == ["failed-payments"]  # from charge's async_config
    open(release_file, "w").close()
    await held


async def test_the_queue_depth_is_live_and_finished_events_are_recounted_every_30_s(served, release_file):
    """Each tick counts the queued and leased events (few, indexed); the done and failed
    ones (a day's, retained) are counted every 30 s, so a console left open does not hold
    the store from the Event invokes."""
    rt, server, http = served
    console = server.app[CONSOLE]
    clock = fnrt.FakeClock()
    console.finished.clock = clock.monotonic

    def row(state, function):
        return next(f for f in state["queues"]["functions"] if f["function"] == function)

    await rt.invoke("echo", {}, invocation_type="Event")
    await rt.wait_idle()
    assert row(await console.state(), "echo")["done"] == 1
    held = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
    await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 1, "hold in flight")
    await rt.invoke("hold", {"release": release_file}, invocation_type="Event")  # waits: reserved 1
    second = await rt.invoke("echo", {}, invocation_type="Event")

    async def second_done() -> bool:
        return (await rt.async_event(second) or {}).get("state") == "done"

    await wait_until(second_done, "the second echo done")
    state = await console.state()
    assert row(state, "hold")["queued"] + row(state, "hold")["leased"] == 1  # live
    assert row(state, "echo")["done"] == 1  # counted again in 30 s
    await clock.advance(30)
    assert row(await console.state(), "echo")["done"] == 2
    assert (await get_json(http, "/console/api/queues"))["functions"][0]["done"] == 2  # the API: now
    open(release_file, "w").close()
    await held


async def test_a_sink_shows_its_count_and_newest_records_first(served):
    """The console reads a sink's count and its newest records (a sink fills up during a
    load test, with records of up to 1 MB each, and the console reads it every second)."""
    rt, server, http = served
    rt.configure_async("echo", on_success="sink:echoed")
    for n in range(25):
        await rt.invoke("echo", {"n": n}, invocation_type="Event")
    await rt.wait_idle()
    assert await rt.destination_count("echoed") == 25
    (sink,) = (await get_json(http, "/console/api/queues"))["sinks"]
    assert sink["sink"] == "echoed" and sink["count"] == 25
    every = await rt.destination_records("echoed")  # in the order they were delivered
    assert len(every) == 25 and sink["records"] == every[-20:][::-1]
    assert await rt.destination_records("echoed", newest=2) == every[-2:]
    async with http.get("/console/") as resp:
        assert "Sink echoed: 25 record(s)" in await resp.text()


async def test_streams_show_shards_checkpoints_and_iterator_age(served):
    rt, server, http = served
    stream = await rt.create_stream("orders", shard_count=2)
    mapping = await rt.add_stream_mapping("orders", "echo", batch_size=10)
    await stream.put_records([("a", "k1"), ("b", "k2"), ("c", "k3")])
    await wait_until(lambda: mapping.iterator_age().get("count", 0) >= 1, "a batch read")
    body = (await get_json(http, "/console/api/streams"))["streams"]
    assert [s["name"] for s in body] == ["orders"]
    assert [sh["ShardId"] for sh in body[0]["shards"]] == ["shardId-000000000000", "shardId-000000000001"]
    assert body[0]["shards"][0]["HashKeyRange"]["StartingHashKey"] == "0"
    (m,) = body[0]["mappings"]
    assert m["uuid"] == mapping.uuid and m["function"] == "echo"
    assert set(m["checkpoints"]) <= {"shardId-000000000000", "shardId-000000000001"}
    assert m["iterator_age_ms"]["count"] >= 1 and m["failure_count"] == 0
    async with http.get("/console/") as resp:
        page = await resp.text()
    assert "Stream orders" in page and "shardId-000000000001" in page


async def test_the_event_stream_sends_live_state(served):
    rt, server, http = served
    console = server.app[CONSOLE]
    async with http.get("/console/api/events?function=echo") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")

        async def next_tick():
            lines = []
            while True:
                line = (await resp.content.readline()).decode()
                if line == "\n":
                    break
                lines.append(line)
            assert lines[0] == "event: tick\n"
            return json.loads(lines[1].removeprefix("data: "))

        first = await next_tick()
        echo = next(f for f in first["overview"]["functions"] if f["name"] == "echo")
        assert echo["invocations"] == 0 and "No invocations match" in first["html"]["recent"]
        result = await rt.invoke_detailed("echo", {"live": True})
        await rt.invoke("validate", {"items": [{"sku": "pear", "qty": 1}]})
        await console.tick()
        second = await next_tick()
        echo = next(f for f in second["overview"]["functions"] if f["name"] == "echo")
        assert echo["invocations"] == 1
        assert result.request_id in second["html"]["recent"]
        assert "validate" not in second["html"]["recent"]  # this stream filters on echo
        assert second["point"]["functions"]["echo"]["invocations"] >= 0
        assert ">echo</a>" in second["html"]["functions"]


def _result(rid: str, raw: bytes = b'"ok"', output: str = "", error: fnrt.FunctionError | None = None):
    return InvocationResult(rid, "f", 200, raw, error, output=output, duration_ms=1.5)


def test_the_ring_is_bounded_by_count():
    ring = RecentInvocations(fnrt.FakeClock(), max_entries=3)
    for i in range(5):
        ring.add(_result(f"r{i}"), "sb", b"{}")
    assert [e.request_id for e in ring.select()] == ["r4", "r3", "r2"]
    assert ring.get("r1") is None and ring.get("r4") is not None and ring.seq == 5


def test_the_ring_is_bounded_by_bytes_and_cuts_each_field():
    ring = RecentInvocations(fnrt.FakeClock(), max_entries=1000, max_bytes=20_000, field_limit=1000)
    big = b'"' + b"x" * 50_000 + b'"'
    for i in range(100):
        ring.add(_result(f"r{i}", raw=big, output="log line\n" * 10_000), "sb", big)
    assert ring.bytes <= 20_000 and 0 < len(ring) < 100
    assert sum(e.size for e in ring) == ring.bytes
    detail = ring.select()[0].detail()
    assert detail["payload_truncated"] and detail["payload_bytes"] == len(big)
    assert len(detail["payload"]) == 1000 and len(detail["result"]) == 1000
    assert detail["log"].endswith("Max Memory Used: 0 MB\n") and "END RequestId: r99" in detail["log"]
    assert len(detail["log"].encode()) <= 1000  # the log's tail, like Lambda's log tail


def test_the_ring_samples_durations_until_drained_and_counts_throttles():
    ring = RecentInvocations(fnrt.FakeClock())
    for i in range(3):
        ring.add(_result(f"r{i}"), "sb")
    ring.throttled("f", RESERVED)
    assert ring.drain_durations() == {"f": [1.5, 1.5, 1.5]}
    assert ring.drain_durations() == {}
    assert ring.throttles == {"f": {RESERVED: 1}}


async def test_closing_the_server_ends_open_event_streams():
    async with fnrt.Runtime() as rt:
        server = InvokeServer(rt, port=0)
        await server.start()
        async with aiohttp.ClientSession(server.url) as http:
            async with http.get("/console/api/events") as resp:
                assert (await resp.content.readline()) == b"event: tick\n"
                for _ in range(8):  # more ticks than a client may fall behind: it skips some
                    await server.console.tick()
                await server.aclose()  # must not wait for the browser to go away
                await resp.content.read()  # returns once the server has ended the stream
                assert resp.content.at_eof()


async def test_an_init_failure_is_a_recent_invocation_with_its_log(served):
    rt, server, http = served
    await rt.add_function("broken", "handlers.broken:never")
    result = await rt.invoke_detailed("broken", {"n": 1})
    assert result.error is not None
    detail = await get_json(http, f"/console/api/invocations/{result.request_id}")
    assert detail["outcome"] == "error" and detail["cold_start"] is True
    assert detail["sandbox_id"] is None and detail["error_type"] == result.error.error_type
    assert json.loads(detail["payload"]) == {"n": 1}
    assert detail["log"] == result.log


async def test_bisect_and_on_failure_records_show_for_a_mapping(served):
    rt, server, http = served
    await rt.add_function("orders", "handlers.orders:process_orders")
    stream = await rt.create_stream("payments", shard_count=1)
    orders = [(json.dumps({"id": i, "poison": i == 2}), "customer") for i in range(4)]
    await stream.put_records(orders)
    mapping = await rt.add_stream_mapping(
        "payments", "orders", batch_size=4, bisect_on_error=True, max_retry_attempts=0, on_failure="dlq"
    )
    for _ in range(1500):
        if await mapping.failure_records():
            break
        await asyncio.sleep(0.01)
    (m,) = (await get_json(http, "/console/api/streams"))["streams"][0]["mappings"]
    assert m["bisects"] >= 1 and m["failure_count"] == 1
    assert m["failure_records"][0]["KinesisBatchInfo"]["batchSize"] == 1
    errors = (await get_json(http, "/console/api/invocations?function=orders&outcome=error"))["invocations"]
    assert errors and errors[0]["error_type"] == "BadOrder"
    async with http.get("/console/") as resp:
        page = await resp.text()
    assert "KinesisBatchInfo" in page and "Bisects" in page
