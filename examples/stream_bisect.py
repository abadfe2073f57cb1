"""A poison record isolated by bisection: ``python -m examples.stream_bisect``.

Twelve orders go to a stream; one of them is malformed and makes the order handler fail
every time. With ``bisect_on_error`` the failing batch is split in halves and retried
until the bad order stands alone; it goes to the on-failure destination (Lambda's record
says where it is, without its data) and every other order is processed once, in order.
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
            orders = [{"id": i, "amount": 10 * i} for i in range(12)]
            orders[7]["poison"] = True
            placed = await stream.put_records([(json.dumps(o), "customer-42") for o in orders])
            print(f"put 12 orders into {placed[0][0]}; order 7 ({placed[7][1]}) is malformed")

            mapping = await rt.add_stream_mapping(
                "orders",
                "orders",
                batch_size=12,
                bisect_on_error=True,
                max_retry_attempts=0,
                on_failure="orders-dlq",
            )
            while not await mapping.failure_records() or _count(ledger) < 11:
                await asyncio.sleep(0.01)

            print(
                f"invocations: {int(rt.metrics.counter('Invocations', 'orders'))} "
                f"(12 -> 6+6 -> 3+3 -> 1+2 -> 1+1)"
            )
            print("processed, in order:", [json.loads(line)["id"] for line in _lines(ledger)])
            [failure] = await mapping.failure_records()
            print("on-failure record:", json.dumps(failure["KinesisBatchInfo"], indent=2))
            print("condition:", failure["requestContext"]["condition"])


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def _count(path: str) -> int:
    return len(_lines(path))


if __name__ == "__main__":
    asyncio.run(main())
