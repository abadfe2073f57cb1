"""One host of a cluster on one PostgreSQL: ``python -m tests.cluster_host URL DIR NAME``.

Registers ``work`` (Event invokes) and ``consume`` (a mapping from the 8-shard stream
``orders``), serves Lambda's Invoke API on an ephemeral loopback port, prints one JSON
line ``{"name", "host", "url"}`` when ready, and runs until SIGTERM (or ``kill -9``).
``tests/test_cluster.py`` and ``examples/cluster.py`` start three of these.

Environment: ``CLUSTER_LEASE`` (shard lease seconds, default 2), ``CLUSTER_LIMIT`` (the
concurrency limit, default 8: on PostgreSQL one limit for all hosts together).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys

import structlog

import fnrt
from fnrt.http import InvokeServer


async def main(url: str, workdir: str, name: str) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    lease = float(os.environ.get("CLUSTER_LEASE", "2"))
    limit = int(os.environ.get("CLUSTER_LIMIT", "8"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    os.makedirs(os.path.join(workdir, "running"), exist_ok=True)
    async with fnrt.Runtime(store=url, concurrency_limit=limit) as rt:
        rt._async.lease_margin = 0.5  # a dead host's events run again 0.5 s after their timeout
        rt._async.per_function = limit  # take no more than can run
        environment = {"CLUSTER_DIR": workdir, "CLUSTER_HOST": name}
        await rt.add_function("work", "handlers.cluster:work", timeout=3, environment=environment)
        await rt.add_function("consume", "handlers.cluster:consume", timeout=3, environment=environment)
        await rt.create_stream("orders", shard_count=8)  # the first host creates it, the others open it
        await rt.add_stream_mapping(
            "orders", "consume", batch_size=10, lease_seconds=lease, poll_interval=0.1
        )
        async with InvokeServer(rt, port=0) as server:
            rt.host_info["url"] = server.url
            rt.host_info["name"] = name
            print(json.dumps({"name": name, "host": rt.host_id, "url": server.url}), flush=True)
            await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
