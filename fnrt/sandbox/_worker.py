"""What runs inside a sandbox: the init phase, the invoke loop, log capture.

The same :class:`Worker` serves every sandbox kind. In a subprocess it owns the process
(``serve``); the inline kind calls it from a host thread. It imports nothing of the host
runtime, so a forked sandbox starts small.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable
from typing import Any

from .._context import ClientContext, CognitoIdentity, Context
from . import _wire

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode
_local = threading.local()


class _Router(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: writes go to the invocation's buffer.

    In a subprocess sandbox the whole process belongs to one invocation at a time
    (``process_wide``); inline, only the invoking thread's writes are captured and the
    host's own output passes through.
    """

    process_buffer: list[str] | None = None
    process_wide = False

    def __init__(self, original: Any) -> None:
        self._original = original

    def write(self, s: str) -> int:
        buf = _current_buffer()
        if buf is not None:
            buf.append(s)
            return len(s)
        return int(self._original.write(s))

    def flush(self) -> None:
        try:
            self._original.flush()
        except (OSError, ValueError):
            pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self._original.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_process_request_id: list[str] = [""]  # the invocation a process-wide capture belongs to


class _LambdaLogHandler(logging.Handler):
    """Lambda's Python log format: ``[LEVEL]\\ttimestamp\\trequest-id\\tmessage``."""

    def emit(self, record: logging.LogRecord) -> None:
        buf = _current_buffer()
        if buf is None:
            return
        try:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            rid = getattr(_local, "request_id", None) or _process_request_id[0]
            buf.append(
                f"[{record.levelname}]\t{stamp}.{int(record.msecs):03d}Z\t{rid}\t{record.getMessage()}\n"
            )
            if record.exc_info:
                buf.append("".join(traceback.format_exception(*record.exc_info)))
        except Exception:
            self.handleError(record)


def _current_buffer() -> list[str] | None:
    """The capture buffer of the invocation this write belongs to, if any."""
    buf: list[str] | None = getattr(_local, "buffer", None)
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
    sys.stdout = _Router(sys.stdout)
    sys.stderr = _Router(sys.stderr)
    logging.getLogger().addHandler(_LambdaLogHandler())


def _start_capture(request_id: str) -> list[str]:
    buf: list[str] = []
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


def _error(exc: BaseException, error_type: str | None = None, message: str | None = None) -> dict[str, Any]:
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return {
        "errorMessage": message if message is not None else str(exc),
        "errorType": error_type or type(exc).__name__,
        "stackTrace": traceback.format_list(traceback.extract_tb(tb)),
    }


def _log_error(buf: list[str], exc: BaseException, error: dict[str, Any]) -> None:
    buf.append(f"[ERROR] {error['errorType']}: {error['errorMessage']}\n")
    buf.append("Traceback (most recent call last):\n")
    buf.extend(error["stackTrace"])


def _max_rss_mb() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss / 1024) if sys.platform != "darwin" else int(rss / 1024 / 1024)


def set_memory_limit(memory_mb: int) -> None:
    """Cap the process's data segment (heap and private mappings) at ``memory_mb``."""
    limit = memory_mb * 1024 * 1024
    for name in ("RLIMIT_DATA", "RLIMIT_AS"):
        rlimit = getattr(resource, name, None)
        if rlimit is None:
            continue
        try:
            resource.setrlimit(rlimit, (limit, limit))
            return
        except (ValueError, OSError):
            continue


class Worker:
    """One execution environment: a module, one bound handler, one event at a time."""

    def __init__(self, *, process_wide: bool, apply_environment: bool = True) -> None:
        install_capture(process_wide)
        self.module: Any = None
        self.fn: Callable[..., Any] | None = None
        self.is_async = False
        self.function: dict[str, Any] = {}
        self.apply_environment = apply_environment
        self.memory_limited = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- init phase -------------------------------------------------------------------

    def init(self, header: dict[str, Any]) -> dict[str, Any]:
        """Import the module (the init phase) and discover its handlers."""
        module_name: str = header["module"]
        bind = header.get("bind")
        if self.apply_environment:
            os.environ.update(header.get("environment") or {})
            if bind:
                os.environ.update(bind.get("environment") or {})
        if bind and bind.get("memory_mb") and header.get("enforce_memory", True):
            set_memory_limit(int(bind["memory_mb"]))
            self.memory_limited = True
        buf = _start_capture("")
        started = time.perf_counter()
        try:
            self.module = importlib.import_module(module_name)
            run_init = getattr(self.module, "fnrt_init", None)
            if callable(run_init):
                run_init()
        except MemoryError as exc:
            return self._init_failed(exc, buf, "Runtime.OutOfMemory", "Out of memory during init")
        except ModuleNotFoundError as exc:
            message = f"Unable to import module '{module_name}': {exc}"
            return self._init_failed(exc, buf, "Runtime.ImportModuleError", message)
        except SyntaxError as exc:
            message = f"Syntax error in module '{module_name}': {exc}"
            return self._init_failed(exc, buf, "Runtime.UserCodeSyntaxError", message)
        except Exception as exc:
            error_type = type(exc).__name__
            if error_type != "InvalidConfig":
                message = f"Unable to import module '{module_name}': {type(exc).__name__}: {exc}"
                return self._init_failed(exc, buf, "Runtime.ImportModuleError", message)
            return self._init_failed(exc, buf, "InvalidConfig", str(exc))
        finally:
            _stop_capture()
        init_ms = (time.perf_counter() - started) * 1000
        reply: dict[str, Any] = {
            "ok": True,
            "handlers": self._discover(module_name),
            "init_ms": init_ms,
            "log": "".join(buf),
        }
        if bind:
            enforce = bool(bind.get("enforce_memory", True) and header.get("enforce_memory", True))
            bound = self.bind({**bind, "enforce_memory": enforce})  # never rlimit the host
            if not bound["ok"]:
                bound["log"] = reply["log"]
                return bound
        return reply

    def _init_failed(
        self, exc: BaseException, buf: list[str], error_type: str, message: str
    ) -> dict[str, Any]:
        error = _error(exc, error_type, message)
        _log_error(buf, exc, error)
        return {"ok": False, "error": error, "log": "".join(buf)}

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
            return {
                "ok": False,
                "error": {"errorMessage": message, "errorType": "Runtime.HandlerNotFound", "stackTrace": []},
            }
        if not callable(target):
            kind = type(target).__name__
            message = f"Handler '{attr}' on module '{self.module.__name__}' is not callable (it is a {kind})"
            return {
                "ok": False,
                "error": {"errorMessage": message, "errorType": "Runtime.HandlerNotFound", "stackTrace": []},
            }
        self.fn = target
        self.is_async = inspect.iscoroutinefunction(target)
        self.function = bind
        if self.apply_environment:
            os.environ.update(bind.get("environment") or {})
        if bind.get("memory_mb") and not self.memory_limited and bind.get("enforce_memory", True):
            set_memory_limit(int(bind["memory_mb"]))
            self.memory_limited = True
        return {"ok": True}

    # -- invoke phase -----------------------------------------------------------------

    def invoke(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        assert self.fn is not None, "sandbox is not bound to a handler"
        rid = header["rid"]
        fn = self.function
        identity = header.get("identity")
        client_context = header.get("client_context")
        context = Context(
            function_name=fn["function_name"],
            invoked_function_arn=header.get("invoked_arn") or fn["arn"],
            memory_limit_in_mb=fn["memory_mb"],
            aws_request_id=rid,
            deadline_ms=header["deadline_ms"],
            log_stream_name=fn.get("log_stream", ""),
            identity=CognitoIdentity(**identity) if identity else None,
            client_context=ClientContext(**client_context) if client_context else None,
        )
        buf = _start_capture(rid)
        started = time.perf_counter()
        try:
            reply, out = self._call(self.fn, body, context, buf)
        finally:
            _stop_capture()
        reply["dur"] = (time.perf_counter() - started) * 1000
        reply["mem"] = _max_rss_mb()
        reply["log"] = "".join(buf)
        return reply, out

    def _call(
        self, fn: Callable[..., Any], body: bytes, context: Any, buf: list[str]
    ) -> tuple[dict[str, Any], bytes]:
        try:
            result = fn(_decode(body.decode()), context)
            if self.is_async or inspect.isawaitable(result):
                result = self._run_async(result)
        except MemoryError as exc:
            return self._out_of_memory(exc, context, buf), b""
        except Exception as exc:
            error = _error(exc)
            _log_error(buf, exc, error)
            return {"ok": False, "error": error}, b""
        try:
            return {"ok": True}, _dumps(result).encode()
        except MemoryError as exc:
            return self._out_of_memory(exc, context, buf), b""
        except (TypeError, ValueError, OverflowError) as exc:
            error = _error(exc, "Runtime.MarshalError", f"Unable to marshal response: {exc}")
            _log_error(buf, exc, error)
            return {"ok": False, "error": error}, b""

    def _out_of_memory(self, exc: MemoryError, context: Any, buf: list[str]) -> dict[str, Any]:
        """The handler passed its memory limit: report it and let the sandbox die."""
        limit = context.memory_limit_in_mb
        message = (
            f"RequestId: {context.aws_request_id} Error: Runtime exited with error: "
            f"out of memory (memory_mb={limit})"
        )
        buf.append(f"Memory limit of {limit} MB exceeded\n")
        return {"ok": False, "error": _error(exc, "Runtime.OutOfMemory", message), "fatal": True}

    def _run_async(self, awaitable: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return {}


def serve(sock: Any) -> None:
    """The subprocess sandbox's main loop: one frame in, one frame out, until EOF."""
    worker = Worker(process_wide=True)
    read, write = _wire.read_frame, _wire.write_frame
    while True:
        frame = read(sock)
        if frame is None:
            return
        header, body = frame
        op = header["op"]
        if op == "invoke":
            reply, out = worker.invoke(header, body)
            write(sock, reply, out)
            if reply.get("fatal"):
                os._exit(137)
        elif op == "init":
            write(sock, worker.init(header))
        elif op == "bind":
            write(sock, worker.bind(header["bind"]))
        elif op == "shutdown":
            worker.close()
            return
        else:
            write(
                sock,
                {
                    "ok": False,
                    "error": {
                        "errorType": "Runtime.Unknown",
                        "errorMessage": f"unknown op {op}",
                        "stackTrace": [],
                    },
                },
            )
