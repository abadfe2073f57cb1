"""Execution environments behind one protocol, chosen by name."""

from __future__ import annotations

from .._clock import Clock
from ._base import Sandbox, SandboxDied, SandboxFactory, SandboxSpec, SandboxTimeout
from ._inline import InlineFactory
from ._subprocess import SubprocessFactory


def make_factory(kind: str, clock: Clock) -> SandboxFactory:
    if kind == "subprocess":
        return SubprocessFactory(clock)
    if kind == "inline":
        return InlineFactory(clock)
    if kind == "subinterpreter":
        from ._subinterpreter import SubinterpreterFactory  # Python >= 3.13

        return SubinterpreterFactory(clock)
    raise ValueError(f"unknown sandbox kind {kind!r}")


__all__ = [
    "Sandbox",
    "SandboxDied",
    "SandboxFactory",
    "SandboxSpec",
    "SandboxTimeout",
    "make_factory",
]
