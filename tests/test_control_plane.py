"""Lambda's control plane on the runtime: configuration, concurrency, provisioned
concurrency, event-invoke config and stream mappings changed while functions run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import fnrt
from fnrt.testing import wait_until


async def test_update_function_configuration_takes_effect_on_new_environments(release_file: str) -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("env", "handlers.echo:echo", environment={"STAGE": "one"}, timeout=5)
        first = await rt.invoke("env", {})
        rt.configure_async("env", max_retry_attempts=0)
        record = await rt.update_function_configuration("env", environment={"STAGE": "two"}, memory_mb=256)
        assert record.config.environment == {"STAGE": "two"} and record.config.timeout == 5
        assert rt.get_function("env").config.memory_mb == 256
        second = await rt.invoke_detailed("env", {})
        assert second.cold_start  # a new environment, initialized with the new configuration
        assert second.payload["pid"] != first["pid"]
        assert rt.async_config("env").max_retry_attempts == 0  # the function's, not the code's
        with pytest.raises(fnrt.InvalidConfig, match="cannot update reserved_concurrency"):
            await rt.update_function_configuration("env", reserved_concurrency=3)
        with pytest.raises(fnrt.InvalidConfig):
            await rt.update_function_configuration("env", timeout=0)


async def test_function_concurrency_is_put_and_deleted_while_calls_run(release_file: str) -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("hold", "handlers.chaos:hold")
        running = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 1, "a call in flight")
        record = rt.put_function_concurrency("hold", 1)
        assert record.config.reserved_concurrency == 1
        with pytest.raises(fnrt.TooManyRequests) as throttled:  # the running call holds the 1
            await rt.invoke("hold", {"release": release_file})
        assert throttled.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
        assert rt.stats()["concurrency"]["reserved_total"] == 1
        rt.delete_function_concurrency("hold")
        assert rt.get_function("hold").config.reserved_concurrency is None
        second = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
        await wait_until(lambda: rt.stats()["functions"]["hold"]["busy"] == 2, "a second call")
        Path(release_file).touch()
        await asyncio.gather(running, second)
        assert rt.stats()["concurrency"]["in_flight"] == 0
        with pytest.raises(fnrt.InvalidConfig):
            rt.put_function_concurrency("hold", 10_000)  # more than can be reserved


async def test_provisioned_concurrency_config_reaches_ready() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("whoami", "handlers.chaos:whoami")
        rt.put_provisioned_concurrency("whoami", 2)
        await rt.wait_idle()
        status = rt.provisioned_concurrency("whoami")
        assert status["Status"] == "READY"
        assert status["AllocatedProvisionedConcurrentExecutions"] == 2
        assert not (await rt.invoke_detailed("whoami", {})).cold_start
        rt.delete_provisioned_concurrency("whoami")
        assert rt.provisioned_concurrency("whoami")["RequestedProvisionedConcurrentExecutions"] == 0


async def test_a_large_provisioned_pool_fills_in_waves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hundreds of provisioned environments started at once would be a fork storm: they
    are initialized a few at a time, and all of them come up."""
    monkeypatch.setattr("fnrt._pool.PROVISION_AT_ONCE", 2)
    async with fnrt.Runtime() as rt:
        await rt.add_function("whoami", "handlers.chaos:whoami")
        rt.put_provisioned_concurrency("whoami", 6)
        most = 0

        def ready() -> bool:
            nonlocal most
            stats = rt.stats()["functions"]["whoami"]
            most = max(most, stats["starting"])
            return rt.provisioned_concurrency("whoami")["Status"] == "READY"

        await wait_until(ready, "the provisioned pool", 60, poll=0.001)
        assert rt.provisioned_concurrency("whoami")["AvailableProvisionedConcurrentExecutions"] == 6
        assert 1 <= most <= 2


async def test_event_invoke_config_is_deleted_back_to_the_defaults() -> None:
    async with fnrt.Runtime() as rt:
        await rt.add_function("f", "handlers.echo:echo")
        rt.configure_async("f", max_retry_attempts=1)
        rt.delete_async_config("f")
        assert rt.async_config("f") == fnrt.AsyncConfig()


async def test_account_settings() -> None:
    async with fnrt.Runtime(concurrency_limit=500) as rt:
        await rt.add_function("f", "handlers.echo:echo", reserved_concurrency=100)
        settings = rt.account_settings()
        assert settings["AccountLimit"]["ConcurrentExecutions"] == 500
        assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == 400
        assert settings["AccountUsage"]["FunctionCount"] == 1


async def test_a_stream_mapping_is_updated_and_goes_on_from_its_checkpoint(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        await rt.add_function(
            "orders", "handlers.orders:process_orders", environment={"ORDERS_LEDGER": str(ledger)}
        )
        stream = await rt.create_stream("orders")
        await stream.put_records([(json.dumps({"id": i}), "k") for i in range(3)])
        mapping = await rt.add_stream_mapping("orders", "orders", batch_size=10)
        await rt.wait_idle()
        updated = await rt.update_stream_mapping(mapping.uuid, batch_size=1)
        assert updated.uuid == mapping.uuid and updated.config.batch_size == 1
        await stream.put_records([(json.dumps({"id": i}), "k") for i in range(3, 6)])
        await wait_until(lambda: ledger.exists() and len(ledger.read_text().splitlines()) == 6, "all six")
        ids = [json.loads(line)["id"] for line in ledger.read_text().splitlines()]
        assert ids == list(range(6))  # nothing redone, nothing skipped
        with pytest.raises(fnrt.InvalidConfig):
            await rt.update_stream_mapping(mapping.uuid, batch_size=0)
