"""The no-op task of huey, the peer the async benchmark (``async_queue.py``) measures.

Imported by the benchmark and by huey's consumer, which it starts with the repository root
as working directory: ``python -m huey.bin.huey_consumer benchmarks._peer_huey.huey ...``.
The SQLite file is the one the benchmark names in ``FNRT_BENCH_HUEY_DB`` (a temp dir).
"""

from __future__ import annotations

import os
from typing import Any

from huey import SqliteHuey

# huey's defaults: WAL, SQLite's default synchronous (FULL), results stored.
huey = SqliteHuey("fnrt-bench", filename=os.environ["FNRT_BENCH_HUEY_DB"])


@huey.task()
def noop(payload: dict[str, Any]) -> bool:
    # Returns a value so huey stores a result per task: the benchmark counts the result
    # store to know every task is done (as fnrt writes a "done" row per event).
    return True
