"""Sync invoke against real subprocess sandboxes: init, warm reuse, results, logs, context."""

from __future__ import annotations

import pytest

import fnrt


async def test_deploy_discovers_handlers_and_invokes():
    async with fnrt.Runtime() as rt:
        names = await rt.deploy("handlers.echo")
        assert names == ["echo", "noop"]
        out = await rt.invoke("echo", {"x": 1})
        assert out["event"] == {"x": 1}
        assert len(out["request_id"]) == 36
        assert await rt.invoke("noop", {}) is None
        assert rt.get_function("echo").config.timeout == 3


async def test_init_runs_once_per_sandbox_and_warm_sandbox_is_reused():
    async with fnrt.Runtime() as rt:
        await rt.add_function("whoami", "handlers.chaos:whoami")
        first = await rt.invoke_detailed("whoami", {})
        second = await rt.invoke_detailed("whoami", {})
        assert first.cold_start and not second.cold_start
        assert first.payload["pid"] == second.payload["pid"]
        assert second.payload["inits"] == 1  # module state survives: init ran once
        assert first.init_duration_ms is not None and second.init_duration_ms is None
        stats = rt.stats()["functions"]["whoami"]
        assert stats["cold_starts"] == 1 and stats["warm"] == 1 and stats["invocations"] == 2


async def test_module_is_not_imported_in_the_host():
    import sys

    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.shop")
        await rt.invoke("validate", {"items": [{"sku": "apple", "qty": 2}]})
    assert "handlers.shop" not in sys.modules


async def test_async_handler():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.shop")
        out = await rt.invoke("quote", {"skus": ["apple", "melon"]})
        assert out["total"] == 2.5
        assert 0 < out["remaining_ms"] <= 5000


async def test_handler_exception_is_a_function_error_with_lambda_shape_and_log_tail():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.shop")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("validate", {"items": [{"sku": "kiwi", "qty": 1}]})
        err = info.value
        assert err.error_type == "InvalidOrder"
        assert err.error_message == "unknown sku 'kiwi'"
        assert any("validate" in frame for frame in err.stack_trace)
        body = err.to_lambda()
        assert set(body) == {"errorMessage", "errorType", "requestId", "stackTrace"}
        assert "[ERROR] InvalidOrder: unknown sku 'kiwi'" in err.log_tail
        assert f"END RequestId: {err.request_id}" in err.log_tail


async def test_output_and_logging_are_captured_per_invocation():
    async with fnrt.Runtime() as rt:
        await rt.add_function("talk", "handlers.chaos:talk")
        result = await rt.invoke_detailed("talk", {})
        lines = result.log.splitlines()
        assert lines[0] == f"START RequestId: {result.request_id} Version: $LATEST"
        assert "hello from the handler" in lines
        assert any(
            line.startswith("[WARNING]\t") and line.endswith(f"\ta warning with id {result.request_id}")
            and f"\t{result.request_id}\t" in line
            for line in lines
        )
        assert lines[-2] == f"END RequestId: {result.request_id}"
        report = lines[-1].split("\t")
        assert report[0] == f"REPORT RequestId: {result.request_id}"
        assert report[1].startswith("Duration: ") and report[1].endswith(" ms")
        assert report[3] == "Memory Size: 128 MB"
        assert report[-1].startswith("Init Duration: ")  # cold start
        again = await rt.invoke_detailed("talk", {})
        assert "Init Duration" not in again.log  # warm
        assert "hello from the handler" in again.log
        assert result.request_id not in again.log  # nothing leaks between invocations
        import base64

        assert base64.b64decode(again.log_result).decode() == again.log


async def test_context_has_lambdas_attributes():
    async with fnrt.Runtime(region="eu-west-1", account_id="123456789012") as rt:
        await rt.add_function(
            "ctx", "handlers.chaos:context_info", timeout=7, memory_mb=512, environment={"GREETING": "hi"}
        )
        result = await rt.invoke_detailed("ctx", {}, client_context={"custom": {"k": "v"}})
        c = result.payload
        assert c["function_name"] == "ctx"
        assert c["function_version"] == "$LATEST"
        assert c["invoked_function_arn"] == "arn:aws:lambda:eu-west-1:123456789012:function:ctx"
        assert c["memory_limit_in_mb"] == "512"
        assert c["aws_request_id"] == result.request_id
        assert c["log_group_name"] == "/aws/lambda/ctx"
        assert c["log_stream_name"].endswith("]" + c["log_stream_name"].split("]")[1])
        assert "[$LATEST]" in c["log_stream_name"]
        assert 0 < c["remaining_ms"] <= 7000
        assert c["client_context"] == {"k": "v"}
        assert c["env_name"] == "ctx" and c["env_custom"] == "hi"


async def test_remaining_time_counts_down_from_the_timeout_on_a_fake_clock_too():
    """The handler reads the time it has left on its own (wall) clock, so the deadline it
    gets is on that clock: a runtime on a FakeClock must not hand it the fake clock's date
    (the handler saw weeks left, or none)."""
    async with fnrt.Runtime(clock=fnrt.FakeClock(wall_start=1_900_000_000.0)) as rt:
        await rt.add_function("ctx", "handlers.chaos:context_info", timeout=7)
        assert 5000 < (await rt.invoke("ctx", {}))["remaining_ms"] <= 7000


async def test_function_name_may_be_an_arn():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        arn = rt.get_function("echo").arn
        assert (await rt.invoke(arn, {"a": 1}))["event"] == {"a": 1}
        assert (await rt.invoke("000000000000:function:echo", {"a": 2}))["event"] == {"a": 2}


async def test_dry_run_validates_without_invoking():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        assert await rt.invoke("echo", {"x": 1}, invocation_type="DryRun") is None
        result = await rt.invoke_detailed("echo", {"x": 1}, invocation_type="DryRun")
        assert result.status_code == 204
        assert rt.stats()["functions"]["echo"]["invocations"] == 0
        with pytest.raises(fnrt.FunctionNotFound):
            await rt.invoke("nope", {}, invocation_type="DryRun")


async def test_redeploy_replaces_warm_sandboxes():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        before = (await rt.invoke("echo", {}))["pid"]
        await rt.deploy("handlers.echo")
        after = (await rt.invoke("echo", {}))["pid"]
        assert before != after


async def test_inline_sandbox_runs_the_same_handlers_in_the_host():
    async with fnrt.Runtime(sandbox="inline") as rt:
        await rt.deploy("handlers.shop")
        out = await rt.invoke("validate", {"order_id": 7, "items": [{"sku": "pear", "qty": 4}]})
        assert out["total"] == 3.0
        assert (await rt.invoke("quote", {"skus": ["melon"]}))["total"] == 2.0
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("validate", {"items": []})
        assert info.value.error_type == "InvalidOrder"
        assert "order has no items" in info.value.log_tail
