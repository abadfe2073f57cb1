"""A host process for the kill -9 test: it writes records to a stream and consumes them
until it is killed. Usage: python -m tests.stream_host STATE_DIR LEDGER COUNT"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import structlog

import fnrt


async def main(state_dir: str, ledger: str, count: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    async with fnrt.Runtime(state_dir=state_dir) as rt:
        await rt.add_function(
            "orders", "handlers.orders:process_orders", environment={"ORDERS_LEDGER": ledger}
        )
        stream = await rt.create_stream("orders", shard_count=2)
        await stream.put_records([(json.dumps({"id": i}), f"customer-{i % 5}") for i in range(count)])
        # A lease longer than a loaded machine's heartbeat lag: a lease lost *before* the kill
        # would redeliver legitimately, but this test is about what the kill loses.
        await rt.add_stream_mapping("orders", "orders", batch_size=5, lease_seconds=1.5, poll_interval=0.05)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
