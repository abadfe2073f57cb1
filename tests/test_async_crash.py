"""Crash safety for real: a host process is killed with SIGKILL mid-work; a new host on the
same state directory runs every event that was not finished. At least once, none lost."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from fnrt.store import QueueStore, open_store

from .conftest import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 40


def start_host(
    state_dir: Path, outbox: Path, enqueue: int, durability: str = "fsync"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.async_host",
            str(state_dir),
            str(outbox),
            str(enqueue),
            str(EVENTS),
            durability,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


async def queue_view(
    state_dir: Path, read: Callable[[QueueStore], tuple[Coroutine[Any, Any, Any], ...]]
) -> list[Any]:
    """Read the queue in ``state_dir`` through a store of our own, as another host would."""
    async with await open_store(state_dir) as store:
        return list(await asyncio.gather(*read(store.queue)))


def wait_for_line(proc: subprocess.Popen[str], marker: str, limit: float = 20.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"host exited ({proc.wait()}) before printing {marker!r}")
            if line.strip() == marker:
                return
    raise AssertionError(f"host did not print {marker!r} within {limit} s")


def sent(outbox: Path) -> list[int]:
    if not outbox.exists():
        return []
    return [entry["order"] for entry in read_jsonl(outbox)]


# "process" durability skips the fsync per commit: it must still survive kill -9.
@pytest.mark.parametrize("durability", ["fsync", "process"])
def test_a_host_killed_mid_work_loses_no_event(tmp_path, durability):
    state_dir, outbox = tmp_path / "state", tmp_path / "outbox.jsonl"
    first = start_host(state_dir, outbox, EVENTS, durability)
    try:
        wait_for_line(first, "enqueued")  # every invoke returned: all 40 are on disk
        deadline = time.monotonic() + 20
        while len(sent(outbox)) < 8:
            assert time.monotonic() < deadline, "the first host never got going"
            time.sleep(0.005)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
        assert first.stdout is not None
        first.stdout.close()

    states, leased_events = asyncio.run(
        queue_view(state_dir, lambda q: (q.counts(), q.events(state="leased")))
    )
    leased = {event["request_id"] for event in leased_events}
    assert sum(states.values()) == EVENTS
    assert states.get("done", 0) < EVENTS  # it really died mid-work
    before = sent(outbox)

    second = start_host(state_dir, outbox, 0)
    try:
        wait_for_line(second, "drained")
        assert second.wait(timeout=10) == 0
    finally:
        second.kill()
        assert second.stdout is not None
        second.stdout.close()
    after = sent(outbox)
    assert set(after) == set(range(EVENTS))  # every event handled at least once
    assert set(before) <= set(after)
    assert len(after) >= EVENTS
    (events,) = asyncio.run(queue_view(state_dir, lambda q: (q.events(),)))
    assert len(events) == EVENTS and all(event["state"] == "done" for event in events)
    # what the dead host held was taken again once its lease expired
    assert all(event["leases"] >= 2 for event in events if event["request_id"] in leased)
