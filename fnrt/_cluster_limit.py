"""Concurrency limits that hold across hosts: slots leased in blocks from a counting service.

When hosts share a counting service (the PostgreSQL store's ``slots``), Lambda's global
limit and each function's reserved concurrency hold over all of them:
:class:`ClusterLimiter` admits a call only into a slot this host has **leased** from the
cluster, so the sum over hosts never exceeds what the service granted (it never grants
past the limits; see :mod:`fnrt.store.postgres._slots`).

How a call is admitted
----------------------
- Fast path (a dictionary lookup, no I/O): the function's lease on this host has a free
  slot, still inside its expiry. The local checks of :class:`ConcurrencyLimiter` run too
  (they are implied by the cluster's, and keep the per-host statistics).
- Otherwise the caller awaits one round trip: a lease request for the callers waiting
  (concurrent callers of one function share one request in flight) plus, when the
  cluster has room, a few extra slots so the next calls take the fast path. The block of
  extras adapts: 1 at first, doubling (up to ``max_block``, and never above a sixteenth
  of the function's pool, so one host cannot hog a small limit) while full grants keep
  being used up, back to 1 as soon as a grant comes back short (the cluster is nearly
  full) and halved when the surplus is given back idle.
- A request the cluster cannot satisfy leaves a marker (``slots.want``) and is retried
  **once** after ``hold`` seconds; then the call is throttled with Lambda's reason
  (``ReservedFunctionConcurrentInvocationLimitExceeded`` for a function with reserved
  concurrency, ``ConcurrentInvocationLimitExceeded`` otherwise). A throttle on a cluster
  host therefore costs about three round trips and ``hold`` seconds.

Fairness
--------
A host that holds a function's slots would otherwise keep them for ever while its own
callers reuse each freed slot at once. So every ``hold`` seconds a host whose block of a
function ran empty lately asks whether another host was refused that function lately
(``slots.wanted``); if so, for the next second its freed slots go straight back to the
cluster (one release round trip each) and it keeps no surplus, so every host competes for
them on equal terms, one round trip each, until the demand is gone. Blocks never exceed a
sixteenth of the pool, which bounds what idle surplus can withhold before it is given back.

What comes back
---------------
A background loop (supervised, one per runtime) gives back surplus a function has not
needed for ``hold`` seconds (at once when the cluster is contended) and renews every
lease this host holds each ``ttl / 3`` seconds. A host that dies stops renewing: its
slots count for nothing once its lease expires (``ttl``, judged by the database's clock
by default), and the other hosts admit into them. Closing a runtime gives everything back
at once.

When the counting service cannot be reached
-------------------------------------------
Never an over-admit. Slots of a block already leased, inside its expiry, still admit
calls (the cluster counts them as this host's until the lease expires, so no other host
can have them). A call that needs a round trip fails with
:class:`~fnrt.errors.StoreUnavailable` (a ``ServiceException``, HTTP 500): *not* a throttle,
because a throttle tells the caller the cluster is at its limit, which nobody knows; an
SDK retries a 500 as it does a 429. A host that cannot renew stops using its block when
the lease could have expired (judged conservatively on its own monotonic clock, from
when the last grant or renewal was *sent*), so it never admits into slots the cluster
may already have given to another host. Calls already running when a lease lapses keep
running (nothing stops a handler midway): keep ``ttl`` above the time the database may be
unreachable plus your functions' timeout if that must never overlap.

Leases are per function *name*: the calls of a removed function's old generation keep
their slots until they end, like on one host.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._clock import Clock
from ._concurrency import ConcurrencyLimiter, FunctionCounter, Slot
from ._lambda import GLOBAL_REASON, RESERVED_REASON, THROTTLE_MESSAGE
from .errors import InvalidConfig, RuntimeClosed, StoreUnavailable, TooManyRequests

if TYPE_CHECKING:
    from ._supervise import Supervisor

__all__ = ["ClusterLimit", "ClusterLimiter", "SlotService", "cluster_limiter"]

#: A grant comes back short: stay conservative (no extras, give surplus back at once) this long.
_CONTENDED_FOR = 1.0


class SlotService(Protocol):
    """The counting service: :class:`fnrt.store.postgres.PgSlots` implements it."""

    async def try_acquire(
        self,
        host: str,
        function: str,
        n: int,
        limit: int,
        reserved: int | None,
        ttl: float,
        *,
        now: float | None = None,
    ) -> int: ...

    async def release(self, host: str, function: str, n: int) -> None: ...

    async def renew(self, host: str, ttl: float, *, now: float | None = None) -> dict[str, int]: ...

    async def in_use(self, *, now: float | None = None) -> dict[str, dict[str, int]]: ...

    async def want(self, host: str, function: str, seconds: float, *, now: float | None = None) -> None: ...

    async def wanted(self, host: str, functions: list[str], *, now: float | None = None) -> set[str]: ...

    async def reserve(
        self, reservations: dict[str, int], ttl: float, *, now: float | None = None
    ) -> dict[str, int]: ...


def _default_host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise InvalidConfig(f"{attribute.name} must be a positive number of seconds, got {value!r}")


def _block(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise InvalidConfig(f"max_block must be an integer from 1 to 1000, got {value!r}")


@attrs.frozen
class ClusterLimit:
    """How a runtime leases concurrency from the cluster (``Runtime(cluster_limit=...)``).

    ``slots``: the counting service (``None``: the store's, when it has one, as the
    PostgreSQL store does). ``host``: this host's id in the leases (default: hostname,
    pid and a random suffix). ``ttl``: a lease's life; renewed every ``ttl / 3``, so a
    dead host's slots come back within ``ttl``. ``hold``: how long unused surplus is kept
    before it is given back, and the wait before the one retry of a short lease.
    ``max_block``: the most slots one lease request takes beyond the callers waiting.
    """

    slots: SlotService | None = attrs.field(default=None, eq=False)
    host: str | None = None
    ttl: float = attrs.field(default=10.0, validator=_positive)
    hold: float = attrs.field(default=0.05, validator=_positive)
    max_block: int = attrs.field(default=8, validator=_block)

    def __attrs_post_init__(self) -> None:
        if self.hold * 4 > self.ttl:
            raise InvalidConfig(f"hold ({self.hold} s) must be at most a quarter of ttl ({self.ttl} s)")


class _Lease:
    """This host's slots of one function: ``held`` granted by the cluster, ``used`` of
    them admitted, usable until ``valid_until`` (this host's monotonic clock)."""

    __slots__ = (
        "block",
        "contended_at",
        "exhausted_at",
        "held",
        "last_need",
        "name",
        "owed",
        "paying",
        "pending",
        "used",
        "valid_until",
        "version",
        "waiting",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = 0
        self.used = 0
        self.valid_until = float("-inf")
        self.block = 1
        self.pending: asyncio.Future[bool] | None = None
        self.waiting = 0
        self.version = 0  # bumped by every grant and give-back: a stale renewal is ignored
        self.last_need = float("-inf")
        self.contended_at = float("-inf")
        self.exhausted_at = float("-inf")  # last time a caller found the block empty
        self.owed = 0  # slots dropped locally, to be given back (a give-back is in flight)
        self.paying = False


class LeasedSlot(Slot):
    """A slot drawn from a leased block: its release frees it in the block (the block's
    surplus goes back to the cluster later, in the background)."""

    __slots__ = ("_lease",)

    def __init__(self, limiter: ConcurrencyLimiter, counter: FunctionCounter, lease: _Lease) -> None:
        super().__init__(limiter, counter)
        self._lease = lease

    def release(self) -> None:
        limiter = self._limiter
        if limiter is None:
            return
        super().release()
        lease = self._lease
        lease.used -= 1
        assert isinstance(limiter, ClusterLimiter)
        if limiter.clock.monotonic() - lease.contended_at < _CONTENDED_FOR:
            limiter._yield_slot(lease)  # another host waits: the freed slot goes back


class ClusterLimiter(ConcurrencyLimiter):
    """A :class:`ConcurrencyLimiter` whose slots are leased from a :class:`SlotService`."""

    def __init__(
        self,
        limit: int,
        unreserved_floor: int,
        slots: SlotService,
        clock: Clock,
        log: Any,
        *,
        host: str | None = None,
        ttl: float = 10.0,
        hold: float = 0.05,
        max_block: int = 8,
    ) -> None:
        super().__init__(limit, unreserved_floor)
        self.slots = slots
        self.clock = clock
        self.log = log
        self.host = host or _default_host()
        self.ttl = ttl
        self.hold = hold
        self.max_block = max_block
        # A lease is usable a little less long than the cluster keeps it.
        self._valid_for = ttl - min(ttl * 0.1, 1.0)
        self._leases: dict[str, _Lease] = {}
        self._renew_at = float("-inf")
        self._cluster: dict[str, dict[str, int]] = {}
        self._requests: set[asyncio.Future[bool]] = set()
        self._closed = False
        self.round_trips = 0
        # Reservations: this host's not yet published (a reservation taken away is never
        # published, see set_reserved), and every host's as the cluster last said them
        # (what a new reservation must fit beside).
        self._unpublished: dict[str, int] = {}
        self.cluster_reserved: dict[str, int] = {}

    # -- reservations: published to the cluster ----------------------------------------

    def set_reserved(self, counter: FunctionCounter, reserved: int | None) -> None:
        had = counter.reserved
        super().set_reserved(counter, reserved)
        if counter.registered and reserved != had:
            # A reservation taken away is never published: the row is the function's, and
            # another host may still reserve it. This host stops repeating it, and it stops
            # counting once no live host does (an under-admit for a minute at most).
            if reserved is None:
                self._unpublished.pop(counter.name, None)
            else:
                self._unpublished[counter.name] = reserved

    def unregister(self, name: str) -> None:
        self._unpublished.pop(name, None)
        super().unregister(name)

    def _reserved_elsewhere(self, names: set[str]) -> int:
        """What the other hosts' functions reserve (not ``names``, not this host's)."""
        return sum(
            reserved
            for name, reserved in self.cluster_reserved.items()
            if name not in names and name not in self._counters and name not in self._unpublished
        )

    def _reservations_note(self, elsewhere: int) -> str:
        if not elsewhere:
            return ""
        names = sorted(n for n in self.cluster_reserved if n not in self._counters)
        return (
            f"; {elsewhere} of them reserved by other hosts for {', '.join(names)} (a reservation "
            "no live host repeats stops counting within a minute)"
        )

    async def publish(self, *, all_of_them: bool = False) -> None:
        """Tell the cluster this host's changed reservations (``all_of_them``: every one,
        to say they are still this host's), and learn everyone's. Changes go before this
        host's next lease request and from the background loop, so a reservation counts on
        every host before its function is first called; all of them at each renewal."""
        changes = dict(self._unpublished)
        if all_of_them:
            for name, counter in self._counters.items():
                if counter.reserved is not None:
                    changes.setdefault(name, counter.reserved)
        self.round_trips += 1
        self.cluster_reserved = await self.slots.reserve(changes, self.ttl, now=self.clock.time())
        for name, reserved in changes.items():
            if name in self._unpublished and self._unpublished[name] == reserved:
                del self._unpublished[name]

    # -- admission --------------------------------------------------------------------

    def acquire(self, counter: FunctionCounter) -> Slot | None:
        """A slot from this host's leased block, or ``None`` when the block is empty (or
        may have expired): then :meth:`acquire_async` leases more. Raises
        :class:`TooManyRequests` when this host alone is already at a limit."""
        lease = self._leases.get(counter.name)
        if lease is None or lease.used >= lease.held:
            return None
        now = self.clock.monotonic()
        if now >= lease.valid_until:
            return None
        ConcurrencyLimiter.acquire(self, counter)  # the local checks and counts
        lease.used += 1
        lease.last_need = now
        return LeasedSlot(self, counter, lease)

    async def acquire_async(self, counter: FunctionCounter) -> Slot:
        """Lease slots from the cluster (one round trip, shared with concurrent callers)
        and take one; throttle with Lambda's reason when the cluster is at the limit
        (after one retry, ``hold`` seconds later). Raises
        :class:`~fnrt.errors.StoreUnavailable` when the counting service cannot be
        reached: nothing is admitted that the cluster did not grant."""
        if self._closed:
            raise RuntimeClosed("the runtime is closed: its slots went back to the cluster")
        lease = self._leases.get(counter.name)
        if lease is None:
            lease = self._leases[counter.name] = _Lease(counter.name)
        short = 0
        for _ in range(8):  # bounded: each pass either admits, or saw the cluster short
            self._check_local(counter)
            slot = self.acquire(counter)
            if slot is not None:
                return slot
            lease.last_need = lease.exhausted_at = self.clock.monotonic()
            if await self._request(lease, counter):
                continue  # granted: take it on the next pass (unless a caller got there first)
            slot = self.acquire(counter)
            if slot is not None:
                return slot
            short += 1
            if short >= 2:
                break
            await self.clock.sleep(self.hold)  # others give back idle surplus meanwhile
        raise self._throttle(counter)

    def _check_local(self, counter: FunctionCounter) -> None:
        if counter.reserved is not None:
            if counter.in_flight >= counter.reserved:
                raise self._throttle(counter)
        elif self._unreserved_in_flight >= self.limit - self._reserved_total or not counter.registered:
            raise self._throttle(counter)

    def _throttle(self, counter: FunctionCounter) -> TooManyRequests:
        counter.throttles += 1
        self.throttles += 1
        reason = RESERVED_REASON if counter.reserved is not None else GLOBAL_REASON
        return TooManyRequests(reason, THROTTLE_MESSAGE)

    async def _request(self, lease: _Lease, counter: FunctionCounter) -> bool:
        """Wait for the lease request in flight for this function (start one if there
        is none); ``True`` when it granted every caller it was made for."""
        lease.waiting += 1
        try:
            task = lease.pending
            if task is None:
                task = lease.pending = asyncio.ensure_future(self._lease_block(lease, counter))
                self._requests.add(task)
                task.add_done_callback(self._request_done)
            return await asyncio.shield(task)
        finally:
            lease.waiting -= 1

    def _request_done(self, task: asyncio.Future[bool]) -> None:
        self._requests.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it (or had gone)

    def _block_cap(self, counter: FunctionCounter) -> int:
        pool = counter.reserved if counter.reserved is not None else self.limit
        return max(1, min(self.max_block, pool // 16))

    async def _lease_block(self, lease: _Lease, counter: FunctionCounter) -> bool:
        try:
            await asyncio.sleep(0)  # callers arriving in this loop turn share the request
            need = max(1, lease.waiting - max(0, lease.held - lease.used))
            now = self.clock.monotonic()
            contended = now - lease.contended_at < _CONTENDED_FOR
            extra = 0 if contended else min(lease.block, self._block_cap(counter)) - 1
            if self._unpublished:
                await self.publish()
            self.round_trips += 1
            granted = await self.slots.try_acquire(
                self.host,
                lease.name,
                need + extra,
                self.limit,
                counter.reserved,
                self.ttl,
                now=self.clock.time(),
            )
        finally:
            lease.pending = None
        lease.version += 1
        done = self.clock.monotonic()
        if granted > 0:
            # Still inside the lease: the cluster added to it. Past it (or never held):
            # the cluster's row may or may not have lapsed; count only this grant (an
            # under-count: the next renewal says exactly what is held).
            lease.held = lease.held + granted if done < lease.valid_until else granted
            lease.valid_until = now + self._valid_for
        if granted < need + extra:
            lease.contended_at = done
            lease.block = 1
        else:
            lease.block = min(lease.block * 2, self._block_cap(counter))
        if granted < need:  # tell the hosts holding this function's slots to give freed ones back
            try:
                await self.slots.want(self.host, lease.name, _CONTENDED_FOR, now=self.clock.time())
            except StoreUnavailable as exc:  # a hint only: the grant above stands
                self.log.warning("could not mark the demand for slots", function=lease.name, error=str(exc))
        return granted >= need

    def _yield_slot(self, lease: _Lease) -> None:
        """Drop one free slot of ``lease`` and give it back to the cluster at once."""
        if lease.held <= lease.used or self._closed:
            return
        lease.held -= 1
        lease.owed += 1
        lease.version += 1
        if not lease.paying:
            lease.paying = True
            task = asyncio.ensure_future(self._pay_back(lease))
            self._requests.add(task)
            task.add_done_callback(self._request_done)

    async def _pay_back(self, lease: _Lease) -> bool:
        try:
            while lease.owed:
                n, lease.owed = lease.owed, 0
                try:
                    await self.slots.release(self.host, lease.name, n)
                except StoreUnavailable as exc:  # they stay counted until the lease expires
                    self.log.warning("could not give slots back", function=lease.name, error=str(exc))
                    lease.owed = 0
                    return False
            return True
        finally:
            lease.paying = False
            lease.version += 1

    # -- background: give back, renew ---------------------------------------------------

    def start(self, supervisor: Supervisor) -> None:
        supervisor.loop("cluster-slots", self._maintain_once)

    async def _maintain_once(self) -> None:
        await self.clock.sleep(self.hold)
        if self._unpublished:
            await self.publish()
        await self.heed_demand()
        await self.return_surplus()
        if self.clock.monotonic() >= self._renew_at:
            await self.renew()

    async def return_surplus(self, *, force: bool = False) -> int:
        """Give back the slots this host holds but does not use: a function's surplus once
        it has not needed more for ``hold`` seconds, or at once when the cluster is
        contended; a busy function keeps up to one block. ``force``: all of it, now.
        Returns how many slots were given back."""
        now = self.clock.monotonic()
        returned = 0
        for lease in list(self._leases.values()):
            surplus = lease.held - lease.used
            if surplus <= 0 or lease.pending is not None:
                continue
            if force or now - lease.contended_at < _CONTENDED_FOR:
                keep = 0
            elif now - lease.last_need >= self.hold:
                keep = 0
                lease.block = max(1, lease.block // 2)
            else:
                keep = lease.block - 1
            n = surplus - keep
            if n <= 0:
                continue
            lease.held -= n  # first: a give-back that fails only under-admits
            lease.version += 1
            returned += n
            try:
                await self.slots.release(self.host, lease.name, n)
            finally:
                lease.version += 1  # a renewal that crossed it must not restore the old count
        return returned

    async def heed_demand(self) -> None:
        """Learn which held functions another host was refused lately: those give freed
        slots back instead of reusing them, and keep no surplus. Asked only for functions
        whose block ran empty lately (one with surplus gives it back anyway), so a host
        drawing on a roomy block makes no round trip for it."""
        now = self.clock.monotonic()
        busy = [
            name
            for name, lease in self._leases.items()
            if lease.held > 0 and now - lease.exhausted_at < _CONTENDED_FOR
        ]
        if not busy:
            return
        for name in await self.slots.wanted(self.host, busy, now=self.clock.time()):
            lease = self._leases[name]
            lease.contended_at = now
            lease.block = 1

    async def renew(self) -> None:
        """Extend this host's leases (and learn what it still holds: a lease that lapsed
        while this host could not renew is gone), and refresh the cluster-wide view."""
        self._renew_at = self.clock.monotonic() + self.ttl / 3
        if any(lease.held or lease.used for lease in self._leases.values()):
            versions = {name: lease.version for name, lease in self._leases.items()}
            sent = self.clock.monotonic()
            held = await self.slots.renew(self.host, self.ttl, now=self.clock.time())
            for name, lease in self._leases.items():
                if lease.pending is not None or lease.paying or versions.get(name) != lease.version:
                    continue  # a grant or give-back crossed the renewal: keep what we know
                lease.held = held.get(name, 0)
                if name in held:
                    lease.valid_until = sent + self._valid_for
        self._cluster = await self.slots.in_use(now=self.clock.time())
        await self.publish(all_of_them=True)  # still this host's; and learn the others'

    async def aclose(self) -> None:
        """Give every slot this host holds back to the cluster (calls still unwinding
        release into nothing). If the service is unreachable the leases expire instead."""
        self._closed = True
        if self._requests:
            await asyncio.gather(*self._requests, return_exceptions=True)
        for lease in self._leases.values():
            n, lease.held = lease.held, 0
            lease.version += 1
            if n <= 0:
                continue
            try:
                await self.slots.release(self.host, lease.name, n)
            except StoreUnavailable as exc:
                self.log.warning(
                    "could not give slots back; they return when the lease expires",
                    function=lease.name,
                    slots=n,
                    error=str(exc),
                )

    # -- statistics -------------------------------------------------------------------

    async def cluster_in_flight(self) -> dict[str, int]:
        """Slots leased per function over all hosts (each running call holds one; a
        host's idle surplus counts until it is given back, within ``hold`` seconds).
        One round trip; raises :class:`~fnrt.errors.StoreUnavailable`."""
        self._cluster = await self.slots.in_use(now=self.clock.time())
        return {name: sum(hosts.values()) for name, hosts in self._cluster.items()}

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats["cluster"] = {
            "host": self.host,
            "held": {name: lease.held for name, lease in self._leases.items() if lease.held},
            "used": {name: lease.used for name, lease in self._leases.items() if lease.used},
            "round_trips": self.round_trips,
            # As of the last renewal (every ttl / 3) or cluster_in_flight() call.
            "cluster_leased": {name: sum(hosts.values()) for name, hosts in self._cluster.items()},
            "cluster_leased_by_host": {name: dict(hosts) for name, hosts in self._cluster.items()},
        }
        return stats


def cluster_limiter(
    local: ConcurrencyLimiter,
    store: object | None,
    options: ClusterLimit | None,
    clock: Clock,
    log: Any,
) -> ConcurrencyLimiter:
    """The limiter a runtime should use: a :class:`ClusterLimiter` when a counting service
    is given (``options.slots``) or the store offers one (``store.slots``), else ``local``
    as it is. Called at start, before any function is registered."""
    slots = options.slots if options is not None else None
    if slots is None:
        slots = getattr(store, "slots", None)
    if slots is None:
        return local
    options = options or ClusterLimit()
    return ClusterLimiter(
        local.limit,
        local.unreserved_floor,
        slots,
        clock,
        log,
        host=options.host,
        ttl=options.ttl,
        hold=options.hold,
        max_block=options.max_block,
    )
