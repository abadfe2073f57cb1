"""Per-function pools of warm sandboxes: Lambda's worker manager.

A free warm sandbox is always preferred over a cold start, most recently used first, so
the least recently used ones sit at the bottom of the stack and retire after the idle TTL.
Provisioned concurrency is a floor the pool refills. A sandbox serves one event at a time:
it is either in ``idle`` or held by exactly one invocation.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import attrs

from ._clock import Clock
from ._registry import FunctionRecord
from .errors import FnrtError, FunctionTimeout, InitError, InvalidConfig, ServiceError
from .sandbox import InitReply, InitRequest, Resources, Sandbox, SandboxDied, SandboxFactory, SandboxTimeout
from .sandbox._mirror import INIT_OUTPUT
from .sandbox._protocol import factory_closed

#: How an environment that ended in its init phase is reported where no request is known
#: (a deploy, provisioned concurrency); an invocation says Lambda's ``RequestId: ... Error:``.
INIT_FAILED = "Init failed: "
#: Provisioned environments initialized at once (a pool of hundreds fills in waves).
PROVISION_AT_ONCE = max(4, 2 * (os.cpu_count() or 1))


@attrs.define(eq=False)
class Environment:
    """A sandbox as the pool sees it."""

    sandbox: Sandbox
    last_used: float
    init_ms: float | None = None  # reported (then cleared) on the first invocation
    init_log: str = ""
    invocations: int = 0
    #: Seconds of the first invocation's timeout that a retried init phase used.
    budget_used: float = 0.0
    #: The sandbox's peak memory as its last reply said: what a timeout or a crash reports.
    peak_mb: int = 0
    #: Initialized as provisioned concurrency (Lambda's provisioned environments).
    provisioned: bool = False
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


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first exception in a (nested) exception group."""
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def start_sandbox(
    factory: SandboxFactory,
    module: str,
    bind: FunctionRecord | None,
    init_timeout: float,
    initialization_type: str = "on-demand",
    resources: Resources | None = None,
) -> tuple[Sandbox, InitReply]:
    """Create a sandbox and run its init phase; on any failure the sandbox is destroyed.

    A sandbox for a function is created with its :class:`~fnrt.sandbox.Resources`
    (memory, environment), so its init phase runs under the function's configuration;
    without ``bind`` (discovery) it gets ``resources`` (default: a bare one). Raises
    :class:`~fnrt.errors.ServiceError` when no sandbox can be had."""
    if bind is not None:
        resources = bind.resources(initialization_type)
    elif resources is None:
        resources = Resources()
    try:
        sandbox = await factory.create(resources)
    except FnrtError:
        raise
    except (SandboxDied, SandboxTimeout, OSError) as exc:
        # The machinery failed, not the function: the template died or hung, fork failed.
        reason = exc.message if isinstance(exc, SandboxDied) else (str(exc) or type(exc).__name__)
        raise ServiceError(f"could not create a {factory.kind} sandbox for {module!r}: {reason}") from exc
    # Created with the function's Resources: the binding need not carry the environment again.
    binding = attrs.evolve(bind.bind_info(sandbox.id), environment={}) if bind is not None else None
    try:
        reply = await sandbox.init(InitRequest(module, binding), timeout=init_timeout)
    except (SandboxTimeout, SandboxDied) as exc:
        if factory.closed:  # killed by the runtime's close, not by its init
            sandbox.kill()
            raise factory_closed(factory.kind) from None
        if isinstance(exc, SandboxDied) and exc.service:
            raise ServiceError(f"the sandbox for {module!r} died in its init phase: {exc.message}") from None
        printed = (await output_so_far(sandbox, INIT_OUTPUT))[-4096:]
        if isinstance(exc, SandboxTimeout):
            raise InitError(
                "Sandbox.Timedout", f"Init phase timed out after {init_timeout:.2f} seconds", log_tail=printed
            ) from None
        raise InitError(exc.error_type, f"{INIT_FAILED}{exc.message}", log_tail=printed) from None
    except BaseException:
        sandbox.kill()
        raise
    if not reply.ok:
        sandbox.kill()
        raise init_error(dict(reply.error or {}), reply.log)
    return sandbox, reply


#: Seconds the host waits for what a sandbox printed before it ended without a reply.
OUTPUT_WAIT = 2.0


async def output_so_far(sandbox: Sandbox, request_id: str) -> str:
    """What an invocation (or the init phase, :data:`INIT_OUTPUT`) printed before it ended
    without a reply; never raises (a file the handler made unreadable: ``""``)."""
    try:
        return await asyncio.wait_for(sandbox.output_so_far(request_id), OUTPUT_WAIT)
    except Exception:
        return ""


class FunctionPool:
    def __init__(self, function: FunctionRecord, factory: SandboxFactory, clock: Clock) -> None:
        self.function = function
        self.factory = factory
        self.clock = clock
        self.idle: list[Environment] = []
        self.active: set[Environment] = set()  # each serving one invocation
        self.starting = 0
        self.provisioning = 0  # provisioned environments being initialized
        self.closed = False
        self.cold_starts = 0

    @property
    def busy(self) -> int:
        return len(self.active)

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.active) + self.starting

    @property
    def provisioned_size(self) -> int:
        """Provisioned environments alive or being initialized: what the floor counts
        (an on-demand environment never stands in for one)."""
        return (
            sum(1 for env in self.idle if env.provisioned and env.sandbox.alive)  # not one that died idle
            + sum(1 for env in self.active if env.provisioned)
            + self.provisioning
        )

    def take_warm(self) -> Environment | None:
        idle = self.idle
        if idle and not idle[-1].provisioned and self.function.config.provisioned_concurrency:
            # Provisioned environments serve first, as in Lambda: an on-demand one only
            # takes what spills over (and then retires when idle).
            for i in range(len(idle) - 1, -1, -1):
                env = idle[i]
                if env.provisioned and env.sandbox.alive:
                    del idle[i]
                    self.active.add(env)
                    return env
        while idle:
            env = idle.pop()
            if env.sandbox.alive:
                self.active.add(env)
                return env
        return None

    async def cold_start(
        self, invoke_timeout: float | None = None, initialization_type: str = "on-demand"
    ) -> Environment:
        """A new environment, its init phase run (bounded by ``init_timeout``, Lambda's
        10 s). For an invocation (``invoke_timeout`` given), an init phase that runs out of
        time is retried once within the function's timeout, as Lambda does: "If all three
        tasks do not complete within 10 seconds, Lambda retries the Init phase at the time
        of the first function invocation with the configured function timeout". The time
        the retry took comes off that first invocation's timeout (``budget_used``); a retry
        that runs out of time too is :class:`~fnrt.errors.FunctionTimeout`."""
        function = self.function
        self.starting += 1
        used = 0.0
        try:
            try:
                sandbox, reply = await start_sandbox(
                    self.factory, function.module, function, function.config.init_timeout, initialization_type
                )
            except InitError as exc:
                if exc.error_type != "Sandbox.Timedout" or invoke_timeout is None:
                    raise
                started = self.clock.monotonic()
                try:
                    sandbox, reply = await start_sandbox(
                        self.factory, function.module, function, invoke_timeout, initialization_type
                    )
                except InitError as again:
                    if again.error_type == "Sandbox.Timedout":
                        raise FunctionTimeout(
                            "Sandbox.Timedout",
                            f"Task timed out after {invoke_timeout:.2f} seconds",
                            log_tail=again.log_tail,  # what the init printed before
                        ) from None
                    raise
                used = self.clock.monotonic() - started
        finally:
            self.starting -= 1
        self.cold_starts += 1
        env = Environment(sandbox, self.clock.monotonic(), reply.init_ms, reply.log)
        env.budget_used = used
        env.provisioned = initialization_type == "provisioned-concurrency"
        self.active.add(env)
        return env

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
        keeping the provisioned floor: on-demand environments retire, provisioned ones
        only beyond the floor (it was lowered)."""
        now = self.clock.monotonic()
        idle = self.idle
        dead = [env for env in idle if not env.sandbox.alive]
        if dead:  # died idle (killed, its template gone): off the pool, so the floor refills
            idle[:] = [env for env in idle if env.sandbox.alive]
        if not idle or now - idle[0].last_used < ttl:
            return dead
        beyond = self.provisioned_size - self.function.config.provisioned_concurrency
        retired, kept = [], []
        for env in idle:
            if now - env.last_used < ttl or (env.provisioned and beyond <= 0):
                kept.append(env)
                continue
            if env.provisioned:
                beyond -= 1
            retired.append(env)
        idle[:] = kept
        return dead + retired

    async def provision(self) -> None:
        """Start sandboxes until the provisioned floor is met."""
        missing = self.function.config.provisioned_concurrency - self.provisioned_size
        if missing <= 0 or self.closed:
            return
        # A few at a time, not all at once: a large count (hundreds) started together is a
        # fork storm that starves the host and its callers; Lambda too allocates gradually.
        # asyncio's task group, like the runtime's own: cancellation is delivered once (an
        # anyio cancel scope here would keep re-delivering it to a shielded shutdown).
        starting = asyncio.Semaphore(PROVISION_AT_ONCE)
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(missing):
                    tg.create_task(self._provision_one(starting))
        except BaseExceptionGroup as group:  # the first failure, as it is (an InitError, say)
            raise first_leaf(group) from None

    async def _provision_one(self, starting: asyncio.Semaphore) -> None:
        async with starting:
            if self.closed or self.provisioned_size >= self.function.config.provisioned_concurrency:
                return  # closed, or the floor was lowered meanwhile
            self.provisioning += 1
            try:
                env = await self.cold_start(initialization_type="provisioned-concurrency")
            finally:
                self.provisioning -= 1
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

    @property
    def provisioned_busy(self) -> int:
        """Provisioned environments serving an invocation (ProvisionedConcurrentExecutions)."""
        return [env.provisioned for env in self.active].count(True)

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


__all__ = ["INIT_FAILED", "Environment", "FunctionPool", "FunctionRecord", "init_error", "start_sandbox"]
