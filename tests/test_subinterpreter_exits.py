"""A handler that ends its environment (``sys.exit``, an uncaught ``BaseException``) gets
the same ``Runtime.ExitError`` from every sandbox kind: the subprocess kind's words for the
exit status its process ends with, as a Python process would end (``sys.exit``'s int as the
OS keeps it, 0 for ``None``, 1 for a message or an uncaught exception). Each case runs in
both kinds against one expected wording, in the init phase and in the invoke phase, and the
next call gets a fresh environment."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

import fnrt

needs_313 = pytest.mark.skipif(sys.version_info < (3, 13), reason="subinterpreters need Python 3.13+")
KINDS = ["subprocess", pytest.param("subinterpreter", marks=needs_313)]

#: Endings grouped by what they are, each with the exit status its process ends with.
ENDINGS: dict[str, list[tuple[dict[str, Any], int]]] = {
    "exit-none-or-zero": [({"exit": None}, 0), ({"exit": 0}, 0), ({"exit": False}, 0), ({"exit": 256}, 0)],
    "exit-int": [
        ({"exit": 3}, 3),
        ({"exit": True}, 1),
        ({"exit": 255}, 255),
        ({"exit": -1}, 255),
        ({"exit": 259}, 3),
    ],
    "exit-message": [
        ({"exit": "bye"}, 1),
        ({"exit": "3"}, 1),
        ({"exit": ""}, 1),
        ({"exit": 3.0}, 1),
        ({"exit": [1]}, 1),
    ],
    "KeyboardInterrupt": [({"raise": "KeyboardInterrupt"}, 1)],
    "GeneratorExit": [({"raise": "GeneratorExit"}, 1)],
    "own-BaseException": [({"raise": "Shutdown"}, 1)],
}
GROUPS = pytest.mark.parametrize("endings", list(ENDINGS.values()), ids=list(ENDINGS))


def worded(status: int) -> str:
    if status == 0:
        return "Runtime exited without providing a reason"
    return f"Runtime exited with error: exit status {status}"


@pytest.mark.parametrize("kind", KINDS)
@GROUPS
async def test_ending_the_environment_in_invoke_is_an_exit_error_then_a_fresh_one_serves(
    kind: str, endings: list[tuple[dict[str, Any], int]]
) -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("exits", "handlers.exits:handler", sandbox=kind)
        for how, status in endings:
            out = await rt.invoke_detailed("exits", how)
            assert out.error is not None, how
            assert (out.error.error_type, out.error.error_message) == (
                "Runtime.ExitError",
                f"RequestId: {out.request_id} Error: {worded(status)}",
            ), how
            again = await rt.invoke_detailed("exits", None)
            assert again.error is None and again.cold_start, how


@pytest.mark.parametrize("kind", KINDS)
@GROUPS
async def test_ending_the_environment_in_init_is_an_exit_error_each_time_it_is_tried(
    kind: str, endings: list[tuple[dict[str, Any], int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module ends its environment as it is imported; ``FNRT_EXITS_AT_INIT`` says how.
    A subprocess sandbox reads it from the function's environment, a subinterpreter from the
    host's as it was when the interpreter booted: so one runtime per ending, started after
    the variable is set (its factory boots every interpreter, the spare too, from then on)."""
    for how, status in endings:
        variable = {"FNRT_EXITS_AT_INIT": json.dumps(how)}
        monkeypatch.setenv("FNRT_EXITS_AT_INIT", variable["FNRT_EXITS_AT_INIT"])
        async with fnrt.Runtime() as rt:
            await rt.add_function("exits", "handlers.exits:handler", sandbox=kind, environment=variable)
            for _ in range(2):  # tried again in a fresh environment, which ends the same way
                out = await rt.invoke_detailed("exits", None)
                assert out.error is not None and out.cold_start, how
                assert (out.error.error_type, out.error.error_message) == (
                    "Runtime.ExitError",
                    f"RequestId: {out.request_id} Error: {worded(status)}",
                ), how
    monkeypatch.delenv("FNRT_EXITS_AT_INIT")
    async with fnrt.Runtime() as rt:
        await rt.add_function("fine", "handlers.exits:handler", sandbox=kind)
        out = await rt.invoke_detailed("fine", None)
    assert out.error is None and out.cold_start


@pytest.mark.parametrize("kind", KINDS)
async def test_what_python_prints_as_the_environment_ends_is_in_the_log(kind: str) -> None:
    """``sys.exit("message")`` prints its message and an uncaught ``BaseException`` its
    traceback as the runtime exits: Lambda's log shows them before the exit error."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("exits", "handlers.exits:handler", sandbox=kind)
        message = await rt.invoke_detailed("exits", {"exit": "closing down: disk gone"})
        interrupted = await rt.invoke_detailed("exits", {"raise": "Shutdown", "message": "stop now"})
        quiet = await rt.invoke_detailed("exits", {"exit": 3})
    line = f"RequestId: {message.request_id} Error: {worded(1)}\n"
    assert f"closing down: disk gone\n{line}" in message.log
    trace = interrupted.log
    assert "Traceback (most recent call last):" in trace and "handlers.exits.Shutdown: stop now\n" in trace
    assert 'exits.py", line' in trace and "fnrt/sandbox" not in trace  # the handler's frames, not fnrt's
    assert trace.index("Shutdown: stop now") < trace.index(f"RequestId: {interrupted.request_id} Error:")
    assert "Traceback" not in quiet.log and f"Error: {worded(3)}" in quiet.log
