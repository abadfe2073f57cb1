"""Handlers that misbehave on purpose: the runtime's tests and the quickstart use them."""

import ctypes
import logging
import os
import time

import fnrt

INIT_PID = os.getpid()
INITS = 0


def fnrt_init():
    """Optional init hook: runs once per sandbox, after the module is imported."""
    global INITS
    INITS += 1


@fnrt.handler(timeout=3)
def hold(event, context):
    """Block until the file named in the event exists (lets tests hold a sandbox busy)."""
    release = event.get("release")
    while release is None or not os.path.exists(release):
        time.sleep(0.002)
    return {"pid": os.getpid()}


@fnrt.handler
def whoami(event, context):
    return {"pid": os.getpid(), "inits": INITS, "init_pid": INIT_PID}


@fnrt.handler
def context_info(event, context):
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
        "client_context": None if context.client_context is None else context.client_context.custom,
        "env_name": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
        "env_custom": os.environ.get("GREETING"),
    }


@fnrt.handler
def talk(event, context):
    print("hello from the handler")
    logging.getLogger("chaos").warning("a warning with id %s", context.aws_request_id)
    if event.get("fail"):
        raise ValueError("asked to fail")
    return "said it"


@fnrt.handler
def exit_now(event, context):
    os._exit(event.get("code", 3))


@fnrt.handler
def segfault(event, context):
    ctypes.string_at(0)


@fnrt.handler(memory_mb=128)
def hog(event, context):
    blocks = [bytearray(1024 * 1024) for _ in range(event.get("mb", 512))]
    return len(blocks)


@fnrt.handler
def big_result(event, context):
    return "x" * event["bytes"]


@fnrt.handler
def unserializable(event, context):
    return {"when": {1, 2, 3}}


@fnrt.handler
def total(event, context):
    """A KeyError inside an expression (Python 3.11+ marks such columns with carets)."""
    return {"total": event["order"]["amount"] * 2}


@fnrt.handler
def touch(event, context):
    """Write the file the event names (a side effect a test can see)."""
    with open(event["path"], "w") as f:
        f.write(context.aws_request_id)
    return event["path"]


@fnrt.handler(timeout=1)
def print_then_fail(event, context):
    """Print, then end without a reply as the event says: hang (timeout), exit, or crash."""
    print(f"before the end: {event['how']}", flush=event.get("flush", False))
    how = event["how"]
    if how == "none":
        return "replied"
    if how == "hang":
        while True:
            time.sleep(0.01)
    if how == "exit":
        os._exit(3)
    ctypes.string_at(0)


@fnrt.handler
def gate(event, context):
    """Fail when the event says so; else hold until the file it names exists."""
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    while not os.path.exists(event["release"]):
        time.sleep(0.002)
    return "released"
