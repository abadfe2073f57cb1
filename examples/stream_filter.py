"""Event filtering on a stream: ``python -m examples.stream_filter``.

Ten orders go to a stream, buys and sells, with one record that is not JSON at all. The
mapping has Lambda's ``FilterCriteria``: buys of more than 100 shares, or anything from
the partition key ``vip-1``. The function gets only those, in order, in one batch; the
others are passed over and the checkpoint moves past them all the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile

import structlog

import fnrt


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = os.path.join(tmp, "ledger.jsonl")
        async with fnrt.Runtime(state_dir=tmp) as rt:
            await rt.add_function(
                "orders", "handlers.orders:process_orders", environment={"ORDERS_LEDGER": ledger}
            )
            stream = await rt.create_stream("orders", shard_count=1)
            orders = [
                ({"id": i, "type": "buy" if i % 2 else "sell", "quantity": 50 * i}, "customer-7")
                for i in range(9)
            ]
            orders.append(({"id": 9, "type": "sell", "quantity": 1}, "vip-1"))
            records: list[tuple[str | bytes, str]] = [(json.dumps(o), key) for o, key in orders]
            records.insert(3, (b"\x00\x01 a binary record, not JSON", "customer-7"))
            placed = await stream.put_records(records)
            print(f"put {len(records)} records into {placed[0][0]}")

            filters = [
                {"data": {"type": ["buy"], "quantity": [{"numeric": [">", 100]}]}},
                {"partitionKey": ["vip-1"]},
            ]
            mapping = await rt.add_stream_mapping("orders", "orders", batch_size=10, filters=filters)
            for pattern in mapping.config.filters:
                print("filter:", pattern)
            while (await mapping.checkpoints()).get(placed[0][0]) != placed[-1][1]:
                await asyncio.sleep(0.01)
            await rt.wait_idle()

            print("processed, in order:", [json.loads(line)["id"] for line in _lines(ledger)])
            print(f"invocations: {int(rt.metrics.counter('Invocations', 'orders'))}")
            print("checkpoint:", (await mapping.checkpoints())[placed[0][0]], "(the last record)")


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


if __name__ == "__main__":
    asyncio.run(main())
