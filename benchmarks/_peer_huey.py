"""The no-op task of huey, the peer the async benchmark (``async_queue.py``) measures.

Imported by the benchmark and by huey's consumer, which it starts with the repository root
as working directory: ``python -m huey.bin.huey_consumer benchmarks._peer_huey.huey ...``.
The SQLite file is the one the benchmark names in ``FNRT_BENCH_HUEY_DB`` (a temp dir).

Completion is counted without touching huey's store: each worker process sends one byte
per completed task down a Unix socket the benchmark listens on (``FNRT_BENCH_HUEY_DONE``).
Storing a result per task instead would add one more fsync'd SQLite commit per task to the
three huey already does (enqueue, dequeue, revoke-flag delete) and slow the pipeline measured.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from huey import SqliteHuey
from huey.signals import SIGNAL_COMPLETE

# huey's defaults: WAL, SQLite's default synchronous (FULL); the no-op returns None, which
# huey does not store.
huey = SqliteHuey("fnrt-bench", filename=os.environ["FNRT_BENCH_HUEY_DB"])


@huey.task()
def noop(payload: dict[str, Any]) -> None:
    return None


_done: tuple[int, socket.socket] | None = None  # (pid, connection): workers are forked


@huey.signal(SIGNAL_COMPLETE)
def _count_done(signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
    global _done
    path = os.environ.get("FNRT_BENCH_HUEY_DONE")
    if not path:
        return
    if _done is None or _done[0] != os.getpid():
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        _done = (os.getpid(), conn)
    _done[1].sendall(b".")
