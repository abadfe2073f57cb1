from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fnrt.testing import wait_until

__all__ = ["alive", "descendants", "read_jsonl", "wait_until"]


def alive(pid: int) -> bool:
    """True while a process with this pid exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or before the read
        return False


def descendants(root: int | None = None) -> set[int]:
    """The live processes below ``root`` (this test process), children's children too."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {os.getpid() if root is None else root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.fixture
def release_file(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "release")


def read_jsonl(path: object) -> list[Any]:
    """The complete lines of a JSON-lines file that handlers are appending to.

    A read can catch a line half written (a sandbox appends while the test reads), so a
    last line without its newline is not counted yet.
    """
    p = Path(str(path))
    if not p.exists():
        return []
    text = p.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


@pytest.fixture(autouse=True)
def no_database_thread_left() -> Any:
    """A test must not leave an aiosqlite connection open: its (non-daemon) thread would
    keep the test process from exiting. Fail the test that leaked it instead of hanging."""
    import threading
    import time

    yield
    deadline = time.monotonic() + 2
    while any("connection_worker" in t.name for t in threading.enumerate()):
        if time.monotonic() > deadline:
            raise AssertionError("an aiosqlite connection was left open (its thread is alive)")
        time.sleep(0.01)


#: Seconds after which a test still running has its asyncio tasks' stacks printed: before
#: pytest-timeout's limit (240 s), which shows the threads but not which await never ends.
TASKS_DUMPED_AFTER = float(os.environ.get("FNRT_TEST_TASKS_DUMPED_AFTER", "200"))


@pytest.fixture(autouse=True)
def dump_tasks_of_a_stuck_test() -> Any:
    """A test that hangs (an await that nothing will ever finish, so the loop sleeps
    with no timer) gets the stack of every task on its running loop printed to stderr,
    for the failure report to name the await."""
    import asyncio
    import gc
    import sys
    import threading

    def dump() -> None:
        def on_loop(loop: asyncio.AbstractEventLoop) -> None:
            print(f"\n--- asyncio tasks still pending after {TASKS_DUMPED_AFTER:.0f} s ---", file=sys.stderr)
            for task in asyncio.all_tasks(loop):
                print(f"{task!r}", file=sys.stderr)
                awaited: Any = task.get_coro()
                while awaited is not None:  # the chain of awaits, down to what it waits on
                    frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                    if frame is not None:
                        code = frame.f_code
                        print(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}", file=sys.stderr)
                    else:
                        print(f"  waits on {awaited!r}", file=sys.stderr)
                    awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)

        loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
        for loop in loops:
            loop.call_soon_threadsafe(on_loop, loop)

    timer = threading.Timer(TASKS_DUMPED_AFTER, dump)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()
