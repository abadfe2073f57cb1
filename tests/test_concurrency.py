"""Concurrency: scale-out, reserved and global limits, throttles, provisioned, idle retirement."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import pytest

import fnrt

from .conftest import alive, descendants, wait_until


def busy(rt: fnrt.Runtime, name: str) -> int:
    return rt.stats()["functions"][name]["busy"]


async def test_concurrent_invokes_scale_out_to_distinct_sandboxes(release_file):
    async with fnrt.Runtime() as rt:
        await rt.add_function("hold", "handlers.chaos:hold")
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(4)]
        await wait_until(lambda: busy(rt, "hold") == 4, "4 busy sandboxes")
        open(release_file, "w").close()
        pids = {out["pid"] for out in await asyncio.gather(*calls)}
        assert len(pids) == 4  # at most one event per sandbox at a time
        stats = rt.stats()["functions"]["hold"]
        assert stats["warm"] == 4 and stats["peak_concurrency"] == 4 and stats["cold_starts"] == 4


async def test_warm_sandboxes_are_reused_most_recent_first(release_file):
    async with fnrt.Runtime() as rt:
        await rt.add_function("hold", "handlers.chaos:hold")
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(3)]
        await wait_until(lambda: busy(rt, "hold") == 3)
        open(release_file, "w").close()
        await asyncio.gather(*calls)
        pool = rt._registry.get("hold").pool
        most_recent = pool.idle[-1].sandbox.pid
        for _ in range(5):
            assert (await rt.invoke("hold", {"release": release_file}))["pid"] == most_recent
        assert rt.stats()["functions"]["hold"]["cold_starts"] == 3


async def test_reserved_concurrency_throttles_exactly_at_the_limit(release_file):
    async with fnrt.Runtime() as rt:
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=2)
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(2)]
        await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 2)
        with pytest.raises(fnrt.TooManyRequests) as info:
            await rt.invoke("hold", {"release": release_file})
        assert info.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
        assert info.value.to_lambda()["Reason"] == info.value.reason
        open(release_file, "w").close()
        await asyncio.gather(*calls)
        await rt.invoke("hold", {"release": release_file})  # a slot is free again
        stats = rt.stats()["functions"]["hold"]
        assert stats["throttles"] == 1 and stats["invocations"] == 3
        assert rt.metrics.counter("Throttles", "hold") == 1


async def test_global_limit_throttles_and_reserved_capacity_is_set_apart(release_file):
    async with fnrt.Runtime(concurrency_limit=4, unreserved_minimum=1) as rt:
        await rt.add_function("shared", "handlers.chaos:hold")
        await rt.add_function("vip", "handlers.chaos:hold", reserved_concurrency=2)
        assert rt.stats()["concurrency"]["unreserved_pool"] == 2
        calls = [asyncio.ensure_future(rt.invoke("shared", {"release": release_file})) for _ in range(2)]
        await wait_until(lambda: rt.stats()["concurrency"]["in_flight"] == 2)
        with pytest.raises(fnrt.TooManyRequests) as info:
            await rt.invoke("shared", {"release": release_file})
        assert info.value.reason == "ConcurrentInvocationLimitExceeded"
        # the reserved function still has its own capacity while the shared pool is full
        calls += [asyncio.ensure_future(rt.invoke("vip", {"release": release_file})) for _ in range(2)]
        await wait_until(lambda: rt.stats()["concurrency"]["in_flight"] == 4)
        open(release_file, "w").close()
        assert len(await asyncio.gather(*calls)) == 4


async def test_reserving_more_than_the_pool_allows_is_invalid():
    async with fnrt.Runtime(concurrency_limit=1000) as rt:
        await rt.add_function("a", "handlers.echo:echo", reserved_concurrency=800)
        with pytest.raises(fnrt.InvalidConfig, match="at most 900"):
            await rt.add_function("b", "handlers.echo:echo", reserved_concurrency=101)
        await rt.add_function("b", "handlers.echo:echo", reserved_concurrency=100)
        # re-registering a function replaces its reservation rather than adding to it
        await rt.add_function("a", "handlers.echo:echo", reserved_concurrency=800)


async def test_reserved_zero_throttles_every_call():
    async with fnrt.Runtime() as rt:
        await rt.add_function("off", "handlers.echo:echo", reserved_concurrency=0)
        with pytest.raises(fnrt.TooManyRequests):
            await rt.invoke("off", {})


async def test_provisioned_concurrency_is_initialized_ahead_and_kept():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, idle_ttl=60) as rt:
        await rt.add_function("whoami", "handlers.chaos:whoami", provisioned_concurrency=2)
        assert rt.stats()["functions"]["whoami"]["warm"] == 2
        first = await rt.invoke_detailed("whoami", {})
        assert not first.cold_start
        await clock.advance(3600)
        assert rt.stats()["functions"]["whoami"]["warm"] == 2  # not retired below the floor


async def test_idle_sandboxes_retire_after_the_idle_ttl():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, idle_ttl=60) as rt:
        await rt.add_function("whoami", "handlers.chaos:whoami")
        pid = (await rt.invoke("whoami", {}))["pid"]
        await clock.advance(30)
        assert rt.stats()["functions"]["whoami"]["warm"] == 1
        await clock.advance(45)
        assert rt.stats()["functions"]["whoami"]["warm"] == 0
        await wait_until(lambda: not alive(pid), "the retired sandbox to exit")
        assert (await rt.invoke_detailed("whoami", {})).cold_start


async def test_no_process_survives_the_runtime(release_file):
    async with fnrt.Runtime() as rt:
        await rt.add_function("hold", "handlers.chaos:hold")
        await rt.deploy("handlers.echo")
        pids = {(await rt.invoke("echo", {}))["pid"]}
        call = asyncio.ensure_future(rt.invoke("hold", {}))  # busy when the runtime closes
        await wait_until(lambda: busy(rt, "hold") == 1)
        template = rt._factories["subprocess"]._template
        pids |= set(template._exits)
        template_pid = template._proc.pid
    assert call.done()
    assert not alive(template_pid)
    for pid in pids:
        assert not alive(pid), f"sandbox {pid} survived"


async def test_no_process_survives_when_the_host_is_cancelled():
    started = asyncio.Event()
    seen: dict[str, int] = {}

    async def app() -> None:
        async with fnrt.Runtime() as rt:
            await rt.add_function("hold", "handlers.chaos:hold")
            task = asyncio.ensure_future(rt.invoke("hold", {}))
            await wait_until(lambda: busy(rt, "hold") == 1)
            template = rt._factories["subprocess"]._template
            seen["template"] = template._proc.pid
            seen["sandbox"] = next(iter(template._exits))
            started.set()
            await task

    runner = asyncio.ensure_future(app())
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert not alive(seen["template"]) and not alive(seen["sandbox"])
    assert os.getpid()  # and the test process is of course still here


@pytest.mark.parametrize("moment", ["template starting", "init running"])
async def test_closing_during_cold_starts_answers_every_caller_and_leaves_no_process(moment):
    """``aclose()`` while cold starts are under way: each caller gets ``RuntimeClosed`` at
    once (not an init error of its function, not a result after the close), and no
    template process or sandbox is left behind, also one that was still starting."""
    before = descendants()
    rt = fnrt.Runtime()
    await rt.start()
    try:
        await rt.add_function("slow", "handlers.slow_init:handler", timeout=60, init_timeout=60)
        calls = [asyncio.ensure_future(rt.invoke("slow", {})) for _ in range(3)]
        # The first cold start waits for the template process to come up.
        await wait_until(lambda: rt.stats()["functions"]["slow"]["starting"] == 3, "three cold starts")
        if moment == "init running":
            await wait_until(lambda: len(descendants() - before) >= 4, "three sandboxes in their init")
    finally:
        await rt.aclose()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert [type(r) for r in results] == [fnrt.RuntimeClosed] * 3, results
    assert descendants() - before == set()
    assert rt.metrics.counter("Errors", "slow") == 0  # no init failure of the function counted


async def test_a_runtime_called_from_another_event_loop_refuses_and_stays_whole():
    """A runtime's sandboxes and futures belong to the loop that started it. A call from
    another thread's loop is a clear ``RuntimeClosed``; it neither breaks a warm sandbox
    nor leaves one behind bound to that loop (which made the close itself fail)."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("whoami", "handlers.chaos:whoami")
        pid = (await rt.invoke("whoami", {}))["pid"]

        async def elsewhere() -> list[BaseException]:
            errors: list[BaseException] = []
            for call in (
                lambda: rt.invoke("whoami", {}),
                lambda: rt.add_function("other", "handlers.chaos:whoami"),
                lambda: rt.remove_function("whoami"),
            ):
                try:
                    await asyncio.wait_for(call(), 10)
                except BaseException as exc:
                    errors.append(exc)
            return errors

        errors = await asyncio.to_thread(asyncio.run, elsewhere())
        assert [type(e) for e in errors] == [fnrt.RuntimeClosed] * 3, errors
        assert "another event loop" in str(errors[0])
        assert (await rt.invoke("whoami", {}))["pid"] == pid  # the warm sandbox still serves
        assert set(rt.functions()) == {"whoami"}


async def test_calls_in_flight_when_the_template_is_killed_are_service_errors_and_the_runtime_carries_on(
    release_file,
):
    """The template process killed (-9) under load takes its sandboxes with it: fnrt's
    machinery failed, not the functions. Every call in flight gets ``ServiceError`` at once
    (not a function's ``Runtime.ExitError``, which would use an async retry attempt), no
    slot is lost, and the next calls get a new template."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=30)
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(4)]
        await wait_until(lambda: busy(rt, "hold") == 4, "four calls running")
        template = rt._factories["subprocess"].template_pid
        os.kill(template, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert loop.time() - started < 1.5  # no wait for exit statuses nobody can report
        assert [type(r) for r in results] == [fnrt.ServiceError] * 4, results
        assert "template process exited" in str(results[0])
        assert rt.metrics.counter("Errors", "hold") == 0
        assert rt.stats()["concurrency"]["in_flight"] == 0
        open(release_file, "w").close()
        assert (await rt.invoke("hold", {"release": release_file}))["pid"]
        assert rt._factories["subprocess"].template_pid not in (None, template)


async def test_closing_answers_a_call_in_flight_on_an_inline_sandbox_at_once(release_file):
    """An inline handler's thread cannot be stopped, but its caller must not wait for it:
    ``aclose()`` answers the call with ``RuntimeClosed`` at once (the thread is abandoned,
    as a timed-out inline handler's is)."""
    rt = fnrt.Runtime(sandbox="inline")
    await rt.start()
    try:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=60)
        call = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
        await wait_until(lambda: busy(rt, "hold") == 1, "the call to run")
        await rt.aclose()
        with pytest.raises(fnrt.RuntimeClosed):
            await asyncio.wait_for(call, 5)
    finally:
        open(release_file, "w").close()  # the abandoned thread ends
        await rt.aclose()


async def test_a_caller_cancelled_during_the_first_cold_start_leaves_no_error_behind():
    """Cancelling the call that is starting the template process stops that start; the
    next call starts another. Nothing is left for asyncio to report as an exception
    never retrieved (it went to the host's stderr)."""
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with fnrt.Runtime() as rt:
            await rt.add_function("whoami", "handlers.chaos:whoami")
            call = asyncio.ensure_future(rt.invoke("whoami", {}))
            await wait_until(lambda: rt.stats()["functions"]["whoami"]["starting"] == 1, "the cold start")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert (await rt.invoke("whoami", {}))["pid"]
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in reported] == []


@pytest.mark.parametrize("then", ["removed", "updated"])
async def test_a_function_removed_or_updated_while_a_large_payload_is_encoded(then):
    """A payload over 256 KB is encoded off the loop; the function can go or change
    meanwhile. Removed: the caller gets ``FunctionNotFound`` (not a throttle with the
    global pool's reason). Updated: the call runs on the new configuration."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("ctx", "handlers.chaos:context_info", memory_mb=256)
        call = asyncio.ensure_future(rt.invoke("ctx", {"blob": "x" * 300_000}))
        await asyncio.sleep(0)  # the call is encoding its payload on a worker thread
        if then == "removed":
            await rt.remove_function("ctx")
            with pytest.raises(fnrt.FunctionNotFound):
                await call
        else:
            await rt.update_function_configuration("ctx", memory_mb=512)
            assert (await call)["memory_limit_in_mb"] == "512"
        assert rt.stats()["concurrency"]["throttles"] == 0


async def test_aclose_from_two_tasks_at_once_returns_only_when_everything_is_stopped(release_file):
    """A second ``aclose()`` while the first is still closing (a signal handler and the
    ``async with`` exit, say) waits for it: no process is left when either returns."""
    before = descendants()
    rt = fnrt.Runtime()
    await rt.start()
    await rt.add_function("hold", "handlers.chaos:hold")
    call = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
    await wait_until(lambda: busy(rt, "hold") == 1, "the call to run")
    first = asyncio.ensure_future(rt.aclose())
    await asyncio.sleep(0)  # the first close has begun
    await rt.aclose()
    assert descendants() - before == set()
    await first
    with pytest.raises(fnrt.RuntimeClosed):
        await call
