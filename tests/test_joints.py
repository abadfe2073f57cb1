"""Where the parts meet: supervision of background work, public errors, and counts that
stay exact across remove/add. Real sandboxes and real SQLite files; the store failures are
real ``database is locked`` errors from a second connection holding the write lock."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import fnrt
from fnrt.store import Store, open_store
from fnrt.testing import wait_until

from .conftest import alive


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on ``path`` from another connection (another process
    could do the same): every write of the runtime fails with ``database is locked``."""
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        yield
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()


async def store_failing_fast(path: Path) -> Store:
    """The state file, opened to give up on a held lock after 20 ms instead of 5 s."""
    return await open_store(path / "fnrt.sqlite3", busy_timeout=0.02)


async def done_on_the_clock(rt: fnrt.Runtime, clock: fnrt.FakeClock, request_id: str) -> dict[str, Any]:
    """The event once it is done, the clock moved a second at a time (40 s at most: the
    backoffs of a store that was locked, each retry given a moment of real time to run)."""
    event = None
    for _ in range(40):
        await clock.advance(1)
        await asyncio.sleep(0.01)
        event = await rt.async_event(request_id)
        if event is not None and event["state"] == "done":
            return event
    raise AssertionError(f"event {request_id} not done 40 s later: {event}")


async def test_the_async_queue_keeps_draining_after_the_store_recovers(tmp_path: Path) -> None:
    clock = fnrt.FakeClock()
    ledger = str(tmp_path / "ledger")
    async with await store_failing_fast(tmp_path) as store, fnrt.Runtime(store=store, clock=clock) as rt:
        await rt.add_function("charge", "handlers.payments:charge")
        rt.configure_async("charge", retry_delays=[60])
        # Fails once (a function error), so its retry is due 60 s later.
        payload = {"order": "J-1", "amount": 5, "gateway_failures": 1, "ledger": ledger}
        request_id = await rt.invoke("charge", payload, "Event")
        await rt.wait_idle()
        assert (await rt.async_event(request_id))["attempts"] == 1
        with write_locked(tmp_path / "fnrt.sqlite3"):
            await clock.advance(60)  # the retry is due, but the poller cannot take it
            await wait_until(lambda: rt.stats()["background_failures"] >= 1, "the poller to hit the lock")
        # The poller was not lost: its backoff passes and the event runs.
        assert (await done_on_the_clock(rt, clock, request_id))["invokes"] == 2
        # ... and later events flow as usual.
        later = await rt.invoke("charge", {"order": "J-2", "amount": 1}, "Event")
        await rt.wait_idle()
        assert (await rt.async_event(later))["state"] == "done"


async def test_an_outcome_the_store_refused_is_written_when_it_is_back_not_run_again(tmp_path: Path) -> None:
    """The event ran; its outcome's write hit the lock. The write is retried until the
    store takes it, so the event is done after one invocation, not run again once its
    lease (timeout + 30 s: never, on this clock) expires."""
    clock = fnrt.FakeClock()
    release = tmp_path / "release"
    async with await store_failing_fast(tmp_path) as store, fnrt.Runtime(store=store, clock=clock) as rt:
        await rt.add_function("gate", "handlers.chaos:gate", timeout=600)
        request_id = await rt.invoke("gate", {"release": str(release)}, "Event")
        await wait_until(lambda: rt.stats()["functions"]["gate"]["in_flight"] == 1, "the attempt to start")
        with write_locked(tmp_path / "fnrt.sqlite3"):
            release.touch()
            await wait_until(lambda: rt.stats()["functions"]["gate"]["invocations"] == 1, "the invocation")
            for _ in range(5):  # the write and its retries fail while the lock is held
                await clock.advance(1)
                await asyncio.sleep(0.05)
        assert (await done_on_the_clock(rt, clock, request_id))["invokes"] == 1
        await rt.wait_idle()


async def test_a_stream_mapping_recovers_from_a_store_failure(tmp_path: Path) -> None:
    clock = fnrt.FakeClock()
    ledger, attempts = tmp_path / "ledger.jsonl", tmp_path / "attempts"
    attempts.mkdir()
    async with await store_failing_fast(tmp_path) as store, fnrt.Runtime(store=store, clock=clock) as rt:
        await rt.add_function(
            "orders",
            "handlers.orders:process_orders",
            timeout=600,
            environment={"ORDERS_LEDGER": str(ledger), "ORDERS_ATTEMPTS": str(attempts)},
        )
        stream = await rt.create_stream("orders")
        flaky, fine = json.dumps({"id": 0, "fail_times": 1}), json.dumps({"id": 1})
        await stream.put_records([(flaky, "k"), (fine, "k")])
        mapping = await rt.add_stream_mapping("orders", "orders", lease_seconds=3600)
        await rt.wait_idle()  # the first delivery failed; the retry waits 1 s on the clock
        assert not ledger.exists()
        with write_locked(tmp_path / "fnrt.sqlite3"):
            await clock.advance(1)  # the retry succeeds, its checkpoint cannot be written
            await wait_until(lambda: rt.stats()["background_failures"] >= 1, "the poller to hit the lock")
        for _ in range(40):
            await clock.advance(1)
            await asyncio.sleep(0.01)
            if (await mapping.checkpoints()).get("shardId-000000000000"):
                break
        checkpoint = (await mapping.checkpoints())["shardId-000000000000"]
        lines = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert {line["id"] for line in lines} == {0, 1}  # at least once, nothing skipped
        assert checkpoint == lines[-1]["seq"]


async def test_a_stream_mapping_resumes_once_the_store_is_back_not_after_its_backoff(tmp_path: Path) -> None:
    """The store was unusable long enough for the coordinator's backoff to grow to
    seconds (and the leases it could not heartbeat to lapse). Once a put goes through,
    the store is back: the mapping goes on at once, as the async poller does, not after
    the rest of a backoff that grows to 30 s."""
    clock = fnrt.FakeClock()
    ledger = tmp_path / "ledger.jsonl"
    async with await store_failing_fast(tmp_path) as store, fnrt.Runtime(store=store, clock=clock) as rt:
        await rt.add_function(
            "orders", "handlers.orders:process_orders", environment={"ORDERS_LEDGER": str(ledger)}
        )
        stream = await rt.create_stream("orders")
        await stream.put_record(json.dumps({"id": 0}), "k")
        await rt.add_stream_mapping("orders", "orders", lease_seconds=2, poll_interval=0.5)
        await wait_until(lambda: ledger.exists(), "the first record", clock=clock, step=0.1)
        with write_locked(tmp_path / "fnrt.sqlite3"):
            # Each failed turn doubles the coordinator's backoff: 0.05 s, 0.1 s, ... 12.8 s
            # after 25.55 s of failures; the next turn is due 12.8 s after the last.
            for _ in range(60):
                await clock.advance(0.5)
                await asyncio.sleep(0.005)
            assert rt.stats()["background_failures"] >= 9
        await stream.put_record(json.dumps({"id": 1}), "k")  # the store is back
        # well within the backoff the coordinator is in, and past the lease's 2 s
        for _ in range(40):
            await clock.advance(0.1)
            await asyncio.sleep(0.01)
            if {e["id"] for e in map(json.loads, ledger.read_text().splitlines())} == {0, 1}:
                break
        assert {e["id"] for e in map(json.loads, ledger.read_text().splitlines())} == {0, 1}


async def test_remove_then_add_in_flight_keeps_the_counts_exact(release_file: str) -> None:
    async with fnrt.Runtime(concurrency_limit=2, unreserved_minimum=0) as rt:
        await rt.add_function("f", "handlers.chaos:hold")
        old_call = asyncio.ensure_future(rt.invoke("f", {"release": release_file}))
        await wait_until(lambda: rt.stats()["functions"]["f"]["busy"] == 1, "the call to start")
        await rt.remove_function("f")
        await rt.add_function("f", "handlers.chaos:hold")
        # The old call still runs, so it still counts against the global limit of 2.
        assert rt.stats()["concurrency"]["in_flight"] == 1
        assert rt.stats()["functions"]["f"]["in_flight"] == 0
        new_call = asyncio.ensure_future(rt.invoke("f", {"release": release_file}))
        await wait_until(lambda: rt.stats()["functions"]["f"]["busy"] == 1, "the new call to start")
        with pytest.raises(fnrt.TooManyRequests):
            await rt.invoke("f", {"release": release_file})
        open(release_file, "w").close()
        await asyncio.gather(old_call, new_call)
        stats = rt.stats()
        assert stats["concurrency"]["in_flight"] == 0  # not -1: the old release hit the old slot
        assert stats["functions"]["f"]["in_flight"] == 0
        # Exactly the limit again: two calls at once, a third throttled.
        os_release = release_file + ".2"
        calls = [asyncio.ensure_future(rt.invoke("f", {"release": os_release})) for _ in range(2)]
        await wait_until(lambda: rt.stats()["concurrency"]["in_flight"] == 2, "two calls")
        with pytest.raises(fnrt.TooManyRequests):
            await rt.invoke("f", {"release": os_release})
        open(os_release, "w").close()
        await asyncio.gather(*calls)


async def test_removing_a_function_removes_its_async_config() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("f", "handlers.echo:echo")
        rt.configure_async("f", max_retry_attempts=0, on_failure="sink:x")
        await rt.remove_function("f")
        with pytest.raises(fnrt.FunctionNotFound):
            rt.configure_async("f", max_retry_attempts=1)
        await rt.add_function("f", "handlers.echo:echo")
        assert rt.async_config("f") == fnrt.AsyncConfig()


async def test_a_dead_template_is_a_public_service_error_never_a_private_one() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("f", "handlers.echo:echo")
        assert (await rt.invoke("f", {"a": 1}))["event"] == {"a": 1}
        template = rt._factories["subprocess"]._template
        assert template._proc is not None
        template._proc.kill()
        await template._proc.wait()
        await rt.remove_function("f")  # its warm sandbox goes: the next call is a cold start
        await rt.add_function("f", "handlers.echo:echo")
        try:
            result = await rt.invoke("f", {"a": 2})
        except fnrt.FnrtError as exc:
            assert isinstance(exc, fnrt.ServiceError), repr(exc)
        else:  # a runtime that replaces its template may serve it
            assert result["event"] == {"a": 2}


async def test_a_programming_error_in_background_work_fails_the_runtime_loudly() -> None:
    class Boom(Exception):
        pass

    async def broken() -> None:
        raise Boom("a bug")

    with pytest.raises(BaseExceptionGroup) as caught:
        async with fnrt.Runtime() as rt:
            rt._supervisor.loop("broken", broken)
            await asyncio.sleep(5)  # cancelled by the failure: the block does not go on
    assert caught.group_contains(Boom)


async def test_a_programming_error_in_an_async_attempt_fails_the_runtime_loudly(tmp_path: Path) -> None:
    # Attempts run outside the task group (no done callback per event); a bug in one
    # still ends the runtime as a failed task of the group does, and the event stays queued.
    class Boom(Exception):
        pass

    def broken(*args: object) -> None:
        raise Boom("a bug")

    with pytest.raises(BaseExceptionGroup) as caught:
        async with fnrt.Runtime(state_dir=tmp_path) as rt:
            await rt.add_function("f", "handlers.echo:echo")
            rt._async._deliver = broken  # type: ignore[method-assign]
            rt.configure_async("f", on_success="sink:done")
            await rt.invoke("f", {"a": 1}, invocation_type="Event")
            await asyncio.sleep(30)  # cancelled by the failure: the block does not go on
    assert caught.group_contains(Boom)
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        assert (await rt.async_queue_counts()).get("leased") == 1  # not lost: its lease expires


async def test_a_loop_failing_for_long_logs_its_traceback_once_a_minute_not_every_retry() -> None:
    # A store that is down fails every loop every few seconds: a traceback each time cost
    # the event loop seconds of formatting (rich's, with locals) and buried the log.
    from fnrt._supervise import Supervisor

    clock = fnrt.FakeClock()
    records: list[dict[str, object]] = []

    class Log:
        def error(self, event: str, **fields: object) -> None:
            records.append(fields)

        def info(self, event: str, **fields: object) -> None:
            pass

    supervisor = Supervisor(clock, Log(), retry=(1.0, 1.0))
    await supervisor.open()

    async def down() -> None:
        raise fnrt.StoreUnavailable("the store is down")

    supervisor.loop("poller", down)
    try:
        for _ in range(125):
            await asyncio.sleep(0)
            await clock.advance(1.0)
        await asyncio.sleep(0)
    finally:
        await supervisor.close()
    assert len(records) >= 120  # every retry is still logged, each in one line
    assert [r for r in records if "exc_info" in r] == [records[0], records[60], records[120]]
    assert all(r["error"] == "StoreUnavailable: the store is down" for r in records if "exc_info" not in r)


async def test_an_error_of_the_block_itself_propagates_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with fnrt.Runtime() as rt:
            await rt.add_function("f", "handlers.echo:echo")
            raise KeyError("mine")


async def test_a_lease_lost_during_a_batch_never_moves_the_checkpoint(tmp_path: Path) -> None:
    clock = fnrt.FakeClock()
    ledger, release = tmp_path / "ledger.jsonl", tmp_path / "release"
    async with fnrt.Runtime(state_dir=tmp_path, clock=clock) as rt:
        await rt.add_function(
            "orders",
            "handlers.orders:process_when_released",
            environment={"ORDERS_LEDGER": str(ledger), "ORDERS_RELEASE": str(release)},
        )
        stream = await rt.create_stream("orders")
        await stream.put_record(json.dumps({"id": 7}), "k")
        mapping = await rt.add_stream_mapping("orders", "orders", lease_seconds=5)
        await wait_until(lambda: rt.stats()["functions"]["orders"]["busy"] == 1, "the batch in flight")
        # Another host takes the shard over (our lease looks expired to it).
        store = await rt._streams.store()
        shard = "shardId-000000000000"
        assert await store.acquire_lease(mapping.uuid, shard, "another-host", clock.time() + 6, 3600)
        release.touch()
        await wait_until(lambda: ledger.exists(), "the handler to finish")
        await wait_until(lambda: shard not in mapping.shards_owned, "the poller to stop")
        assert (await mapping.checkpoints()).get(shard) is None  # the new owner redoes it
        assert (await store.leases(mapping.uuid))[shard][0] == "another-host"


async def test_provisioned_concurrency_is_refilled_after_a_sandbox_dies() -> None:
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, idle_ttl=60) as rt:
        await rt.add_function("crash", "handlers.chaos:exit_now", provisioned_concurrency=2)
        assert rt.stats()["functions"]["crash"]["warm"] == 2
        result = await rt.invoke_detailed("crash", {"code": 3})
        assert result.error is not None and result.error.error_type == "Runtime.ExitError"
        assert rt.stats()["functions"]["crash"]["warm"] == 1
        # The maintenance loop's next turn (every 5 s here) refills; the clock moves no
        # further, so the refill's init phase has all the (real) time it needs.
        await clock.advance(5)
        await rt.wait_idle()
        assert rt.stats()["functions"]["crash"]["warm"] == 2


async def test_hundreds_of_bad_requests_leak_no_sandbox_and_no_slot() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("f", "handlers.echo:echo")
        await rt.invoke("f", {})
        template = rt._factories["subprocess"]._template
        before = {pid for pid in template._exits if alive(pid)}
        bad: list[dict] = [
            {"client_context": 5},  # not an object
            {"client_context": "NQ=="},
            {"client_context": [1, 2]},
            {"client_context": {"custom": {"x": object()}}},
            {"client_context": {"custom": {"x": "y" * 4000}}},
            {"payload": b"{not json"},
            {"payload": {"x": float("nan")}},
            {"payload": b"x" * (6 * 1024 * 1024 + 1)},
            {"payload": object()},
        ]
        for _ in range(60):
            for kwargs in bad:
                payload = kwargs.get("payload", {})
                context = kwargs.get("client_context")
                with pytest.raises((fnrt.InvalidPayload, fnrt.PayloadTooLarge)):
                    await rt.invoke("f", payload, client_context=context)  # type: ignore[arg-type]
        stats = rt.stats()
        assert stats["concurrency"]["in_flight"] == 0
        assert stats["functions"]["f"]["busy"] == 0 and stats["functions"]["f"]["warm"] <= 1
        await asyncio.sleep(0.2)
        after = {pid for pid in template._exits if alive(pid)}
        assert len(after) <= len(before)  # no process per bad request
        assert (await rt.invoke("f", {"ok": 1}))["event"] == {"ok": 1}


async def test_finished_events_and_expired_records_are_garbage_collected(tmp_path: Path) -> None:
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(state_dir=tmp_path, clock=clock, finished_event_retention=3600) as rt:
        await rt.add_function("f", "handlers.echo:echo")
        request_id = await rt.invoke("f", {}, "Event")
        await rt.wait_idle()
        assert (await rt.async_event(request_id))["state"] == "done"
        stream = await rt.create_stream("s", retention_hours=24)
        await stream.put_record("x", "k")
        shard = (await stream.shards())[0]["ShardId"]
        await clock.advance(1800)
        await rt.wait_idle()
        assert await rt.async_event(request_id) is not None  # within its retention

        async def advance_until(check: Any, limit: int = 400) -> None:
            for _ in range(limit):
                if await check():
                    return
                await clock.advance(5)
                await asyncio.sleep(0.005)
            raise AssertionError("retention never ran")

        async def event_gone() -> bool:
            return await rt.async_event(request_id) is None

        await advance_until(event_gone)
        assert len(await stream.read(shard, None, 10)) == 1  # 24 h retention not passed yet
        await clock.advance(86_400 - 1800)

        async def records_gone() -> bool:
            return await stream.read(shard, None, 10) == []

        await advance_until(records_gone)


async def test_a_deleted_functions_attempt_whose_write_is_retried_is_dropped_once(tmp_path: Path) -> None:
    """The attempt ran as its function was deleted; its outcome (a retry, turned into a
    drop) hit the lock and was written again until the store was back. It is dropped once:
    AsyncEventsDropped counts the event, not each write that was tried."""
    clock = fnrt.FakeClock()
    async with await store_failing_fast(tmp_path) as store, fnrt.Runtime(store=store, clock=clock) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=5, async_config={"retry_delays": [1]})
        request_id = await rt.invoke("hold", {}, "Event")  # never released: it times out
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 1, "the attempt")
        await rt.remove_function("hold")
        with write_locked(tmp_path / "fnrt.sqlite3"):
            await clock.advance(6)
            await wait_until(lambda: rt.metrics.counter("Timeouts", "hold") == 1, "the timeout")
            for _ in range(5):  # the write and its retries fail while the lock is held
                await clock.advance(1)
                await asyncio.sleep(0.05)
        for _ in range(40):
            await clock.advance(1)
            await asyncio.sleep(0.01)
            event = await rt.async_event(request_id)
            if event is not None and event["state"] != "leased":
                break
        assert event is not None and event["state"] == "failed" and event["condition"] == "FunctionDeleted"
        await rt.wait_idle()
        assert rt.metrics.counter("AsyncEventsDropped", "hold") == 1
