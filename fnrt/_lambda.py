"""Lambda's shapes, limits and wording, written once.

Every part that shows a user something Lambda would (an ARN, a limit, a timestamp, a
destination record, a backoff, an error message) takes it from here, so the parts agree
with each other and with AWS's documentation.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from . import _json

# -- limits (Lambda quotas) -----------------------------------------------------------

SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024  # RequestResponse, each way
EVENT_PAYLOAD_LIMIT = 1024 * 1024  # Event invocations
MAX_RECORD_BYTES = 1024 * 1024  # Kinesis' record size limit
MAX_BATCH_BYTES = 6 * 1024 * 1024  # a stream batch is one invoke payload
LATEST = "$LATEST"
CLIENT_CONTEXT_LIMIT = 3583  # bytes of base64 (Invoke's X-Amz-Client-Context)

# Payloads at least this big are encoded and decoded on a worker thread, not the loop.
LARGE_PAYLOAD = 256 * 1024

# -- throttles ------------------------------------------------------------------------

GLOBAL_REASON = "ConcurrentInvocationLimitExceeded"
RESERVED_REASON = "ReservedFunctionConcurrentInvocationLimitExceeded"
RATE_REASON = "FunctionInvocationRateLimitExceeded"
RESERVED_RATE_REASON = "ReservedFunctionInvocationRateLimitExceeded"
THROTTLE_MESSAGE = "Rate Exceeded."
#: Lambda's scaling rate: each function adds at most this many execution environments ...
SCALING_LIMIT = 1000
#: ... per this many seconds, as a continuously refilling allowance.
SCALING_WINDOW = 10.0

# -- JSON -----------------------------------------------------------------------------


#: The one encoder: compact, and strict as Lambda's JSON is (no NaN or Infinity).
dumps = _json.encoder(allow_nan=False)

#: Strict JSON: ``NaN`` and ``Infinity`` are not JSON, as in Lambda (msgspec when installed).
loads = _json.loads_strict


def loads_or_none(data: bytes | None) -> Any:
    return _json.loads(data) if data else None


# -- ARNs -----------------------------------------------------------------------------

_FUNCTION_REF = re.compile(
    r"^(?:arn:aws[\w-]*:lambda:[\w-]+:)?(?:\d{12}:)?(?:function:)?([a-zA-Z0-9_-]+)(?::(\$LATEST|[\w-]+))?$"
)


def function_arn(region: str, account_id: str, name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{region}:{account_id}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def parse_function_ref(ref: str) -> tuple[str, str | None] | None:
    """``name``, a partial ARN or a full ARN as ``(name, qualifier)``; ``None`` if it is
    none of these."""
    match = _FUNCTION_REF.match(ref) if isinstance(ref, str) else None
    return (match.group(1), match.group(2)) if match else None


def role_arn(account_id: str) -> str:
    """The execution role every function has: its ``Role``, and the ``invokeIdentityArn``
    of the stream events it gets (Lambda puts the function's role there)."""
    return f"arn:aws:iam::{account_id}:role/fnrt-local"


def stream_arn(region: str, account_id: str, name: str) -> str:
    return f"arn:aws:kinesis:{region}:{account_id}:stream/{name}"


# -- time -----------------------------------------------------------------------------


def iso_timestamp(seconds: float) -> str:
    """``2019-11-14T18:16:05.568Z``: the millisecond UTC form Lambda's records use."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def backoff(attempt: int, first: float, longest: float) -> float:
    """Exponential backoff: ``first`` for the first attempt, doubling, capped at ``longest``."""
    return float(min(longest, first * 2 ** min(max(0, attempt - 1), 60)))


# -- wording --------------------------------------------------------------------------


def timeout_message(request_id: str, timeout: float) -> str:
    return f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"


def response_too_large() -> str:
    # Lambda's own words, number included: its message says 6291556 (6 MiB + 100) bytes
    # while the documented limit, the one enforced here, is 6 MB (6291456 bytes).
    return "Response payload size exceeded maximum allowed payload size (6291556 bytes)."


# -- destination records --------------------------------------------------------------


def async_record(
    *,
    request_id: str,
    function_arn: str,
    condition: str,
    invokes: int,
    status: int | None,
    function_error: str | None,
    request_payload: Any,
    response_payload: Any,
    now: float,
) -> dict[str, Any]:
    """The record an asynchronous invocation's destination receives."""
    response_context: dict[str, Any] = {"statusCode": status, "executedVersion": LATEST}
    if function_error is not None:
        response_context["functionError"] = function_error
    return {
        "version": "1.0",
        "timestamp": iso_timestamp(now),
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"{function_arn}:{LATEST}",
            "condition": condition,
            "approximateInvokeCount": invokes,
        },
        "requestPayload": request_payload,
        "responseContext": response_context,
        "responsePayload": response_payload,
    }


def dead_letter_message(request_id: str, payload: Any, status: int | None, error: Any) -> dict[str, Any]:
    """Lambda's dead-letter message: the event itself, with the failure as attributes."""
    error = error if isinstance(error, dict) else {}
    message = error.get("errorMessage") or error.get("message") or ""
    return {
        "body": payload,
        "messageAttributes": {
            "RequestID": request_id,
            "ErrorCode": str(status or 200),
            "ErrorMessage": str(message)[:1024],
        },
    }


def stream_failure_record(
    *,
    request_id: str,
    function_arn: str,
    condition: str,
    attempts: int,
    shard_id: str,
    first_seq: str,
    last_seq: str,
    first_arrival: float,
    last_arrival: float,
    batch_size: int,
    stream_arn: str,
    now: float,
) -> dict[str, Any]:
    """Lambda's on-failure record for a stream: where the skipped records are, not them."""
    return {
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": LATEST,
            "functionError": "Unhandled",
        },
        "version": "1.0",
        "timestamp": iso_timestamp(now),
        "KinesisBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": first_seq,
            "endSequenceNumber": last_seq,
            "approximateArrivalOfFirstRecord": iso_timestamp(first_arrival),
            "approximateArrivalOfLastRecord": iso_timestamp(last_arrival),
            "batchSize": batch_size,
            "streamArn": stream_arn,
        },
    }
