"""Lambda's documented rules, each cited, against real sandboxes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import fnrt
from fnrt.testing import wait_until


# "The following environment variables are reserved and can't be set in your function
# configuration" (Lambda: defined runtime environment variables).
@pytest.mark.parametrize(
    "key", ["AWS_REGION", "AWS_LAMBDA_FUNCTION_NAME", "_HANDLER", "AWS_SECRET_ACCESS_KEY"]
)
async def test_reserved_environment_keys_are_rejected(key: str) -> None:
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.InvalidConfig, match=f"reserved keys.*{key}"):
            await rt.add_function("f", "handlers.echo:echo", environment={key: "x"})
        # Not reserved, so allowed: TZ, PATH, PYTHONPATH, LANG.
        await rt.add_function("g", "handlers.echo:echo", environment={"TZ": "UTC", "LANG": "C"})


# "The total size of the set can be no more than 4 KB."
async def test_environment_over_4_kb_is_rejected() -> None:
    with pytest.raises(fnrt.InvalidConfig, match="4KB limit"):
        fnrt.FunctionConfig(environment={"BIG": "x" * 4096})
    fnrt.FunctionConfig(environment={"BIG": "x" * 4000})  # with its key and quotes, under 4 KB


# "Each function can scale up by 1,000 execution environments every 10 seconds."
async def test_scaling_rate_throttles_new_environments_not_warm_calls(release_file: str) -> None:
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, scaling_limit=2, scaling_window=10) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=900)
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(2)]
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 2, "two environments")
        with pytest.raises(fnrt.TooManyRequests) as throttled:
            await rt.invoke("hold", {"release": release_file})
        assert throttled.value.reason == "FunctionInvocationRateLimitExceeded"
        assert rt.stats()["functions"]["hold"]["throttles"] == 1
        await clock.advance(5)  # half the window: one new environment allowed again
        third = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 3, "a third environment")
        with pytest.raises(fnrt.TooManyRequests):
            await rt.invoke("hold", {"release": release_file})
        Path(release_file).touch()
        await asyncio.gather(*calls, third)
        for _ in range(10):  # warm environments are reused at no cost to the allowance
            await rt.invoke("hold", {"release": release_file})
        assert rt.stats()["functions"]["hold"]["cold_starts"] == 3


async def test_the_scaling_rate_is_the_functions_across_configuration_updates() -> None:
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, scaling_limit=1, scaling_window=10) as rt:
        await rt.add_function("whoami", "handlers.chaos:whoami")
        await rt.invoke("whoami", {})  # the one new environment of this window
        await rt.update_function_configuration("whoami", timeout=5)  # a new generation
        with pytest.raises(fnrt.TooManyRequests) as throttled:
            await rt.invoke("whoami", {})  # needs a new environment: not another allowance
        assert throttled.value.reason == "FunctionInvocationRateLimitExceeded"
        await clock.advance(10)
        assert (await rt.invoke_detailed("whoami", {})).cold_start


# deploy(): every environment that serves events is initialized with the function's
# configuration; the first call after deploy is a cold start with an Init Duration.
async def test_the_first_call_after_deploy_is_a_cold_start_under_the_functions_config() -> None:
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        first = await rt.invoke_detailed("echo", {})
        assert first.cold_start and first.init_duration_ms is not None
        assert "Init Duration" in first.report
        second = await rt.invoke_detailed("echo", {})
        assert not second.cold_start and second.init_duration_ms is None
        assert rt.metrics.counter("ColdStarts", "echo") == 1


async def test_deploy_imports_a_module_under_its_functions_environment() -> None:
    # Lambda sets a function's configuration before its code runs: a module that reads
    # AWS_REGION (a boto3 client at import) or its own variables at import deploys.
    async with fnrt.Runtime() as rt:
        assert sorted(await rt.deploy("handlers.import_env")) == ["audit", "lookup"]
        out = await rt.invoke("lookup", {})
        assert out == {"region": "us-east-1", "table": "orders", "name_at_init": "lookup", "name": "lookup"}
        assert await rt.invoke("audit", {}) == {"sink": "audit-log", "table": "orders"}


def test_the_decorators_literal_arguments_are_read_without_running_the_module() -> None:
    from fnrt._scan import handler_hints, module_source

    source = """
import fnrt
from fnrt import handler
SIZE = 512
raise SystemExit("never run")
@fnrt.handler(memory_mb=SIZE, environment={"A": "1"}, name="first")
def one(event, context): ...
@handler
async def two(event, context): ...
def helper(): ...
@other(environment={"B": "2"})
def three(event, context): ...
"""
    assert handler_hints(source) == [("one", {"environment": {"A": "1"}, "name": "first"}), ("two", {})]
    assert handler_hints("def broken(:") == []
    assert "TABLE_NAME" in (module_source("handlers.import_env") or "")
    assert module_source("handlers.no_such_module") is None


async def test_context_takes_attributes_logs_and_lists_its_fields_as_lambdas_does() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("ctx", "handlers.context_use:annotate", memory_mb=256)
        result = await rt.invoke_detailed("ctx", {})
    out = result.payload
    assert out["mine"] == "me" and "started_by" in out["fields"]
    assert "via context.log" in result.log
    head = f"LambdaContext([aws_request_id={result.request_id},log_group_name=/aws/lambda/ctx,"
    assert out["repr"].startswith(head)
    assert "memory_limit_in_mb=256,function_version=$LATEST," in out["repr"]
    identity = "CognitoIdentity([cognito_identity_id=None,cognito_identity_pool_id=None])"
    assert out["repr"].endswith(f"identity={identity},tenant_id=None])")


async def test_error_frames_are_listed_as_lambdas_python_runtime_lists_them() -> None:
    """awslambdaric formats plain (file, line, name, text) tuples: each frame is
    '  File "...", line N, in name\\n    text\\n', with no column carets on 3.11+. Its own
    faults (marshal, unmarshal) carry no frames; an import error none either."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("total", "handlers.chaos:total")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("total", {"order": {}})
        err = info.value
        assert (err.error_type, err.error_message) == ("KeyError", "'amount'")
        last = err.stack_trace[-1]
        assert last.startswith('  File "') and ", in total\n" in last
        assert last.endswith('    return {"total": event["order"]["amount"] * 2}\n')
        assert not any("^" in frame or "~" in frame for frame in err.stack_trace)

        await rt.add_function("unserializable", "handlers.chaos:unserializable")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("unserializable", {})
        assert info.value.error_type == "Runtime.MarshalError"
        assert info.value.stack_trace == []
