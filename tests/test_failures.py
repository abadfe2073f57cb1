"""Timeouts, crashes, memory limits and bad input: typed errors, and the runtime stays up."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pytest

import fnrt

from .conftest import alive, wait_until


async def test_timeout_kills_the_sandbox_and_the_next_event_gets_a_fresh_one(release_file):
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=3)
        await rt.add_function("whoami", "handlers.chaos:whoami")
        call = asyncio.ensure_future(rt.invoke("hold", {}))  # never released
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 1 and clock.pending_timers >= 2)
        await clock.advance(2.9)
        assert not call.done()
        await clock.advance(0.2)
        with pytest.raises(fnrt.FunctionTimeout) as info:
            await call
        err = info.value
        assert err.error_type == "Sandbox.Timedout"
        assert err.error_message == f"RequestId: {err.request_id} Error: Task timed out after 3.00 seconds"
        stats = rt.stats()["functions"]["hold"]
        assert stats["warm"] == 0 and stats["busy"] == 0 and stats["in_flight"] == 0
        # the next event runs on a fresh sandbox
        open(release_file, "w").close()
        out = await rt.invoke_detailed("hold", {"release": release_file})
        assert out.cold_start and out.error is None


async def past_its_timeout(
    rt: fnrt.Runtime,
    clock: fnrt.FakeClock,
    name: str,
    event: dict[str, Any],
    seconds: float,
    printed: str | None = None,
) -> Any:
    """Invoke ``name`` and move the clock ``seconds`` on once the call runs (and its timers
    wait), and once its sandbox has ``printed`` that, when given."""
    call = asyncio.ensure_future(rt.invoke(name, event))
    await wait_until(lambda: rt.stats()["functions"][name]["busy"] == 1 and clock.pending_timers >= 2)
    if printed is not None:  # in the sandbox's output file (see fnrt.sandbox._mirror)
        from fnrt.sandbox._mirror import SUFFIX, read_file

        busy = [e.sandbox for e in rt._registry.get(name).pool.active]
        await wait_until(lambda: any(printed.encode() in read_file(sb.tmp + SUFFIX) for sb in busy))
    await clock.advance(seconds)
    return await call


async def test_a_timeout_and_a_crash_are_logged_as_lambda_logs_them(release_file):
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=3)
        open(release_file, "w").close()
        await rt.invoke("hold", {"release": release_file})  # warm: its peak memory is known
        with pytest.raises(fnrt.FunctionTimeout) as timed_out:
            await past_its_timeout(rt, clock, "hold", {}, 3.1)
        log = timed_out.value.log_tail
        rid = timed_out.value.request_id
        assert re.search(rf"\n\d{{4}}-\d\d-\d\dT[\d:.]+Z {rid} Task timed out after 3.00 seconds\n", log), log
        assert re.search(r"Max Memory Used: [1-9]\d* MB", log), log  # not 0: the peak it last knew of
        await rt.add_function("crash", "handlers.chaos:exit_now")
        with pytest.raises(fnrt.FunctionError) as crashed:
            await rt.invoke("crash", {"code": 3})
        rid = crashed.value.request_id
        assert (
            f"RequestId: {rid} Error: Runtime exited with error: exit status 3\nRuntime.ExitError\n"
            f"END RequestId: {rid}\n" in crashed.value.log_tail
        )


@pytest.mark.parametrize("how", ["hang", "exit", "crash"])
async def test_what_a_handler_printed_before_it_ended_without_a_reply_is_in_its_log(how):
    # The output comes with the reply; a timeout or a dead sandbox sends none, and Lambda
    # still shows what was printed before.
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("f", "handlers.chaos:print_then_fail", timeout=1)
        await rt.invoke("f", {"how": "none"})  # a first one that replies, in this environment
        with pytest.raises(fnrt.FunctionError) as ended:
            if how == "hang":
                await past_its_timeout(rt, clock, "f", {"how": how}, 1.1, printed="before the end: hang")
            else:
                await rt.invoke("f", {"how": how})
        rid = ended.value.request_id
        log = ended.value.log_tail
        assert f"START RequestId: {rid}" in log and f"before the end: {how}\n" in log, log
        assert "before the end: none" not in log  # an earlier invocation's output is not this one's
        assert log.index("before the end") < log.index(f"END RequestId: {rid}")


def test_the_output_file_keeps_the_last_bytes_of_the_invocation_it_names(tmp_path):
    from fnrt.sandbox._mirror import OutputMirror, read_file, read_output

    path = str(tmp_path / "out")
    mirror = OutputMirror(path, 16)
    mirror.start("r-1")
    mirror.write("0123456789")
    assert read_output(read_file(path), "r-1") == "0123456789"
    mirror.write("abcdefghij")  # 20 bytes in a ring of 16: the first 4 are gone
    assert read_output(read_file(path), "r-1") == "[... 4 bytes truncated]\n456789abcdefghij"
    mirror.start("r-2")  # prints nothing: the file still names r-1
    assert read_output(read_file(path), "r-2") == ""
    odd = OutputMirror(path, 15)
    odd.start("r-3")
    odd.write("é" * 10)  # 20 bytes in 15: the cut falls inside a character, which goes
    assert read_output(read_file(path), "r-3") == "[... 5 bytes truncated]\n" + "é" * 7
    assert read_output(b"", "r-3") == ""


@pytest.mark.parametrize("trap", ["fifo", "endless"])
async def test_a_handler_that_booby_traps_its_output_file_only_loses_its_output(trap):
    # The output file is in the sandbox's own TMPDIR: a FIFO there would make the host's
    # read wait for ever, /dev/zero would never end. Neither may reach the host.
    async with fnrt.Runtime() as rt:
        await rt.add_function("trap", "handlers.hostile:trap_output_then_exit")
        await rt.add_function("fine", "handlers.echo:echo")
        for _ in range(3):
            with pytest.raises(fnrt.FunctionError, match="exit status 3"):
                await asyncio.wait_for(rt.invoke("trap", {"trap": trap}), 30)
        assert (await rt.invoke("fine", {"a": 1}))["event"] == {"a": 1}


async def test_what_an_init_printed_before_its_sandbox_died_is_in_the_error(tmp_path, monkeypatch):
    (tmp_path / "dies_in_init.py").write_text("import os\nprint('configuring', flush=True)\nos._exit(7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.InitError) as failed:
            await rt.add_function("f", "dies_in_init:handler")
            await rt.invoke("f", {})
    assert "exit status 7" in failed.value.error_message
    assert "configuring" in failed.value.log_tail


async def test_timed_out_sandbox_process_is_killed():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=1)
        call = asyncio.ensure_future(rt.invoke("hold", {}))
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 1 and clock.pending_timers >= 2)
        template = rt._factories["subprocess"]._template
        children = set(template._exits)
        assert len(children) == 1
        await clock.advance(1.0)
        with pytest.raises(fnrt.FunctionTimeout):
            await call
        pid = children.pop()
        await wait_until(lambda: not alive(pid), "the timed-out sandbox to die")


@pytest.mark.parametrize(
    ("handler", "payload", "message"),
    [
        ("exit_now", {"code": 3}, "Runtime exited with error: exit status 3"),
        ("segfault", {}, "Runtime exited with error: signal: segmentation fault"),
    ],
)
async def test_a_crashing_sandbox_is_replaced(handler, payload, message):
    async with fnrt.Runtime() as rt:
        await rt.add_function("crash", f"handlers.chaos:{handler}")
        await rt.add_function("whoami", "handlers.chaos:whoami")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("crash", payload)
        assert info.value.error_type == "Runtime.ExitError"
        assert info.value.error_message == f"RequestId: {info.value.request_id} Error: {message}"
        assert rt.stats()["functions"]["crash"]["warm"] == 0
        with pytest.raises(fnrt.FunctionError):  # a fresh sandbox, which crashes again
            await rt.invoke("crash", payload)
        assert (await rt.invoke("whoami", {}))["pid"] > 0  # the runtime is fine


async def test_memory_limit_is_enforced():
    async with fnrt.Runtime() as rt:
        await rt.add_function("hog", "handlers.chaos:hog", memory_mb=128)
        assert await rt.invoke("hog", {"mb": 16}) == 16  # within the limit
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("hog", {"mb": 512})
        err = info.value
        assert err.error_type == "Runtime.OutOfMemory"
        assert "out of memory (memory_mb=128)" in err.error_message
        assert "Memory limit of 128 MB exceeded" in err.log_tail
        assert "Max Memory Used: 128 MB" in err.log_tail
        assert await rt.invoke("hog", {"mb": 16}) == 16  # replaced by a fresh sandbox


async def test_result_that_is_not_json_is_a_function_error():
    async with fnrt.Runtime() as rt:
        await rt.add_function("bad", "handlers.chaos:unserializable")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("bad", {})
        assert info.value.error_type == "Runtime.MarshalError"
        assert "Unable to marshal response: Object of type set is not JSON serializable" in (
            info.value.error_message
        )
        await rt.invoke("bad", {}, invocation_type="DryRun")  # and the sandbox lives on
        assert rt.stats()["functions"]["bad"]["warm"] == 1


async def test_result_over_6_mb_is_a_function_error():
    async with fnrt.Runtime() as rt:
        await rt.add_function("big", "handlers.chaos:big_result")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("big", {"bytes": 6 * 1024 * 1024 + 1})
        assert info.value.error_type == "Function.ResponseSizeTooLarge"
        assert info.value.error_message == (
            "Response payload size exceeded maximum allowed payload size (6291556 bytes)."
        )
        assert len(await rt.invoke("big", {"bytes": 5 * 1024 * 1024})) == 5 * 1024 * 1024
        assert rt.stats()["functions"]["big"]["cold_starts"] == 1  # the sandbox lived on


async def test_unknown_function():
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.FunctionNotFound, match="'ghost'"):
            await rt.invoke("ghost", {})


@pytest.mark.parametrize(
    "config",
    [
        {"timeout": 0},
        {"timeout": 901},
        {"timeout": "3"},
        {"memory_mb": 64},
        {"memory_mb": 20_000},
        {"memory_mb": 128.5},
        {"reserved_concurrency": -1},
        {"provisioned_concurrency": 3, "reserved_concurrency": 2},
        {"environment": {"1BAD": "x"}},
        {"environment": {"OK": 1}},
        {"sandbox": "docker"},
        {"tiemout": 3},
    ],
)
async def test_bad_config_is_rejected_at_registration(config):
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.InvalidConfig):
            await rt.add_function("f", "handlers.echo:echo", **config)
        with pytest.raises(fnrt.FunctionNotFound):
            rt.get_function("f")


async def test_bad_names_and_references_are_rejected():
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.InvalidConfig):
            await rt.add_function("has space", "handlers.echo:echo")
        with pytest.raises(fnrt.InvalidConfig):
            await rt.add_function("ok", "not a reference")
        with pytest.raises(fnrt.InvalidConfig):
            await rt.deploy("../etc/passwd")
    with pytest.raises(fnrt.InvalidConfig):
        fnrt.Runtime(concurrency_limit=0)
    with pytest.raises(fnrt.InvalidConfig):
        fnrt.FunctionConfig(timeout=math.nan)


@pytest.mark.parametrize("payload", [object(), {"x": math.nan}, b"{not json", {1: {2, 3}}])
async def test_payload_that_is_not_json(payload):
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        with pytest.raises(fnrt.InvalidPayload):
            await rt.invoke("echo", payload)
        assert rt.stats()["functions"]["echo"]["invocations"] == 0


async def test_bytes_payload_is_a_json_document():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        assert (await rt.invoke("echo", b'{"a": [1, 2]}'))["event"] == {"a": [1, 2]}
        assert (await rt.invoke("echo", b""))["event"] == {}


async def test_oversized_payload():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.echo")
        big = "x" * (6 * 1024 * 1024)
        with pytest.raises(fnrt.PayloadTooLarge) as info:
            await rt.invoke("echo", {"blob": big})
        assert info.value.limit == 6 * 1024 * 1024
        ok = "x" * (5 * 1024 * 1024)  # a large payload under the limit goes through
        assert len((await rt.invoke("echo", {"blob": ok}))["event"]["blob"]) == len(ok)


async def test_module_that_fails_to_import():
    """As Lambda's Python runtime reports a failed init: what the module raised is the error
    (its type, message and frames); only an ImportError is Runtime.ImportModuleError."""
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.InitError) as info:
            await rt.deploy("handlers.broken")
        assert info.value.error_type == "RuntimeError"
        assert info.value.error_message == "cannot connect to orders at import time"
        assert any("handlers/broken.py" in frame for frame in info.value.stack_trace)
        with pytest.raises(fnrt.InitError) as info:
            await rt.deploy("handlers.does_not_exist")
        assert info.value.error_type == "Runtime.ImportModuleError"
        assert info.value.error_message == (
            "Unable to import module 'handlers.does_not_exist': No module named 'handlers.does_not_exist'"
        )
        assert info.value.stack_trace == []
        # registered by reference, the init error surfaces at the first invoke
        await rt.add_function("broken", "handlers.broken:never")
        with pytest.raises(fnrt.InitError) as info:
            await rt.invoke("broken", {})
        assert info.value.error_type == "RuntimeError"
        assert "[ERROR] RuntimeError: cannot connect" in info.value.log_tail


async def test_missing_or_uncallable_handler():
    async with fnrt.Runtime() as rt:
        await rt.add_function("missing", "handlers.echo:nothing_here")
        with pytest.raises(fnrt.InitError) as info:
            await rt.invoke("missing", {})
        assert info.value.error_type == "Runtime.HandlerNotFound"
        assert info.value.error_message == "Handler 'nothing_here' missing on module 'handlers.echo'"
        await rt.add_function("notcallable", "handlers.echo:STARTED")
        with pytest.raises(fnrt.InitError) as info:
            await rt.invoke("notcallable", {})
        assert "is not callable" in info.value.error_message


async def test_module_without_handlers_and_invalid_decorator_config():
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.InvalidConfig, match=r"no @fnrt\.handler"):
            await rt.deploy("handlers")  # the package itself defines no handlers
        with pytest.raises(fnrt.InvalidConfig, match="timeout"):
            await rt.deploy("handlers.misconfigured")


async def test_init_timeout_is_retried_within_the_function_timeout_then_times_out():
    # AWS: "If all three tasks do not complete within 10 seconds, Lambda retries the Init
    # phase at the time of the first function invocation with the configured function
    # timeout."
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("slow", "handlers.slow_init:handler", init_timeout=2, timeout=3)
        call = asyncio.ensure_future(rt.invoke("slow", {}))
        await wait_until(
            lambda: rt.stats()["functions"]["slow"]["starting"] == 1 and clock.pending_timers >= 2
        )
        await clock.advance(2)  # the first init phase runs out of its 2 s
        await asyncio.sleep(0.05)
        assert not call.done()  # ... and is retried
        await wait_until(lambda: rt.stats()["functions"]["slow"]["starting"] == 1)
        # ... and prints again (its output file, see fnrt.sandbox._mirror) before it runs out
        from fnrt.sandbox._mirror import SUFFIX, read_file

        live = rt._factory("subprocess")._tmp_dirs
        await wait_until(lambda: any(b"loading the model" in read_file(t + SUFFIX) for t in live))
        await clock.advance(3)  # the retry runs out of the function's 3 s too
        with pytest.raises(fnrt.FunctionTimeout) as info:
            await call
        assert info.value.error_type == "Sandbox.Timedout"
        assert info.value.error_message.endswith("Task timed out after 3.00 seconds")
        assert "loading the model" in info.value.log_tail  # what the init printed before
        assert rt.stats()["functions"]["slow"]["starting"] == 0


async def test_a_retried_init_that_finishes_serves_the_first_invocation(tmp_path):
    clock = fnrt.FakeClock()
    gate = tmp_path / "gate"
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function(
            "gated", "handlers.gated_init:handler", timeout=60, environment={"INIT_GATE": str(gate)}
        )
        call = asyncio.ensure_future(rt.invoke_detailed("gated", {}))
        await wait_until(
            lambda: rt.stats()["functions"]["gated"]["starting"] == 1 and clock.pending_timers >= 2
        )
        await clock.advance(10)  # Lambda's 10 s init limit passes
        await asyncio.sleep(0.05)
        assert not call.done()
        await clock.advance(20)  # the retry has the function's 60 s: 20 of them go to init
        gate.touch()
        result = await call
        assert result.error is None and result.cold_start
        assert result.init_duration_ms is not None
        assert rt.stats()["functions"]["gated"]["cold_starts"] == 1


async def test_provisioned_init_is_bounded_by_the_init_timeout():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        adding = asyncio.ensure_future(
            rt.add_function("slow", "handlers.slow_init:handler", init_timeout=2, provisioned_concurrency=1)
        )
        await wait_until(lambda: clock.pending_timers >= 2)
        await clock.advance(2)
        with pytest.raises(fnrt.InitError, match=r"Init phase timed out after 2\.00 seconds"):
            await adding


async def test_a_warm_sandbox_whose_template_is_gone_is_not_handed_out() -> None:
    # A handler can kill the template process it was forked from (it is its parent); every
    # sandbox of that template dies with it, by its parent-death signal. Once the runtime
    # knows the template is gone, none of them may take an event: here one that is frozen
    # (SIGSTOP: the signal waits) would otherwise hold the call until its timeout.
    import os
    import signal

    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("whoami", "handlers.chaos:whoami", timeout=3)
        first = await rt.invoke("whoami", {})
        template = rt._factories["subprocess"]._template
        os.kill(first["pid"], signal.SIGSTOP)
        try:
            os.kill(template.pid, signal.SIGKILL)
            await wait_until(lambda: template.closed, "the runtime to see the template go")
            again = await asyncio.wait_for(rt.invoke_detailed("whoami", {}), 10)
        finally:
            os.kill(first["pid"], signal.SIGKILL)
    assert again.error is None and again.cold_start and again.payload["pid"] != first["pid"]
