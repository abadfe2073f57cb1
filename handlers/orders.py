"""Order processing from a stream: the shape of a real Kinesis consumer.

Each record's data is a JSON order. The handler applies the batch's orders to a ledger
(a JSON-lines file named by ``ORDERS_LEDGER``) in one append once the whole batch is
good, so the ledger holds exactly what succeeded. An order it cannot process (``"poison":
true``, say a malformed order) raises, failing the batch; an order with ``"fail_times": n``
fails its first ``n`` deliveries (a flaky downstream), counted in files under
``ORDERS_ATTEMPTS``.
"""

import base64
import json
import os
import time

import fnrt


class BadOrder(Exception):
    pass


def _order(record):
    return json.loads(base64.b64decode(record["kinesis"]["data"]))


def _check(order):
    if order.get("poison"):
        raise BadOrder(f"order {order.get('id')!r} is malformed and can never be processed")
    times = order.get("fail_times", 0)
    if times:
        path = os.path.join(os.environ["ORDERS_ATTEMPTS"], str(order["id"]))
        with open(path, "ab") as f:
            f.write(b".")
            seen = f.tell()
        if seen <= times:
            raise ConnectionError(f"payment service unavailable for order {order['id']} (try {seen})")


def _append(lines):
    ledger = os.environ.get("ORDERS_LEDGER")
    if ledger and lines:
        with open(ledger, "a") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))


def _entry(record, order):
    kinesis = record["kinesis"]
    return {"seq": kinesis["sequenceNumber"], "key": kinesis["partitionKey"], "id": order.get("id")}


@fnrt.handler(timeout=30)
def process_orders(event, context):
    """All or nothing: any bad order fails the whole batch."""
    done = []
    for record in event["Records"]:
        order = _order(record)
        _check(order)
        done.append(_entry(record, order))
    _append(done)
    return {"processed": len(done)}


@fnrt.handler(timeout=600)
def process_when_released(event, context):
    """``process_orders``, but only once the file named by ``ORDERS_RELEASE`` exists (lets
    a test hold a batch in flight)."""
    release = os.environ["ORDERS_RELEASE"]
    while not os.path.exists(release):
        time.sleep(0.002)
    return process_orders(event, context)


@fnrt.handler(timeout=30)
def process_orders_partial(event, context):
    """Reports the first bad order as a batch item failure (Lambda's partial batch
    response): the records before it are done, it and the rest are retried."""
    done = []
    for record in event["Records"]:
        order = _order(record)
        try:
            _check(order)
        except Exception:
            _append(done)
            return {"batchItemFailures": [{"itemIdentifier": record["kinesis"]["sequenceNumber"]}]}
        done.append(_entry(record, order))
    _append(done)
    return {"batchItemFailures": []}


@fnrt.handler(timeout=30)
def nightly_report(event, context):
    """A slow job that holds a concurrency slot for ``event["seconds"]``."""
    time.sleep(event.get("seconds", 1))
    return {"report": "done"}


@fnrt.handler(timeout=30)
def archive_events(event, context):
    """Stores every event as it arrived, one JSON line each (an audit archiver)."""
    with open(os.environ["ORDERS_LEDGER"], "a") as f:
        f.write(json.dumps(event) + "\n")


@fnrt.handler
def discard(event, context):
    """A no-op consumer (the throughput benchmark)."""
    return None


@fnrt.handler(timeout=30)
def measure_batches(event, context):
    """Notes each batch's record count and its size as Lambda sends it (compact JSON)."""
    size = len(json.dumps(event, separators=(",", ":")).encode())
    _append([{"records": len(event["Records"]), "bytes": size}])
