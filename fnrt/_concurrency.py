"""Lambda's concurrency model: one global pool, per-function reservations, throttles.

A function with reserved concurrency R may run at most R events at once and does not draw
on the shared pool; every other function shares what the reservations leave
(``limit - sum(reserved)``). Reservations can never take the last ``unreserved_floor`` of
the pool (Lambda keeps 100 of 1,000). Decisions are synchronous and O(1): a throttle costs
a dictionary lookup, never a wait.
"""

from __future__ import annotations

import attrs

from .errors import InvalidConfig, TooManyRequests

GLOBAL_REASON = "ConcurrentInvocationLimitExceeded"
RESERVED_REASON = "ReservedFunctionConcurrentInvocationLimitExceeded"


@attrs.define
class _Slot:
    reserved: int | None = None
    in_flight: int = 0
    throttles: int = 0
    peak: int = 0


class ConcurrencyLimiter:
    def __init__(self, limit: int, unreserved_floor: int) -> None:
        self.limit = limit
        self.unreserved_floor = unreserved_floor
        self._slots: dict[str, _Slot] = {}
        self._reserved_total = 0
        self._unreserved_in_flight = 0
        self.throttles = 0

    # -- configuration ----------------------------------------------------------------

    def check_reservations(self, wanted: dict[str, int | None]) -> None:
        """Raise :class:`InvalidConfig` unless these reservations (replacing any current
        ones for the same names) fit in the pool."""
        total = self._reserved_total
        for name, reserved in wanted.items():
            current = self._slots.get(name)
            if current is not None and current.reserved is not None:
                total -= current.reserved
            total += reserved or 0
        allowed = self.limit - self.unreserved_floor
        if total > allowed:
            raise InvalidConfig(
                f"reserved concurrency would total {total}, but at most {allowed} of the "
                f"concurrency limit {self.limit} can be reserved ({self.unreserved_floor} "
                "always stays unreserved)"
            )

    def register(self, name: str, reserved: int | None) -> None:
        self.check_reservations({name: reserved})
        slot = self._slots.get(name)
        if slot is None:
            slot = self._slots[name] = _Slot()
        self._set_reserved(slot, reserved)

    def _set_reserved(self, slot: _Slot, reserved: int | None) -> None:
        # Move the function's in-flight count between the shared and the reserved pool.
        if slot.reserved is None:
            self._unreserved_in_flight -= slot.in_flight
        else:
            self._reserved_total -= slot.reserved
        slot.reserved = reserved
        if reserved is None:
            self._unreserved_in_flight += slot.in_flight
        else:
            self._reserved_total += reserved

    def unregister(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is None:
            return
        if slot.reserved is None:
            self._unreserved_in_flight -= slot.in_flight
        else:
            self._reserved_total -= slot.reserved

    # -- the hot path -----------------------------------------------------------------

    def acquire(self, name: str) -> None:
        """Take one slot for ``name`` or raise :class:`TooManyRequests` at once."""
        slot = self._slots[name]
        if slot.reserved is not None:
            if slot.in_flight >= slot.reserved:
                slot.throttles += 1
                self.throttles += 1
                raise TooManyRequests(RESERVED_REASON, "Rate Exceeded.")
        elif self._unreserved_in_flight >= self.limit - self._reserved_total:
            slot.throttles += 1
            self.throttles += 1
            raise TooManyRequests(GLOBAL_REASON, "Rate Exceeded.")
        else:
            self._unreserved_in_flight += 1
        slot.in_flight += 1
        if slot.in_flight > slot.peak:
            slot.peak = slot.in_flight

    def release(self, name: str) -> None:
        slot = self._slots.get(name)
        if slot is None:
            return
        slot.in_flight -= 1
        if slot.reserved is None:
            self._unreserved_in_flight -= 1

    # -- statistics -------------------------------------------------------------------

    def in_flight(self, name: str | None = None) -> int:
        if name is not None:
            slot = self._slots.get(name)
            return slot.in_flight if slot else 0
        return sum(s.in_flight for s in self._slots.values())

    def function_stats(self, name: str) -> dict[str, int | None]:
        slot = self._slots.get(name) or _Slot()
        return {
            "in_flight": slot.in_flight,
            "reserved_concurrency": slot.reserved,
            "throttles": slot.throttles,
            "peak_concurrency": slot.peak,
        }

    def stats(self) -> dict[str, int]:
        unreserved = self.limit - self._reserved_total
        return {
            "limit": self.limit,
            "in_flight": self.in_flight(),
            "reserved_total": self._reserved_total,
            "unreserved_pool": unreserved,
            "unreserved_available": unreserved - self._unreserved_in_flight,
            "throttles": self.throttles,
        }
