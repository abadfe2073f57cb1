"""fnrt: the AWS Lambda execution model in one asyncio process.

Handler modules ``import fnrt`` for the decorator inside every sandbox, so this module
imports only what a handler needs (the decorator, configs, errors, the context). The
runtime and the sources, with structlog and aiosqlite behind them, load on first
use of their names (PEP 562).
"""

from typing import TYPE_CHECKING, Any

from ._clock import Clock, FakeClock, SystemClock
from ._config import AsyncConfig, FunctionConfig, RuntimeConfig, StreamMappingConfig
from ._context import Context
from ._handler import handler
from .errors import (
    FnrtError,
    FunctionError,
    FunctionNotFound,
    FunctionTimeout,
    InitError,
    InvalidConfig,
    InvalidPayload,
    PayloadTooLarge,
    RuntimeClosed,
    ServiceError,
    StoreUnavailable,
    StreamNotFound,
    TooManyRequests,
)

if TYPE_CHECKING:
    from ._loop import run
    from ._runtime import InvocationResult, Runtime
    from .sources._streams import Stream, StreamMapping

_LAZY = {
    "run": "._loop",
    "InvocationResult": "._runtime",
    "Runtime": "._runtime",
    "Stream": ".sources._streams",
    "StreamMapping": ".sources._streams",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fnrt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

__version__ = "0.1.0"

__all__ = [
    "AsyncConfig",
    "Clock",
    "Context",
    "FakeClock",
    "FnrtError",
    "FunctionConfig",
    "FunctionError",
    "FunctionNotFound",
    "FunctionTimeout",
    "InitError",
    "InvalidConfig",
    "InvalidPayload",
    "InvocationResult",
    "PayloadTooLarge",
    "Runtime",
    "RuntimeClosed",
    "RuntimeConfig",
    "ServiceError",
    "StoreUnavailable",
    "Stream",
    "StreamMapping",
    "StreamMappingConfig",
    "StreamNotFound",
    "SystemClock",
    "TooManyRequests",
    "handler",
    "run",
]
