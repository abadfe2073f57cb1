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


def child_in_a_group_of_its_own(event, context):
    """As root: make a control group below the sandbox's own, start a child in it; its pid."""
    import os

    from fnrt.sandbox import _cgroup

    own = _cgroup._base(_cgroup._cgroup_mounts(), _cgroup._own_groups(), "memory")
    below = os.path.join(own, "mine")
    os.mkdir(below)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.path.join(below, "cgroup.procs"), "w") as f:
        f.write(str(child.pid))
    return child.pid
