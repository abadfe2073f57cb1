"""fnrt on uvloop: ``fnrt.run`` picks it when installed, and every source works on it.

Each test runs its own loop through ``fnrt.run`` (sync tests: no pytest-asyncio loop), so
the same runtime code is exercised on libuv's loop: sandboxes (spawn, pipes, a kill on
timeout), the durable queue's thread hops, stream mappings, and ``serve`` over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

import fnrt
from fnrt._loop import loop_factory, loop_name
from fnrt.errors import InvalidConfig

from .conftest import read_jsonl, wait_until
from .test_serve_shutdown import start_server

uvloop = pytest.importorskip("uvloop")


def test_auto_picks_uvloop_when_installed_and_asyncio_on_request() -> None:
    async def which() -> str:
        return loop_name()

    assert fnrt.run(which()) == "uvloop"
    assert fnrt.run(which(), loop="uvloop") == "uvloop"
    assert fnrt.run(which(), loop="asyncio") == "asyncio"
    with pytest.raises(InvalidConfig, match="loop must be one of"):
        fnrt.run(which(), loop="trio")
    assert loop_factory("asyncio") is None


def test_invoke_timeout_event_and_stream_on_uvloop(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.jsonl"
    ledger = tmp_path / "ledger.jsonl"

    async def scenario() -> dict[str, object]:
        assert loop_name() == "uvloop"
        seen: dict[str, object] = {}
        async with fnrt.Runtime(state_dir=tmp_path / "state") as rt:
            await rt.deploy("handlers.chaos")
            await rt.deploy("handlers.payments")
            first = await rt.invoke_detailed("whoami", {})
            second = await rt.invoke_detailed("whoami", {})
            seen["cold_then_warm"] = (first.cold_start, second.cold_start)
            seen["same_sandbox"] = first.payload == second.payload
            await rt.add_function("held", "handlers.chaos:hold", timeout=1)
            timed_out = await rt.invoke_detailed("held", {})  # never released: runs into its timeout
            seen["timeout"] = type(timed_out.error).__name__
            request_id = await rt.invoke("send_receipt", {"order": "E-1", "outbox": str(outbox)}, "Event")
            await rt.wait_idle()
            event = await rt.async_event(request_id)
            seen["event"] = event["state"] if event else None
            attempts = tmp_path / "attempts"
            attempts.mkdir()
            await rt.add_function(
                "orders",
                "handlers.orders:process_orders",
                environment={"ORDERS_LEDGER": str(ledger), "ORDERS_ATTEMPTS": str(attempts)},
            )
            stream = await rt.create_stream("orders", shard_count=2)
            await rt.add_stream_mapping("orders", "orders", batch_size=10)
            await stream.put_records([(json.dumps({"id": i}).encode(), f"k{i % 4}") for i in range(40)])
            await wait_until(lambda: len(read_jsonl(ledger)) == 40, "the stream's records")
            await rt.wait_idle()
            return seen

    seen = fnrt.run(scenario(), loop="uvloop")
    assert seen == {
        "cold_then_warm": (True, False),
        "same_sandbox": True,
        "timeout": "FunctionTimeout",
        "event": "done",
    }
    assert [line["order"] for line in read_jsonl(outbox)] == ["E-1"]
    assert sorted(line["id"] for line in read_jsonl(ledger)) == list(range(40))  # each once


def test_serve_runs_on_uvloop_and_answers_over_http() -> None:
    async def scenario() -> tuple[str, dict[str, object]]:
        proc, url = await start_server("--loop", "uvloop")
        try:
            request = urllib.request.Request(
                f"{url}/2015-03-31/functions/whoami/invocations", data=b"{}", method="POST"
            )
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=60).read())
            return url, json.loads(body)
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)

    _, reply = asyncio.run(scenario())
    assert reply["inits"] == 1


def test_serve_with_uvloop_missing_says_what_to_install(tmp_path: Path) -> None:
    """Where uvloop cannot be imported, ``--loop uvloop`` fails with one line naming the extra."""
    import subprocess

    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "fnrt", "serve", "handlers.echo", "--port", "0", "--loop", "uvloop"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "pip install 'fnrt[uvloop]'" in proc.stderr
    assert "Traceback" not in proc.stderr
