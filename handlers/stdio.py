"""Handlers that use ``sys.stdout``/``sys.stderr`` as a program would use a real text stream
(``tests/test_worker_stdio.py``), and async handlers that fail."""

import asyncio
import sys


def write_non_text(event, context):
    """Writes what a text stream refuses, catching the ``TypeError`` as it would have to."""
    stream = getattr(sys, event.get("stream", "stdout"))
    refused = []
    for value in (b"bytes\n", None, 42, bytearray(b"x")):
        try:
            stream.write(value)
        except TypeError as exc:
            refused.append(str(exc))
    try:
        stream.writelines(["fine\n", b"not fine\n"])
    except TypeError as exc:
        refused.append(str(exc))
    print("after", file=stream)
    return {"refused": refused}


def write_bytes(event, context):
    """Writes bytes through ``.buffer``: whole lines, a character split across two writes,
    bytes that are not UTF-8, and a ``str``, which a binary stream refuses."""
    out, err = sys.stdout.buffer, sys.stderr.buffer
    out.write("out \u00e9\n".encode())
    err.write(b"err line\n")
    snowman = "\u2603".encode()
    out.write(b"split " + snowman[:1])
    out.write(snowman[1:] + b"\n")
    out.write(memoryview(b"view\n"))
    out.writelines([b"one ", b"two\n"])
    out.write(b"bad \xff\xfe\n")
    out.flush()
    try:
        out.write("text")
        refused = None
    except TypeError as exc:
        refused = str(exc)
    written = out.write(b"n\n")
    out.write("\u00e9".encode()[:1])  # the invocation ends inside a character
    return {"refused": refused, "written": written}


def describe(event, context):
    """What a program asks of its standard streams before it writes to them."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, encoding="utf-8", errors="backslashreplace")
    try:
        sys.stdout.reconfigure(encoding="no-such-codec")
        unknown = None
    except LookupError as exc:
        unknown = type(exc).__name__
    s = sys.stdout
    print("described")
    return {
        "names": [sys.stdout.name, sys.stderr.name],
        "mode": s.mode,
        "buffer_mode": s.buffer.mode,
        "encoding": s.encoding,
        "errors": s.errors,
        "line_buffering": s.line_buffering,
        "newlines": s.newlines,
        "closed": s.closed,
        "buffer_closed": s.buffer.closed,
        "readable": s.readable(),
        "seekable": s.seekable(),
        "writable": s.writable(),
        "buffer_writable": s.buffer.writable(),
        "isatty": s.isatty(),
        "unknown_codec": unknown,
    }


async def fail_at_once(event, context):
    raise ValueError("async failure")


async def fail_after_await(event, context):
    await asyncio.sleep(0)
    await _inner()


async def _inner():
    await asyncio.sleep(0)
    raise KeyError("after await")


class _Refusal:
    """An awaitable that is not a coroutine."""

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        raise LookupError("from __await__")


def returns_awaitable(event, context):
    """A sync handler whose result is awaited: an object with ``__await__``."""
    return _Refusal()


def returns_coroutine(event, context):
    """A sync handler whose result is a coroutine of another function."""
    return fail_after_await(event, context)


def restore_stdout(event, context):
    """Redirects its output, then "restores" the streams Python started with, and prints."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        print("swallowed")
    sys.stdout = sys.__stdout__
    sys.stderr = sys.__stderr__
    print("to stdout again")
    print("to stderr again", file=sys.stderr)
    return "restored"
