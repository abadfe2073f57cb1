"""Asynchronous (``Event``) invoke: durable enqueue, retries, event age, destinations.

Delays, backoff and event age run on a FakeClock; the queue is a real SQLite file and the
handlers run in real subprocess sandboxes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid

import pytest

import fnrt
from fnrt.store import open_store

from .conftest import wait_until


async def parked(rt: fnrt.Runtime) -> None:
    """Wait until the poller has handled everything due and sleeps (real I/O settles)."""
    await rt.wait_idle()


async def event_state(rt: fnrt.Runtime, request_id: str, state: str) -> dict:
    """Wait until the event reaches ``state``; return its row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        event = await rt.async_event(request_id)
        if event is not None and event["state"] == state:
            return event
        if loop.time() > deadline:
            raise AssertionError(f"event {request_id} never reached {state}: {event}")
        await asyncio.sleep(0.005)


async def test_event_returns_request_id_once_the_event_is_on_disk(tmp_path):
    outbox = tmp_path / "outbox.jsonl"
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        await rt.deploy("handlers.payments")
        request_id = await rt.invoke("send_receipt", {"order": "A-1", "outbox": str(outbox)}, "Event")
        assert str(uuid.UUID(request_id)) == request_id
        # Another connection (another process could do the same) sees the committed event.
        async with await open_store(tmp_path) as other:
            stored = await other.queue.event(request_id)
        assert stored is not None and stored["function"] == "send_receipt"
        event = await event_state(rt, request_id, "done")
        assert event["condition"] == "Success" and event["invokes"] == 1 and event["attempts"] == 0
        assert '"order": "A-1"' in outbox.read_text()
        detailed = await rt.invoke_detailed("send_receipt", {"outbox": str(outbox)}, "Event")
        assert detailed.status_code == 202 and detailed.raw == b""
        assert rt.metrics.counter("AsyncEventsReceived", "send_receipt") == 2
        await event_state(rt, detailed.request_id, "done")
        assert rt.metrics.summary("AsyncEventAge", "send_receipt")["count"] == 2


async def test_an_enqueue_ends_the_pollers_backoff_once_the_store_is_back(tmp_path):
    # The poller backs off up to 30 s while the store fails; an enqueue that is stored
    # says the store is back: its event runs now, not when the backoff ends.
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(state_dir=tmp_path, clock=clock) as rt:
        await rt.add_function("f", "handlers.echo:echo")
        await rt.invoke("f", {}, invocation_type="Event")
        await rt.wait_idle()
        queue = rt._async._queue
        assert queue is not None
        real_take, down = queue.take, [True]

        async def take(*args, **kwargs):
            if down[0]:
                raise fnrt.StoreUnavailable("the store is down")
            return await real_take(*args, **kwargs)

        queue.take = take
        first = (await rt.invoke_detailed("f", {"n": 1}, "Event")).request_id
        while rt._supervisor.failures < 10:  # the backoff is 25.6 s now
            failures = rt._supervisor.failures
            await clock.advance(30)
            await wait_until(lambda seen=failures: rt._supervisor.failures > seen, "the next failed take")
        down[0] = False
        second = (await rt.invoke_detailed("f", {"n": 2}, "Event")).request_id
        for rid in (first, second):  # the clock does not move

            async def done(rid: str = rid) -> bool:
                return ((await rt.async_event(rid)) or {}).get("state") == "done"

            await wait_until(done, "the events to run")


async def test_event_payload_limit_is_1_mb():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.payments")
        with pytest.raises(fnrt.PayloadTooLarge):
            await rt.invoke("audit", {"blob": "x" * (1024 * 1024)}, "Event")
        with pytest.raises(fnrt.InvalidPayload):
            await rt.invoke("audit", b"{not json", "Event")


async def test_function_error_retries_after_1_then_2_minutes_then_goes_to_on_failure(tmp_path):
    clock = fnrt.FakeClock()
    ledger = tmp_path / "ledger"
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.deploy("handlers.payments")  # decorator: 2 retries after 60 s and 120 s
        rt.configure_async("charge", on_failure="sink:failed-payments", dead_letter="sink:payments-dlq")
        payload = {"order": "A-7", "amount": 30, "card": "declined", "ledger": str(ledger)}
        request_id = await rt.invoke("charge", payload, "Event")

        event = await event_state(rt, request_id, "queued")
        await wait_until(lambda: ledger.exists(), "the first attempt")
        await parked(rt)
        event = await rt.async_event(request_id)
        assert (event["state"], event["attempts"], event["invokes"]) == ("queued", 1, 1)

        await clock.advance(59)
        await parked(rt)
        assert (await rt.async_event(request_id))["invokes"] == 1  # not yet
        await clock.advance(1)
        await wait_until(lambda: len(ledger.read_text().split()) == 2, "the first retry")
        await parked(rt)

        await clock.advance(119)
        await parked(rt)
        assert (await rt.async_event(request_id))["invokes"] == 2
        await clock.advance(1)
        event = await event_state(rt, request_id, "failed")
        assert event["condition"] == "RetriesExhausted" and event["invokes"] == 3

        (record,) = await rt.destination_records("failed-payments")
        assert record == event["record"]
        assert record["version"] == "1.0" and record["timestamp"].endswith("Z")
        assert record["requestContext"] == {
            "requestId": request_id,
            "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:charge:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        }
        assert record["requestPayload"] == payload
        assert record["responseContext"] == {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        }
        assert record["responsePayload"]["errorType"] == "CardDeclined"
        assert record["responsePayload"]["errorMessage"] == "card ending 0000 was declined"

        (dead,) = await rt.destination_records("sink:payments-dlq")
        assert dead["body"] == payload
        assert dead["messageAttributes"]["RequestID"] == request_id
        assert dead["messageAttributes"]["ErrorMessage"] == "card ending 0000 was declined"
        assert rt.metrics.counter("AsyncEventsDropped", "charge") == 1
        assert rt.metrics.counter("Errors", "charge") == 3


async def test_a_retry_that_succeeds_goes_to_on_success_and_a_function_destination(tmp_path):
    clock = fnrt.FakeClock()
    ledger = tmp_path / "ledger"
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.deploy("handlers.payments")
        rt.configure_async("charge", retry_delays=[5], on_success="function:audit")
        rt.configure_async("audit", on_success="sink:audited")
        payload = {"order": "A-8", "amount": 12, "gateway_failures": 1, "ledger": str(ledger)}
        request_id = await rt.invoke("charge", payload, "Event")
        await event_state(rt, request_id, "queued")
        await parked(rt)
        await clock.advance(5)
        event = await event_state(rt, request_id, "done")
        assert (event["attempts"], event["invokes"]) == (1, 2)
        # The success record went to `audit` as an Event; audit's own success went to a sink.
        await wait_until(lambda: rt.metrics.counter("Invocations", "audit") == 1, "audit to run")
        await parked(rt)
        (audited,) = await rt.destination_records("audited")
        record = audited["requestPayload"]
        assert record["requestContext"]["condition"] == "Success"
        assert record["requestContext"]["approximateInvokeCount"] == 2
        assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
        assert record["responsePayload"] == {"status": "charged", "order": "A-8", "amount": 12, "attempt": 2}
        assert audited["responsePayload"] == {"audited": request_id, "condition": "Success"}


async def test_throttled_events_wait_without_using_attempts_then_age_out(release_file):
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function(
            "frozen",
            "handlers.chaos:hold",
            timeout=900,
            reserved_concurrency=1,  # held by the sync call below: every Event throttles
            async_config={"max_event_age": 60, "on_failure": "sink:aged"},
        )
        held = asyncio.ensure_future(rt.invoke("frozen", {"release": release_file}))
        await wait_until(lambda: rt.stats()["functions"]["frozen"]["busy"] == 1)
        request_id = await rt.invoke("frozen", {"release": release_file}, "Event")
        await parked(rt)
        for step, delay in enumerate([1, 2, 4, 8, 16], start=1):  # doubling backoff
            assert rt.metrics.counter("Throttles", "frozen") == step
            await clock.advance(delay - 0.01)
            await parked(rt)
            assert rt.metrics.counter("Throttles", "frozen") == step  # not before its time
            await clock.advance(0.01)
            await parked(rt)
        # throttled at 0, 1, 3, 7, 15 and 31 s; the next 32 s backoff is cut at the 60 s age
        assert (await rt.async_event(request_id))["state"] == "queued"
        await clock.advance(29)
        event = await event_state(rt, request_id, "failed")
        assert event["condition"] == "EventAgeExceeded"
        assert event["attempts"] == 0 and event["invokes"] == 0
        assert event["system_retries"] == 6
        assert rt.metrics.counter("Throttles", "frozen") == 6
        (record,) = await rt.destination_records("aged")
        assert record["requestContext"]["condition"] == "EventAgeExceeded"
        assert record["requestContext"]["approximateInvokeCount"] == 0
        assert record["responseContext"]["statusCode"] == 429
        assert record["responsePayload"]["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
        open(release_file, "w").close()
        await held


async def test_a_burst_over_the_concurrency_limit_runs_without_throttling_itself():
    # The poller takes no more events than the shared pool can run: the rest wait their
    # turn in the queue. It took them all at once; all but four were throttled by their
    # own siblings and backed off (1 s, 2 s, ...) while the capacity freed in milliseconds.
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, concurrency_limit=4) as rt:
        await rt.add_function("echo", "handlers.echo:echo")
        await rt.add_function("noop", "handlers.echo:noop")  # shares the pool
        ids = await asyncio.gather(
            *(rt.invoke(name, {"n": n}, "Event") for n in range(12) for name in ("echo", "noop"))
        )
        await parked(rt)  # the clock never moves: no backoff may be needed
        assert await rt.async_queue_counts() == {"done": 24}
        assert rt.metrics.counter("Throttles", "echo") == rt.metrics.counter("Throttles", "noop") == 0
        for request_id in ids:
            assert (await rt.async_event(request_id))["system_retries"] == 0
        assert max(rt.stats()["functions"][name]["peak_concurrency"] for name in ("echo", "noop")) <= 4


async def test_an_event_of_a_function_without_a_pool_is_throttled_until_it_ages_out(tmp_path):
    # Every slot reserved (unreserved_minimum=0): an unreserved function's events are
    # throttled and back off until they are too old, then go to the failure destination.
    # The poller, which takes no more than the shared pool can run, never took them.
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(
        state_dir=tmp_path, clock=clock, concurrency_limit=2, unreserved_minimum=0
    ) as rt:
        await rt.add_function("hog", "handlers.echo:noop", reserved_concurrency=2)
        await rt.add_function(
            "echo", "handlers.echo:echo", async_config={"max_event_age": 60, "on_failure": "sink:lost"}
        )
        request_id = await rt.invoke("echo", {"n": 1}, "Event")
        for _ in range(8):
            await rt.wait_idle()
            await clock.advance(10)
        event = await event_state(rt, request_id, "failed")
        assert event["condition"] == "EventAgeExceeded" and event["invokes"] == 0
        assert event["record"]["responsePayload"]["Reason"] == "ConcurrentInvocationLimitExceeded"
        assert rt.metrics.counter("Throttles", "echo") >= 1
        assert len(await rt.destination_records("sink:lost")) == 1


async def test_reserved_concurrency_zero_sends_events_to_failure_without_retries():
    # AWS: "When you set reserved concurrency to zero for an asynchronously invoked
    # function, Lambda begins sending new events to the configured dead-letter queue or
    # the on-failure event destination, without any retries."
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function(
            "off",
            "handlers.payments:audit",
            reserved_concurrency=0,
            async_config={"on_failure": "sink:off-failed", "dead_letter": "sink:off-dlq"},
        )
        request_id = await rt.invoke("off", {"order": "A-9"}, "Event")
        event = await event_state(rt, request_id, "failed")  # no clock advance: no backoff
        assert event["invokes"] == 0 and event["system_retries"] == 0
        (record,) = await rt.destination_records("off-failed")
        assert record["requestContext"]["requestId"] == request_id
        assert record["requestContext"]["approximateInvokeCount"] == 0
        assert record["responseContext"]["statusCode"] == 429
        (dead,) = await rt.destination_records("off-dlq")
        assert dead["body"] == {"order": "A-9"}
        assert rt.stats()["functions"]["off"]["invocations"] == 0


async def test_a_throttle_is_retried_with_backoff_and_then_runs(tmp_path):
    clock = fnrt.FakeClock()
    release = tmp_path / "release"
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=1, timeout=900)
        busy = asyncio.ensure_future(rt.invoke("hold", {"release": str(release)}))
        await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 1, "the sync call")
        request_id = await rt.invoke("hold", {"release": str(release)}, "Event")
        await parked(rt)
        assert rt.metrics.counter("Throttles", "hold") == 1
        release.touch()
        await busy
        await clock.advance(1)  # the first backoff step
        event = await event_state(rt, request_id, "done")
        assert (event["attempts"], event["invokes"], event["system_retries"]) == (0, 1, 1)


async def test_event_age_caps_the_wait_for_a_retry(tmp_path):
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.deploy("handlers.payments")
        rt.configure_async("charge", max_event_age=90, retry_delays=[600], on_failure="sink:late")
        request_id = await rt.invoke("charge", {"amount": 1, "card": "declined"}, "Event")
        await event_state(rt, request_id, "queued")
        await parked(rt)
        await clock.advance(90)  # not 600: the event expires first
        event = await event_state(rt, request_id, "failed")
        assert event["condition"] == "EventAgeExceeded" and event["invokes"] == 1
        (record,) = await rt.destination_records("late")
        assert record["responseContext"]["functionError"] == "Unhandled"
        assert record["responsePayload"]["errorType"] == "CardDeclined"


async def test_a_crashing_handler_uses_a_retry_attempt():
    async with fnrt.Runtime() as rt:
        await rt.add_function(
            "crash",
            "handlers.chaos:exit_now",
            async_config={"max_retry_attempts": 0, "on_failure": "sink:crashes"},
        )
        request_id = await rt.invoke("crash", {"code": 7}, "Event")
        event = await event_state(rt, request_id, "failed")
        assert event["condition"] == "RetriesExhausted" and event["invokes"] == 1
        (record,) = await rt.destination_records("crashes")
        assert record["responsePayload"]["errorType"] == "Runtime.ExitError"


async def test_without_destinations_a_failed_event_is_kept_and_counted_as_dropped():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.payments")
        rt.configure_async("charge", max_retry_attempts=0)
        request_id = await rt.invoke("charge", {"amount": 1, "card": "declined"}, "Event")
        event = await event_state(rt, request_id, "failed")
        assert event["record"]["requestContext"]["condition"] == "RetriesExhausted"
        assert rt.metrics.counter("AsyncEventsDropped", "charge") == 1
        assert await rt.async_queue_counts("charge") == {"failed": 1}


async def test_a_missing_destination_function_is_a_delivery_failure_not_a_loss():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.payments")
        rt.configure_async("charge", max_retry_attempts=0, on_failure="function:nobody")
        request_id = await rt.invoke("charge", {"amount": 1, "card": "declined"}, "Event")
        event = await event_state(rt, request_id, "failed")
        assert event["record"]["requestPayload"] == {"amount": 1, "card": "declined"}
        assert rt.metrics.counter("DestinationDeliveryFailures", "charge") == 1
        for function in ("function:nobody", "arn:aws:lambda:us-east-1:000000000000:function:audit"):
            with pytest.raises(fnrt.InvalidConfig, match="is a function, not a sink"):
                await rt.destination_records(function)  # not a sink named "nobody"


async def test_a_success_record_that_cannot_be_delivered_stays_on_the_event():
    async with fnrt.Runtime() as rt:
        await rt.add_function("echo", "handlers.echo:echo", async_config={"on_success": "function:nobody"})
        await rt.add_function("audit", "handlers.payments:audit")
        await rt.add_function(
            "big", "handlers.chaos:big_result", async_config={"on_success": "function:audit"}
        )
        gone = await rt.invoke("echo", {"order": "A-3"}, "Event")
        large = await rt.invoke("big", {"bytes": 1024 * 1024}, "Event")  # a record over 1 MB
        for request_id, function in ((gone, "echo"), (large, "big")):
            event = await event_state(rt, request_id, "done")
            record = event["record"]
            assert record["requestContext"]["condition"] == "Success"
            assert record["requestContext"]["requestId"] == request_id
            assert rt.metrics.counter("DestinationDeliveryFailures", function) == 1
        assert (await rt.async_event(gone))["record"]["responsePayload"]["event"] == {"order": "A-3"}
        assert len((await rt.async_event(large))["record"]["responsePayload"]) == 1024 * 1024
        assert rt.metrics.counter("Invocations", "audit") == 0


async def test_events_of_a_function_not_registered_yet_wait_for_it(tmp_path):
    # Another host (or an earlier run) queued it; this host has not deployed the function
    # yet: the event waits for it (a deleted function's events are dropped instead).
    clock = fnrt.FakeClock()
    outbox = tmp_path / "outbox"
    async with fnrt.Runtime(clock=clock, state_dir=tmp_path) as rt:
        other = await open_store(tmp_path)
        try:
            body = json.dumps({"order": "A-1", "outbox": str(outbox)}).encode()
            await other.queue.enqueue("early", "mail", body, clock.time())
        finally:
            await other.close()
        await clock.advance(120)
        await parked(rt)
        assert (await rt.async_event("early"))["state"] == "queued"
        await rt.add_function("mail", "handlers.payments:send_receipt")
        await clock.advance(1)  # the poller notices new functions within a second
        await event_state(rt, "early", "done")
        assert outbox.exists()


async def test_graceful_close_gives_leases_back_and_a_restart_runs_them(tmp_path):
    release = tmp_path / "release"
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=900)
        request_id = await rt.invoke("hold", {"release": str(release)}, "Event")
        await event_state(rt, request_id, "leased")
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 1, "the attempt")
    release.touch()
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        assert (await rt.async_event(request_id))["state"] == "queued"  # not leased for 15 min
        await rt.add_function("hold", "handlers.chaos:hold", timeout=900)
        event = await event_state(rt, request_id, "done")
        assert event["leases"] == 2


async def test_concurrent_enqueues_share_commits(tmp_path):
    async with fnrt.Runtime() as rt:
        await rt.add_function("noop", "handlers.echo:noop", reserved_concurrency=0)
        await rt.invoke("noop", {}, "Event")
        store = await rt._state.store()
        before = store.stats()["commits"]
        ids = await asyncio.gather(*[rt.invoke("noop", {"n": n}, "Event") for n in range(500)])
        commits = store.stats()["commits"] - before
        assert len(set(ids)) == 500
        assert 0 < commits < 25, commits  # a handful of group commits, not 500
        counts = await rt.async_queue_counts("noop")
        assert sum(counts.values()) == 501


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_retry_attempts": 3}, "max_retry_attempts must be between 0 and 2"),
        ({"max_event_age": 59}, "max_event_age must be between 60 and 21600"),
        ({"max_event_age": 21_601}, "max_event_age must be between 60 and 21600"),
        ({"retry_delays": []}, "retry_delays needs at least one delay"),
        ({"retry_delays": [-1]}, "retry_delays must be between 0"),
        ({"on_failure": "failed-payments"}, "write 'function:<name>'"),
        ({"dead_letter": "function:audit"}, "dead_letter must be a sink"),
        ({"dead_letter": "arn:aws:s3:::audit-dlq"}, "dead_letter must be a sink"),
        ({"on_success": "arn:aws:s3:::audit-records"}, "S3 buckets as on-failure destinations only"),
        ({"on_failure": "arn:aws:sns:us-east-1:000000000000:t.fifo"}, "is not valid"),
        ({"max_retries": 1}, "unknown async config max_retries"),
    ],
)
async def test_bad_async_config_is_rejected_where_it_is_given(config, message):
    with pytest.raises(fnrt.InvalidConfig, match=message):
        fnrt.AsyncConfig.from_kwargs(config)
    async with fnrt.Runtime(sandbox="inline") as rt:
        await rt.add_function("audit", "handlers.payments:audit")
        with pytest.raises(fnrt.InvalidConfig, match=message):
            rt.configure_async("audit", **config)
        with pytest.raises(fnrt.InvalidConfig, match=message):
            await rt.add_function("other", "handlers.payments:audit", async_config=config)
        with pytest.raises(fnrt.FunctionNotFound):
            rt.configure_async("nope", max_retry_attempts=1)


async def test_async_config_from_the_decorator_and_defaults():
    async with fnrt.Runtime() as rt:
        await rt.deploy("handlers.payments")
        charge = rt.async_config("charge")
        assert charge.max_retry_attempts == 2 and charge.retry_delays == (60, 120)
        assert charge.on_failure == "sink:failed-payments"
        assert rt.async_config("audit") == fnrt.AsyncConfig()
        assert fnrt.AsyncConfig().max_event_age == 21_600
        rt.configure_async("charge", max_retry_attempts=0)
        assert rt.async_config("charge").on_failure is None  # replaced, not merged


async def test_closing_as_events_are_taken_gives_their_leases_back(tmp_path):
    """Closing right after an enqueue: the poller may be cancelled while its take commits,
    or the attempt end with RuntimeClosed before it invokes. Either way the lease is given
    back, so the next start runs the event at once, not after its lease expires."""
    request_ids = []
    for _ in range(3):
        async with fnrt.Runtime(state_dir=tmp_path) as rt:
            await rt.add_function("echo", "handlers.echo:echo", timeout=600)
            request_ids.append(await rt.invoke("echo", {}, "Event"))
    store = await open_store(tmp_path)
    try:
        states = [(await store.queue.event(rid) or {}).get("state") for rid in request_ids]
    finally:
        await store.close()
    assert all(state in ("queued", "done") for state in states), states  # never left leased


# -- handoffs: a new event straight to an attempt, when its function has room and no backlog


def gates(tmp_path):
    """For ``handlers.chaos:gate``: a release file not there yet (it holds until the test
    makes it) and one that is (it returns at once)."""
    opened = tmp_path / "open"
    opened.touch()
    return tmp_path / "release", opened


async def add_gate(rt: fnrt.Runtime, opened, **config) -> None:
    """``handlers.chaos:gate`` as ``gate`` (600 s timeout), its handoffs warmed up."""
    await rt.add_function("gate", "handlers.chaos:gate", timeout=600, **config)
    await warm_handoffs(rt, "gate", {"release": str(opened)})


async def warm_handoffs(rt: fnrt.Runtime, name: str, payload: dict) -> None:
    """One event through the queue: the poller's take after it finds the queue drained,
    and from then on new events of ``name`` are handed straight to attempts."""
    await rt.invoke(name, payload, "Event")
    await rt.wait_idle()
    assert name in rt._async._clear  # the path these tests are about


async def test_a_handed_off_event_whose_caller_was_cancelled_still_runs(tmp_path):
    # The event is stored leased to this host: if its attempt depended on the caller,
    # a cancelled caller would leave it leased until the lease expired (timeout + 30 s;
    # never, on this fake clock).
    clock = fnrt.FakeClock()
    opened = tmp_path / "open"
    opened.touch()
    async with fnrt.Runtime(state_dir=tmp_path, clock=clock) as rt:
        await add_gate(rt, opened)
        # Another process's write lock holds the handoff's commit while its caller goes.
        blocker = sqlite3.connect((await rt._state.store()).location, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            caller = asyncio.ensure_future(rt.invoke("gate", {"release": str(opened), "n": 2}, "Event"))
            await wait_until(lambda: rt._async._handing == 1, "the handoff's commit under way")
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_until(lambda: rt._async.idle, "the attempt")
        assert await rt.async_queue_counts("gate") == {"done": 2}


async def test_closing_while_handed_off_events_commit_and_run_gives_their_leases_back(tmp_path):
    release, opened = gates(tmp_path)
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        await add_gate(rt, opened)
        running = await rt.invoke("gate", {"release": str(release)}, "Event")  # holds its sandbox
        await wait_until(lambda: rt.stats()["functions"]["gate"]["busy"] == 1, "the attempt")
        held = {"release": str(release)}
        committing = [asyncio.ensure_future(rt.invoke("gate", {**held, "n": n}, "Event")) for n in range(4)]
        await asyncio.sleep(0)  # into their commit (or past it: either way, nothing stays leased)
    stored = [task.result() for task in committing if not task.cancelled() and task.exception() is None]
    release.touch()
    store = await open_store(tmp_path)
    try:
        states = {rid: (await store.queue.event(rid) or {}).get("state") for rid in [running, *stored]}
        counts = await store.queue.counts("gate")
    finally:
        await store.close()
    assert all(state == "queued" for state in states.values()), states
    assert "leased" not in counts, counts  # none left leased, told stored or not
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        await rt.add_function("gate", "handlers.chaos:gate", timeout=600)
        for rid in states:
            await event_state(rt, rid, "done")


async def test_a_retry_that_falls_due_while_handoffs_feed_its_function_runs(tmp_path):
    clock = fnrt.FakeClock()
    release, opened = gates(tmp_path)
    async with fnrt.Runtime(state_dir=tmp_path, clock=clock) as rt:
        await rt.add_function("gate", "handlers.chaos:gate", timeout=600)
        rt.configure_async("gate", retry_delays=[5], max_retry_attempts=1)
        await warm_handoffs(rt, "gate", {"release": str(opened)})
        holding = await rt.invoke("gate", {"release": str(release)}, "Event")  # keeps the function busy
        failing = await rt.invoke("gate", {"fail": True}, "Event")
        event = await event_state(rt, failing, "queued")
        assert event["attempts"] == 1
        for _ in range(3):  # the retry falls due; new events keep being handed off meanwhile
            await rt.invoke("gate", {"release": str(opened)}, "Event")
            await clock.advance(2)
        event = await event_state(rt, failing, "failed")
        assert event["invokes"] == 2 and event["condition"] == "RetriesExhausted"
        assert (await rt.async_event(holding))["state"] == "leased"
        release.touch()
        await event_state(rt, holding, "done")
        await rt.wait_idle()
        assert await rt.async_queue_counts("gate") == {"done": 5, "failed": 1}


async def test_events_that_found_no_room_are_not_overtaken_by_handoffs(tmp_path):
    # Reserved concurrency 2: the third and later events of a burst wait in the queue.
    # While they wait, new events go to the queue too (no handoff jumps ahead of them),
    # and once the queue is drained handoffs resume.
    release, opened = gates(tmp_path)
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        await add_gate(rt, opened, reserved_concurrency=2)
        burst = [await rt.invoke("gate", {"release": str(release), "n": n}, "Event") for n in range(6)]
        assert "gate" not in rt._async._clear
        late = await rt.invoke("gate", {"release": str(opened)}, "Event")
        assert (await rt.async_event(late))["state"] == "queued"  # behind the burst
        release.touch()
        await rt.wait_idle()
        events = {rid: await rt.async_event(rid) for rid in [*burst, late]}
        assert all(e["state"] == "done" for e in events.values()), events
        assert "gate" in rt._async._clear


async def test_events_handed_off_while_a_take_commits_do_not_crowd_out_what_it_takes(tmp_path):
    # Reserved concurrency 2; another host put two events in the queue (no wake-up here),
    # and the poller's sweep takes them while two new events are handed off. The handoffs
    # found the room the take was filling: four attempts for two slots, two throttled.
    clock = fnrt.FakeClock()
    release, opened = gates(tmp_path)
    async with fnrt.Runtime(state_dir=tmp_path, clock=clock) as rt:
        await add_gate(rt, opened, reserved_concurrency=2)
        other = await open_store(tmp_path)
        try:
            held = json.dumps({"release": str(release)}).encode()
            for n in range(2):
                await other.queue.enqueue(f"other-{n}", "gate", held, clock.time())
        finally:
            await other.close()
        blocker = sqlite3.connect((await rt._state.store()).location, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the take waits for the lock: it is under way
        try:
            await clock.advance(1)  # the sweep
            await wait_until(lambda: rt._async._taking is not None, "the take under way")
            new = [rt.invoke("gate", {"release": str(release), "n": n}, "Event") for n in range(2)]
            callers = [asyncio.ensure_future(call) for call in new]
            await asyncio.sleep(0)  # each to its store write (it judged the room before)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        ids = await asyncio.gather(*callers)
        await wait_until(lambda: rt.stats()["functions"]["gate"]["busy"] == 2, "the two taken")
        release.touch()
        await rt.wait_idle()
        assert rt.metrics.counter("Throttles", "gate") == 0
        assert await rt.async_queue_counts("gate") == {"done": 5}
        for request_id in ["other-0", "other-1", *ids]:
            assert (await rt.async_event(request_id))["system_retries"] == 0


async def test_a_retry_due_while_handoffs_feed_its_function_runs_within_idle_poll(tmp_path):
    # While handoffs feed a function, the poller takes for it once per idle_poll (1 s).
    # A turn for another function in between (here at 4.9 s) skipped it and slept a whole
    # idle_poll again: the retry due at 4.5 s waited until 5.9 s, not 5 s.
    clock = fnrt.FakeClock()
    release, opened = gates(tmp_path)

    async def poller_parked() -> None:
        await wait_until(lambda: rt._async._parked and not rt._async._wake.is_set(), "the poller parked")

    async with fnrt.Runtime(state_dir=tmp_path, clock=clock) as rt:
        await rt.add_function("gate", "handlers.chaos:gate", timeout=600)
        await rt.add_function("echo", "handlers.echo:echo")
        rt.configure_async("gate", retry_delays=[4.5], max_retry_attempts=1)
        await warm_handoffs(rt, "gate", {"release": str(opened)})
        holding = await rt.invoke("gate", {"release": str(release)}, "Event")  # keeps it busy
        failing = await rt.invoke("gate", {"fail": True}, "Event")
        await event_state(rt, failing, "queued")
        await wait_until(lambda: "gate" in rt._async._clear, "the queue drained again")
        await poller_parked()
        for _ in range(4):  # the sweeps at 1..4 s: nothing due yet
            await clock.advance(1)
            await poller_parked()
        await clock.advance(0.9)
        rt._async.wake("echo")  # a turn at 4.9 s (another host's event for echo)
        await wait_until(lambda: rt._async._swept["echo"] == clock.time(), "the turn")
        await poller_parked()
        await clock.advance(0.1)  # 5 s: the sweep is due
        event = await event_state(rt, failing, "failed")
        assert event["invokes"] == 2
        release.touch()
        await event_state(rt, holding, "done")


async def test_a_destination_event_runs_at_once_while_handoffs_feed_its_source(tmp_path):
    # The success record goes to another function's queue in the outcome's commit; the
    # attempt's end woke the poller only for its own function's backlog, so the record's
    # event waited for the next idle_poll (never, on a clock that does not move).
    clock = fnrt.FakeClock()
    release, opened = gates(tmp_path)
    async with fnrt.Runtime(state_dir=tmp_path, clock=clock) as rt:
        await rt.add_function("gate", "handlers.chaos:gate", timeout=600)
        await rt.add_function("audit", "handlers.payments:audit")
        await warm_handoffs(rt, "gate", {"release": str(opened)})
        holding = await rt.invoke("gate", {"release": str(release)}, "Event")  # keeps it busy
        rt.configure_async("gate", on_success="function:audit")
        await rt.invoke("gate", {"release": str(opened)}, "Event")
        await wait_until(lambda: rt.metrics.counter("Invocations", "audit") == 1, "the record's event")
        release.touch()
        await event_state(rt, holding, "done")


async def test_a_backlog_waiting_for_shared_room_is_not_overtaken_by_another_functions_handoffs(tmp_path):
    # A pool of 8 shared by f and g. g's backlog waits for room (a quarter of its 8: two
    # slots) while f's attempts hold the rest; an f event handed off into a slot that frees
    # took the room g waited for, and a flood of them kept g's backlog waiting.
    release = tmp_path / "release"
    one = tmp_path / "one"
    opened = tmp_path / "open"
    opened.touch()
    async with fnrt.Runtime(state_dir=tmp_path, concurrency_limit=8) as rt:
        await rt.add_function("f", "handlers.chaos:gate", timeout=600)
        await rt.add_function("g", "handlers.chaos:gate", timeout=600)
        await warm_handoffs(rt, "f", {"release": str(opened)})
        await warm_handoffs(rt, "g", {"release": str(opened)})
        await rt.invoke("g", {"release": str(release)}, "Event")
        for n in range(6):
            await rt.invoke("f", {"release": str(release), "n": n}, "Event")
        await rt.invoke("f", {"release": str(one)}, "Event")
        await wait_until(lambda: rt.stats()["concurrency"]["in_flight"] == 8, "the pool full")
        backlog = [await rt.invoke("g", {"release": str(opened), "n": n}, "Event") for n in range(2)]
        one.touch()  # a slot frees: g's backlog waits for a second
        await wait_until(lambda: rt.stats()["concurrency"]["in_flight"] == 7, "a slot free")
        await wait_until(lambda: rt._async._parked and not rt._async._wake.is_set(), "the poller's turn")
        late = await rt.invoke("f", {"release": str(opened)}, "Event")
        assert (await rt.async_event(late))["state"] == "queued"  # behind g's backlog
        release.touch()
        await rt.wait_idle()
        assert await rt.async_queue_counts() == {"done": 13}
        for request_id in [*backlog, late]:
            assert (await rt.async_event(request_id))["system_retries"] == 0


async def test_events_put_in_the_queue_while_a_function_was_removed_go_before_new_ones(tmp_path):
    # Its queue was drained before it was removed; meanwhile another host put an event in
    # it. Added again, its first new event was handed straight to the only slot, ahead of
    # the one that waited.
    release, opened = gates(tmp_path)
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        await add_gate(rt, opened, reserved_concurrency=1)
        await rt.remove_function("gate")
        other = await open_store(tmp_path)
        try:
            held = json.dumps({"release": str(release)}).encode()
            await other.queue.enqueue("waited", "gate", held, rt.clock.time())
        finally:
            await other.close()
        await rt.add_function("gate", "handlers.chaos:gate", timeout=600, reserved_concurrency=1)
        new = await rt.invoke("gate", {"release": str(release), "n": 2}, "Event")
        await wait_until(lambda: rt.stats()["functions"]["gate"]["busy"] == 1, "an attempt")
        assert (await rt.async_event("waited"))["state"] == "leased"
        assert (await rt.async_event(new))["state"] == "queued"
        release.touch()
        await rt.wait_idle()
        assert await rt.async_queue_counts("gate") == {"done": 3}
