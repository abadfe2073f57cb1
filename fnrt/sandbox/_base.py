"""The sandbox protocol: what the pool needs from an execution environment.

A sandbox runs one module, bound to one function, one event at a time. Backends
(``subprocess``, ``subinterpreter``, ``inline``) implement :class:`Sandbox` and a
:class:`SandboxFactory` that creates them; the runtime picks a factory by name.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs


class SandboxDied(Exception):
    """The sandbox ended during a request. ``message`` is Lambda's wording."""

    def __init__(self, message: str, error_type: str = "Runtime.ExitError") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


class SandboxTimeout(Exception):
    """The request passed its deadline; the sandbox has been destroyed."""


@attrs.frozen
class SandboxSpec:
    """What a factory needs to create one sandbox."""

    module: str
    memory_mb: int | None = None
    environment: dict[str, str] = attrs.field(factory=dict)


class Sandbox(Protocol):
    id: str
    kind: str

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    async def request(
        self, header: dict[str, Any], body: bytes = b"", timeout: float | None = None
    ) -> tuple[dict[str, Any], bytes]:
        """Send one frame, wait for its reply.

        Raises :class:`SandboxTimeout` (after destroying the sandbox) when ``timeout``
        passes, :class:`SandboxDied` when the sandbox ends first.
        """
        ...

    def kill(self) -> None:
        """Destroy at once (timeouts, crashes, runtime close)."""
        ...

    async def close(self) -> None:
        """Retire gracefully: let it finish, then free its resources."""
        ...


class SandboxFactory(Protocol):
    kind: str
    enforces_memory: bool

    async def create(self, spec: SandboxSpec) -> Sandbox: ...

    async def aclose(self) -> None: ...
