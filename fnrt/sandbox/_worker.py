"""What runs inside a sandbox: the init phase, the invoke loop, log capture.

The same :class:`Worker` serves every sandbox kind: the subinterpreter loop reads a frame,
``dispatch``-es it and writes the reply; the inline kind calls ``dispatch`` from a host
thread; the subprocess loop does the same, except that an invoke's reply frame is packed
as the invocation ends (:meth:`Worker.invoke_frame`, the warm path). It imports nothing of the host runtime,
so a forked sandbox starts small. The sandbox must never die of a caller's input: every
failure of a request becomes a reply in Lambda's error shape.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import importlib
import inspect
import io
import json
import logging
import os
import resource
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

from .. import _json
from .._context import ClientContext, CognitoIdentity, Context
from .._lambda import SYNC_PAYLOAD_LIMIT, response_too_large
from . import _marshal, _wire
from . import _protocol as _p
from ._mirror import INIT_OUTPUT, OutputMirror

#: Results that are never awaitable (no ``inspect.isawaitable`` for them).
_PLAIN = frozenset((dict, list, str, int, float, bool, type(None)))
_perf_counter = time.perf_counter
#: What :meth:`Worker.run_invoke` returns: request id, ok, fatal, duration_ms, max_memory_mb,
#: log, error (Lambda's shape, or ``None``), result.
Invoked = tuple[str, bool, bool, float, int, str, "dict[str, Any] | None", bytes]
_local = threading.local()


class Capture:
    """One invocation's captured output: the last ``limit`` characters are kept, what falls
    off the front streams to ``overflow`` (the host's stderr) instead of being buffered."""

    __slots__ = ("dropped", "json", "level", "limit", "mirror", "overflow", "parts", "size")

    def __init__(
        self, limit: int, overflow: Callable[[str], Any] | None, mirror: OutputMirror | None = None
    ) -> None:
        #: The function's log format is JSON; ``level``: records below it are dropped
        #: (inline only: the other kinds set their root logger's level).
        self.json = False
        self.level = logging.NOTSET
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit
        self.overflow = overflow
        self.dropped = 0
        self.mirror = mirror  # a copy the host can read if no reply comes (see _mirror)

    def append(self, s: str) -> None:
        self.parts.append(s)
        self.size += len(s)
        if self.mirror is not None:
            self.mirror.write(s)
        if self.size > 2 * self.limit:
            self._spill()

    def extend(self, items: list[str]) -> None:
        for s in items:
            self.append(s)

    def append_bytes(self, data: bytes) -> None:
        """Bytes a handler wrote to ``sys.stdout.buffer``, as the UTF-8 text a log shows: an
        invalid byte reads as U+FFFD, and a character split across two writes is joined again
        (its first bytes read as U+FFFD while the last write is theirs, so the log of an
        invocation that ends mid-character still says so)."""
        parts = self.parts
        held = parts[-1] if parts else None
        if isinstance(held, _Partial):  # the last write ended mid-character
            parts.pop()
            self.size -= len(held)
            data = held.raw + data
        decoder = _Utf8Decoder("replace")
        text = decoder.decode(data)
        if text:
            self.append(text)
        rest: bytes = decoder.getstate()[0]
        if rest:
            self.append(_Partial(rest))

    def _spill(self) -> None:
        text = "".join(self.parts)
        cut = len(text) - self.limit
        if cut <= 0:
            return
        head = text[:cut]
        self.parts = [text[cut:]]
        self.size = len(self.parts[0])
        self.dropped += len(head.encode("utf-8", "replace"))
        if self.overflow is not None:
            try:
                self.overflow(head)
            except (OSError, ValueError):
                pass

    def text(self) -> str:
        if self.size > self.limit:
            self._spill()
        text = "".join(self.parts)
        if self.dropped:
            return f"[... {self.dropped} bytes truncated]\n{text}"
        return text


class _Partial(str):
    """The end of a write to ``sys.stdout.buffer`` that stopped inside a character: its bytes
    as U+FFFD, and the bytes themselves for the next write to complete (a ``str``, so a log
    that ends here still joins)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> _Partial:
        self = super().__new__(cls, raw.decode("utf-8", "replace"))
        self.raw = raw
        return self


_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
_NEWLINES = (None, "", "\n", "\r", "\r\n")


def _text(s: object) -> str:
    """What a text stream's ``write`` takes, refused as ``TextIOWrapper`` refuses it (so a
    handler can catch it at its call). A ``str`` subclass is taken as its plain text: its own
    ``__len__`` or ``__str__`` cannot reach the capture."""
    if isinstance(s, str):
        return str.__str__(s)
    raise TypeError(f"write() argument must be str, not {'None' if s is None else type(s).__name__}")


class _SandboxStream:
    """What the two sandbox streams answer alike: writable, never a terminal, never closed
    (``close`` is ignored: the stream is the sandbox's, not one invocation's)."""

    def close(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return False


class _Router(_SandboxStream, io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: writes go to the invocation's capture.

    In a subprocess or subinterpreter sandbox the whole process belongs to one invocation
    at a time (``process_wide``); output while no invocation runs (a thread the handler
    left running) is dropped, never written to the host's streams. Inline, only the
    invoking thread's writes are captured and the host's own output passes through.

    To a writer it is the ``TextIOWrapper`` Lambda's runtime gives a handler: ``write`` takes
    only ``str``, ``buffer`` takes bytes into the same capture, ``reconfigure`` and the
    stream's attributes answer as a real stream's do. The capture takes each write whole the
    moment it is made, so buffering and encoding settings are kept and reported, never
    applied. ``close`` is ignored: the stream belongs to the sandbox, not to one invocation.
    """

    process_buffer: Capture | None = None
    process_wide = False

    def __init__(self, original: Any, name: str, errors: str) -> None:
        self._original = original
        self._name = name
        self._errors = errors
        self._encoding = "utf-8"
        self._line_buffering = False
        self._write_through = False
        self._buffer = _BinaryRouter(self)

    def write(self, s: str) -> int:
        if type(s) is not str:
            s = _text(s)
        buf = _current_buffer()
        if buf is not None:
            buf.append(s)
            return len(s)
        if _Router.process_wide:
            return len(s)
        return int(self._original.write(s))

    def flush(self) -> None:
        try:
            self._original.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def fileno(self) -> int:
        return int(self._original.fileno())

    def reconfigure(
        self,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: Any = Ellipsis,
        line_buffering: bool | None = None,
        write_through: bool | None = None,
    ) -> None:
        """``TextIOWrapper.reconfigure``: an unknown encoding or newline is refused as it
        refuses them; the rest is kept and reported, never applied (see the class)."""
        if errors is not None and not isinstance(errors, str):
            raise TypeError(f"reconfigure() argument 'errors' must be str, not {type(errors).__name__}")
        if newline is not Ellipsis and newline not in _NEWLINES:
            raise ValueError(f"illegal newline value: {newline}")
        if encoding is not None:
            codecs.lookup(encoding)  # LookupError, or TypeError for what is not a str
            self._encoding = encoding
            self._errors = errors or "strict"
        elif errors is not None:
            self._errors = errors
        if line_buffering is not None:
            self._line_buffering = bool(line_buffering)
        if write_through is not None:
            self._write_through = bool(write_through)

    @property
    def buffer(self) -> _BinaryRouter:
        return self._buffer

    @property
    def name(self) -> str:
        return self._name

    @property
    def mode(self) -> str:
        return "w"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    @property
    def errors(self) -> str:  # type: ignore[override]
        return self._errors

    @property
    def line_buffering(self) -> bool:
        return self._line_buffering

    @property
    def write_through(self) -> bool:
        return self._write_through


class _BinaryRouter(_SandboxStream, io.BufferedIOBase):
    """``sys.stdout.buffer``: bytes go to the same capture as the text stream's writes,
    decoded as UTF-8 (:meth:`Capture.append_bytes`). Inline, the host's own bytes pass
    through to its stream."""

    def __init__(self, text: _Router) -> None:
        self._text = text

    def write(self, b: Any) -> int:
        if type(b) is not bytes:
            try:
                b = bytes(memoryview(b))
            except TypeError:
                raise TypeError(f"a bytes-like object is required, not '{type(b).__name__}'") from None
        buf = _current_buffer()
        if buf is not None:
            buf.append_bytes(b)
        elif not _Router.process_wide:
            original = self._text._original
            binary = getattr(original, "buffer", None)
            if binary is not None:
                binary.write(b)
            else:
                original.write(b.decode("utf-8", "replace"))
        return len(b)

    def flush(self) -> None:
        self._text.flush()

    def fileno(self) -> int:
        return self._text.fileno()

    @property
    def name(self) -> str:
        return self._text.name

    @property
    def mode(self) -> str:
        return "wb"


_process_request_id: list[str] = [""]  # the invocation a process-wide capture belongs to


#: ``LogRecord`` attributes that are not a record's "extra" fields (Lambda's runtime's list,
#: and what formatting or asyncio add to a record).
_RECORD_FIELDS = frozenset(
    {
        "name", "msg", "args", "levelname", "levelno", "pathname", "filename", "module",
        "exc_info", "exc_text", "stack_info", "lineno", "funcName", "created", "msecs",
        "relativeCreated", "thread", "threadName", "processName", "process", "taskName",
        "message", "asctime", "aws_request_id", "tenant_id", "_frame_type",
    }
)  # fmt: skip
_json_line = json.JSONEncoder(ensure_ascii=False, default=str).encode


def _iso_ms(created: float) -> str:
    """``2024-05-01T12:00:00.123Z``: the timestamp of Lambda's JSON log records."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(created))}.{int(created * 1000) % 1000:03d}Z"


def _json_record(record: logging.LogRecord, request_id: str) -> str:
    """One ``logging`` record as Lambda's Python runtime writes it in JSON format: one object
    a line, its level rounded down to a standard one, the exception's type, message and
    frames when it carries one, then the record's extra fields; no ``null`` values."""
    level = min(50, max(0, record.levelno)) // 10 * 10
    exc = record.exc_info
    out: dict[str, Any] = {
        "timestamp": _iso_ms(record.created),
        "level": logging.getLevelName(level),
        "message": record.getMessage(),
        "logger": record.name,
    }
    if exc and exc[0] is not None:
        out["stackTrace"] = traceback.format_tb(exc[2])
        out["errorType"] = exc[0].__name__
        out["errorMessage"] = str(exc[1])
    out["requestId"] = request_id
    if exc:
        out["location"] = f"{record.pathname}:{record.funcName}:{record.lineno}"
    for key, value in record.__dict__.items():
        if key not in _RECORD_FIELDS and key not in out and value is not None:
            out[key] = value
    return _json_line(out) + "\n"


def log_level_number(log_level: str) -> int | None:
    """``AWS_LAMBDA_LOG_LEVEL`` as a ``logging`` level (``TRACE`` is ``DEBUG``), or ``None``."""
    name = str(log_level).upper()
    level = logging.getLevelName({"TRACE": "DEBUG"}.get(name, name)) if name else None
    return level if isinstance(level, int) else None


class _TextFormatter(logging.Formatter):
    """Lambda's Python runtime's text format: ``[LEVEL]\\ttimestamp\\trequest-id\\tmessage``."""

    def __init__(self) -> None:
        line = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n"
        super().__init__(line, "%Y-%m-%dT%H:%M:%S")
        self.converter = time.gmtime


class _JsonFormatter(logging.Formatter):
    """Lambda's Python runtime's JSON format (:func:`_json_record`)."""

    def format(self, record: logging.LogRecord) -> str:
        return _json_record(record, getattr(record, "aws_request_id", ""))


_TEXT = _TextFormatter()
_JSON = _JsonFormatter()


class _RequestIdFilter(logging.Filter):
    """Puts the invocation's request id on each record as ``aws_request_id``, as Lambda's
    runtime does: a handler's own formats (``%(aws_request_id)s``) and handlers read it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = getattr(_local, "request_id", None) or _process_request_id[0]
        return True


class _LambdaLogHandler(logging.Handler):
    """The root logger's handler, as Lambda's runtime installs it: the invocation's records
    in its log format (text, or JSON with the JSON log format) unless the handler's code
    sets a formatter of its own on it (``setFormatter``), which then formats them."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(_RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        buf = _current_buffer()
        if buf is None or record.levelno < buf.level:
            return
        try:
            formatter = self.formatter or (_JSON if buf.json else _TEXT)
            text = formatter.format(record)
            buf.append(text if text.endswith("\n") else text + "\n")
        except Exception:
            self.handleError(record)


def _current_buffer() -> Capture | None:
    """The capture of the invocation this write belongs to, if any."""
    buf: Capture | None = getattr(_local, "buffer", None)
    if buf is None and _Router.process_wide:
        buf = _Router.process_buffer
    return buf


_installed = False


def install_capture(process_wide: bool) -> None:
    global _installed
    _Router.process_wide = process_wide
    if _installed:
        return
    _installed = True
    _host_stderr[0] = sys.__stderr__
    sys.stdout = _Router(sys.stdout, "<stdout>", "strict")
    sys.stderr = _Router(sys.stderr, "<stderr>", "backslashreplace")
    if process_wide:
        # The sandbox's own streams, as Lambda's are its log: a handler that "restores"
        # ``sys.stdout = sys.__stdout__`` still prints into its invocation's log.
        setattr(sys, "__stdout__", sys.stdout)  # noqa: B010 (typeshed calls them final)
        setattr(sys, "__stderr__", sys.stderr)  # noqa: B010
    logging.getLogger().addHandler(_LambdaLogHandler())


_host_stderr: list[Any] = [sys.__stderr__]


def host_stderr() -> Any:
    """The process's real stderr (``sys.__stderr__`` before the capture took it): where
    fnrt's own failures and the output that overflows a capture go."""
    return _host_stderr[0]


def _overflow_to_stderr(text: str) -> None:
    stream = _host_stderr[0]
    if stream is not None:
        stream.write(text)


_mirror: list[OutputMirror | None] = [None]  # the process's (a subprocess sandbox's)


def install_mirror(path: str, capacity: int) -> None:
    """Copy each invocation's output into ``path`` as it is written (:mod:`._mirror`)."""
    try:
        _mirror[0] = OutputMirror(path, capacity)
    except (OSError, ValueError):
        _mirror[0] = None  # no room for it: the output still comes with each reply


def _start_capture(request_id: str, limit: int, log_json: bool = False, log_level: int = 0) -> Capture:
    mirror = _mirror[0] if _Router.process_wide else None
    if mirror is not None:
        mirror.start(request_id or INIT_OUTPUT)
    buf = Capture(limit, _overflow_to_stderr, mirror)
    buf.json = log_json
    buf.level = log_level
    if _Router.process_wide:
        _Router.process_buffer = buf
        _process_request_id[0] = request_id
    else:
        _local.buffer = buf
        _local.request_id = request_id
    return buf


def _stop_capture() -> None:
    if _Router.process_wide:
        _Router.process_buffer = None
        _process_request_id[0] = ""
    else:
        _local.buffer = None
        _local.request_id = None


_MAX_ERROR_MESSAGE = 256 * 1024
THREAD_STACK_BYTES = 1024 * 1024
_MAX_ERROR_TYPE = 1024


def _error(
    exc: BaseException,
    error_type: str | None = None,
    message: str | None = None,
    tb: types.TracebackType | None = None,
) -> dict[str, Any]:
    """Lambda's error shape for ``exc``; its ``stackTrace`` lists ``tb``, by default the
    frames past the one that caught it (the handler's own, for a handler's exception)."""
    if tb is None and exc.__traceback__ is not None:
        tb = exc.__traceback__.tb_next
    try:
        text = message if message is not None else str(exc)
    except Exception:  # a hostile __str__
        text = f"<unprintable {type(exc).__name__}>"
    if len(text) > _MAX_ERROR_MESSAGE:  # a reply header stays small whatever a handler raises
        text = f"{text[:_MAX_ERROR_MESSAGE]}[... {len(text) - _MAX_ERROR_MESSAGE} characters truncated]"
    kind = error_type or type(exc).__name__
    if len(kind) > _MAX_ERROR_TYPE:  # a class named with megabytes: its head, not a stall
        kind = f"{kind[:_MAX_ERROR_TYPE]}..."
    return {"errorMessage": text, "errorType": kind, "stackTrace": _stack(tb)}


def _stack(tb: types.TracebackType | None) -> list[str]:
    """The frames as Lambda's Python runtime lists them: ``format_list`` of plain
    (file, line, name, text) tuples, so no column carets (``~~^^``) on 3.11+."""
    return traceback.format_list(
        [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(tb)]  # type: ignore[misc]
    )


def _awaited_frames(tb: types.TracebackType | None, awaitable: Any) -> types.TracebackType | None:
    """The frames of what an awaited handler raised, from the handler's own on, as a sync
    handler's are listed. The event loop re-raised it on its way out, so its traceback
    starts in the frames that ran the loop (this module's, ``run_until_complete``, the
    loop's task steps), which Lambda's runtime does not list: a coroutine's trace starts at
    its own frame; any other awaitable's past this module's frames and asyncio's."""
    code = getattr(awaitable, "cr_code", None)
    at = tb
    while at is not None:
        if at.tb_frame.f_code is code:
            return at
        at = at.tb_next
    while tb is not None and (
        tb.tb_frame.f_globals is _GLOBALS or str(tb.tb_frame.f_globals.get("__name__")).startswith("asyncio.")
    ):
        tb = tb.tb_next
    return tb


_GLOBALS = globals()


def _simple_error(error_type: str, message: str) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": []}


def _log_error(buf: Capture, exc: BaseException, error: dict[str, Any]) -> None:
    if buf.json:  # as Lambda's runtime logs an error in JSON format: one object
        rid = getattr(_local, "request_id", None) or _process_request_id[0]
        line = {"timestamp": _iso_ms(time.time()), "level": "ERROR", **error, "requestId": rid}
        buf.append(_json_line(line) + "\n")
        return
    buf.append(f"[ERROR] {error['errorType']}: {error['errorMessage']}\n")
    buf.append("Traceback (most recent call last):\n")
    buf.extend(error["stackTrace"])


def _log_exit(buf: Capture, exc: BaseException) -> None:
    """What Python writes to stderr as ``exc`` ends the interpreter (the message of a
    ``sys.exit("...")``, the traceback of anything else), into the invocation's log: in
    Lambda it is the last thing the function's log shows before the runtime exited."""
    try:
        if isinstance(exc, SystemExit):
            code = exc.code
            if code is not None and not isinstance(code, int):
                buf.append(f"{code}\n")
        else:  # from the handler's frames on, as for a handler's exception
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_globals is _GLOBALS:
                tb = tb.tb_next
            buf.append("".join(traceback.format_exception(type(exc), exc, tb)))
    except Exception:  # a hostile __str__: the exit itself still happens
        pass


def _is_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, or an ``mmap``/``ftruncate`` refused by the address-space limit."""
    return isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)


_RSS_PER_MB = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else kB
_getrusage = resource.getrusage
_RUSAGE_SELF = resource.RUSAGE_SELF


def _max_rss_mb() -> int:
    return int(_getrusage(_RUSAGE_SELF).ru_maxrss / _RSS_PER_MB)


def _address_space_bytes() -> int:
    """This process's mapped address space now (``VmSize``), 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _one_malloc_arena() -> None:
    """glibc gives each new thread a malloc arena of its own, reserving 64 MB of address
    space apiece: under RLIMIT_AS a few threads would exhaust the limit by reservations
    alone (and a thread that cannot get memory at its start hangs its starter). Python
    allocates under the GIL anyway, so one arena costs nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def set_memory_limit(memory_mb: int) -> None:
    """Cap the process at ``memory_mb``: its data (heap and private mappings, RLIMIT_DATA)
    and its address space (RLIMIT_AS, so shared mappings count too) beyond what the
    interpreter has already mapped (its code and libraries are not the function's)."""
    limit = memory_mb * 1024 * 1024
    # A thread's stack is reserved whole (8 MB by default) and the rlimits count what is
    # reserved, not what is used: 14 threads would fill 128 MB before doing anything, where
    # Lambda (which counts resident memory) runs a pool of 32 and more. Threads started
    # from here on reserve 1 MB each, far more than Python code on a thread uses.
    with contextlib.suppress(ValueError, RuntimeError):
        threading.stack_size(THREAD_STACK_BYTES)
    _one_malloc_arena()
    rlimit_data = getattr(resource, "RLIMIT_DATA", None)
    if rlimit_data is not None:
        try:
            resource.setrlimit(rlimit_data, (limit, limit))
        except (ValueError, OSError):
            pass
    rlimit_as = getattr(resource, "RLIMIT_AS", None)
    mapped = _address_space_bytes()
    if rlimit_as is not None and mapped:
        try:
            resource.setrlimit(rlimit_as, (mapped + limit, mapped + limit))
        except (ValueError, OSError):
            pass


class Worker:
    """One execution environment: a module, one bound handler, one event at a time.

    ``apply_environment``: the environment belongs to this sandbox alone (a process), so
    bind variables are applied to ``os.environ``. ``enforce_memory``: ``memory_mb`` may be
    applied as an rlimit (never in the host process).
    """

    def __init__(
        self,
        *,
        process_wide: bool,
        apply_environment: bool = True,
        enforce_memory: bool = True,
        log_capture_bytes: int = _p.DEFAULT_LOG_CAPTURE_BYTES,
    ) -> None:
        install_capture(process_wide)
        self.module: Any = None
        self.module_name: str | None = None
        self.fn: Callable[..., Any] | None = None
        self.is_async = False
        self.function: dict[str, Any] = {}
        self._constants: tuple[str, str, str, str, str] = ("", "$LATEST", "", "", "")  # Context.constants
        self.apply_environment = apply_environment
        self.enforce_memory = enforce_memory
        self.memory_limited = False
        self.log_capture_bytes = log_capture_bytes
        self.log_json = False
        self.log_level = logging.NOTSET
        self._loop: asyncio.AbstractEventLoop | None = None

    def configure_logging(self, bind: dict[str, Any]) -> None:
        """Set up ``logging`` as Lambda's Python runtime does from ``AWS_LAMBDA_LOG_FORMAT``
        and ``AWS_LAMBDA_LOG_LEVEL``: JSON records or text lines, and the root logger's level.
        Inline, the host's root logger is left alone: the level only drops the records of
        this sandbox's invocations below it."""
        self.log_json = str(bind.get("log_format") or "").upper() == "JSON"
        level = log_level_number(bind.get("log_level") or "")
        if level is None:
            return
        if _Router.process_wide:
            logging.getLogger().setLevel(level)
        else:
            self.log_level = level

    def limit_memory(self, memory_mb: int | None) -> None:
        if memory_mb and self.enforce_memory and not self.memory_limited:
            set_memory_limit(int(memory_mb))
            self.memory_limited = True

    # -- init phase -------------------------------------------------------------------

    def init(self, header: dict[str, Any]) -> dict[str, Any]:
        """Import the module (the init phase) and discover its handlers; bind if asked.

        A second ``init`` of the module already imported only binds."""
        module_name: str = header[_p.K_MODULE]
        bind = header.get(_p.K_BIND)
        if self.module is not None and module_name == self.module_name:
            if not bind:
                return {_p.K_OK: True, _p.K_HANDLERS: self._discover(module_name)}
            return self.bind(bind)
        if bind:
            if self.apply_environment:
                os.environ.update(bind.get("environment") or {})
            self.configure_logging(bind)
            self.limit_memory(bind.get("memory_mb"))
            code_root = bind.get("code_root")
            if code_root and (not sys.path or sys.path[0] != code_root):
                sys.path.insert(0, code_root)  # the package's modules before the host's
        if self.apply_environment:
            _import_from(os.environ.get("PYTHONPATH", ""))  # after the code root
        buf = _start_capture("", self.log_capture_bytes, self.log_json, self.log_level)
        started = time.perf_counter()
        try:
            self.module = importlib.import_module(module_name)
            self.module_name = module_name
            run_init = getattr(self.module, "fnrt_init", None)
            if callable(run_init):
                run_init()
        # As Lambda's Python runtime (awslambdaric's _get_handler) reports a failed init: an
        # ImportError is Runtime.ImportModuleError without frames, a SyntaxError names its
        # line, and anything else the module raised is reported as itself (its type, its
        # message, its frames: "[ERROR] KeyError: 'TABLE_NAME'").
        except ImportError as exc:
            message = f"Unable to import module '{module_name}': {exc}"
            return self._init_failed(exc, buf, _simple_error("Runtime.ImportModuleError", message))
        except SyntaxError as exc:
            message = f"Syntax error in module '{module_name}': {exc}"
            error = _simple_error("Runtime.UserCodeSyntaxError", message)
            error["stackTrace"] = [f'  File "{exc.filename}" Line {exc.lineno}\n    {exc.text}']
            return self._init_failed(exc, buf, error)
        except Exception as exc:
            if _is_out_of_memory(exc):
                error = _error(exc, "Runtime.OutOfMemory", "Out of memory during init")
                return self._init_failed(exc, buf, error)
            if type(exc).__name__ == "InvalidConfig":  # fnrt's own decorator refused its arguments
                return self._init_failed(exc, buf, _error(exc, "InvalidConfig", str(exc)))
            return self._init_failed(exc, buf, _error(exc))
        except BaseException as exc:  # the init phase ended its sandbox (sys.exit, ...)
            _log_exit(buf, exc)
            raise
        finally:
            _stop_capture()
        init_ms = (time.perf_counter() - started) * 1000
        reply: dict[str, Any] = {
            _p.K_OK: True,
            _p.K_HANDLERS: self._discover(module_name),
            _p.K_INIT_MS: init_ms,
            _p.K_LOG: buf.text(),
        }
        if bind:
            bound = self.bind(bind)
            if not bound[_p.K_OK]:
                bound[_p.K_LOG] = reply[_p.K_LOG]
                return bound
        return reply

    def _init_failed(self, exc: BaseException, buf: Capture, error: dict[str, Any]) -> dict[str, Any]:
        self.module = None
        _log_error(buf, exc, error)
        return {_p.K_OK: False, _p.K_ERROR: error, _p.K_LOG: buf.text()}

    def _discover(self, module_name: str) -> list[dict[str, Any]]:
        found = []
        for attr, value in vars(self.module).items():
            spec = getattr(value, "__fnrt__", None)
            if spec is None or getattr(value, "__module__", None) != module_name:
                continue
            found.append(
                {
                    "name": spec.name,
                    "attr": attr,
                    "config": spec.config.to_dict(),
                    "extra": _jsonable(spec.extra),
                }
            )
        return found

    def bind(self, bind: dict[str, Any]) -> dict[str, Any]:
        """Attach this environment to one function: resolve its handler, apply its limits."""
        attr = bind["attr"]
        target = getattr(self.module, attr, None)
        if target is None:
            message = f"Handler '{attr}' missing on module '{self.module.__name__}'"
            return {_p.K_OK: False, _p.K_ERROR: _simple_error("Runtime.HandlerNotFound", message)}
        if not callable(target):
            kind = type(target).__name__
            message = f"Handler '{attr}' on module '{self.module.__name__}' is not callable (it is a {kind})"
            return {_p.K_OK: False, _p.K_ERROR: _simple_error("Runtime.HandlerNotFound", message)}
        self.fn = target
        self.is_async = inspect.iscoroutinefunction(target)
        self.function = bind
        constants = Context.constants(bind["function_name"], bind["memory_mb"], bind.get("log_stream", ""))
        group = bind.get("log_group")
        if group:  # the function's own log group (LoggingConfig.LogGroup)
            constants = (*constants[:3], group, constants[4])
        self._constants = constants
        self.configure_logging(bind)
        if self.apply_environment:
            os.environ.update(bind.get("environment") or {})
            if bind.get("log_stream"):
                os.environ["AWS_LAMBDA_LOG_STREAM_NAME"] = bind["log_stream"]
        self.limit_memory(bind.get("memory_mb"))
        return {_p.K_OK: True}

    # -- invoke phase -----------------------------------------------------------------

    def invoke(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        """One invocation; its reply as a header dict and the result (the inline and
        subinterpreter loops, :func:`dispatch`)."""
        rid, ok, fatal, duration_ms, memory_mb, log, error, out = self.run_invoke(header, body)
        reply = {_p.K_OK: ok, _p.K_ID: rid, _p.K_DURATION: duration_ms, _p.K_MEMORY: memory_mb, _p.K_LOG: log}
        if error is not None:
            reply[_p.K_ERROR] = error
        if fatal:
            reply[_p.K_FATAL] = True
        return reply, out

    def invoke_frame(self, header: dict[str, Any], body: bytes) -> tuple[bytes, bool]:
        """One invocation; its reply frame (the fixed layout) and whether the sandbox must end
        after it. The subprocess loop's warm path: no reply dict in between."""
        outcome = self.run_invoke(header, body)
        return _wire.pack_invoke_reply(*outcome), outcome[2]

    def run_invoke(self, header: dict[str, Any], body: bytes) -> Invoked:
        """Run the bound handler on ``body``: ``(request id, ok, fatal, duration_ms,
        max_memory_mb, log, error, result)``. Raises only for a malformed request (no id,
        no deadline) and for what a handler may end its sandbox with (``SystemExit``)."""
        rid = header[_p.K_ID]
        if self.fn is None:
            unbound = _simple_error("Runtime.Unknown", "sandbox is not bound to a handler")
            return rid, False, False, 0.0, _max_rss_mb(), "", unbound, b""
        identity = header.get(_p.K_IDENTITY)
        client_context = header.get(_p.K_CLIENT_CONTEXT)
        context = Context._for_invoke(
            self._constants,
            rid,
            header[_p.K_DEADLINE],
            header.get(_p.K_INVOKED_ARN) or self.function["arn"],
            None if identity is None else CognitoIdentity.from_dict(identity),
            None if client_context is None else ClientContext.from_dict(client_context),
        )
        buf = _start_capture(rid, self.log_capture_bytes, self.log_json, self.log_level)
        started = _perf_counter()
        try:
            ok, error, fatal, out = self._call(self.fn, body, context, buf)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the sandbox ends
            _log_exit(buf, exc)
            raise
        finally:
            _stop_capture()
        return rid, ok, fatal, (_perf_counter() - started) * 1000, _max_rss_mb(), buf.text(), error, out

    def _call(
        self, fn: Callable[..., Any], body: bytes, context: Any, buf: Capture
    ) -> tuple[bool, dict[str, Any] | None, bool, bytes]:
        """``(ok, error, fatal, result)`` of one call of the handler."""
        try:
            event = _json.loads_utf8(body)  # msgspec when installed, json's result exactly
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            # Lambda's runtime raises these as faults of its own: no stack trace.
            error = _simple_error("Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}")
            _log_error(buf, exc, error)
            return False, error, False, b""
        try:
            result = fn(event, context)
        except Exception as exc:
            return self._raised(exc, None, context, buf)
        if self.is_async or (type(result) not in _PLAIN and inspect.isawaitable(result)):
            try:
                result = self._run_async(result)
            except Exception as exc:
                return self._raised(exc, _awaited_frames(exc.__traceback__, result), context, buf)
        try:
            out = _marshal.to_json(result)  # as Lambda's runtime writes it
        except MemoryError as exc:
            return False, self._out_of_memory(exc, context, buf), True, b""
        except (TypeError, ValueError, OverflowError, RecursionError, UnicodeEncodeError) as exc:
            error = _simple_error("Runtime.MarshalError", f"Unable to marshal response: {exc}")
            _log_error(buf, exc, error)
            return False, error, False, b""
        if len(out) > SYNC_PAYLOAD_LIMIT:  # refused here: a 200 MB result never crosses the socket
            return False, _simple_error("Function.ResponseSizeTooLarge", response_too_large()), False, b""
        return True, None, False, out

    def _raised(
        self, exc: Exception, tb: types.TracebackType | None, context: Any, buf: Capture
    ) -> tuple[bool, dict[str, Any] | None, bool, bytes]:
        """``_call``'s outcome when the handler raised ``exc``; ``tb``: its frames from the
        handler's own on (``None``: those past ``_call``'s)."""
        if _is_out_of_memory(exc):
            return False, self._out_of_memory(exc, context, buf, tb), True, b""
        error = _error(exc, tb=tb)
        _log_error(buf, exc, error)
        return False, error, False, b""

    def _out_of_memory(
        self, exc: BaseException, context: Any, buf: Capture, tb: types.TracebackType | None = None
    ) -> dict[str, Any]:
        """The handler passed its memory limit: the error to report (the sandbox then dies)."""
        limit = context.memory_limit_in_mb
        message = (
            f"RequestId: {context.aws_request_id} Error: Runtime exited with error: "
            f"out of memory (memory_mb={limit})"
        )
        buf.append(f"Memory limit of {limit} MB exceeded\n")
        return _error(exc, "Runtime.OutOfMemory", message, tb)

    def _run_async(self, awaitable: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def _import_from(pythonpath: str) -> None:
    """Put the entries of the function's ``PYTHONPATH`` that are not on ``sys.path`` yet
    where Python puts them at start-up (after the code root, before the standard library
    and site-packages): in Lambda a function extends its import path with this variable,
    and a forked sandbox started with the host's path."""
    entries = [entry for entry in pythonpath.split(os.pathsep) if entry and entry not in sys.path]
    sys.path[1:1] = list(dict.fromkeys(entries))


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError, RecursionError):
        return {}


def dispatch(worker: Worker, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes] | None:
    """Serve one request; ``None`` for ``shutdown``. Shared by every in-sandbox loop.

    Never raises for a request it cannot serve (a malformed header, an op it does not know,
    a bug): that becomes an error reply, so the sandbox never dies of its input. A handler's
    ``SystemExit`` and friends do propagate: the sandbox ends as Lambda's would.
    """
    op = header.get(_p.OP)
    try:
        if op == _p.OP_INVOKE:
            return worker.invoke(header, body)
        if op == _p.OP_INIT:
            return worker.init(header), b""
        if op == _p.OP_SHUTDOWN:
            worker.close()
            return None
        error = _simple_error("Runtime.Unknown", f"unknown op {op!r}")
    except Exception as exc:  # a malformed request: answer, do not die
        return _unservable(header, exc), b""
    return _failed_reply(header, error), b""


def _unservable(header: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """The reply to a request that could not be served (malformed, or a bug of ours)."""
    message = f"cannot serve {header.get(_p.OP)!r}: {type(exc).__name__}: {exc}"
    return _failed_reply(header, _error(exc, "Runtime.Unknown", message))


def _failed_reply(header: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = {_p.K_OK: False, _p.K_ERROR: error}
    if _p.K_ID in header:
        reply[_p.K_ID] = header[_p.K_ID]
    return reply


def serve(sock: Any, worker: Worker | None = None) -> None:
    """The subprocess sandbox's main loop: one frame in, one frame out, until EOF."""
    if worker is None:
        worker = Worker(process_wide=True)
    read, send = _wire.FrameReader(sock).read, sock.sendall
    invoke_frame = worker.invoke_frame
    while True:
        frame = read()
        if frame is None:
            return
        header, body = frame
        if header.get(_p.OP) == _p.OP_INVOKE:  # the warm path: the reply packed as it is made
            try:
                data, fatal = invoke_frame(header, body)
            except Exception as exc:  # a malformed request: answer, do not die
                data, fatal = encode_reply(header, _unservable(header, exc), b""), False
        else:
            answer = dispatch(worker, header, body)
            if answer is None:
                return
            data, fatal = encode_reply(header, *answer), bool(answer[0].get(_p.K_FATAL))
        send(data)
        if fatal:
            os._exit(137)


def encode_reply(request: dict[str, Any], reply: dict[str, Any], body: bytes) -> bytes:
    """The frame answering ``request``: invoke replies in the fixed layout, others JSON."""
    if request.get(_p.OP) == _p.OP_INVOKE and _p.K_ID in reply:
        return _wire.encode_invoke_reply(reply, body)
    return _wire.encode(reply, body)
