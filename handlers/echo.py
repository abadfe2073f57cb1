"""Echo the event back: the smallest useful handler, and the one the benchmarks use."""

import os
import time

import fnrt

STARTED = time.time()  # init phase: runs once per sandbox (cold start)
PID = os.getpid()


@fnrt.handler(timeout=3, memory_mb=128)
def echo(event, context):
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "started": STARTED,
        "pid": PID,
    }


@fnrt.handler
def noop(event, context):
    return None
