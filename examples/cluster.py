"""Many hosts, one PostgreSQL: ``python -m examples.cluster``.

Starts a throwaway PostgreSQL server (or uses the one ``FNRT_POSTGRES`` names), three fnrt
host processes sharing it, and sends them ``Event`` invokes and stream records over HTTP
(any host accepts any of them). Then it kills one host with ``kill -9``: the survivors
take over its shards once their leases expire and run the events it had leased, and
everything is processed at least once, each partition key in order. It prints who
processed what, and ``python -m fnrt stats`` of a survivor (the cluster view).

Needs ``pip install 'fnrt[postgres,http]'`` and PostgreSQL's server binaries
(``apt-get install postgresql``) unless ``FNRT_POSTGRES`` is set. The hosts are
``python -m examples.cluster host URL DIR NAME`` (the ``handlers.cluster`` functions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

import fnrt

ROOT = Path(__file__).resolve().parent.parent
EVENTS, RECORDS, KEYS, SHARDS, LEASE = 600, 600, 20, 8, 2.0
API = "/2015-03-31/functions"


# -- one host ---------------------------------------------------------------------------


async def host(url: str, workdir: str, name: str) -> None:
    """One fnrt host: ``work`` for Events, ``consume`` mapped from the stream ``orders``."""
    from fnrt.http import InvokeServer

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    os.makedirs(os.path.join(workdir, "running"), exist_ok=True)
    limit = int(os.environ.get("CLUSTER_LIMIT", "8"))  # on PostgreSQL: one limit for all hosts
    async with fnrt.Runtime(store=url, concurrency_limit=limit) as rt:
        rt._async.lease_margin = 0.5  # a dead host's events run again 0.5 s after their timeout
        rt._async.per_function = rt.config.concurrency_limit  # take no more than can run
        environment = {"CLUSTER_DIR": workdir, "CLUSTER_HOST": name}
        await rt.add_function("work", "handlers.cluster:work", timeout=3, environment=environment)
        await rt.add_function("consume", "handlers.cluster:consume", timeout=3, environment=environment)
        await rt.create_stream("orders", shard_count=SHARDS)
        await rt.add_stream_mapping(
            "orders", "consume", batch_size=10, lease_seconds=LEASE, poll_interval=0.1
        )
        async with InvokeServer(rt, port=0) as server:
            rt.host_info.update(url=server.url, name=name)
            print(json.dumps({"name": name, "host": rt.host_id, "url": server.url}), flush=True)
            await stop.wait()


# -- the demo ---------------------------------------------------------------------------


def ledger(workdir: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(workdir.glob("ledger-*.jsonl")):
        text = path.read_text()
        lines += [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return lines


def done(workdir: Path, events: int, records: int) -> bool:
    lines = ledger(workdir)
    return (
        len({e["id"] for e in lines if e["kind"] == "event"}) >= events
        and len({r["id"] for r in lines if r["kind"] == "record"}) >= records
    )


async def wait_for(check: Any, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


async def send(http: Any, urls: list[str], events: range, records: range) -> None:
    gate = asyncio.Semaphore(16)

    async def event(i: int) -> None:
        async with (
            gate,
            http.post(
                f"{urls[i % len(urls)]}{API}/work/invocations",
                json={"id": i},
                headers={"X-Amz-Invocation-Type": "Event"},
            ) as reply,
        ):
            reply.raise_for_status()

    async def put() -> None:  # batch after batch: per key, id order is put order
        for n, first in enumerate(range(records.start, records.stop, 50)):
            batch = [
                {"Data": json.dumps({"id": i}), "PartitionKey": f"customer-{i % KEYS}"}
                for i in range(first, min(first + 50, records.stop))
            ]
            url = f"{urls[n % len(urls)]}/fnrt/streams/orders/records"
            async with http.post(url, json={"Records": batch}) as reply:
                reply.raise_for_status()

    await asyncio.gather(put(), *(event(i) for i in events))


async def demo(url: str) -> None:
    import aiohttp

    with tempfile.TemporaryDirectory(prefix="fnrt-cluster-") as tmp:
        workdir = Path(tmp)
        procs: list[asyncio.subprocess.Process] = []
        try:
            info = []
            for name in ("host-1", "host-2", "host-3"):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "examples.cluster",
                    "host",
                    url,
                    tmp,
                    name,
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                )
                procs.append(proc)
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
                if not line:
                    raise SystemExit(f"{name} did not start")
                info.append(json.loads(line))
                print(f"{name} (pid {proc.pid}) serves {info[-1]['url']}")
            urls = [i["url"] for i in info]
            await asyncio.sleep(2 * LEASE)  # the hosts balance the 8 shards between them
            async with aiohttp.ClientSession() as http:
                print(f"sending {EVENTS // 2} Events and {RECORDS // 2} records to all three hosts ...")
                await send(http, urls, range(EVENTS // 2), range(RECORDS // 2))
                await wait_for(lambda: done(workdir, EVENTS // 6, RECORDS // 6), "the first part")
                procs[2].send_signal(signal.SIGKILL)
                await procs[2].wait()
                print(
                    f"kill -9 host-3 (pid {procs[2].pid}) mid-way; sending the rest to host-1 and host-2 ..."
                )
                await send(http, urls[:2], range(EVENTS // 2, EVENTS), range(RECORDS // 2, RECORDS))
                await wait_for(lambda: done(workdir, EVENTS, RECORDS), "everything")
                # the events host-3 had leased (and maybe run) are run again once its
                # leases expire: wait until every event is settled
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    async with http.get(f"{urls[0]}/fnrt/stats") as reply:
                        if (await reply.json())["async"] == {"done": EVENTS}:
                            break
                    await asyncio.sleep(0.2)
            report(ledger(workdir))
            print(f"\n$ python -m fnrt stats --endpoint {urls[0]}", flush=True)
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "fnrt", "stats", "--endpoint", urls[0]],
                cwd=ROOT,
                check=False,
            )
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 30)
                if proc.returncode is None:
                    proc.kill()


def report(lines: list[dict[str, Any]]) -> None:
    by_host: dict[str, dict[str, Any]] = {}
    for line in lines:
        row = by_host.setdefault(line["host"], {"event": 0, "record": 0, "shards": set()})
        row[line["kind"]] += 1
        if line["kind"] == "record":
            row["shards"].add(line["shard"])
    print("\nwho processed what:")
    print(f"  {'HOST':8} {'EVENTS':>7} {'RECORDS':>8}  SHARDS READ")
    for name, row in sorted(by_host.items()):
        shards = ", ".join(s.rsplit("-", 1)[-1].lstrip("0") or "0" for s in sorted(row["shards"]))
        print(f"  {name:8} {row['event']:>7} {row['record']:>8}  {shards}")
    events = [e for e in lines if e["kind"] == "event"]
    records = [r for r in lines if r["kind"] == "record"]
    print(
        f"every Event ran ({len({e['id'] for e in events})} of {EVENTS}; {len(events) - EVENTS} again after "
        f"the kill), every record was read ({len({r['id'] for r in records})} of {RECORDS}; "
        f"{len(records) - RECORDS} again)"
    )
    first: dict[str, list[int]] = {}
    seen: set[int] = set()
    for record in sorted(records, key=lambda r: r["t"]):
        if record["id"] not in seen:
            seen.add(record["id"])
            first.setdefault(record["key"], []).append(record["id"])
    in_order = all(ids == sorted(ids) for ids in first.values())
    print(f"each of the {len(first)} partition keys read in order: {in_order}")


async def main() -> None:
    given = os.environ.get("FNRT_POSTGRES")
    schema = f"fnrt_example_{uuid.uuid4().hex[:8]}"
    if given:
        separator = "&" if "?" in given else "?"
        await demo(f"{given}{separator}fnrt_schema={schema}")
        return
    from fnrt.store.postgres._cluster import ThrowawayCluster

    cluster = ThrowawayCluster()
    print("starting a throwaway PostgreSQL server ...")
    url = await asyncio.to_thread(cluster.start)
    try:
        await demo(url)
    finally:
        await asyncio.to_thread(cluster.stop)


if __name__ == "__main__":
    if sys.argv[1:2] == ["host"]:
        asyncio.run(host(*sys.argv[2:5]))
    else:
        asyncio.run(main())
