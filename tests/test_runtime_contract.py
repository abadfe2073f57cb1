"""The embedded runtime's contract: lifecycle, registration all or none, metrics, removal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

import fnrt

from .conftest import alive, wait_until


async def test_a_nested_async_with_is_refused_and_the_outer_runtime_keeps_running():
    rt = fnrt.Runtime()
    async with rt:
        await rt.add_function("echo", "handlers.echo:echo")
        with pytest.raises(fnrt.RuntimeClosed, match="already entered"):
            async with rt:
                pass  # pragma: no cover - refused before the block
        # the outer block still has a running runtime, its functions and warm sandboxes
        assert (await rt.invoke("echo", {"a": 1}))["event"] == {"a": 1}
    with pytest.raises(fnrt.RuntimeClosed, match="runs once"):
        async with rt:
            pass  # pragma: no cover


async def test_a_failed_provisioned_init_registers_nothing_and_keeps_what_it_would_replace():
    async with fnrt.Runtime() as rt:
        with pytest.raises(fnrt.InitError):
            await rt.add_function(
                "b", "handlers.broken:never", provisioned_concurrency=1, reserved_concurrency=5
            )
        assert "b" not in rt.functions()
        assert rt.stats()["concurrency"]["reserved_total"] == 0  # its reservation went too
        with pytest.raises(fnrt.FunctionNotFound):
            await rt.invoke("b", {})
        # A replacement that fails its provisioned init leaves the old generation serving.
        await rt.add_function("f", "handlers.echo:echo")
        pid = (await rt.invoke("f", {}))["pid"]
        with pytest.raises(fnrt.InitError):
            await rt.add_function("f", "handlers.broken:never", provisioned_concurrency=2)
        assert rt.get_function("f").module == "handlers.echo"
        assert (await rt.invoke("f", {}))["pid"] == pid  # the same warm sandbox
        assert alive(pid)
        sandboxes = rt.sandboxes("f")
        assert [s["pid"] for s in sandboxes] == [pid]  # none of the failed ones left


async def test_an_update_whose_provisioned_init_fails_changes_nothing():
    async with fnrt.Runtime() as rt:
        await rt.add_function(
            "env", "handlers.import_env:lookup", provisioned_concurrency=1, environment={"TABLE_NAME": "t"}
        )
        before = rt.get_function("env")
        with pytest.raises(fnrt.InitError):
            await rt.update_function_configuration("env", environment={})
        assert rt.get_function("env") == before
        assert rt.provisioned_concurrency("env")["Status"] == "READY"


def concurrent(rt: fnrt.Runtime, name: str = "") -> float:
    return rt.metrics.gauge("ConcurrentExecutions", name)


async def test_concurrent_executions_are_metrics_live_and_as_a_peak(release_file):
    async with fnrt.Runtime(concurrency_limit=10, unreserved_minimum=1) as rt:
        await rt.add_function("hold", "handlers.chaos:hold")
        await rt.add_function("vip", "handlers.chaos:hold", reserved_concurrency=2)
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(3)]
        calls.append(asyncio.ensure_future(rt.invoke("vip", {"release": release_file})))
        await wait_until(lambda: concurrent(rt) == 4, "four calls in flight")
        assert concurrent(rt, "hold") == 3 and concurrent(rt, "vip") == 1
        assert rt.metrics.gauge("UnreservedConcurrentExecutions") == 3  # vip's is its own
        assert rt.metrics.gauge("ClaimedAccountConcurrency") == 2 + 3  # reserved + shared in use
        assert rt.metrics.snapshot()["gauges"]["ConcurrentExecutions"]["hold"] == 3
        open(release_file, "w").close()
        await asyncio.gather(*calls)
        assert concurrent(rt) == 0 and concurrent(rt, "hold") == 0
        assert rt.metrics.summary("ConcurrentExecutions", "hold")["max"] == 3
        assert rt.metrics.summary("ConcurrentExecutions", "")["max"] == 4
        assert rt.metrics.summary("UnreservedConcurrentExecutions", "")["max"] == 3
        assert rt.metrics.summary("ConcurrentExecutions", "hold")["count"] == 3  # one per admitted call


async def test_provisioned_invocations_and_spillover_are_counted(release_file):
    async with fnrt.Runtime() as rt:
        await rt.add_function("hold", "handlers.chaos:hold", provisioned_concurrency=1)
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(2)]
        await wait_until(lambda: concurrent(rt, "hold") == 2 and rt.stats()["functions"]["hold"]["busy"] == 2)
        assert rt.metrics.gauge("ProvisionedConcurrentExecutions", "hold") == 1
        assert rt.metrics.gauge("ClaimedAccountConcurrency") == 2  # both calls; no reservation
        open(release_file, "w").close()
        await asyncio.gather(*calls)
        assert rt.metrics.counter("ProvisionedConcurrencyInvocations", "hold") == 1
        assert rt.metrics.counter("ProvisionedConcurrencySpilloverInvocations", "hold") == 1
        assert rt.metrics.summary("ProvisionedConcurrencyUtilization", "hold")["max"] == 1.0
        assert rt.metrics.gauge("ClaimedAccountConcurrency") == 1  # the idle provisioned one


async def test_a_deleted_functions_queued_events_are_dropped_and_a_replaced_ones_kept(tmp_path):
    clock = fnrt.FakeClock()
    outbox = tmp_path / "outbox"
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("mail", "handlers.payments:send_receipt", async_config={"retry_delays": [60]})
        dropped = await rt.invoke("mail", {"order": "A-1"}, "Event")  # no outbox: KeyError
        kept = await rt.invoke("mail", {"order": "A-2"}, "Event")
        await rt.wait_idle()
        assert (await rt.async_event(dropped))["state"] == "queued"  # a retry in 60 s
        # Replaced (an update, a redeploy): its events stay queued for the new generation.
        await rt.update_function_configuration("mail", timeout=5)
        await rt.add_function("mail", "handlers.payments:send_receipt", async_config={"retry_delays": [60]})
        assert await rt.async_queue_counts("mail") == {"queued": 2}
        await rt.remove_function("mail")  # Lambda's DeleteFunction
        for request_id in (dropped, kept):
            event = await rt.async_event(request_id)
            assert event["state"] == "failed" and event["condition"] == "FunctionDeleted"
        assert rt.metrics.counter("AsyncEventsDropped", "mail") == 2
        # A new function of that name does not run the deleted one's events.
        await rt.add_function("mail", "handlers.payments:send_receipt")
        await clock.advance(120)
        await rt.wait_idle()
        assert rt.metrics.counter("Invocations", "mail") == 2  # the two first attempts only
        new = await rt.invoke("mail", {"order": "A-3", "outbox": str(outbox)}, "Event")
        await rt.wait_idle()
        assert (await rt.async_event(new))["state"] == "done"


async def test_an_attempt_running_when_its_function_is_deleted_is_not_queued_again():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", timeout=5, async_config={"retry_delays": [1]})
        request_id = await rt.invoke("hold", {}, "Event")  # never released: it times out
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 1, "the attempt")
        await rt.remove_function("hold")
        await clock.advance(6)
        await wait_until(lambda: rt.metrics.counter("Timeouts", "hold") == 1, "the timeout")
        await rt.wait_idle()
        event = await rt.async_event(request_id)
        assert event["state"] == "failed" and event["condition"] == "FunctionDeleted"
        assert rt.metrics.counter("AsyncEventsDropped", "hold") == 1


def init_type(result: dict) -> str:
    return result["environ"]["AWS_LAMBDA_INITIALIZATION_TYPE"]


async def test_provisioned_environments_serve_first_and_spill_over_retires(release_file):
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, idle_ttl=60) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", provisioned_concurrency=1)
        (provisioned,) = [s["pid"] for s in rt.sandboxes("hold")]
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(2)]
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 2, "a spill-over")
        open(release_file, "w").close()
        spilled = {out["pid"] for out in await asyncio.gather(*calls)} - {provisioned}
        # The on-demand environment was used last, yet the provisioned one serves.
        for _ in range(3):
            assert (await rt.invoke("hold", {"release": release_file}))["pid"] == provisioned
        assert rt.metrics.counter("ProvisionedConcurrencySpilloverInvocations", "hold") == 1
        await clock.advance(120)  # idle past the TTL: the spill-over goes, the floor stays
        await wait_until(lambda: [s["pid"] for s in rt.sandboxes("hold")] == [provisioned], "retirement")
        await wait_until(lambda: not any(alive(pid) for pid in spilled), "the spill-over to exit")


async def test_provisioned_concurrency_set_on_warm_on_demand_environments_initializes_its_own():
    async with fnrt.Runtime() as rt:
        await rt.add_function("env", "handlers.hostile:environment")
        assert init_type(await rt.invoke("env", {})) == "on-demand"
        rt.put_provisioned_concurrency("env", 1)
        await wait_until(lambda: rt.provisioned_concurrency("env")["Status"] == "READY", "provisioning")
        assert len(rt.sandboxes("env")) == 2  # the on-demand one does not stand in for it
        assert init_type(await rt.invoke("env", {})) == "provisioned-concurrency"
        assert rt.provisioned_concurrency("env")["AvailableProvisionedConcurrentExecutions"] == 1


class _Exploding(dict):  # a payload whose own code fails while it is encoded
    def items(self):
        raise RuntimeError("boom")


BAD_CALLS = [
    (lambda rt: rt.invoke_detailed("echo", {}, request_id=5), fnrt.InvalidConfig),
    (lambda rt: rt.invoke_detailed("echo", {}, request_id="x" * 70_000), fnrt.InvalidConfig),
    (lambda rt: rt.invoke_detailed("echo", {}, request_id="a\nb"), fnrt.InvalidConfig),
    (lambda rt: rt.invoke_detailed("echo", {}, "Event", request_id=""), fnrt.InvalidConfig),
    (lambda rt: rt.invoke("echo", _Exploding(a=1)), fnrt.InvalidPayload),
    (lambda rt: rt.invoke("echo", _Exploding(a=1), "Event"), fnrt.InvalidPayload),
    (lambda rt: rt.destination_records(None), fnrt.InvalidConfig),
]


async def test_bad_arguments_are_typed_errors_and_the_sandbox_lives_on():
    async with fnrt.Runtime() as rt:
        await rt.add_function("echo", "handlers.echo:echo")
        pid = (await rt.invoke("echo", {}))["pid"]
        for call, error in BAD_CALLS:
            with pytest.raises(error):
                await call(rt)
            assert (await rt.invoke("echo", {"ok": 1}))["pid"] == pid  # the same warm sandbox
        assert rt.metrics.counter("Errors", "echo") == 0
        assert await rt.async_queue_counts() == {}  # no bad Event was stored


async def test_put_function_concurrency_needs_a_number():
    async with fnrt.Runtime() as rt:
        await rt.add_function("echo", "handlers.echo:echo", provisioned_concurrency=0)
        with pytest.raises(fnrt.InvalidConfig, match="delete_function_concurrency"):
            rt.put_function_concurrency("echo", None)
        assert rt.get_function("echo").config.reserved_concurrency is None


async def test_a_burst_of_cold_starts_of_many_functions_is_served_not_taken_for_a_wedged_template():
    async with fnrt.Runtime() as rt:
        await asyncio.gather(*[rt.add_function(f"f{i}", "handlers.echo:echo") for i in range(60)])
        assert len(rt.functions()) == 60
        factory = rt._factory("subprocess")
        await rt.invoke("f0", {})  # the template is up
        # A spawn answered in well under this; the template forks the burst one by one.
        factory.spawn_timeout = 0.3
        template = factory.template_pid
        results = await asyncio.gather(*[rt.invoke(f"f{i}", {"i": i}) for i in range(60)])
        assert [r["event"]["i"] for r in results] == list(range(60))
        assert factory.template_pid == template  # never replaced (with every sandbox)
        assert rt.metrics.gauge("ConcurrentExecutions") == 0


async def test_a_cold_start_over_the_scaling_rate_is_a_throttle_not_a_concurrent_execution(release_file):
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, scaling_limit=1, scaling_window=10) as rt:
        await rt.add_function("hold", "handlers.chaos:hold")
        first = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
        await wait_until(lambda: concurrent(rt, "hold") == 1, "the first call")
        with pytest.raises(fnrt.TooManyRequests) as info:
            await rt.invoke("hold", {"release": release_file})
        assert info.value.reason == "FunctionInvocationRateLimitExceeded"
        open(release_file, "w").close()
        await first
        assert rt.metrics.summary("ConcurrentExecutions", "hold")["max"] == 1
        assert rt.metrics.counter("Throttles", "hold") == 1


async def test_an_update_while_calls_run_never_lets_a_function_pass_its_reserved_concurrency(release_file):
    async with fnrt.Runtime(concurrency_limit=10, unreserved_minimum=1) as rt:
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=2)
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release_file})) for _ in range(2)]
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 2, "two calls")
        await rt.update_function_configuration("hold", environment={"NEW": "1"})
        # The old generation's two calls still run: they are the function's two.
        with pytest.raises(fnrt.TooManyRequests) as info:
            await rt.invoke("hold", {"release": release_file})
        assert info.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
        assert rt.stats()["concurrency"]["unreserved_available"] == 8  # the shared pool untouched
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=2)  # a redeploy: the same
        with pytest.raises(fnrt.TooManyRequests):
            await rt.invoke("hold", {"release": release_file})
        open(release_file, "w").close()
        await asyncio.gather(*calls)
        assert rt.stats()["functions"]["hold"]["in_flight"] == 0
        assert rt.metrics.gauge("ConcurrentExecutions") == 0
        await asyncio.gather(*[rt.invoke("hold", {"release": release_file}) for _ in range(2)])


@pytest.mark.skipif(sys.version_info < (3, 13), reason="subinterpreters need Python 3.13+")
async def test_a_burst_of_subinterpreter_cold_starts_boots_one_spare_not_one_each():
    async with fnrt.Runtime(sandbox="subinterpreter") as rt:
        await asyncio.gather(*[rt.add_function(f"f{i}", "handlers.echo:echo", timeout=60) for i in range(4)])
        await asyncio.gather(*[rt.invoke(f"f{i}", {"i": i}) for i in range(4)])
        factory = rt._factories["subinterpreter"]
        alive = [s for s in factory._sandboxes if s.alive]
        # one per function, and the one spare: no booted interpreter left to nobody
        assert len(alive) == 4 + 1


@pytest.mark.parametrize(
    "settings",
    [
        {"region": 5},
        {"region": "not a region"},
        {"account_id": "x"},
        {"account_id": 123456789012},
        {"state_dir": 5},
        {"clock": object()},
    ],
)
def test_bad_runtime_settings_are_invalid_config_where_the_runtime_is_made(settings):
    with pytest.raises(fnrt.InvalidConfig):
        fnrt.Runtime(**settings)


async def test_a_runtime_in_another_region_and_account_is_invoked_by_its_arns():
    async with fnrt.Runtime(region="eu-west-2", account_id="210987654321") as rt:
        record = await rt.add_function("echo", "handlers.echo:echo")
        assert record.arn == "arn:aws:lambda:eu-west-2:210987654321:function:echo"
        assert (await rt.invoke(record.arn, {"a": 1}))["event"] == {"a": 1}
        assert (await rt.invoke("210987654321:function:echo", {"a": 2}))["event"] == {"a": 2}


async def test_after_provisioned_concurrency_is_deleted_its_environments_serve_as_on_demand_ones():
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock, idle_ttl=60) as rt:
        await rt.add_function("w", "handlers.chaos:whoami", provisioned_concurrency=1)
        await rt.invoke("w", {})
        rt.delete_provisioned_concurrency("w")
        await rt.invoke("w", {})
        assert rt.metrics.counter("ProvisionedConcurrencyInvocations", "w") == 1
        assert rt.metrics.counter("ProvisionedConcurrencySpilloverInvocations", "w") == 0
        await clock.advance(120)  # no floor any more: it retires as idle ones do
        await wait_until(lambda: rt.sandboxes("w") == [], "retirement")


async def test_an_environment_that_exits_in_its_init_phase_answers_in_lambdas_words():
    how = {"FNRT_EXITS_AT_INIT": '{"exit": 2}'}
    async with fnrt.Runtime() as rt:
        await rt.add_function("exits", "handlers.exits:handler", environment=how)
        for _ in range(2):  # the init phase runs again at the next invocation
            out = await rt.invoke_detailed("exits", None)
            assert out.cold_start and out.error is not None
            exited = "Runtime exited with error: exit status 2"
            assert out.error.to_lambda() == {
                "errorMessage": f"RequestId: {out.request_id} Error: {exited}",
                "errorType": "Runtime.ExitError",
                "requestId": out.request_id,
                "stackTrace": [],
            }
        with pytest.raises(fnrt.InitError, match="Init failed: Runtime exited with error: exit status 2"):
            await rt.add_function(
                "provisioned", "handlers.exits:handler", environment=how, provisioned_concurrency=1
            )


async def test_an_arn_of_another_region_or_account_names_no_function_here():
    async with fnrt.Runtime(region="eu-west-1", account_id="123456789012") as rt:
        await rt.add_function("echo", "handlers.echo:echo")
        for ref in (
            "arn:aws:lambda:us-east-1:123456789012:function:echo",
            "arn:aws:lambda:eu-west-1:999999999999:function:echo",
            "arn:aws-cn:lambda:eu-west-1:123456789012:function:echo",
            "999999999999:function:echo",
        ):
            with pytest.raises(fnrt.FunctionNotFound):
                await rt.invoke(ref, {})
        here = "arn:aws:lambda:eu-west-1:123456789012:function:echo"
        for ref in (f"{here}:$LATEST", "123456789012:function:echo"):
            assert (await rt.invoke(ref, {"ref": ref}))["event"] == {"ref": ref}


async def test_wait_idle_waits_for_a_registration_still_initializing_its_provisioned_environments():
    async with fnrt.Runtime() as rt:
        adding = asyncio.ensure_future(
            rt.add_function("w", "handlers.chaos:whoami", provisioned_concurrency=2)
        )
        await asyncio.sleep(0)
        await rt.wait_idle()
        assert adding.done()
        assert rt.provisioned_concurrency("w")["Status"] == "READY"


async def test_concurrency_set_while_an_update_provisions_is_kept(tmp_path):
    """An update's provisioned environments initialize before it takes over; reserved and
    provisioned concurrency set meanwhile (their own calls) are the function's, and stay
    when the update registers."""
    gate, new_gate = tmp_path / "gate", tmp_path / "new-gate"
    gate.touch()
    async with fnrt.Runtime() as rt:
        env = {"INIT_GATE": str(gate)}
        await rt.add_function("g", "handlers.gated_init:handler", provisioned_concurrency=1, environment=env)
        update = asyncio.ensure_future(
            rt.update_function_configuration("g", environment={"INIT_GATE": str(new_gate)})
        )
        await wait_until(lambda: rt._installing == 1, "the update to provision")
        rt.put_function_concurrency("g", 5)
        rt.put_provisioned_concurrency("g", 2)
        new_gate.touch()
        record = await update
        assert record.config.environment == {"INIT_GATE": str(new_gate)}
        assert (record.config.reserved_concurrency, record.config.provisioned_concurrency) == (5, 2)
        assert rt.get_function("g") == record
        assert rt.stats()["concurrency"]["reserved_total"] == 5
        assert rt.provisioned_concurrency("g")["RequestedProvisionedConcurrentExecutions"] == 2
        await rt.wait_idle()  # the raised floor is met now, not at the next maintenance pass
        assert rt.provisioned_concurrency("g")["AllocatedProvisionedConcurrentExecutions"] == 2


async def test_a_provisioned_environment_that_died_idle_is_replaced():
    """A provisioned environment killed while idle (a hostile neighbour, the OOM killer)
    no longer counts as allocated: the next maintenance pass initializes a new one, and
    the next invocation is served by it, not cold-started on demand."""
    clock = fnrt.FakeClock()
    async with fnrt.Runtime(clock=clock) as rt:
        await rt.add_function("env", "handlers.hostile:environment", provisioned_concurrency=1)
        (pid,) = [s["pid"] for s in rt.sandboxes("env")]
        os.kill(pid, signal.SIGKILL)
        available = "AvailableProvisionedConcurrentExecutions"
        await wait_until(lambda: rt.provisioned_concurrency("env")[available] == 0, "the death to be seen")
        await clock.advance(5)  # a maintenance pass
        await wait_until(lambda: rt.provisioned_concurrency("env")[available] == 1, "a new one")
        assert [s["pid"] for s in rt.sandboxes("env")] != [pid]
        assert init_type(await rt.invoke("env", {})) == "provisioned-concurrency"
