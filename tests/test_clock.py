"""FakeClock: what a test relies on when it says "two minutes pass"."""

from __future__ import annotations

import pytest

from fnrt import FakeClock


@pytest.mark.parametrize("step", [0.05, 0.1, 0.3, 0.7, 1.0, 1.7])
@pytest.mark.parametrize("due_in", [1.0, 3.0, 7.3, 60.0, 120.0])
async def test_a_wait_computed_from_wall_time_ends_when_its_time_is_reached(
    step: float, due_in: float
) -> None:
    """A poller sleeps min(step, due - time()) and checks again, as the async source does.
    Advancing exactly to the due time must wake it, although wall time near 1.8e9 is
    coarser than monotonic time (the last delay can land a few hundred ns late): before,
    such a poller stayed asleep until the next advance, and a retry never ran."""
    clock = FakeClock()
    due = clock.time() + due_in
    woken: list[float] = []

    def check() -> None:
        delay = min(step, due - clock.time())
        if delay <= 0:
            woken.append(clock.time())
        else:
            clock.call_later(delay, check)

    check()
    await clock.advance(due_in - 0.5)
    assert woken == []  # not early
    await clock.advance(0.5)
    assert woken and woken[0] >= due - 1e-6


async def test_advance_fires_in_order_and_time_never_goes_back() -> None:
    clock = FakeClock()
    start = clock.monotonic()
    seen: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: seen.append(("b", clock.monotonic())))
    clock.call_later(1.0, lambda: seen.append(("a", clock.monotonic())))
    cancelled = clock.call_later(1.5, lambda: seen.append(("x", clock.monotonic())))
    cancelled.cancel()
    await clock.advance(1.0)
    await clock.advance(1.0)
    assert seen == [("a", start + 1.0), ("b", start + 2.0)]
    assert clock.monotonic() == start + 2.0 and clock.pending_timers == 0
    await clock.advance(0.0)
    assert clock.monotonic() == start + 2.0
