"""The sandbox contract: typed messages, the :class:`Sandbox` and :class:`SandboxFactory`
protocols, and the one place where op names and header keys are spelled.

A sandbox runs one module, bound to one function, one event at a time. The host talks to
it with two requests:

``init`` (:class:`InitRequest` -> :class:`InitReply`)
    Import the module (Lambda's init phase) and, with a :class:`Binding`, attach the
    environment to one function. ``init`` on a sandbox that has already imported the module
    only binds (deploy's discovery sandbox is bound this way).
``invoke`` (:class:`InvokeRequest` -> :class:`InvokeReply`)
    Run the bound handler on one event. Every reply names the request it answers; a reply
    for another request, or a frame while no request is outstanding, destroys the sandbox.

What a sandbox gets from the host when it is created is :class:`Resources` (memory, the
environment it starts from, its temporary directory, the user it runs as). Each factory
says which of those it *enforces* (:data:`ENFORCEMENTS`); the rest are best effort or
ignored, and :data:`KINDS` is the one registry of sandbox kinds that config validation and
the CLI read.

What each kind isolates (``factory.enforces``):

==================  ==========  ==============  ===========
                    subprocess  subinterpreter  inline
==================  ==========  ==============  ===========
memory limit        yes         no              no
timeout kills       yes         no (quarantine) no (abandon)
own process/group   yes         no              no
clean environment   yes         no              no
private TMPDIR, TZ  yes         no              no
another user id     yes (root)  no              no
==================  ==========  ==============  ===========

None of them is a security boundary against hostile code: a subprocess sandbox shares the
host's file system, network and PID namespace and runs as the host's user unless
``run_as_user`` is set (and a same-user process can read the host's ``/proc/<pid>/environ``).
Use a container or another user id for code you do not trust.

Errors: a sandbox's ``init``/``invoke`` raise the private :class:`SandboxDied` and
:class:`SandboxTimeout`, which only the pool and the invoker see and translate into
Lambda's function errors (``Runtime.ExitError``, ``Sandbox.Timedout``). Anything that is
not the handler's doing (the template is gone or wedged, a spawn timed out) is a public
:class:`fnrt.errors.ServiceError` from ``factory.create``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from .._clock import Clock, Deadlines
from ..errors import RuntimeClosed

# -- the wire vocabulary: op names and header keys, spelled once ------------------------

OP = "op"
OP_INIT = "init"
OP_INVOKE = "invoke"
OP_SHUTDOWN = "shutdown"

# request keys
K_ID = "id"  # invoke: the request id (also in the reply: the request it answers)
K_DEADLINE = "deadline_ms"
K_CLIENT_CONTEXT = "client_context"
K_IDENTITY = "identity"
K_INVOKED_ARN = "invoked_arn"
K_MODULE = "module"
K_BIND = "bind"
K_ENFORCE_MEMORY = "enforce_memory"
# reply keys
K_OK = "ok"
K_DURATION = "dur"
K_MEMORY = "mem"
K_LOG = "log"
K_FATAL = "fatal"
K_ERROR = "error"
K_HANDLERS = "handlers"
K_INIT_MS = "init_ms"

_INVOKE_HEADER = f'{{"{OP}":"{OP_INVOKE}","{K_ID}":"%s","{K_DEADLINE}":%d}}'.encode()
_plain_id = re.compile(r"[A-Za-z0-9._:\-]{1,200}\Z").match  # needs no JSON escaping

#: What a factory can promise about its sandboxes.
ENFORCEMENTS = frozenset(
    {
        "memory",  # memory_mb is a hard limit (rlimit); over it: Runtime.OutOfMemory
        "timeout-kill",  # a timed-out handler is stopped at once, not abandoned
        "process-isolation",  # own process (and process group): a crash or os._exit is contained
        "env-isolation",  # starts from Resources.environment only; own TMPDIR; TZ applies
        "run-as-user",  # Resources.run_as_user is honoured
    }
)

#: Host variables a sandbox inherits by default (everything else of the host's environment
#: is dropped: Lambda starts from a clean one). ``PYTHONPATH`` is always set (to the host's
#: import path) so the sandbox imports modules the way the host does.
DEFAULT_PASSTHROUGH: tuple[str, ...] = ("PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "PYTHONHOME")

#: The host's working directory when fnrt was imported: what ``''`` on ``sys.path`` and
#: ``LAMBDA_TASK_ROOT`` mean for every sandbox. Asked once, because the working directory
#: is the process's: a handler in a subinterpreter sandbox that calls ``os.chdir`` (a
#: common Lambda idiom) must not move the code root of the sandboxes created after it.
HOST_CWD = os.getcwd()


def import_path() -> list[str]:
    """The host's ``sys.path``, each entry absolute (``''`` is :data:`HOST_CWD`)."""
    return [entry or HOST_CWD for entry in sys.path]

#: Captured output kept per invocation (the tail; the rest streams to the host's stderr).
DEFAULT_LOG_CAPTURE_BYTES = 64 * 1024


def _str_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


@attrs.frozen
class Resources:
    """What a sandbox is given when it is created (``factory.create(resources)``).

    ``environment`` is the complete set of variables the function's code should see
    (Lambda's defined variables and the function's own; see :func:`lambda_environment`),
    on top of the host variables named in ``passthrough``. ``credentials`` become
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, as an execution
    role's do; the host's own are never passed. ``tmp_dir`` is the parent of the sandbox's
    private temporary directory (default: the host's). ``run_as_user`` (a name or uid)
    runs the sandbox as that user when the host runs as root.
    """

    memory_mb: int | None = None
    environment: Mapping[str, str] = attrs.field(factory=dict, converter=_str_mapping)
    passthrough: tuple[str, ...] = DEFAULT_PASSTHROUGH
    credentials: Mapping[str, str] | None = None
    tmp_dir: str | None = None
    run_as_user: str | int | None = None
    log_capture_bytes: int = DEFAULT_LOG_CAPTURE_BYTES


@attrs.frozen
class Binding:
    """Which function an environment serves (what ``context`` reports)."""

    attr: str
    function_name: str
    arn: str
    memory_mb: int
    log_stream: str = ""
    #: Applied at bind, over what the sandbox was created with (a sandbox created before
    #: its function was known, like deploy's discovery sandbox).
    environment: Mapping[str, str] = attrs.field(factory=dict, converter=_str_mapping)
    #: A directory put first on ``sys.path`` before the module is imported (the
    #: function's unpacked deployment package).
    code_root: str | None = None
    #: How Lambda's Python runtime sets up ``logging`` (``AWS_LAMBDA_LOG_FORMAT``,
    #: ``AWS_LAMBDA_LOG_LEVEL``) and the context's log group: given apart from the
    #: environment, which a subinterpreter cannot apply and a created sandbox already has.
    log_format: str = "Text"
    log_level: str = ""
    log_group: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "attr": self.attr,
            "function_name": self.function_name,
            "arn": self.arn,
            "memory_mb": self.memory_mb,
            "log_stream": self.log_stream,
            "environment": dict(self.environment),
            "code_root": self.code_root,
            "log_format": self.log_format,
            "log_level": self.log_level,
            "log_group": self.log_group,
        }


@attrs.frozen
class HandlerInfo:
    """One ``@fnrt.handler`` found in a module at init."""

    name: str
    attr: str
    config: Mapping[str, Any]
    extra: Mapping[str, Any]


@attrs.frozen
class InitRequest:
    module: str
    binding: Binding | None = None

    def to_wire(self) -> dict[str, Any]:
        header: dict[str, Any] = {OP: OP_INIT, K_MODULE: self.module}
        if self.binding is not None:
            header[K_BIND] = self.binding.to_wire()
        return header


@attrs.frozen
class InitReply:
    ok: bool
    handlers: tuple[HandlerInfo, ...] = ()
    init_ms: float | None = None
    log: str = ""
    #: Lambda's error shape: ``errorType``, ``errorMessage``, ``stackTrace``.
    error: Mapping[str, Any] | None = None

    @classmethod
    def from_wire(cls, header: Mapping[str, Any]) -> InitReply:
        handlers = tuple(
            HandlerInfo(h["name"], h["attr"], h.get("config") or {}, h.get("extra") or {})
            for h in header.get(K_HANDLERS) or ()
        )
        return cls(
            ok=bool(header.get(K_OK)),
            handlers=handlers,
            init_ms=header.get(K_INIT_MS),
            log=header.get(K_LOG) or "",
            error=header.get(K_ERROR),
        )


# The two messages of the warm path are ``attrs.define``, not ``frozen``: nothing changes
# them once built, and a frozen class costs about a microsecond more to build (each field
# set through ``object.__setattr__``), twice per invocation.


@attrs.define
class InvokeRequest:
    request_id: str
    deadline_ms: int
    body: bytes = b""
    client_context: Mapping[str, Any] | None = None
    identity: Mapping[str, Any] | None = None
    #: The (qualified) ARN the caller invoked, for ``context.invoked_function_arn``.
    invoked_arn: str | None = None

    def header_bytes(self) -> bytes:
        """The frame header (JSON), formatted directly in the common case (the warm path)."""
        if (
            self.client_context is None
            and self.identity is None
            and self.invoked_arn is None
            and _plain_id(self.request_id)
        ):
            return _INVOKE_HEADER % (self.request_id.encode(), int(self.deadline_ms))
        return json.dumps(self.to_wire(), separators=(",", ":")).encode()

    def to_wire(self) -> dict[str, Any]:
        header: dict[str, Any] = {OP: OP_INVOKE, K_ID: self.request_id, K_DEADLINE: self.deadline_ms}
        if self.client_context is not None:
            header[K_CLIENT_CONTEXT] = self.client_context
        if self.identity is not None:
            header[K_IDENTITY] = self.identity
        if self.invoked_arn is not None:
            header[K_INVOKED_ARN] = self.invoked_arn
        return header


@attrs.define
class InvokeReply:
    #: The request this answers (the sandbox host checks it against the one it sent).
    request_id: str
    ok: bool
    duration_ms: float = 0.0
    #: The sandbox's peak resident memory (its ``ru_maxrss``), in MB.
    max_memory_mb: int = 0
    log: str = ""
    #: The environment cannot serve again (out of memory): it is destroyed.
    fatal: bool = False
    error: Mapping[str, Any] | None = None
    body: bytes = b""

    @classmethod
    def from_wire(cls, header: Mapping[str, Any], body: bytes) -> InvokeReply:
        return cls(
            header.get(K_ID, ""),
            bool(header.get(K_OK)),
            header.get(K_DURATION, 0.0),
            header.get(K_MEMORY, 0),
            header.get(K_LOG, ""),
            bool(header.get(K_FATAL)),
            header.get(K_ERROR),
            body,
        )


# -- private errors: the pool and the invoker translate them ----------------------------


class SandboxDied(Exception):
    """The sandbox ended (or was destroyed) during a request: crash, signal, ``os._exit``,
    a reply for another request, garbage on its socket. ``message`` is Lambda's wording,
    ``error_type`` its type (``Runtime.ExitError``). Private: callers see a function error,
    or, when ``service`` (the sandbox died because fnrt's machinery did: its template
    process went), :class:`fnrt.errors.ServiceError`."""

    def __init__(self, message: str, error_type: str = "Runtime.ExitError", *, service: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.service = service


class SandboxTimeout(Exception):
    """The request passed its deadline; the sandbox has been destroyed (or, for a kind that
    cannot stop a thread, quarantined). Private: callers see ``Sandbox.Timedout``."""


def request_deadlines(clock: Clock) -> Deadlines:
    """The deadlines of a factory's requests: each fails with :class:`SandboxTimeout` when
    its timeout passes on ``clock``.

    Every sandbox kind waits for its reply this way: ``entry = deadlines.add(fut, timeout)``
    before the request, ``deadlines.discard(entry)`` once it is over. One timer on the
    runtime's clock for all of a factory's requests, not ``wait_for``: no task and no timer
    per request on the hot path, and tests move time with ``FakeClock``.
    """
    return Deadlines(clock, SandboxTimeout)


# -- the protocols ------------------------------------------------------------------------


class Sandbox(Protocol):
    id: str
    kind: str

    @property
    def stopped(self) -> asyncio.Future[None] | None:
        """``None``, or done once the sandbox runs no user code any more. A kind that cannot
        stop a handler at once (a subinterpreter thread) keeps it pending after a timeout,
        and the runtime keeps the function's concurrency slot until it is done."""
        ...

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    async def init(self, request: InitRequest, timeout: float | None = None) -> InitReply:
        """Run the init phase (or only bind, if the module is already imported).

        Raises :class:`SandboxTimeout` (after destroying the sandbox) when ``timeout``
        passes, :class:`SandboxDied` when the sandbox ends first.
        """
        ...

    async def invoke(self, request: InvokeRequest, timeout: float | None = None) -> InvokeReply:
        """Run the handler on one event; same errors as :meth:`init`."""
        ...

    def kill(self) -> None:
        """Destroy at once (timeouts, crashes, runtime close), with everything it started."""
        ...

    async def output_so_far(self, request_id: str) -> str:
        """What invocation ``request_id`` printed before it ended without a reply (timed
        out, or the sandbox died); ``""`` when the kind cannot tell. Asked once, at once."""
        ...

    async def close(self) -> None:
        """Retire gracefully: let it finish, then free its resources."""
        ...


class SandboxFactory(Protocol):
    kind: str
    #: What this kind guarantees, a subset of :data:`ENFORCEMENTS`.
    enforces: frozenset[str]
    #: Set by :meth:`aclose`; from then on nothing new starts.
    closed: bool

    async def create(self, resources: Resources) -> Sandbox:
        """A new sandbox, not yet initialized. Raises :class:`fnrt.errors.ServiceError`
        (within the factory's spawn timeout) when it cannot be created, and
        :class:`fnrt.errors.RuntimeClosed` once :meth:`aclose` has begun (also for a
        create that was under way then: its sandbox is destroyed, never handed out)."""
        ...

    async def aclose(self) -> None:
        """Destroy every sandbox this factory made, and anything it was starting."""
        ...


def factory_closed(kind: str) -> RuntimeClosed:
    """What a factory raises from :meth:`SandboxFactory.create` once it is closed."""
    return RuntimeClosed(f"the runtime closed while a sandbox was starting ({kind})")


# -- the registry of kinds ----------------------------------------------------------------


def _always() -> str | None:
    return None


def _needs_313() -> str | None:
    version = (sys.version_info.major, sys.version_info.minor)
    if version < (3, 13):
        return (
            "sandbox='subinterpreter' needs Python 3.13 or newer (this is "
            f"{sys.version_info.major}.{sys.version_info.minor}); use sandbox='subprocess'"
        )
    return None


def _load_subprocess() -> Callable[..., SandboxFactory]:
    from ._subprocess import SubprocessFactory

    return SubprocessFactory


def _load_subinterpreter() -> Callable[..., SandboxFactory]:
    from ._subinterpreter import SubinterpreterFactory

    return SubinterpreterFactory


def _load_inline() -> Callable[..., SandboxFactory]:
    from ._inline import InlineFactory

    return InlineFactory


@attrs.frozen
class Kind:
    """One sandbox kind: how to load its factory and whether this interpreter can run it."""

    name: str
    load: Callable[[], Callable[..., SandboxFactory]]
    #: ``None`` when usable here, else why not (a sentence for the user).
    unavailable: Callable[[], str | None] = _always
    summary: str = ""


KINDS: Mapping[str, Kind] = {
    "subprocess": Kind(
        "subprocess", _load_subprocess, summary="forked process per sandbox; killable, memory-limited"
    ),
    "subinterpreter": Kind(
        "subinterpreter", _load_subinterpreter, _needs_313, "isolated interpreter in the host process"
    ),
    "inline": Kind("inline", _load_inline, summary="a host thread; not isolated (debugging, tests)"),
}


def make_factory(kind: str, clock: Clock, **options: Any) -> SandboxFactory:
    """The factory for ``kind`` (a name in :data:`KINDS`)."""
    entry = KINDS.get(kind)
    if entry is None:
        raise ValueError(f"unknown sandbox kind {kind!r}; known: {', '.join(KINDS)}")
    reason = entry.unavailable()
    if reason is not None:
        raise ValueError(reason)
    return entry.load()(clock, **options)


# -- Lambda's defined runtime environment -------------------------------------------------


def lambda_environment(
    *,
    function_name: str,
    memory_mb: int,
    region: str,
    handler: str,
    log_stream: str = "",
    version: str = "$LATEST",
    initialization_type: str = "on-demand",
    task_root: str | None = None,
    user: Mapping[str, str] | None = None,
    log_format: str = "Text",
    log_level: str | None = None,
    log_group: str | None = None,
) -> dict[str, str]:
    """Lambda's "defined runtime environment variables" for one function, then its own.

    Values follow Lambda's table; the paths (``LAMBDA_TASK_ROOT``, ``LAMBDA_RUNTIME_DIR``)
    are this host's. ``AWS_LAMBDA_RUNTIME_API`` names Lambda's usual address; no Runtime API
    server listens there (fnrt's sandboxes speak their own protocol). ``PATH``,
    ``LD_LIBRARY_PATH`` and ``PYTHONPATH`` come from the host (see :data:`DEFAULT_PASSTHROUGH`),
    ``_X_AMZN_TRACE_ID`` is not set, and credentials only through ``Resources.credentials``.
    ``AWS_LAMBDA_LOG_FORMAT`` is the function's log format and, with JSON,
    ``AWS_LAMBDA_LOG_LEVEL`` its application log level (what Lambda's runtime reads).
    """
    env = {
        "_HANDLER": handler,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "AWS_LAMBDA_INITIALIZATION_TYPE": initialization_type,
        "AWS_LAMBDA_LOG_FORMAT": log_format,
        "AWS_LAMBDA_LOG_GROUP_NAME": log_group or f"/aws/lambda/{function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
        "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
        "LAMBDA_TASK_ROOT": task_root or HOST_CWD,
        "LAMBDA_RUNTIME_DIR": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
    }
    if log_level:
        env["AWS_LAMBDA_LOG_LEVEL"] = log_level
    env.update(user or {})
    return env


#: Set in every sandbox that isolates its environment, even with no function bound yet.
RUNTIME_CONSTANTS = {"LANG": "en_US.UTF-8", "TZ": ":UTC"}

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def sandbox_environment(resources: Resources, host: Mapping[str, str], pythonpath: str) -> dict[str, str]:
    """The complete environment a sandbox that isolates its environment starts from."""
    env = {name: host[name] for name in resources.passthrough if name in host}
    env["PYTHONPATH"] = pythonpath
    env.update(RUNTIME_CONSTANTS)
    env.update(resources.environment)
    if resources.credentials:
        for key in CREDENTIAL_KEYS:
            if resources.credentials.get(key):
                env[key] = str(resources.credentials[key])
    return env
