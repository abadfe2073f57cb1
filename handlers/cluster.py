"""Handlers for the many-hosts test and example: each writes what it did to a ledger file
of its host (``$CLUSTER_DIR/ledger-$CLUSTER_HOST.jsonl``), and measures how many handlers
run at that moment across every host on this machine (a marker file per running handler
in ``$CLUSTER_DIR/running``)."""

import base64
import json
import os
import time


def _dir():
    return os.environ["CLUSTER_DIR"]


def _host():
    return os.environ.get("CLUSTER_HOST", "?")


def _enter():
    """Mark this handler running; return the marker and how many are running now."""
    running = os.path.join(_dir(), "running")
    marker = os.path.join(running, f"{os.getpid()}-{time.monotonic_ns()}")
    with open(marker, "w"):
        pass
    return marker, len(os.listdir(running))


def _append(lines):
    path = os.path.join(_dir(), f"ledger-{_host()}.jsonl")
    with open(path, "a") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))  # one write: one append


def work(event, context):
    """An Event invoke: sleeps ``sleep`` seconds, then records its ``id``."""
    marker, running = _enter()
    try:
        time.sleep(event.get("sleep", 0))
        _append(
            [{"kind": "event", "id": event["id"], "host": _host(), "running": running, "t": time.monotonic()}]
        )
    finally:
        os.unlink(marker)
    return {"id": event["id"]}


def consume(event, context):
    """A stream batch: records each record's ``id`` (from its JSON data), key, shard and
    sequence number, in the batch's order."""
    marker, running = _enter()
    try:
        lines = []
        for record in event["Records"]:
            kinesis = record["kinesis"]
            data = json.loads(base64.b64decode(kinesis["data"]))
            lines.append(
                {
                    "kind": "record",
                    "id": data["id"],
                    "key": kinesis["partitionKey"],
                    "seq": kinesis["sequenceNumber"],
                    "shard": record["eventID"].split(":")[0],
                    "host": _host(),
                    "running": running,
                    "t": time.monotonic(),
                }
            )
        _append(lines)
    finally:
        os.unlink(marker)
    return {}
