"""The no-op actor of dramatiq, the peer the async benchmark (``async_queue.py``) measures.

Imported by the benchmark and by the dramatiq worker it starts with the repository root as
working directory: ``python -m dramatiq benchmarks._peer_dramatiq --processes 2 ...``.
The broker is the redis-server the benchmark started, named in ``FNRT_BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["FNRT_BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop(payload: dict[str, Any]) -> None:
    return None
