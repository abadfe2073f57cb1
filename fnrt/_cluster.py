"""A host among many on one shared store: heartbeats, wake-ups from the other hosts, and
the cluster as the store sees it (``cluster_stats``). The database is the only coordination
point; nothing here talks to another host directly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._clock import Clock
from ._registry import FunctionRecord, FunctionRegistry
from .store import Store

if TYPE_CHECKING:
    from ._concurrency import ConcurrencyLimiter
    from ._state import State
    from .sources._async import AsyncSource
    from .sources._streams import StreamSource

__all__ = ["ClusterMember"]


class ClusterMember:
    """Mixed into :class:`~fnrt.Runtime`: what it needs of the runtime is declared here."""

    clock: Clock
    host_id: str
    host_info: dict[str, Any]
    _durable: bool
    _registry: FunctionRegistry
    _limiter: ConcurrencyLimiter
    _state: State
    _async: AsyncSource
    _streams: StreamSource

    if TYPE_CHECKING:

        def _check_running(self) -> None: ...
        def functions(self) -> dict[str, FunctionRecord]: ...

    #: How often this host says it is alive, and how long that holds without a renewal.
    HOST_HEARTBEAT = 5.0
    HOST_TTL = 15.0

    async def _store_opened(self, store: Store) -> None:
        """Subscribe to the store's wake-ups (PostgreSQL's LISTEN/NOTIFY), so an enqueue
        or a put on another host wakes this host's pollers at once. Polling stays the
        fallback: a store without wake-ups, or a lost notification, costs a poll
        interval, never an event."""
        add = getattr(store, "add_wake_listener", None)
        if add is not None:
            await add(self._on_wake)

    def _on_wake(self, kind: str, name: str) -> None:
        if kind == "*":
            self._async.wake()
        elif kind == "event" and name in self._registry:  # ours to run
            self._async.wake(name)
        if kind == "stream":
            self._streams.wake(name)
        elif kind == "*":
            self._streams.wake("*")

    async def _heartbeat_once(self) -> None:
        """Say this host is alive (``cluster_stats``' host list), then wait."""
        store = await self._state.store()
        await store.streams.register_host(
            self.host_id,
            {**self.host_info, "functions": sorted(self.functions())},
            self.clock.time(),
            self.HOST_TTL,
        )
        await self.clock.sleep(self.HOST_HEARTBEAT)

    async def _leave_cluster(self) -> None:
        store = self._state.opened
        if store is None:
            return
        remove = getattr(store, "remove_wake_listener", None)
        if remove is not None:
            remove(self._on_wake)
        if self._durable:
            await store.streams.unregister_host(self.host_id)

    @property
    def shares_store(self) -> bool:
        """Whether this runtime runs on an open durable store that other hosts may share
        (``cluster_stats()`` then reads the cluster from it without opening anything)."""
        return self._durable and self._state.opened is not None

    async def cluster_stats(self, *, queue_states: Sequence[str] | None = None) -> dict[str, Any]:
        """The cluster as the store sees it (any host gives the same answer): the live
        ``hosts`` (id, info, last heartbeat), the async ``queue`` events by state (all
        functions, and per function this host knows; ``queue_states`` counts only those,
        ``("queued", "leased")`` for the depth without the day of finished events), each
        stream mapping's shard leases per host (``streams``), and ``in_flight`` per
        function cluster-wide (slots leased from the counting service; on a store without
        one, this host's calls)."""
        self._check_running()
        store = await self._state.store()
        now = self.clock.time()
        hosts = [{**h, "seen_ago": round(now - h["seen_at"], 3)} for h in await store.streams.live_hosts(now)]
        queue: dict[str, Any] = {"total": await store.queue.counts(states=queue_states), "functions": {}}
        for name in sorted(self.functions()):
            queue["functions"][name] = await store.queue.counts(name, states=queue_states)
        streams: dict[str, Any] = {}
        for row in await store.streams.mappings():
            leases = await store.streams.leases(row.uuid, now=now)
            per_host: dict[str, int] = {}
            shards: dict[str, Any] = {}
            for shard_id, (owner, expires) in sorted(leases.items()):
                host = owner.rsplit("/", 1)[0]
                live = expires > now
                shards[shard_id] = {"host": host, "expires_in": round(expires - now, 3), "live": live}
                if live:
                    per_host[host] = per_host.get(host, 0) + 1
            streams[row.uuid] = {
                "stream": row.stream,
                "function": row.function,
                "leases_per_host": per_host,
                "shards": shards,
            }
        in_flight = await self._limiter.cluster_in_flight()
        return {
            "host": self.host_id,
            "store": store.stats(),
            "hosts": hosts,
            "queue": queue,
            "streams": streams,
            "in_flight": in_flight,
        }
