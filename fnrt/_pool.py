"""Per-function pools of warm sandboxes: Lambda's worker manager.

A free warm sandbox is always preferred over a cold start, most recently used first, so
the least recently used ones sit at the bottom of the stack and retire after the idle TTL.
Provisioned concurrency is a floor the pool refills. A sandbox serves one event at a time:
it is either in ``idle`` or held by exactly one invocation.
"""

from __future__ import annotations

import datetime
from typing import Any

import anyio
import attrs

from ._clock import Clock
from ._config import AsyncConfig, FunctionConfig
from .errors import InitError, InvalidConfig
from .sandbox import (
    Binding,
    InitReply,
    InitRequest,
    Resources,
    Sandbox,
    SandboxDied,
    SandboxFactory,
    SandboxTimeout,
    lambda_environment,
)


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

    def environment(self, log_stream: str = "", initialization_type: str = "on-demand") -> dict[str, str]:
        """Lambda's defined runtime environment variables, then the function's own."""
        return lambda_environment(
            function_name=self.name,
            memory_mb=self.config.memory_mb,
            region=self.region,
            handler=self.handler,
            log_stream=log_stream,
            initialization_type=initialization_type,
            user=self.config.environment,
        )

    def resources(self, initialization_type: str = "on-demand") -> Resources:
        """What each of this function's sandboxes is created with."""
        return Resources(
            memory_mb=self.config.memory_mb,
            environment=self.environment(initialization_type=initialization_type),
        )

    def bind_info(self, sandbox_id: str) -> Binding:
        stream = f"{datetime.date.today():%Y/%m/%d}/[$LATEST]{sandbox_id}"
        return Binding(
            attr=self.attr,
            function_name=self.name,
            arn=self.arn,
            memory_mb=self.config.memory_mb,
            log_stream=stream,
            environment=self.environment(stream),
        )


@attrs.define(eq=False)
class Environment:
    """A sandbox as the pool sees it."""

    sandbox: Sandbox
    last_used: float
    init_ms: float | None = None  # reported (then cleared) on the first invocation
    init_log: str = ""
    invocations: int = 0


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
    factory: SandboxFactory,
    module: str,
    bind: FunctionRecord | None,
    init_timeout: float,
    initialization_type: str = "on-demand",
) -> tuple[Sandbox, InitReply]:
    """Create a sandbox and run its init phase; on any failure the sandbox is destroyed.

    ``factory.create`` raises :class:`~fnrt.errors.ServiceError` when no sandbox can be had."""
    resources = bind.resources(initialization_type) if bind is not None else Resources()
    sandbox = await factory.create(resources)
    # Created with the function's Resources: the binding need not carry the environment again.
    binding = attrs.evolve(bind.bind_info(sandbox.id), environment={}) if bind is not None else None
    request = InitRequest(module, binding)
    try:
        reply = await sandbox.init(request, timeout=init_timeout)
    except SandboxTimeout:
        raise InitError(
            "Sandbox.Timedout", f"Init phase timed out after {init_timeout:.2f} seconds"
        ) from None
    except SandboxDied as exc:
        raise InitError(exc.error_type, f"Init failed: {exc.message}") from None
    except BaseException:
        sandbox.kill()
        raise
    if not reply.ok:
        sandbox.kill()
        raise init_error(dict(reply.error or {}), reply.log)
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

    async def cold_start(self, initialization_type: str = "on-demand") -> Environment:
        self.starting += 1
        try:
            sandbox, reply = await start_sandbox(
                self.factory,
                self.function.module,
                self.function,
                self.function.config.init_timeout,
                initialization_type,
            )
        finally:
            self.starting -= 1
        self.cold_starts += 1
        env = Environment(sandbox, self.clock.monotonic(), reply.init_ms, reply.log)
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
        env = await self.cold_start("provisioned-concurrency")
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

    def stats(self) -> dict[str, int]:
        return {
            "warm": len(self.idle),
            "busy": self.busy,
            "starting": self.starting,
            "cold_starts": self.cold_starts,
            "provisioned_concurrency": self.function.config.provisioned_concurrency,
        }
