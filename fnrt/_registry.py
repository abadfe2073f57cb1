"""The function registry: what is deployed, under which generation, with all its state.

A :class:`FunctionRecord` is the immutable description of a deployed function (handler,
configuration, ARN, generation). A :class:`FunctionEntry` holds everything that lives and
changes with that one generation: its warm-sandbox pool, its concurrency counter, its
event-invoke config. Removing a function retires its entry whole; adding it again makes a
new entry with the next generation, so nothing of the old one (a release of a slot, a
stale async config) can reach the new one.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from ._config import AsyncConfig, FunctionConfig
from ._lambda import LATEST, parse_function_ref
from .errors import FunctionNotFound
from .sandbox import DEFAULT_PASSTHROUGH, Binding, Resources, lambda_environment

if TYPE_CHECKING:
    from ._concurrency import FunctionCounter, ScalingAllowance
    from ._pool import FunctionPool

__all__ = ["FunctionEntry", "FunctionRecord", "FunctionRegistry"]

_DEFAULT_ASYNC = AsyncConfig()


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
    #: Bumped each time a function of this name is registered.
    generation: int = 0
    #: The runtime's isolation settings: the user sandboxes run as (host as root), and the
    #: host variables passed through besides the defaults.
    run_as_user: str | int | None = None
    passthrough: tuple[str, ...] = ()

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
            task_root=self.config.code_root,
            user=self.config.environment,
            log_format=self.config.log_format,
            log_level=self.config.log_level,
            log_group=self.config.log_group,
        )

    def resources(self, initialization_type: str = "on-demand") -> Resources:
        """What each of this function's sandboxes is created with."""
        return Resources(
            memory_mb=self.config.memory_mb,
            environment=self.environment(initialization_type=initialization_type),
            passthrough=(*DEFAULT_PASSTHROUGH, *self.passthrough),
            credentials=self.config.credentials,
            run_as_user=self.run_as_user,
        )

    def bind_info(self, sandbox_id: str) -> Binding:
        stream = f"{datetime.date.today():%Y/%m/%d}/[{LATEST}]{sandbox_id}"
        environment = self.environment(stream)
        return Binding(
            attr=self.attr,
            function_name=self.name,
            arn=self.arn,
            memory_mb=self.config.memory_mb,
            log_stream=stream,
            environment=environment,
            code_root=self.config.code_root,
            # as the runtime reads them: the function's own variables may set them too
            log_format=environment.get("AWS_LAMBDA_LOG_FORMAT", "Text"),
            log_level=environment.get("AWS_LAMBDA_LOG_LEVEL", ""),
            log_group=environment.get("AWS_LAMBDA_LOG_GROUP_NAME", ""),
        )


@attrs.define(eq=False)
class FunctionEntry:
    """One generation of a function and the state that lives and dies with it."""

    record: FunctionRecord
    pool: FunctionPool
    counter: FunctionCounter
    #: New execution environments allowed (Lambda's scaling rate).
    scaling: ScalingAllowance
    #: ``configure_async()``: replaces the decorator's ``async_config``.
    async_override: AsyncConfig | None = None
    #: Lambda's DeleteFunctionEventInvokeConfig ran since: ``async_override`` holds the
    #: defaults (with what that API cannot set), and the function has no config of its own.
    async_deleted: bool = False
    #: The dead-letter queue set as a function setting (Lambda's UpdateFunctionConfiguration
    #: DeadLetterConfig), apart from the event-invoke config: deleting that keeps it.
    dead_letter: str | None = None
    dead_letter_set: bool = False
    provisioning: bool = False

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def async_config(self) -> AsyncConfig:
        """The event-invoke config in force (the defaults if none was set), with the
        function's dead-letter queue when one was set on its own."""
        if self.async_override is not None:
            config = self.async_override
        else:
            config = self.record.async_config or _DEFAULT_ASYNC
        if self.dead_letter_set and config.dead_letter != self.dead_letter:
            return attrs.evolve(config, dead_letter=self.dead_letter)
        return config


def _same_account(arn: str, ref: str) -> bool:
    """Whether an ARN (or partial ARN) ``ref`` names this region's and account's function
    ``arn`` (a function of the same name elsewhere is another function)."""
    if ref.startswith("arn:"):
        return ref == arn or ref.startswith(f"{arn}:")
    head, _, rest = ref.partition(":")
    if rest.startswith("function:") and len(head) == 12 and head.isdigit():  # 123456789012:function:name
        return head == arn.split(":")[4]
    return True


class FunctionRegistry:
    """Functions by name; looked up by name, partial ARN or full ARN."""

    def __init__(self) -> None:
        self._entries: dict[str, FunctionEntry] = {}
        self._generations = itertools.count(1)

    def next_generation(self) -> int:
        return next(self._generations)

    def put(self, entry: FunctionEntry) -> FunctionEntry | None:
        """Register ``entry``; returns the entry it replaces, if any."""
        old = self._entries.get(entry.name)
        self._entries[entry.name] = entry
        return old

    def pop(self, name: str) -> FunctionEntry:
        entry = self.get(name)
        del self._entries[entry.name]
        return entry

    def lookup(self, name: str) -> FunctionEntry | None:
        """The entry for an exact function name, or ``None``."""
        return self._entries.get(name)

    def get(self, ref: str) -> FunctionEntry:
        """By name, partial ARN or full ARN; raises :class:`FunctionNotFound`."""
        entry = self._entries.get(ref)
        if entry is not None:
            return entry
        parsed = parse_function_ref(ref)
        entry = self._entries.get(parsed[0]) if parsed else None
        if entry is None or not _same_account(entry.record.arn, ref):
            raise FunctionNotFound(str(ref))
        return entry

    def records(self) -> dict[str, FunctionRecord]:
        return {name: entry.record for name, entry in self._entries.items()}

    def __iter__(self) -> Iterator[FunctionEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
