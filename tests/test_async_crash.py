"""Crash safety for real: a host process is killed with SIGKILL mid-work; a new host on the
same state directory runs every event that was not finished. At least once, none lost."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .conftest import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 40


def start_host(state_dir: Path, outbox: Path, enqueue: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.async_host", str(state_dir), str(outbox), str(enqueue), str(EVENTS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


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


def test_a_host_killed_mid_work_loses_no_event(tmp_path):
    state_dir, outbox = tmp_path / "state", tmp_path / "outbox.jsonl"
    first = start_host(state_dir, outbox, EVENTS)
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

    with sqlite3.connect(state_dir / "fnrt.sqlite3") as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM async_events GROUP BY state").fetchall())
        leased = [row[0] for row in conn.execute("SELECT id FROM async_events WHERE state = 'leased'")]
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
    with sqlite3.connect(state_dir / "fnrt.sqlite3") as conn:
        rows = conn.execute("SELECT id, state, leases FROM async_events").fetchall()
    assert all(state == "done" for _, state, _ in rows)
    # what the dead host held was taken again once its lease expired
    assert all(leases >= 2 for id_, _, leases in rows if id_ in leased)
