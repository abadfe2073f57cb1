"""``python -m fnrt serve`` stops as a user expects: the first Ctrl-C/SIGTERM says what it
waits for and lets calls in flight finish (a grace period); a second one stops at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import alive

pytest.importorskip("aiohttp")
ROOT = Path(__file__).resolve().parent.parent


async def start_server(*extra: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fnrt",
        "serve",
        "handlers.chaos",
        "--port",
        "0",
        *extra,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line, "the server exited before listening"
        if line.startswith("listening on "):
            return proc, line.split()[2]


async def read_until(proc: asyncio.subprocess.Process, text: str) -> str:
    assert proc.stderr is not None
    seen = ""
    while text not in seen:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line, f"the server exited before saying {text!r}: {seen}"
        seen += line
    return seen


def invoke(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/2015-03-31/functions/hold/invocations", data=json.dumps(payload).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


async def wait_busy(url: str) -> None:
    for _ in range(600):
        stats = await asyncio.to_thread(
            lambda: json.loads(urllib.request.urlopen(f"{url}/fnrt/stats").read())
        )
        if stats["concurrency"]["in_flight"] == 1:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the call never started")


async def test_the_first_signal_waits_for_calls_in_flight(tmp_path: Path) -> None:
    release = tmp_path / "release"
    proc, url = await start_server("--grace", "30")
    try:
        call = asyncio.ensure_future(asyncio.to_thread(invoke, url, {"release": str(release)}))
        await wait_busy(url)
        proc.send_signal(signal.SIGINT)
        said = await read_until(proc, "in flight")
        assert "waiting up to 30 s for 1 invocation(s) in flight" in said
        release.touch()
        result = await call  # the call in flight finished, answered in full
        assert "pid" in result
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_second_signal_stops_at_once_and_kills_the_sandboxes(tmp_path: Path) -> None:
    proc, url = await start_server("--grace", "600")
    try:
        call = asyncio.ensure_future(asyncio.to_thread(invoke, url, {"release": str(tmp_path / "never")}))
        await wait_busy(url)
        family = _descendants(proc.pid)  # the template and the busy sandbox
        assert len(family) >= 2
        proc.send_signal(signal.SIGTERM)
        await read_until(proc, "in flight")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await read_until(proc, "stopping now")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert time.monotonic() - started < 20  # not the grace period, not aiohttp's 60 s
        with pytest.raises(OSError):  # the cut-off caller gets an error, not a hang
            await call
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for _ in range(200):  # nothing of the server is left
        if not any(alive(pid) for pid in family):
            break
        await asyncio.sleep(0.02)
    assert [pid for pid in family if alive(pid)] == []


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(root: int) -> set[int]:
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid in pids if _parent(pid) in frontier}
        frontier = children - found
        found |= children
    return found


async def test_ctrl_c_while_deploying_stops_then_not_after_the_deploy():
    """A module whose import takes long (up to the 10 s init timeout): Ctrl-C stops the
    deploy and the server at once; nothing is left running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fnrt", "serve", "handlers.slow_init", "--port", "0",
        cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await read_until(proc, "deploying handlers.slow_init")  # its import now sleeps 30 s
        proc.send_signal(signal.SIGINT)
        said = await read_until(proc, "stopped before serving")
        assert "Traceback" not in said and "listening on" not in said
        assert await asyncio.wait_for(proc.wait(), 8) == 0  # not the deploy's 10 s and more
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _call(
    url: str, path: str, body: dict | None = None, *, method: str = "GET", target: str | None = None
) -> dict:
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target} if target else {}
    request = urllib.request.Request(
        url + path, data=None if body is None else json.dumps(body).encode(), method=method, headers=headers
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


async def test_a_mapping_created_over_the_control_plane_outlives_a_restart(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    arn = "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
    proc, url = await start_server("--state-dir", state, "--stream", "orders:1")
    try:
        created = await asyncio.to_thread(
            _call,
            url,
            "/2015-03-31/event-source-mappings/",
            {"FunctionName": "whoami", "EventSourceArn": arn, "StartingPosition": "TRIM_HORIZON"},
            method="POST",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    proc, url = await start_server("--state-dir", state, "--stream", "orders:1")
    try:
        mappings = f"/2015-03-31/event-source-mappings/?EventSourceArn={arn}"
        listed = await asyncio.to_thread(_call, url, mappings)
        assert [m["UUID"] for m in listed["EventSourceMappings"]] == [created["UUID"]]
        put = {"StreamName": "orders", "PartitionKey": "k", "Data": "eyJpZCI6IDF9"}
        await asyncio.to_thread(_call, url, "/", put, method="POST", target="Kinesis_20131202.PutRecord")
        path = f"/2015-03-31/event-source-mappings/{created['UUID']}"
        for _ in range(300):  # the record reaches the function through the resumed mapping
            mapping = await asyncio.to_thread(_call, url, path)
            if mapping["LastProcessingResult"] == "OK":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the resumed mapping never ran: {mapping}")
        assert mapping["State"] == "Enabled"
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def test_a_mapping_given_by_function_arn_starts_again_after_a_restart(tmp_path: Path) -> None:
    # The restart resumes the stored mapping under the function's name; the --mapping given
    # by ARN (or partial ARN) is the same one, not a second: serve starts, it did not
    # ("a mapping from 'orders' to 'whoami' exists already").
    state = str(tmp_path / "state")
    function_arn = "arn:aws:lambda:us-east-1:000000000000:function:whoami"
    for spec in ("orders=whoami", f"orders={function_arn}", "orders=000000000000:function:whoami"):
        proc, url = await start_server("--state-dir", state, "--stream", "orders:1", "--mapping", spec)
        try:
            listed = await asyncio.to_thread(_call, url, "/2015-03-31/event-source-mappings/")
            assert [m["FunctionArn"] for m in listed["EventSourceMappings"]] == [function_arn]
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


@pytest.mark.parametrize("grace", ["-1", "nan", "soon"])
def test_a_grace_period_that_is_not_a_duration_is_refused_in_one_line(grace, capsys) -> None:
    from fnrt._cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "handlers.echo", "--grace", grace])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --grace: {grace}" in err.replace("'", "") and "not a number of seconds" in err
