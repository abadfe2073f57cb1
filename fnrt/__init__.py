"""fnrt: the AWS Lambda execution model in one asyncio process."""

from ._clock import Clock, FakeClock, SystemClock
from ._config import FunctionConfig, RuntimeConfig
from ._context import Context
from ._handler import handler
from ._runtime import InvocationResult, Runtime
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
    TooManyRequests,
)

__version__ = "0.1.0"

__all__ = [
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
    "SystemClock",
    "TooManyRequests",
    "handler",
]
