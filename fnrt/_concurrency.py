"""Lambda's concurrency model: one global pool, per-function reservations, throttles.

A function with reserved concurrency R may run at most R events at once and does not draw
on the shared pool; every other function shares what the reservations leave
(``limit - sum(reserved)``). Reservations can never take the last ``unreserved_floor`` of
the pool (Lambda keeps 100 of 1,000). Decisions are synchronous and O(1): a throttle costs
a dictionary lookup, never a wait.

A taken slot is a :class:`Slot` object that belongs to one function's
:class:`FunctionCounter`. It releases exactly once, to the counter it came from. A function
updated or redeployed keeps its counter (the calls its old generation still runs count
against its reservation); one removed and added again while a call is in flight gets a
fresh counter, and the old call's release can never free the new function's slot. The
calls of a removed function keep counting against the shared pool until they end.

This limiter counts one host. :class:`fnrt._cluster_limit.ClusterLimiter` extends it so the
same limits hold across hosts sharing a counting service (PostgreSQL): its
:meth:`~ConcurrencyLimiter.acquire` returns ``None`` when the host's leased block is empty,
and the caller then awaits :meth:`~ConcurrencyLimiter.acquire_async`. Here ``acquire``
never returns ``None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ._lambda import (
    GLOBAL_REASON,
    RATE_REASON,
    RESERVED_RATE_REASON,
    RESERVED_REASON,
    THROTTLE_MESSAGE,
)
from .errors import InvalidConfig, TooManyRequests

if TYPE_CHECKING:
    from ._supervise import Supervisor

__all__ = [
    "GLOBAL_REASON",
    "RESERVED_REASON",
    "ConcurrencyLimiter",
    "FunctionCounter",
    "ScalingAllowance",
    "Slot",
]


@attrs.define(eq=False)
class FunctionCounter:
    """One function's concurrency (across its updates): its reservation and what it has in flight."""

    name: str
    reserved: int | None = None
    in_flight: int = 0
    throttles: int = 0
    peak: int = 0
    registered: bool = True


class ScalingAllowance:
    """Lambda's scaling rate: at most ``limit`` new execution environments per ``window``
    seconds for one function, refilling continuously (a token bucket on the clock).
    Warm invocations cost nothing; each cold start takes one token."""

    __slots__ = ("_at", "_tokens", "limit", "window")

    def __init__(self, limit: int, window: float, now: float) -> None:
        self.limit = limit
        self.window = window
        self._tokens = float(limit)
        self._at = now

    def take(self, now: float) -> bool:
        tokens = min(self.limit, self._tokens + (now - self._at) * self.limit / self.window)
        self._at = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True


class Slot:
    """One admitted call. ``release()`` gives it back (once; later calls do nothing)."""

    __slots__ = ("_counter", "_limiter")

    def __init__(self, limiter: ConcurrencyLimiter, counter: FunctionCounter) -> None:
        self._limiter: ConcurrencyLimiter | None = limiter
        self._counter = counter

    @property
    def held(self) -> bool:
        return self._limiter is not None

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is None:
            return
        counter = self._counter
        counter.in_flight -= 1
        limiter.running -= 1
        if counter.reserved is None:
            limiter._unreserved_in_flight -= 1


class ConcurrencyLimiter:
    def __init__(self, limit: int, unreserved_floor: int) -> None:
        self.limit = limit
        self.unreserved_floor = unreserved_floor
        self._counters: dict[str, FunctionCounter] = {}
        self._reserved_total = 0
        self._unreserved_in_flight = 0
        #: Calls in flight, every function's (a removed one's too): Lambda's account-wide
        #: ConcurrentExecutions, kept as a count so reading it on the hot path is O(1).
        self.running = 0
        self.throttles = 0

    # -- configuration ----------------------------------------------------------------

    def check_reservations(self, wanted: dict[str, int | None]) -> None:
        """Raise :class:`InvalidConfig` unless these reservations (replacing any current
        ones for the same names) fit in the pool."""
        elsewhere = self._reserved_elsewhere(set(wanted))
        total = self._reserved_total + elsewhere
        for name, reserved in wanted.items():
            current = self._counters.get(name)
            if current is not None and current.reserved is not None:
                total -= current.reserved
            total += reserved or 0
        allowed = self.limit - self.unreserved_floor
        if total > allowed:
            raise InvalidConfig(  # Lambda's words, then what the numbers are here
                "Specified ReservedConcurrentExecutions for function decreases account's "
                f"UnreservedConcurrentExecution below its minimum value of [{self.unreserved_floor}]. "
                f"(reservations would total {total}; at most {allowed} of the concurrency limit "
                f"{self.limit} can be reserved{self._reservations_note(elsewhere)})"
            )

    def _reserved_elsewhere(self, names: set[str]) -> int:
        """Reservations of functions this limiter does not hold (other hosts', in a cluster)."""
        return 0

    def _reservations_note(self, elsewhere: int) -> str:
        return ""

    def check_provisioned(self, name: str, count: int, reserved: int | None) -> None:
        """Raise :class:`InvalidConfig` unless ``count`` provisioned environments fit:
        within the function's reservation, or else within the unreserved pool less its
        minimum (Lambda: provisioned concurrency cannot exceed reserved concurrency, or
        unreserved account concurrency minus the unreserved minimum)."""
        if reserved is not None:
            available = reserved
        else:
            available = self.limit - self._reserved_total - self.unreserved_floor
        if count > available:
            raise InvalidConfig(
                f"Requested Provisioned Concurrency ({count}) for function {name} exceeds the "
                f"available concurrency ({max(available, 0)})"
                + ("" if reserved is not None else f" (unreserved, less its minimum {self.unreserved_floor})")
            )

    def register(self, name: str, reserved: int | None) -> FunctionCounter:
        """A new generation of ``name``: a fresh counter (any earlier one is retired)."""
        self.check_reservations({name: reserved})
        self.unregister(name)
        counter = self._counters[name] = FunctionCounter(name)
        self.set_reserved(counter, reserved)
        return counter

    def set_reserved(self, counter: FunctionCounter, reserved: int | None) -> None:
        """Change a function's reservation; its calls in flight move between the pools."""
        if counter.registered and counter.reserved is not None:
            self._reserved_total -= counter.reserved
        if counter.reserved is None:
            self._unreserved_in_flight -= counter.in_flight
        counter.reserved = reserved
        if reserved is None:
            self._unreserved_in_flight += counter.in_flight
        elif counter.registered:
            self._reserved_total += reserved

    def unregister(self, name: str) -> None:
        """Retire ``name``'s counter. Its calls still in flight count against the shared
        pool until they end: they still run, so the global limit must see them."""
        counter = self._counters.pop(name, None)
        if counter is None:
            return
        self.set_reserved(counter, None)
        counter.registered = False

    def counter(self, name: str) -> FunctionCounter | None:
        return self._counters.get(name)

    # -- the hot path -----------------------------------------------------------------

    def acquire(self, counter: FunctionCounter) -> Slot | None:
        """Take one slot for ``counter``'s function or raise :class:`TooManyRequests` at once.
        (``None`` only from a cluster limiter: then await :meth:`acquire_async`.)"""
        if counter.reserved is not None:
            if counter.in_flight >= counter.reserved:
                counter.throttles += 1
                self.throttles += 1
                raise TooManyRequests(RESERVED_REASON, THROTTLE_MESSAGE)
        elif self._unreserved_in_flight >= self.limit - self._reserved_total or not counter.registered:
            counter.throttles += 1
            self.throttles += 1
            raise TooManyRequests(GLOBAL_REASON, THROTTLE_MESSAGE)
        else:
            self._unreserved_in_flight += 1
        counter.in_flight += 1
        self.running += 1
        if counter.in_flight > counter.peak:
            counter.peak = counter.in_flight
        return Slot(self, counter)

    async def acquire_async(self, counter: FunctionCounter) -> Slot:
        """:meth:`acquire` for a caller that may wait (a cluster limiter leases slots)."""
        slot = self.acquire(counter)
        assert slot is not None  # a single host always decides at once
        return slot

    def scaling_throttle(self, counter: FunctionCounter) -> TooManyRequests:
        """The error for a cold start over the function's scaling rate (counted as a throttle)."""
        counter.throttles += 1
        self.throttles += 1
        reason = RESERVED_RATE_REASON if counter.reserved is not None else RATE_REASON
        return TooManyRequests(reason, THROTTLE_MESSAGE)

    # -- statistics -------------------------------------------------------------------

    def in_flight(self, name: str | None = None) -> int:
        if name is not None:
            counter = self._counters.get(name)
            return counter.in_flight if counter else 0
        return self._unreserved_in_flight + sum(
            c.in_flight for c in self._counters.values() if c.reserved is not None
        )

    def function_stats(self, name: str) -> dict[str, int | None]:
        counter = self._counters.get(name) or FunctionCounter(name)
        return {
            "in_flight": counter.in_flight,
            "reserved_concurrency": counter.reserved,
            "throttles": counter.throttles,
            "peak_concurrency": counter.peak,
        }

    async def cluster_in_flight(self) -> dict[str, int]:
        """Calls in flight per function over every host sharing the limit: on one host,
        this host's (a cluster limiter asks the counting service)."""
        return {name: c.in_flight for name, c in self._counters.items() if c.in_flight}

    # -- lifecycle (a cluster limiter has background work; one host has none) -------------

    def start(self, supervisor: Supervisor) -> None:
        """Start any background work under ``supervisor``."""

    async def aclose(self) -> None:
        """Give back whatever this host holds (nothing, on one host)."""

    @property
    def unreserved_in_flight(self) -> int:
        """Calls in flight drawing on the shared pool (Lambda's UnreservedConcurrentExecutions)."""
        return self._unreserved_in_flight

    @property
    def unreserved_pool(self) -> int:
        """The shared pool's size: what no reservation takes (on a cluster, the other
        hosts' reservations too)."""
        return self.limit - self._reserved_total - self._reserved_elsewhere(set())

    def stats(self) -> dict[str, Any]:
        unreserved = self.unreserved_pool
        return {
            "limit": self.limit,
            "in_flight": self.in_flight(),
            "reserved_total": self._reserved_total,
            "unreserved_pool": unreserved,
            "unreserved_available": unreserved - self._unreserved_in_flight,
            "throttles": self.throttles,
        }
