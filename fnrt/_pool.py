"""Per-function pools of warm sandboxes: Lambda's worker manager.

A free warm sandbox is always preferred over a cold start, most recently used first, so
the least recently used ones sit at the bottom of the stack and retire after the idle TTL.
Provisioned concurrency is a floor the pool refills. A sandbox serves one event at a time:
it is either in ``idle`` or held by exactly one invocation.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import anyio
import attrs

from ._clock import Clock
from ._config import AsyncConfig, FunctionConfig
from .errors import InitError, InvalidConfig
from .sandbox import Sandbox, SandboxDied, SandboxFactory, SandboxSpec, SandboxTimeout


@attrs.frozen
class FunctionRecord:
    """A deployed function: where its handler lives and how it runs."""

    name: str
    module: str
    attr: str
    config: FunctionConfig
    arn: str
    sandbox_kind: str
    region: str = "us-east-1"
    extra: dict[str, Any] = attrs.field(factory=dict)
    #: ``@fnrt.handler(async_config=...)``, parsed once at registration.
    async_config: AsyncConfig | None = None

    @property
    def handler(self) -> str:
        return f"{self.module}.{self.attr}"

    def environment(self, log_stream: str) -> dict[str, str]:
        """Lambda's reserved environment variables, then the function's own."""
        env = {
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.config.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python_fnrt",
            "LAMBDA_TASK_ROOT": os.getcwd(),
            "_HANDLER": self.handler,
        }
        env.update(self.config.environment)
        return env

    def bind_info(self, sandbox_id: str) -> dict[str, Any]:
        stream = f"{datetime.date.today():%Y/%m/%d}/[$LATEST]{sandbox_id}"
        return {
            "attr": self.attr,
            "function_name": self.name,
            "arn": self.arn,
            "memory_mb": self.config.memory_mb,
            "log_stream": stream,
            "environment": self.environment(stream),
        }


@attrs.define(eq=False)
class Environment:
    """A sandbox as the pool sees it."""

    sandbox: Sandbox
    last_used: float
    init_ms: float | None = None  # reported (then cleared) on the first invocation
    init_log: str = ""
    invocations: int = 0
    created: float = attrs.field(default=attrs.Factory(lambda self: self.last_used, takes_self=True))


def init_error(error: dict[str, Any], log: str = "") -> InitError | InvalidConfig:
    if error.get("errorType") == "InvalidConfig":
        return InvalidConfig(error.get("errorMessage", ""))
    return InitError(
        error.get("errorType", "Runtime.InitError"),
        error.get("errorMessage", ""),
        error.get("stackTrace"),
        log_tail=log[-4096:],
    )


async def start_sandbox(
    factory: SandboxFactory, module: str, bind: FunctionRecord | None, init_timeout: float
) -> tuple[Sandbox, dict[str, Any]]:
    """Create a sandbox and run its init phase; on any failure the sandbox is destroyed."""
    memory = bind.config.memory_mb if bind is not None else None
    sandbox = await factory.create(SandboxSpec(module, memory))
    header: dict[str, Any] = {"op": "init", "module": module}
    if bind is not None:
        header["bind"] = bind.bind_info(sandbox.id)
    try:
        reply, _ = await sandbox.request(header, timeout=init_timeout)
    except SandboxTimeout:
        raise InitError(
            "Sandbox.Timedout", f"Init phase timed out after {init_timeout:.2f} seconds"
        ) from None
    except SandboxDied as exc:
        raise InitError(exc.error_type, f"Init failed: {exc.message}") from None
    except BaseException:
        sandbox.kill()
        raise
    if not reply.get("ok"):
        sandbox.kill()
        raise init_error(reply.get("error", {}), reply.get("log", ""))
    return sandbox, reply


class FunctionPool:
    def __init__(self, function: FunctionRecord, factory: SandboxFactory, clock: Clock) -> None:
        self.function = function
        self.factory = factory
        self.clock = clock
        self.idle: list[Environment] = []
        self.active: set[Environment] = set()  # each serving one invocation
        self.starting = 0
        self.closed = False
        self.cold_starts = 0

    @property
    def busy(self) -> int:
        return len(self.active)

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.active) + self.starting

    def take_warm(self) -> Environment | None:
        idle = self.idle
        while idle:
            env = idle.pop()
            if env.sandbox.alive:
                self.active.add(env)
                return env
        return None

    async def cold_start(self) -> Environment:
        self.starting += 1
        try:
            sandbox, reply = await start_sandbox(
                self.factory, self.function.module, self.function, self.function.config.init_timeout
            )
        finally:
            self.starting -= 1
        self.cold_starts += 1
        env = Environment(sandbox, self.clock.monotonic(), reply.get("init_ms"), reply.get("log", ""))
        self.active.add(env)
        return env

    def adopt(self, sandbox: Sandbox, init_ms: float | None, init_log: str) -> None:
        """Take a sandbox initialized elsewhere (deploy's discovery sandbox) as warm."""
        self.cold_starts += 1
        self.idle.append(Environment(sandbox, self.clock.monotonic(), init_ms, init_log))

    def give_back(self, env: Environment) -> None:
        self.active.discard(env)
        if self.closed or not env.sandbox.alive:
            env.sandbox.kill()
            return
        env.last_used = self.clock.monotonic()
        self.idle.append(env)

    def discard(self, env: Environment) -> None:
        self.active.discard(env)
        env.sandbox.kill()

    def retire_idle(self, ttl: float) -> list[Environment]:
        """Take the sandboxes idle for longer than ``ttl`` off the pool (oldest first),
        keeping the provisioned floor."""
        now = self.clock.monotonic()
        keep = self.function.config.provisioned_concurrency
        retired = []
        while self.idle and self.size > keep and now - self.idle[0].last_used >= ttl:
            retired.append(self.idle.pop(0))
        return retired

    async def provision(self) -> None:
        """Start sandboxes until the provisioned floor is met."""
        missing = self.function.config.provisioned_concurrency - self.size
        if missing <= 0 or self.closed:
            return
        async with anyio.create_task_group() as tg:
            for _ in range(missing):
                tg.start_soon(self._provision_one)

    async def _provision_one(self) -> None:
        env = await self.cold_start()
        self.give_back(env)

    def drain(self) -> list[Environment]:
        """Close the pool: idle sandboxes are returned for closing, busy ones die on return."""
        self.closed = True
        idle, self.idle = self.idle, []
        return idle

    def kill_all(self) -> None:
        """Runtime close: destroy every sandbox, the busy ones too (their callers get
        :class:`~fnrt.errors.RuntimeClosed`)."""
        for env in [*self.drain(), *self.active]:
            env.sandbox.kill()

    def sandboxes(self) -> list[dict[str, Any]]:
        """Each live sandbox, busy ones first: its age and idle time (s), invocations served."""
        now = self.clock.monotonic()
        busy = [(e, "busy", None) for e in self.active]
        warm = [(e, "warm", now - e.last_used) for e in reversed(self.idle)]
        return [
            {
                "id": e.sandbox.id,
                "pid": e.sandbox.pid,
                "state": state,
                "age_s": now - e.created,
                "idle_s": idle,
                "invocations": e.invocations,
            }
            for e, state, idle in busy + warm
        ]

    def stats(self) -> dict[str, int]:
        return {
            "warm": len(self.idle),
            "busy": self.busy,
            "starting": self.starting,
            "cold_starts": self.cold_starts,
            "provisioned_concurrency": self.function.config.provisioned_concurrency,
        }
