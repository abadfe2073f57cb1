"""Lambda's advanced logging controls: the log format (Text or JSON), the application and
system log levels and the log group, set per function as ``LoggingConfig`` is in Lambda, and
what a handler's ``logging`` and the platform's lines then look like in its log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from typing import Any

import pytest

import fnrt
from fnrt.testing import wait_until

needs_313 = pytest.mark.skipif(sys.version_info < (3, 13), reason="subinterpreters need Python 3.13+")
KINDS = ["subprocess", pytest.param("subinterpreter", marks=needs_313)]


def json_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def records(log: str) -> list[dict[str, Any]]:
    """The application's JSON log records (the platform's have a ``type``)."""
    return [line for line in json_lines(log) if "type" not in line]


def platform(log: str) -> list[str]:
    return [line["type"] for line in json_lines(log) if "type" in line]


async def test_the_default_text_format_is_unchanged() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("plain", "handlers.log_controls:logs")
        result = await rt.invoke_detailed("plain", {})
    assert result.payload["format"] == "Text" and result.payload["level"] is None
    assert result.payload["root_level"] == logging.WARNING  # Python's default, as in Lambda
    log = result.log
    assert log.startswith(f"START RequestId: {result.request_id} Version: $LATEST\n")
    assert f"\nEND RequestId: {result.request_id}\nREPORT RequestId: {result.request_id}\t" in log
    assert "[WARNING]\t" in log and f"\t{result.request_id}\tstock low\n" in log
    assert "debug detail" not in log and not json_lines(log)


@pytest.mark.parametrize("kind", KINDS)
async def test_json_format_writes_each_logging_record_as_one_json_object(kind: str) -> None:
    async with fnrt.Runtime(sandbox=kind) as rt:
        await rt.add_function("orders", "handlers.log_controls:logs", log_format="JSON")
        result = await rt.invoke_detailed("orders", {"order": "B-2"})
    rid = result.request_id
    if kind == "subprocess":  # Lambda's runtime reads these (a subinterpreter has the host's)
        assert result.payload["format"] == "JSON" and result.payload["level"] == "INFO"
    log = result.log
    assert "\nplain print\n" in log  # print stays text
    found = records(log)
    by_message = {r["message"]: r for r in found}
    # the default application level is INFO: the debug record is dropped
    assert sorted(by_message) == ["could not divide", "loaded at init", "order placed", "stock low"]
    assert by_message["loaded at init"]["requestId"] == ""  # the init phase has no request
    placed = by_message["order placed"]
    assert placed["level"] == "INFO" and placed["logger"] == "orders" and placed["requestId"] == rid
    assert placed["order_id"] == "B-2"  # extra fields come along
    assert placed["timestamp"].endswith("Z") and len(placed["timestamp"]) == len("2024-01-01T00:00:00.000Z")
    assert by_message["stock low"]["level"] == "WARNING"
    failed = by_message["could not divide"]
    assert failed["errorType"] == "ZeroDivisionError" and failed["errorMessage"] == "division by zero"
    assert any("print(1 / 0)" in frame for frame in failed["stackTrace"])
    assert "stackTrace" not in placed and "errorType" not in placed
    assert platform(log) == ["platform.initStart", "platform.start", "platform.report"]
    assert "START RequestId" not in log and "REPORT RequestId" not in log


async def test_the_application_log_level_filters_the_root_loggers_records() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function(
            "debugging", "handlers.log_controls:logs", log_format="JSON", application_log_level="TRACE"
        )
        await rt.add_function(
            "quiet", "handlers.log_controls:logs", log_format="JSON", application_log_level="ERROR"
        )
        debugging = await rt.invoke_detailed("debugging", {})
        quiet = await rt.invoke_detailed("quiet", {})
    assert debugging.payload["level"] == "TRACE" and debugging.payload["root_level"] == logging.DEBUG
    assert "debug detail" in [r["message"] for r in records(debugging.log)]
    assert [r["message"] for r in records(quiet.log)] == ["could not divide"]


async def test_the_system_log_level_keeps_the_platform_lines_at_or_above_it() -> None:
    json_format = {"log_format": "JSON"}
    async with fnrt.Runtime() as rt:
        await rt.add_function("warn", "handlers.log_controls:logs", **json_format, system_log_level="WARN")
        await rt.add_function("fails", "handlers.log_controls:fails", **json_format, system_log_level="WARN")
        await rt.add_function("all", "handlers.log_controls:logs", **json_format, system_log_level="DEBUG")
        quiet = await rt.invoke_detailed("warn", {})
        failed = await rt.invoke_detailed("fails", {})
        everything = await rt.invoke_detailed("all", {})
        warm = await rt.invoke_detailed("all", {})
    assert platform(quiet.log) == []
    assert platform(failed.log) == ["platform.report"]  # a failure is still reported
    report = json_lines(failed.log)[-1]
    assert report["record"]["status"] == "error" and report["record"]["errorType"] == "ValueError"
    assert platform(everything.log) == [
        "platform.initStart", "platform.start", "platform.runtimeDone", "platform.report",
    ]  # fmt: skip
    assert platform(warm.log) == ["platform.start", "platform.runtimeDone", "platform.report"]
    report = json_lines(warm.log)[-1]
    assert report["record"]["requestId"] == warm.request_id and report["record"]["status"] == "success"
    metrics = report["record"]["metrics"]
    assert metrics["memorySizeMB"] == 128 and metrics["billedDurationMs"] >= 1
    assert "initDurationMs" not in metrics  # a warm start
    assert "initDurationMs" in json_lines(everything.log)[-1]["record"]["metrics"]


async def test_an_unhandled_error_is_logged_as_a_json_object() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("fails", "handlers.log_controls:fails", log_format="JSON")
        result = await rt.invoke_detailed("fails", {})
    assert result.error is not None and result.error.error_type == "ValueError"
    logged = [r for r in records(result.log) if r.get("errorType") == "ValueError"]
    assert len(logged) == 1 and "[ERROR] ValueError" not in result.log
    assert logged[0]["level"] == "ERROR" and logged[0]["errorMessage"] == "bad order"
    assert logged[0]["requestId"] == result.request_id and logged[0]["stackTrace"]
    assert json.loads(result.error.log_tail.splitlines()[-1])["type"] == "platform.report"


async def test_a_timeout_is_reported_with_its_status() -> None:
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", log_format="JSON", timeout=3)
        call = asyncio.ensure_future(rt.invoke_detailed("hold", {}))  # never released
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 1 and clock.pending_timers >= 2)
        await clock.advance(3.1)
        result = await call
    assert isinstance(result.error, fnrt.FunctionTimeout)
    report = json_lines(result.log)[-1]
    assert report["type"] == "platform.report" and report["record"]["status"] == "timeout"
    assert report["record"]["errorType"] == "Sandbox.Timedout"


async def test_a_log_group_of_its_own_is_the_contexts_and_the_environments() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("grouped", "handlers.log_controls:logs", log_group="/shared/orders")
        result = await rt.invoke_detailed("grouped", {})
    assert result.payload["group"] == "/shared/orders"


@pytest.mark.parametrize(
    "config",
    [
        {"application_log_level": "DEBUG"},  # levels need the JSON format, as in Lambda
        {"system_log_level": "INFO", "log_format": "Text"},
        {"log_format": "json"},
        {"log_format": "JSON", "application_log_level": "VERBOSE"},
        {"log_format": "JSON", "system_log_level": "ERROR"},
        {"log_group": "has spaces"},
    ],
)
def test_bad_logging_settings_are_refused_where_the_config_is_made(config: dict[str, Any]) -> None:
    with pytest.raises(fnrt.InvalidConfig):
        fnrt.FunctionConfig(**config)


async def test_the_logging_settings_change_with_update_function_configuration() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("orders", "handlers.log_controls:logs")
        await rt.update_function_configuration("orders", log_format="JSON", application_log_level="DEBUG")
        assert (await rt.invoke("orders", {}))["level"] == "DEBUG"
        record = await rt.update_function_configuration("orders", log_format="Text")
        assert record.config.application_log_level is None  # the levels went with JSON
        assert (await rt.invoke("orders", {}))["format"] == "Text"


async def test_inline_json_levels_leave_the_hosts_root_logger_alone() -> None:
    root = logging.getLogger()
    before = root.level
    async with fnrt.Runtime(sandbox="inline") as rt:
        await rt.add_function(
            "orders", "handlers.log_controls:logs", log_format="JSON", application_log_level="ERROR"
        )
        result = await rt.invoke_detailed("orders", {})
    assert root.level == before
    assert [r["message"] for r in records(result.log)] == ["could not divide"]


# -- over HTTP, as boto3 calls it -----------------------------------------------------------


async def test_logging_config_over_the_lambda_api() -> None:
    pytest.importorskip("aiohttp")
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from fnrt.http import InvokeServer

    async with fnrt.Runtime() as rt, InvokeServer(rt, port=0) as server:
        await rt.add_function("orders", "handlers.log_controls:logs")
        lam = boto3.client(
            "lambda",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="fnrt",
            aws_secret_access_key="fnrt",
            config=Config(retries={"total_max_attempts": 1}),
        )

        def call(fn: Any, **kwargs: Any) -> Any:
            return asyncio.to_thread(fn, **kwargs)

        got = await call(lam.get_function_configuration, FunctionName="orders")
        assert got["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": "/aws/lambda/orders"}

        updated = await call(
            lam.update_function_configuration,
            FunctionName="orders",
            LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "DEBUG"},
        )
        assert updated["LoggingConfig"] == {
            "LogFormat": "JSON",
            "ApplicationLogLevel": "DEBUG",
            "SystemLogLevel": "INFO",
            "LogGroup": "/aws/lambda/orders",
        }
        response = await call(lam.invoke, FunctionName="orders", Payload=b"{}", LogType="Tail")
        tail = base64.b64decode(response["LogResult"]).decode()
        assert "debug detail" in [r["message"] for r in records(tail)]
        assert platform(tail)[-1] == "platform.report"

        for bad, code in [
            ({"LogFormat": "XML"}, "ValidationException"),
            ({"ApplicationLogLevel": "LOUD"}, "ValidationException"),
            ({"LogFormat": "Text", "SystemLogLevel": "WARN"}, "InvalidParameterValueException"),
        ]:
            with pytest.raises(ClientError) as raised:
                await call(lam.update_function_configuration, FunctionName="orders", LoggingConfig=bad)
            assert raised.value.response["Error"]["Code"] == code
        # nothing changed by the refused calls
        got = await call(lam.get_function_configuration, FunctionName="orders")
        assert got["LoggingConfig"]["LogFormat"] == "JSON"
        assert got["LoggingConfig"]["ApplicationLogLevel"] == "DEBUG"


@pytest.mark.parametrize("log_format", ["Text", "JSON"])
async def test_a_formatter_of_the_handlers_own_formats_its_records(log_format: str) -> None:
    # A common Lambda idiom: set a formatter on the root logger's handler, or add a handler,
    # with ``%(aws_request_id)s`` in the format (Lambda's runtime puts it on every record).
    async with fnrt.Runtime() as rt:
        await rt.add_function("own", "handlers.log_controls:own_format", log_format=log_format)
        result = await rt.invoke_detailed("own", {})
    rid = result.payload
    assert result.error is None and rid == result.request_id
    assert f"\nINFO|{rid}|formatted\n" in result.log
    assert f"\nmine {rid} formatted\n" in result.log


async def test_printed_json_lines_are_filtered_by_their_own_level() -> None:
    # Lambda's log-level filtering reads the "level" of any JSON object a function writes
    # (INFO when it has none); plain text is never dropped.
    async with fnrt.Runtime() as rt:
        for name, level in (("info", "INFO"), ("errors", "ERROR"), ("trace", "TRACE")):
            await rt.add_function(
                name, "handlers.log_controls:prints_levels", log_format="JSON", application_log_level=level
            )
        logs = {name: (await rt.invoke_detailed(name, {})).log for name in ("info", "errors", "trace")}
    printed = {name: [r["msg"] for r in records(log) if "msg" in r] for name, log in logs.items()}
    assert printed["info"] == ["printed error", "printed without a level"]
    assert printed["errors"] == ["printed error"]
    assert printed["trace"] == ["printed debug", "printed error", "printed without a level"]
    assert all("\nplain text\n" in log for log in logs.values())
    assert all(platform(log)[-1] == "platform.report" for log in logs.values())
