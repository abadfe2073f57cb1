"""Handlers that press on an execution environment's limits as a whole (memory, processes)."""

import subprocess
import sys
import threading
import time

HOLD = "import sys, time; held = b'x' * ({mb} << 20); print('held', flush=True); time.sleep({seconds})"


def children_memory(event, context):
    """Start ``children`` processes that each fill ``mb`` MB and hold it; their exit codes."""
    code = HOLD.format(mb=event["mb"], seconds=event.get("seconds", 2))
    children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(event["children"])]
    return [child.wait() for child in children]


def threads(event, context):
    """Start sleeping threads until ``want`` run or one cannot start; how many ran."""
    stop = threading.Event()
    started = 0
    try:
        for _ in range(event["want"]):
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except RuntimeError:  # "can't start new thread"
        pass
    finally:
        stop.set()
    time.sleep(0.2)
    return started
