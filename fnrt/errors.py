"""Every error fnrt raises, in one place.

Two families, as in Lambda: *function errors* happened inside the user's code or its
sandbox and carry Lambda's error shape (``errorType``, ``errorMessage``, ``stackTrace``)
plus the tail of the invocation's log; *runtime errors* are about the request itself
(unknown function, bad config, throttled, payload too large) and never reached a handler.
"""

from __future__ import annotations

from typing import Any


class FnrtError(Exception):
    """Base of every error fnrt raises."""


# -- request errors: nothing ran ------------------------------------------------------


class InvalidConfig(FnrtError, ValueError):
    """A configuration value is out of range or of the wrong type.

    Raised where the config is built, never at the first invocation.
    """


class FunctionNotFound(FnrtError, LookupError):
    """No function of that name is registered (Lambda: ``ResourceNotFoundException``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Function not found: {name!r}. Deploy its module or add_function() it first.")
        self.name = name


class InvalidPayload(FnrtError, ValueError):
    """The payload is not JSON (Lambda: ``InvalidRequestContentException``)."""


class PayloadTooLarge(FnrtError, ValueError):
    """The payload is over the limit for its invocation type (Lambda: 413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"Request must be smaller than {limit} bytes for the invoke operation; got {size} bytes"
        )
        self.size = size
        self.limit = limit


class TooManyRequests(FnrtError):
    """A concurrency limit was hit (Lambda: 429 ``TooManyRequestsException``).

    ``reason`` names the limit: ``ConcurrentInvocationLimitExceeded`` (the shared pool) or
    ``ReservedFunctionConcurrentInvocationLimitExceeded`` (the function's reserved
    concurrency).
    """

    def __init__(self, reason: str, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_seconds = retry_after_seconds

    def to_lambda(self) -> dict[str, Any]:
        return {
            "Type": "User",
            "message": self.message,
            "retryAfterSeconds": self.retry_after_seconds,
            "Reason": self.reason,
        }


class RuntimeClosed(FnrtError, RuntimeError):
    """The runtime is not running (used outside ``async with Runtime()``, or closed)."""


# -- service errors: fnrt's own machinery failed, not the caller nor the handler ------


class ServiceError(FnrtError):
    """fnrt's infrastructure failed before a handler could run: a sandbox could not be
    created (the template process died or hung), a sandbox broke outside a request
    (Lambda: 500 ``ServiceException``). Retrying later may succeed; the async queue and
    stream pollers back off and retry it without using a retry attempt."""

    error_type = "ServiceException"

    def to_lambda(self) -> dict[str, Any]:
        return {"Type": "Service", "message": str(self)}


class StoreUnavailable(ServiceError):
    """The durable store (SQLite file or PostgreSQL server) cannot be used right now: the
    database is locked, the disk is full or read-only, the server is unreachable.
    ``path`` names the store and ``cause`` the error underneath. Nothing was acknowledged
    that was not stored; background work retries with backoff until the store is back."""

    error_type = "ServiceException"

    def __init__(self, message: str, *, path: str = "", cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.cause = cause


# -- function errors: the handler or its sandbox failed -------------------------------


class FunctionError(FnrtError):
    """The function failed: Lambda's ``X-Amz-Function-Error: Unhandled``.

    ``error_type`` is the exception's class name (``"ValueError"``) or one of Lambda's
    runtime error types (``Runtime.ExitError``, ``Runtime.OutOfMemory``,
    ``Runtime.ImportModuleError``, ``Runtime.HandlerNotFound``, ``Runtime.MarshalError``,
    ``Sandbox.Timedout``).
    """

    def __init__(
        self,
        error_type: str,
        error_message: str,
        stack_trace: list[str] | None = None,
        *,
        request_id: str = "",
        log_tail: str = "",
    ) -> None:
        super().__init__(f"{error_type}: {error_message}")
        self.error_type = error_type
        self.error_message = error_message
        self.stack_trace = list(stack_trace or [])
        self.request_id = request_id
        self.log_tail = log_tail

    def to_lambda(self) -> dict[str, Any]:
        """The body Lambda returns for this error."""
        body: dict[str, Any] = {"errorMessage": self.error_message, "errorType": self.error_type}
        if self.request_id:
            body["requestId"] = self.request_id
        body["stackTrace"] = self.stack_trace
        return body


class FunctionTimeout(FunctionError):
    """The invocation ran past the function's timeout; its sandbox was destroyed."""


class InitError(FunctionError):
    """The module failed its init phase (import error, missing handler, init timeout)."""


__all__ = [
    "FnrtError",
    "FunctionError",
    "FunctionNotFound",
    "FunctionTimeout",
    "InitError",
    "InvalidConfig",
    "InvalidPayload",
    "PayloadTooLarge",
    "RuntimeClosed",
    "ServiceError",
    "StoreUnavailable",
    "TooManyRequests",
]


class StreamNotFound(FnrtError, LookupError):
    """No stream of that name (Lambda/Kinesis: ``ResourceNotFoundException``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Stream not found: {name!r}. Create it with create_stream() first.")
        self.name = name


__all__ += ["StreamNotFound"]
