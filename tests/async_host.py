"""A host process for the crash test: ``python -m tests.async_host STATE_DIR OUTBOX ENQUEUE EXPECT``.

Enqueues ``ENQUEUE`` receipts (``send_receipt`` appends each to ``OUTBOX``), prints
``enqueued``, then works until the queue in ``STATE_DIR`` holds ``EXPECT`` events, all
done, and prints ``drained``. The test kills the first host with SIGKILL mid-work and starts
a second on the same state directory.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import structlog

import fnrt


async def main(state_dir: str, outbox: str, enqueue: int, expect: int, durability: str) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    async with fnrt.Runtime(state_dir=state_dir, durability=durability) as rt:  # type: ignore[arg-type]
        invoker = rt._async
        invoker.lease_margin = 0.3  # leases of a dead host expire 0.3 s after its timeout
        await rt.add_function("send", "handlers.payments:send_receipt", timeout=1, reserved_concurrency=4)
        await asyncio.gather(
            *[
                rt.invoke("send", {"order": n, "outbox": outbox, "delay": 0.02}, "Event")
                for n in range(enqueue)
            ]
        )
        print("enqueued", flush=True)
        while True:
            counts = await rt.async_queue_counts("send")
            if counts.get("done", 0) == expect and sum(counts.values()) == expect:
                break
            await asyncio.sleep(0.02)
        print("drained", flush=True)


if __name__ == "__main__":
    durability = sys.argv[5] if len(sys.argv) > 5 else "fsync"
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), durability))
