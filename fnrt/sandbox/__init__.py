"""Execution environments behind one protocol, chosen by name (see :data:`KINDS`)."""

from __future__ import annotations

from ._protocol import (
    DEFAULT_PASSTHROUGH,
    ENFORCEMENTS,
    KINDS,
    Binding,
    HandlerInfo,
    InitReply,
    InitRequest,
    InvokeReply,
    InvokeRequest,
    Kind,
    Resources,
    Sandbox,
    SandboxDied,
    SandboxFactory,
    SandboxTimeout,
    lambda_environment,
    make_factory,
)

__all__ = [
    "DEFAULT_PASSTHROUGH",
    "ENFORCEMENTS",
    "KINDS",
    "Binding",
    "HandlerInfo",
    "InitReply",
    "InitRequest",
    "InvokeReply",
    "InvokeRequest",
    "Kind",
    "Resources",
    "Sandbox",
    "SandboxDied",
    "SandboxFactory",
    "SandboxTimeout",
    "lambda_environment",
    "make_factory",
]
