"""Subinterpreter sandboxes (Python 3.13+): the sandbox protocol, in an interpreter with its
own GIL inside the host process. Speed claims live in ``benchmarks/sandboxes.py``."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import threading

import pytest

import fnrt

from .conftest import wait_until

needs_313 = pytest.mark.skipif(sys.version_info < (3, 13), reason="subinterpreters need Python 3.13+")


def started(path: str) -> str:
    return f"{path}.started"


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="only Python < 3.13 refuses subinterpreters")
async def test_before_313_choosing_it_is_invalid_config_naming_the_python_needed():
    with pytest.raises(fnrt.InvalidConfig, match=r"needs Python 3\.13 or newer"):
        fnrt.FunctionConfig(sandbox="subinterpreter")
    with pytest.raises(fnrt.InvalidConfig, match=r"needs Python 3\.13 or newer .*sandbox='subprocess'"):
        fnrt.Runtime(sandbox="subinterpreter")
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.InvalidConfig, match=r"3\.13"):
            await rt.add_function("cpu", "handlers.cpu:spin", sandbox="subinterpreter")


@needs_313
async def test_init_once_then_warm_reuse_with_context_and_logs():
    async with fnrt.Runtime() as rt:
        await rt.add_function("hello", "handlers.cpu:hello", sandbox="subinterpreter", timeout=5)
        first = await rt.invoke_detailed("hello", {"name": "ada"})
        second = await rt.invoke_detailed("hello", {"name": "bob"})

    assert first.error is None and second.error is None
    assert (first.cold_start, second.cold_start) == (True, False)
    assert first.payload["invocations"] == 1 and second.payload["invocations"] == 2  # module state kept
    assert first.payload["interpreter"] == second.payload["interpreter"] != 0  # not the main interpreter
    assert second.payload["function_name"] == "hello"
    assert second.payload["request_id"] == second.request_id
    assert 0 < second.payload["remaining_ms"] <= 5000
    assert "hello bob\n" in second.log and "hello ada" not in second.log
    assert "[WARNING]\t" in second.log and f"\t{second.request_id}\tcareful" in second.log
    assert "Init Duration" in first.log and "Init Duration" not in second.log


@needs_313
async def test_runtime_default_kind_runs_in_the_host_process():
    async with fnrt.Runtime(sandbox="subinterpreter") as rt:
        await rt.deploy("handlers.echo")
        out = await rt.invoke("echo", {"a": 1})
    assert out["event"] == {"a": 1}
    assert out["pid"] == os.getpid()


@needs_313
async def test_handler_errors_have_lambdas_shape():
    async with fnrt.Runtime() as rt:
        await rt.add_function("fail", "handlers.cpu:fail", sandbox="subinterpreter")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("fail", {"x": 1})
    assert info.value.error_type == "ValueError"
    assert info.value.error_message == "bad input: {'x': 1}"
    assert "raise ValueError" in "".join(info.value.stack_trace)


@needs_313
async def test_two_events_at_once_get_two_interpreters():
    async with fnrt.Runtime() as rt:
        await rt.add_function("hello", "handlers.cpu:hello", sandbox="subinterpreter")
        a, b = await asyncio.gather(rt.invoke("hello"), rt.invoke("hello"))
        assert rt.stats()["functions"]["hello"]["warm"] == 2
    assert a["interpreter"] != b["interpreter"]
    assert a["thread"] != b["thread"]


@needs_313
@pytest.mark.skipif(
    importlib.util.find_spec("_testsinglephase") is None, reason="CPython's _testsinglephase is not built"
)
async def test_a_c_extension_that_cannot_load_fails_init_and_suggests_subprocess():
    async with fnrt.Runtime() as rt:
        await rt.add_function("ext", "handlers.legacy_ext:handler", sandbox="subinterpreter")
        out = await rt.invoke_detailed("ext", {})
        assert out.error is not None and out.cold_start
        assert out.error.error_type == "Runtime.ImportModuleError"
        assert "does not support loading in subinterpreters" in out.error.error_message
        assert 'use sandbox="subprocess"' in out.error.error_message

        # The same module works in a subprocess sandbox, as the message says.
        await rt.add_function("ext2", "handlers.legacy_ext:handler", sandbox="subprocess")
        assert await rt.invoke("ext2", {}) == "loaded"


@needs_313
async def test_fork_in_a_handler_fails_with_a_message_that_says_why():
    async with fnrt.Runtime() as rt:
        await rt.add_function("fork", "handlers.cpu:fork", sandbox="subinterpreter")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("fork", {})
    assert info.value.error_type == "RuntimeError"
    assert "fork not supported for isolated subinterpreters" in info.value.error_message
    assert 'use sandbox="subprocess"' in info.value.error_message


@needs_313
async def test_sys_exit_loses_the_sandbox_not_the_host():
    async with fnrt.Runtime() as rt:
        await rt.add_function("exit", "handlers.cpu:exit_now", sandbox="subinterpreter")
        with pytest.raises(fnrt.FunctionError) as info:
            await rt.invoke("exit", {"code": 3})
        assert info.value.error_type == "Runtime.ExitError"
        assert info.value.error_message.endswith("Runtime exited with error: exit status 3")
        await rt.add_function("hello", "handlers.cpu:hello", sandbox="subinterpreter")
        assert (await rt.invoke("hello"))["invocations"] == 1


@needs_313
async def test_a_timeout_answers_at_once_and_holds_the_slot_until_the_handler_returns(release_file):
    """A thread in a CPU loop cannot be killed: the caller gets the timeout when it is due,
    the interpreter is quarantined (no more events) and destroyed when the handler returns,
    and the function's concurrency slot stays counted until then."""
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function(
            "stuck", "handlers.cpu:spin_until", sandbox="subinterpreter", timeout=2, reserved_concurrency=1
        )
        call = asyncio.ensure_future(rt.invoke_detailed("stuck", {"release": release_file}))
        await wait_until(lambda: os.path.exists(started(release_file)), "the handler to start spinning")

        await clock.advance(2)
        out = await asyncio.wait_for(call, 5)  # answered although the handler still spins
        assert out.error is not None and out.error.error_type == "Sandbox.Timedout"
        assert "Task timed out after 2.00 seconds" in out.error.error_message

        stats = rt.stats()["functions"]["stuck"]
        assert stats["in_flight"] == 1 and stats["warm"] == 0  # quarantined, still counted
        with pytest.raises(fnrt.TooManyRequests):
            await rt.invoke("stuck", {"release": release_file})

        open(release_file, "w").close()  # the handler returns; its interpreter is destroyed
        await wait_until(lambda: rt.stats()["functions"]["stuck"]["in_flight"] == 0, "the slot to free")

        again = await rt.invoke_detailed("stuck", {"release": release_file})
        assert again.error is None and again.cold_start  # a fresh interpreter


@needs_313
async def test_what_a_handler_printed_before_a_timeout_is_in_its_log(release_file):
    """No reply comes from a timed-out handler, and Lambda still shows what it printed: the
    interpreter copies its output into a file the host reads, as a subprocess sandbox does."""
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("stuck", "handlers.cpu:spin_until", sandbox="subinterpreter", timeout=2)
        call = asyncio.ensure_future(rt.invoke_detailed("stuck", {"release": release_file}))
        await wait_until(lambda: os.path.exists(started(release_file)), "the handler to start spinning")
        await clock.advance(2)
        out = await asyncio.wait_for(call, 5)
        open(release_file, "w").close()
    assert out.error is not None and out.error.error_type == "Sandbox.Timedout"
    printed = f"spinning until {release_file}\n"
    assert printed in out.log and out.log.index(printed) < out.log.index("Task timed out after 2.00 seconds")
    assert printed in out.error.log_tail


@needs_313
async def test_idle_sandboxes_retire_and_their_interpreters_end():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, idle_ttl=60) as rt:
        await rt.add_function("hello", "handlers.cpu:hello", sandbox="subinterpreter")
        first = await rt.invoke("hello")
        await clock.advance(30)
        assert (await rt.invoke("hello"))["invocations"] == 2
        await clock.advance(120)
        assert rt.stats()["functions"]["hello"]["warm"] == 0
        # Only the spare (booted ahead for the next cold start) is left.
        await wait_until(lambda: len(_sandbox_threads()) == 1, "the retired interpreter's thread to end")
        again = await rt.invoke_detailed("hello")
    assert again.cold_start and again.payload["invocations"] == 1
    assert again.payload["interpreter"] != first["interpreter"]


@needs_313
async def test_closing_the_runtime_ends_every_interpreter():
    async with fnrt.Runtime() as rt:
        await rt.add_function("hello", "handlers.cpu:hello", sandbox="subinterpreter")
        await asyncio.gather(*(rt.invoke("hello") for _ in range(3)))
        assert _sandbox_threads()
    for thread in _sandbox_threads():
        thread.join(5)
    assert not _sandbox_threads()


def _sandbox_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fnrt-si")]
