"""Async invoke in a few seconds: retries, a success destination, a failure destination
and a dead-letter sink.

    python -m examples.async_retries

Three card charges are queued with ``invocation_type="Event"``: one succeeds at once, one
hits a flaky gateway twice and succeeds on its second retry, one is declined every time
and ends, after two retries, in the on-failure destination and the dead-letter sink.
Lambda waits about 1 and 2 minutes between retries; here the delays are 0.5 and 1 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import structlog

import fnrt


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory(prefix="fnrt-example-") as tmp:
        ledger = str(Path(tmp) / "gateway-ledger")
        async with fnrt.Runtime(state_dir=tmp) as rt:
            await rt.deploy("handlers.payments")
            rt.configure_async(
                "charge",
                max_retry_attempts=2,
                retry_delays=[0.5, 1.0],
                on_success="sink:receipts",
                on_failure="sink:failed-payments",
                dead_letter="sink:payments-dlq",
            )
            orders = {
                "A-100 (good card)": {"order": "A-100", "amount": 25},
                "A-101 (flaky gateway)": {"order": "A-101", "amount": 40, "gateway_failures": 2},
                "A-102 (declined card)": {"order": "A-102", "amount": 99, "card": "declined", "last4": "42"},
            }
            started = time.monotonic()
            queued = {}
            for label, order in orders.items():
                queued[label] = await rt.invoke("charge", {**order, "ledger": ledger}, "Event")
                print(f"queued {label:<24} request id {queued[label]}")
            print("\n(each invoke returned once the event was on disk; pollers work in the background)\n")

            pending = dict(queued)
            while pending:
                for label, request_id in list(pending.items()):
                    event = await rt.async_event(request_id)
                    if event is not None and event["state"] in ("done", "failed"):
                        del pending[label]
                        took = time.monotonic() - started
                        print(
                            f"{took:5.2f}s  {label:<24} {event['state']:<6} {event['condition']:<16} "
                            f"after {event['invokes']} invocation(s)"
                        )
                await asyncio.sleep(0.05)

            print("\non-success destination 'receipts':")
            for record in await rt.destination_records("receipts"):
                context = record["requestContext"]
                print(f"  {context['condition']}: {json.dumps(record['responsePayload'])}")
            print("\non-failure destination 'failed-payments' (Lambda's invocation record):")
            for record in await rt.destination_records("failed-payments"):
                print(json.dumps(record, indent=2)[:1200])
            print("\ndead-letter sink 'payments-dlq' (the event itself, with the error as attributes):")
            for message in await rt.destination_records("payments-dlq"):
                print(f"  {json.dumps(message)}")
            counters = rt.metrics.snapshot()["counters"]
            print("\nmetrics:", {k: v for k, v in counters.items() if k.startswith("Async") or k == "Errors"})


if __name__ == "__main__":
    asyncio.run(main())
