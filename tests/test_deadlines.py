"""Request deadlines: one timer for all of a factory's requests, exact to the clock.

A sandbox request's timeout is what Lambda reports as ``Task timed out after N.NN
seconds``: it must fire when the clock reaches the deadline (not a tick later), never for a
request that was answered in time, and whatever order requests of different timeouts come
and go in.
"""

from __future__ import annotations

import asyncio

import pytest

import fnrt
from fnrt._clock import Deadlines
from fnrt.sandbox import SandboxTimeout
from fnrt.sandbox._protocol import request_deadlines

from .conftest import wait_until


def _future() -> asyncio.Future[str]:
    return asyncio.get_running_loop().create_future()


def _timed_out(fut: asyncio.Future[str]) -> bool:
    return fut.done() and not fut.cancelled() and isinstance(fut.exception(), SandboxTimeout)


async def test_a_deadline_fires_exactly_when_the_clock_reaches_it() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    fut = _future()
    deadlines.add(fut, 3.0)
    await clock.advance(2.999)
    assert not fut.done()
    await clock.advance(0.001)
    assert _timed_out(fut)
    assert deadlines.pending == 0 and clock.pending_timers == 0


async def test_many_requests_with_the_same_timeout_share_one_timer_and_each_fires_on_time() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    futs = []
    for _ in range(50):
        fut = _future()
        deadlines.add(fut, 2.0)
        futs.append(fut)
        await clock.advance(0.01)  # one every 10 ms: deadlines 2.00 .. 2.49 s after the first
    assert clock.pending_timers == 1 and deadlines.pending == 50
    await clock.advance(2.0 - 0.5 - 0.001)  # just before the first one's deadline
    assert not any(f.done() for f in futs)
    await clock.advance(0.001 + 0.245)  # the first 25 are due (the 25th exactly now)
    assert [_timed_out(f) for f in futs] == [True] * 25 + [False] * 25
    assert clock.pending_timers == 1 and deadlines.pending == 25
    await clock.advance(0.25)
    assert all(_timed_out(f) for f in futs)
    assert clock.pending_timers == 0 and deadlines.pending == 0


async def test_different_timeouts_fire_in_deadline_order_whatever_order_they_came_in() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    start = clock.monotonic()
    fired: list[tuple[float, float]] = []
    for timeout in (5.0, 1.0, 3.0, 1.0, 0.5, 900.0):
        fut = _future()
        fut.add_done_callback(lambda _, t=timeout: fired.append((t, clock.monotonic() - start)))
        deadlines.add(fut, timeout)
    await clock.advance(6.0)
    assert fired == [(0.5, 0.5), (1.0, 1.0), (1.0, 1.0), (3.0, 3.0), (5.0, 5.0)]
    assert deadlines.pending == 1 and clock.pending_timers == 1  # armed for the 900 s one
    await clock.advance(894.0)
    assert fired[-1] == (900.0, 900.0)


async def test_a_shorter_deadline_added_later_rearms_the_timer_earlier() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    long, short = _future(), _future()
    deadlines.add(long, 60.0)
    await clock.advance(10.0)
    deadlines.add(short, 1.0)  # due at 11 s, long before the armed 60 s
    assert clock.pending_timers == 1
    await clock.advance(1.0)
    assert _timed_out(short) and not long.done()
    await clock.advance(49.0)
    assert _timed_out(long)


async def test_a_request_answered_just_before_its_deadline_never_fails() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    fut = _future()
    entry = deadlines.add(fut, 3.0)
    await clock.advance(2.999)
    fut.set_result("answer")
    Deadlines.discard(entry)
    await clock.advance(10.0)
    assert fut.result() == "answer"
    assert deadlines.pending == 0 and clock.pending_timers == 0


async def test_an_answered_request_whose_waiter_has_not_resumed_yet_keeps_its_answer() -> None:
    # The reply arrived (the future has its result) but the task awaiting it has not run
    # its cleanup when the timer fires in the same instant: the answer stands.
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    fut = _future()
    clock.call_later(1.0, lambda: fut.set_result("answer"))  # the reply, due in the same instant
    deadlines.add(fut, 1.0)
    await clock.advance(1.0)
    assert fut.result() == "answer"


async def test_the_timer_rearms_for_the_next_deadline_after_the_earliest_completes() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    start = clock.monotonic()
    first, second = _future(), _future()
    fired_at: list[float] = []
    second.add_done_callback(lambda _: fired_at.append(clock.monotonic() - start))
    entry = deadlines.add(first, 1.0)
    deadlines.add(second, 4.0)
    await clock.advance(0.5)
    first.set_result("done")
    Deadlines.discard(entry)
    await clock.advance(3.499)  # the timer armed for 1 s fired at 1 s, found nothing due, re-armed
    assert not second.done() and clock.pending_timers == 1
    await clock.advance(0.001)
    assert _timed_out(second) and fired_at == [4.0]
    assert first.result() == "done"


async def test_requests_answered_out_of_order_are_forgotten_and_the_rest_still_fire() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    futs = [_future() for _ in range(10)]
    entries = [deadlines.add(f, 2.0) for f in futs]
    for i in (9, 7, 5, 3, 1):  # the late ones first: they wait behind live heads
        futs[i].set_result("ok")
        Deadlines.discard(entries[i])
    assert deadlines.pending == 5
    await clock.advance(2.0)
    assert [_timed_out(f) for f in futs] == [True, False] * 5
    assert all(futs[i].result() == "ok" for i in (1, 3, 5, 7, 9))


async def test_answered_entries_behind_a_long_running_request_do_not_pile_up() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    stuck = _future()
    deadlines.add(stuck, 900.0)
    for _ in range(5 * Deadlines.SWEEP):
        fut = _future()
        entry = deadlines.add(fut, 900.0)
        fut.set_result("ok")
        Deadlines.discard(entry)
    assert deadlines.pending == 1
    assert sum(len(q) for q in deadlines._queues.values()) <= Deadlines.SWEEP  # swept
    await clock.advance(900.0)
    assert _timed_out(stuck)


async def test_a_cancelled_request_is_dropped_and_the_others_still_fire() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    cancelled, kept = _future(), _future()
    entry = deadlines.add(cancelled, 1.0)
    deadlines.add(kept, 1.0)
    cancelled.cancel()
    Deadlines.discard(entry)
    await clock.advance(1.0)
    assert cancelled.cancelled() and _timed_out(kept)


async def test_a_cancelled_future_not_yet_discarded_is_left_alone_when_due() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    fut = _future()
    deadlines.add(fut, 1.0)
    fut.cancel()
    await clock.advance(1.0)  # no InvalidStateError out of the timer
    assert fut.cancelled() and deadlines.pending == 0


async def test_an_idle_wheel_keeps_no_timer_once_its_stale_one_fired() -> None:
    clock = fnrt.FakeClock()
    deadlines = request_deadlines(clock)
    for _ in range(3):
        fut = _future()
        entry = deadlines.add(fut, 3.0)
        fut.set_result("ok")
        Deadlines.discard(entry)
    assert clock.pending_timers == 1  # still armed for the first deadline: cheaper than re-arming
    await clock.advance(3.0)
    assert clock.pending_timers == 0 and deadlines.pending == 0


async def test_the_system_clock_fires_a_deadline_and_forgets_answered_ones() -> None:
    deadlines = request_deadlines(fnrt.SystemClock())
    answered, late = _future(), _future()
    entry = deadlines.add(answered, 0.02)
    deadlines.add(late, 0.05)
    answered.set_result("ok")
    Deadlines.discard(entry)
    with pytest.raises(SandboxTimeout):
        await late
    assert answered.result() == "ok" and deadlines.pending == 0


async def test_concurrent_invocations_with_different_timeouts_each_time_out_on_their_own(
    release_file: str,
) -> None:
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("slow", "handlers.chaos:hold", timeout=3, provisioned_concurrency=1)
        await rt.add_function("quick", "handlers.chaos:hold", timeout=1, provisioned_concurrency=1)
        slow = asyncio.ensure_future(rt.invoke("slow", {}))
        quick = asyncio.ensure_future(rt.invoke("quick", {}))
        await wait_until(lambda: all(rt.stats()["functions"][n]["busy"] == 1 for n in ("slow", "quick")))
        await clock.advance(0.999)
        assert not quick.done() and not slow.done()
        await clock.advance(0.001)
        with pytest.raises(fnrt.FunctionTimeout) as info:
            await quick
        assert info.value.error_message.endswith("Task timed out after 1.00 seconds")
        await clock.advance(1.999)
        assert not slow.done()
        await clock.advance(0.001)
        with pytest.raises(fnrt.FunctionTimeout) as info:
            await slow
        assert info.value.error_message.endswith("Task timed out after 3.00 seconds")
        # both functions serve again on fresh sandboxes
        open(release_file, "w").close()
        for name in ("slow", "quick"):
            assert (await rt.invoke_detailed(name, {"release": release_file})).error is None
