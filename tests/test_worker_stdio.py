"""``sys.stdout``/``sys.stderr`` as a handler sees them, and an async handler's stack trace,
against real sandboxes of each kind.

In Lambda's Python runtime the standard streams are ``TextIOWrapper``s: ``write`` refuses
what is not a ``str`` at the call, ``.buffer`` takes bytes, ``reconfigure`` works. And
awslambdaric lists only the function's frames, whether the handler is awaited or not.
"""

from __future__ import annotations

import sys

import pytest

import fnrt

needs_313 = pytest.mark.skipif(sys.version_info < (3, 13), reason="subinterpreters need Python 3.13+")
SANDBOXES = ["subprocess", pytest.param("subinterpreter", marks=needs_313)]
# Not the stream tests: inline, a handler writes to whatever ``sys.stdout`` the host has now
# (pytest's capture replaces it for each test).
WITH_INLINE = [*SANDBOXES, "inline"]


async def cold_then_warm(handler: str, kind: str) -> list[fnrt.InvocationResult]:
    """Two invocations of ``handlers.stdio:<handler>`` in one environment of ``kind``."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("f", f"handlers.stdio:{handler}", sandbox=kind)
        return [await rt.invoke_detailed("f", {}) for _ in range(2)]


def frames(stack_trace: list[str]) -> list[str]:
    """The function each line of a Lambda ``stackTrace`` names."""
    return [line.split(", in ", 1)[1].split("\n", 1)[0] for line in stack_trace]


@pytest.mark.parametrize("kind", SANDBOXES)
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_a_write_that_is_not_str_raises_at_the_call_and_the_result_stands(
    kind: str, stream: str
) -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("f", "handlers.stdio:write_non_text", sandbox=kind)
        cold = await rt.invoke_detailed("f", {"stream": stream})
        warm = await rt.invoke_detailed("f", {"stream": stream})

    for result in (cold, warm):
        assert result.error is None
        assert result.payload == {
            "refused": [
                "write() argument must be str, not bytes",
                "write() argument must be str, not None",
                "write() argument must be str, not int",
                "write() argument must be str, not bytearray",
                "write() argument must be str, not bytes",  # writelines: the line before it is written
            ]
        }
        assert f"RequestId: {result.request_id} Version: $LATEST\nfine\nafter\nEND RequestId" in result.log
    assert not warm.cold_start


@pytest.mark.parametrize("kind", SANDBOXES)
async def test_bytes_through_buffer_join_the_log_as_utf8(kind: str) -> None:
    for result in await cold_then_warm("write_bytes", kind):
        assert result.error is None
        assert result.payload == {"refused": "a bytes-like object is required, not 'str'", "written": 2}
        # In order with nothing lost: a character split across two writes is whole again, a
        # byte that is not UTF-8 is U+FFFD, and so is the half character the invocation ended in.
        expected = "out \u00e9\nerr line\nsplit \u2603\nview\none two\nbad \ufffd\ufffd\nn\n\ufffd"
        assert f"Version: $LATEST\n{expected}END RequestId: {result.request_id}" in result.log


@pytest.mark.parametrize("kind", SANDBOXES)
async def test_streams_answer_as_text_streams_and_reconfigure_is_accepted(kind: str) -> None:
    for result in await cold_then_warm("describe", kind):
        assert result.error is None
        assert result.payload == {
            "names": ["<stdout>", "<stderr>"],
            "mode": "w",
            "buffer_mode": "wb",
            "encoding": "utf-8",
            "errors": "backslashreplace",  # as reconfigured
            "line_buffering": True,
            "newlines": None,
            "closed": False,
            "buffer_closed": False,
            "readable": False,
            "seekable": False,
            "writable": True,
            "buffer_writable": True,
            "isatty": False,
            "unknown_codec": "LookupError",
        }
        assert "\ndescribed\n" in result.log


@pytest.mark.parametrize("kind", WITH_INLINE)
@pytest.mark.parametrize(
    ("handler", "error_type", "expected"),
    [
        ("fail_at_once", "ValueError", ["fail_at_once"]),
        ("fail_after_await", "KeyError", ["fail_after_await", "_inner"]),
        ("returns_coroutine", "KeyError", ["fail_after_await", "_inner"]),  # a sync handler's coroutine
        ("returns_awaitable", "LookupError", ["__await__"]),  # an awaitable that is no coroutine
    ],
)
async def test_an_awaited_handlers_trace_starts_at_its_own_frame(
    kind: str, handler: str, error_type: str, expected: list[str]
) -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("f", f"handlers.stdio:{handler}", sandbox=kind)
        for _ in range(2):  # the loop's first run and a warm one
            with pytest.raises(fnrt.FunctionError) as info:
                await rt.invoke("f", {})
            err = info.value
            assert err.error_type == error_type
            assert frames(err.stack_trace) == expected
            assert all("handlers/stdio.py" in line for line in err.stack_trace)
            assert f"Traceback (most recent call last):\n{''.join(err.stack_trace)}END" in err.log_tail


@pytest.mark.parametrize("kind", SANDBOXES)
async def test_restoring_the_streams_python_started_with_keeps_printing_into_the_log(kind: str) -> None:
    # sys.__stdout__ is Lambda's log as much as sys.stdout is: the old idiom that puts it
    # back after a redirection must not send the output around the invocation's log.
    for result in await cold_then_warm("restore_stdout", kind):
        assert result.error is None and result.payload == "restored"
        assert "to stdout again\nto stderr again\n" in result.log and "swallowed" not in result.log
