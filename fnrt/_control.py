"""Lambda's control plane on the runtime: change a function's configuration, its reserved
and provisioned concurrency and its event-invoke config while it runs.

A change of what the code runs with (timeout, memory, environment, sandbox) registers a new
generation: new invocations get environments initialized with it, the old ones finish what
they run and retire. A change of concurrency amends the generation in place. The HTTP face
(``fnrt._http_control``) maps Lambda's REST API onto these methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ._config import AsyncConfig, FunctionConfig, RuntimeConfig
from ._handler import parse_reference
from ._registry import FunctionEntry, FunctionRecord, FunctionRegistry
from .errors import InvalidConfig

if TYPE_CHECKING:
    from ._concurrency import ConcurrencyLimiter
    from ._supervise import Supervisor

__all__ = ["ControlPlane"]


class ControlPlane:
    """Mixed into :class:`~fnrt.Runtime`: what it needs of the runtime is declared here."""

    config: RuntimeConfig
    _registry: FunctionRegistry
    _limiter: ConcurrencyLimiter
    _supervisor: Supervisor
    _log: Any

    if TYPE_CHECKING:

        def _check_running(self) -> None: ...
        async def _install(
            self, records: list[FunctionRecord], replacing: FunctionEntry | None = None
        ) -> None: ...
        async def _replenish(self, entry: FunctionEntry) -> None: ...
        def async_config(self, name: str) -> AsyncConfig: ...

    def _amend(self, entry: FunctionEntry, **changes: Any) -> FunctionRecord:
        """Change settings that do not touch the code or its environment (concurrency) in
        place: same generation, same sandboxes."""
        config = FunctionConfig.from_kwargs({**entry.record.config.to_dict(), **changes})
        record = attrs.evolve(entry.record, config=config)
        entry.record = record
        entry.pool.function = record
        return record

    # -- the control plane (Lambda's function configuration APIs) -----------------------

    async def update_function_configuration(self, name: str, **changes: Any) -> FunctionRecord:
        """Lambda's ``UpdateFunctionConfiguration``: ``timeout``, ``memory_mb``,
        ``environment``, ``description``, ``init_timeout``, ``sandbox``, ``handler``
        (Lambda's ``Handler``: ``"module.function"`` or ``"module:function"``),
        ``code_root`` (``UpdateFunctionCode``) and the logging controls (``log_format``,
        ``application_log_level``, ``system_log_level``, ``log_group``). New invocations
        get environments initialized with the new configuration; environments of the old
        one finish what they run and retire."""
        self._check_running()
        entry = self._registry.get(name)
        allowed = {
            "timeout", "memory_mb", "environment", "description", "init_timeout", "sandbox", "code_root",
            "handler", "log_format", "application_log_level", "system_log_level", "log_group",
        }  # fmt: skip
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise InvalidConfig(
                f"cannot update {', '.join(unknown)} here; updatable: {', '.join(sorted(allowed))} "
                "(concurrency has its own calls)"
            )
        current = entry.record
        module, attr, code = current.module, current.attr, []
        if "handler" in changes:
            changes = dict(changes)
            module, attr = parse_reference(changes.pop("handler"))
            code = ["handler"]
        if changes.get("log_format", "JSON") != "JSON":  # back to Text: the levels go with JSON
            changes = dict(changes)
            for key in ("application_log_level", "system_log_level"):
                changes.setdefault(key, None)
        config = FunctionConfig.from_kwargs({**current.config.to_dict(), **changes})
        if config.code_root is not None and (config.sandbox or self.config.sandbox) == "inline":
            raise InvalidConfig("code_root needs a subprocess or subinterpreter sandbox, not inline")
        record = attrs.evolve(
            entry.record,
            config=config,
            sandbox_kind=config.sandbox or self.config.sandbox,
            generation=self._registry.next_generation(),
            module=module,
            attr=attr,
        )
        await self._install([record], replacing=entry)
        record = self._registry.get(record.name).record  # with the concurrency set meanwhile
        self._log.info(
            "function configuration updated", function=record.name, changed=sorted([*changes, *code])
        )
        return record

    def put_function_concurrency(self, name: str, reserved: int) -> FunctionRecord:
        """Lambda's ``PutFunctionConcurrency``: reserve ``reserved`` of the account's
        concurrency for ``name`` (0 throttles every call). Calls in flight are kept."""
        self._check_running()
        entry = self._registry.get(name)
        if reserved is None:  # None is "unreserved" in a config; this call sets a number
            raise InvalidConfig(
                "reserved concurrency must be a number from 0; delete_function_concurrency() unreserves"
            )
        FunctionConfig(reserved_concurrency=reserved)  # validates the value
        if entry.record.config.provisioned_concurrency > reserved:
            raise InvalidConfig(
                f"reserved concurrency {reserved} is below the provisioned concurrency "
                f"{entry.record.config.provisioned_concurrency}"
            )
        self._limiter.check_reservations({entry.name: reserved})
        record = self._amend(entry, reserved_concurrency=reserved)
        self._limiter.set_reserved(entry.counter, reserved)
        return record

    def delete_function_concurrency(self, name: str) -> FunctionRecord:
        """Lambda's ``DeleteFunctionConcurrency``: back to the shared pool."""
        self._check_running()
        entry = self._registry.get(name)
        record = self._amend(entry, reserved_concurrency=None)
        self._limiter.set_reserved(entry.counter, None)
        return record

    def put_provisioned_concurrency(self, name: str, count: int) -> FunctionRecord:
        """Lambda's ``PutProvisionedConcurrencyConfig``: keep ``count`` environments
        initialized. Returns at once; :meth:`provisioned_concurrency` tells the status."""
        self._check_running()
        entry = self._registry.get(name)
        FunctionConfig(provisioned_concurrency=count)  # validates the value
        self._limiter.check_provisioned(entry.name, count, entry.record.config.reserved_concurrency)
        record = self._amend(entry, provisioned_concurrency=count)
        if not entry.provisioning:
            entry.provisioning = True
            self._supervisor.spawn(self._replenish(entry), name=f"provision:{entry.name}")
        return record

    def delete_provisioned_concurrency(self, name: str) -> FunctionRecord:
        """Lambda's ``DeleteProvisionedConcurrencyConfig``: extra environments retire as
        idle ones do."""
        self._check_running()
        return self._amend(self._registry.get(name), provisioned_concurrency=0)

    def provisioned_concurrency(self, name: str) -> dict[str, Any]:
        """Lambda's ``GetProvisionedConcurrencyConfig``: requested, allocated, available
        and the status (``IN_PROGRESS``, ``READY``, ``FAILED``)."""
        entry = self._registry.get(name)
        requested = entry.record.config.provisioned_concurrency
        pool = entry.pool
        # Provisioned environments only: on-demand ones (spill-over) never count.
        allocated = min(requested, pool.provisioned_size - pool.provisioning)
        available = min(requested, sum(1 for env in pool.idle if env.provisioned and env.sandbox.alive))
        return {
            "RequestedProvisionedConcurrentExecutions": requested,
            "AllocatedProvisionedConcurrentExecutions": allocated,
            "AvailableProvisionedConcurrentExecutions": available,
            "Status": "READY"
            if allocated >= requested
            else ("IN_PROGRESS" if entry.provisioning else "FAILED"),
        }

    def has_async_config(self, name: str) -> bool:
        """Whether ``name`` has an event-invoke config of its own (set by
        :meth:`configure_async` or ``@fnrt.handler(async_config=...)``), not the defaults."""
        entry = self._registry.get(name)
        if entry.async_deleted:
            return False
        return entry.async_override is not None or entry.record.async_config is not None

    def delete_async_config(self, name: str) -> None:
        """Lambda's ``DeleteFunctionEventInvokeConfig``: the function has no event-invoke
        config any more, the decorator's included, so Lambda's defaults apply (retries,
        event age, no destinations). fnrt's ``retry_delays`` and the dead-letter queue,
        which that API cannot set, stay as they were."""
        entry = self._registry.get(name)
        current = entry.async_override or entry.record.async_config or AsyncConfig()
        entry.async_override = AsyncConfig(retry_delays=current.retry_delays, dead_letter=current.dead_letter)
        entry.async_deleted = True

    def account_settings(self) -> dict[str, Any]:
        """Lambda's ``GetAccountSettings``: the limits and what is in use."""
        stats = self._limiter.stats()
        return {
            "AccountLimit": {
                "ConcurrentExecutions": stats["limit"],
                "UnreservedConcurrentExecutions": stats["unreserved_pool"],
                "CodeSizeUnzipped": 262_144_000,
                "CodeSizeZipped": 52_428_800,
                "TotalCodeSize": 80_530_636_800,
            },
            "AccountUsage": {"FunctionCount": len(self._registry), "TotalCodeSize": 0},
        }
