"""AWS-shaped errors for every HTTP answer fnrt gives, whatever went wrong.

Lambda's REST-JSON APIs answer ``{"Type": "User"|"Service", "message": ...}`` with the error
code in ``x-amzn-ErrorType``; Kinesis' JSON 1.1 protocol answers ``{"__type": ...,
"message": ...}``. A middleware turns aiohttp's own errors (unknown route, wrong method,
body too large) and any unexpected exception into those shapes, so a client never sees
aiohttp's plain text or a traceback.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ._observe import logger
from .errors import (
    FnrtError,
    FunctionNotFound,
    InvalidConfig,
    InvalidPayload,
    PayloadTooLarge,
    RuntimeClosed,
    ServiceError,
    StreamNotFound,
    TooManyRequests,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_log = logger()


class AwsError(Exception):
    """Raised by a route handler: answered in the request's protocol shape."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}
        self.extra = extra


class BodyTimeout(TimeoutError):
    """A request's body did not arrive within the server's ``body_timeout``.

    Set on the request's payload, so a handler waiting for the body is woken with it (and
    answered 408); a ``TimeoutError``, so aiohttp's lingering close takes it quietly."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s of its head")
        self.seconds = seconds


# The exceptions whose model spells the message member ``Message`` (Lambda's service model:
# most say ``message``); boto3 exposes the member under the model's name in ``e.response``.
_CAPITAL_MESSAGE = frozenset(
    (
        "ResourceNotFoundException",
        "ResourceInUseException",
        "ServiceException",
        "ServiceQuotaExceededException",
    )
)


def lambda_error(
    status: int, error_type: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """Lambda's REST-JSON error: ``{"Type", "message" (or "Message"), ...}`` and
    ``x-amzn-ErrorType``."""
    key = "Message" if error_type in _CAPITAL_MESSAGE else "message"
    body = {"Type": "User" if status < 500 else "Service", key: message, **extra}
    return web.json_response(
        body,
        status=status,
        headers={
            "x-amzn-ErrorType": error_type,
            "x-amzn-RequestId": str(uuid.uuid4()),
            **(headers or {}),
        },
    )


def json11_error(status: int, error_type: str, message: str, **extra: Any) -> web.Response:
    """The AWS JSON 1.1 protocol's error (Kinesis): ``{"__type", "message"}``."""
    return web.json_response(
        {"__type": error_type, "message": message, **extra},
        status=status,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": str(uuid.uuid4())},
    )


def error_response(request: web.Request, error: AwsError) -> web.Response:
    if "X-Amz-Target" in request.headers:  # AWS's JSON 1.1 protocol (Kinesis)
        return json11_error(error.status, error.error_type, error.message, **error.extra)
    return lambda_error(error.status, error.error_type, error.message, headers=error.headers, **error.extra)


def from_fnrt(exc: FnrtError) -> AwsError:
    """Lambda's status and error code for an fnrt error that reached the HTTP face."""
    if isinstance(exc, FunctionNotFound):
        return AwsError(404, "ResourceNotFoundException", str(exc))
    if isinstance(exc, StreamNotFound):
        return AwsError(404, "ResourceNotFoundException", str(exc))
    if isinstance(exc, TooManyRequests):
        # The model carries retryAfterSeconds in the Retry-After header (boto3 reads it
        # there); the body keeps it too, for clients that read the JSON.
        retry_after = str(int(exc.retry_after_seconds))
        return AwsError(
            429,
            "TooManyRequestsException",
            exc.message,
            headers={"Retry-After": retry_after},
            Reason=exc.reason,
            retryAfterSeconds=retry_after,
        )
    if isinstance(exc, PayloadTooLarge):
        return AwsError(
            413,
            "RequestTooLargeException",
            f"Request must be smaller than {exc.limit} bytes for the InvokeFunction operation",
        )
    if isinstance(exc, InvalidPayload):
        return AwsError(400, "InvalidRequestContentException", str(exc))
    if isinstance(exc, InvalidConfig):
        return AwsError(400, "InvalidParameterValueException", str(exc))
    if isinstance(exc, RuntimeClosed):
        return AwsError(503, "ServiceException", str(exc))
    if isinstance(exc, ServiceError):
        return AwsError(500, exc.error_type, str(exc))
    return AwsError(500, "ServiceException", str(exc))


def _own_text(exc: web.HTTPException) -> str:
    """The words a handler gave its HTTP error (``HTTPBadRequest(text=...)``); "" when it
    has aiohttp's default text ("400: Bad Request")."""
    text = exc.text or ""
    return "" if text == f"{exc.status}: {exc.reason}" else text


def _from_http(exc: web.HTTPException) -> AwsError:
    status = exc.status
    if status == 404:
        return AwsError(404, "UnknownOperationException", "Unknown operation: no such route")
    if status == 405:
        return AwsError(405, "UnknownOperationException", "Unknown operation: method not allowed")
    if status == 413:
        return AwsError(413, "RequestTooLargeException", "Request body is too large")
    if status < 500:
        message = _own_text(exc) or exc.reason or "bad request"
        return AwsError(status, "InvalidRequestContentException", message)
    return AwsError(status, "ServiceException", exc.reason or "internal error")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as AWS's JSON shape, never aiohttp's text nor a traceback."""
    try:
        return await handler(request)
    except AwsError as exc:
        return error_response(request, exc)
    except FnrtError as exc:
        return error_response(request, from_fnrt(exc))
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect or a success raised as an exception
            raise
        said = _own_text(exc)
        if said and request.path.startswith("/console"):
            # The console's own answer (its JSON error, or a line for its pages), as it gave it.
            return web.Response(status=exc.status, text=said, content_type=exc.content_type)
        return error_response(request, _from_http(exc))
    except BodyTimeout as exc:  # the client withheld the rest of its body
        response = error_response(request, AwsError(408, "RequestTimeoutException", str(exc)))
        response.force_close()  # the rest of the body may still trickle in: hear no more of it
        return response
    except RecursionError:
        return error_response(
            request, AwsError(400, "InvalidRequestContentException", "the request is nested too deeply")
        )
    except Exception as exc:
        gone = request.transport is None or request.transport.is_closing()
        if isinstance(exc, ConnectionResetError) and gone:
            # the client hung up mid-request (while sending its body): no one to answer,
            # and nothing of fnrt's went wrong, so no error and traceback for each of them
            _log.debug("http client went away", path=request.path, error=repr(exc))
            return error_response(request, AwsError(400, "InvalidRequestContentException", str(exc)))
        _log.exception("http handler failed", path=request.path, error=repr(exc))
        return error_response(
            request,
            AwsError(500, "ServiceException", f"internal error: {type(exc).__name__}"),
        )


__all__ = ["AwsError", "BodyTimeout", "errors_middleware", "from_fnrt", "json11_error", "lambda_error"]
