"""CPU-bound handlers for the subinterpreter tests and benchmarks."""

import logging
import os
import sys
import threading

INVOCATIONS = 0  # module state: survives warm invocations of one sandbox


def _spin(n):
    total = 0
    for i in range(n):
        total += i
    return total


def spin(event, context):
    """A pure-Python loop of ``event["n"]`` steps: holds its interpreter's GIL throughout."""
    return _spin(int(event.get("n", 1_000_000)))


def spin_until(event, context):
    """Busy-loop until the file ``event["release"]`` exists: a handler stuck in a CPU loop."""
    path = event["release"]
    print(f"spinning until {path}")
    open(f"{path}.started", "w").close()
    steps = 0
    while not os.path.exists(path):
        _spin(10_000)
        steps += 1
    return steps


def hello(event, context):
    """Prints and logs, and reports what it can see of its sandbox."""
    global INVOCATIONS
    INVOCATIONS += 1
    event = event or {}
    print(f"hello {event.get('name', 'world')}")
    logging.getLogger().warning("careful")
    try:
        import _interpreters

        interpreter = _interpreters.get_current()[0]
    except ImportError:
        interpreter = None
    return {
        "invocations": INVOCATIONS,
        "interpreter": interpreter,
        "thread": threading.get_ident(),
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }


def fail(event, context):
    raise ValueError(f"bad input: {event!r}")


def fork(event, context):
    """Forking is not allowed in an isolated interpreter."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def exit_now(event, context):
    sys.exit(int(event.get("code", 3)))
