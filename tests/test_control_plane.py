"""Lambda's control plane on the runtime: configuration, concurrency, provisioned
concurrency, event-invoke config and stream mappings changed while functions run."""

from __future__ import annotations

import asyncio
import json
import sys
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


def _package_dir(root: Path, version: int) -> str:
    """A function's unpacked package: a handler module importing a helper of its own."""
    root.mkdir()
    (root / "lambda_function.py").write_text(
        "import helper\n\ndef lambda_handler(event, context):\n"
        "    return {'version': helper.VERSION, 'file': helper.__file__}\n"
    )
    (root / "helper.py").write_text(f"VERSION = {version}\n")
    return str(root)


@pytest.mark.parametrize(
    "kind",
    [
        "subprocess",
        pytest.param(
            "subinterpreter",
            marks=pytest.mark.skipif(sys.version_info < (3, 13), reason="subinterpreters need Python 3.13+"),
        ),
    ],
)
async def test_code_root_serves_each_function_its_own_package(kind: str, tmp_path: Path) -> None:
    """Two functions whose packages have the same module names each import their own;
    an update to a new root reaches the next environment."""
    one, two, three = (_package_dir(tmp_path / f"v{n}", n) for n in (1, 2, 3))
    async with fnrt.Runtime(sandbox=kind) as rt:
        await rt.add_function("a", "lambda_function.lambda_handler", code_root=one)
        await rt.add_function("b", "lambda_function.lambda_handler", code_root=two)
        assert (await rt.invoke("a", {}))["version"] == 1
        assert (await rt.invoke("b", {}))["file"] == str(Path(two) / "helper.py")
        await rt.update_function_configuration("a", code_root=three)
        assert (await rt.invoke("a", {}))["version"] == 3
        assert (await rt.invoke("b", {}))["version"] == 2


async def test_code_root_must_be_a_directory_and_is_refused_inline(tmp_path: Path) -> None:
    for bad in ("relative/path", str(tmp_path / "missing")):
        with pytest.raises(fnrt.InvalidConfig, match="code_root"):
            fnrt.FunctionConfig(code_root=bad)
    root = _package_dir(tmp_path / "pkg", 1)
    async with fnrt.Runtime(sandbox="inline") as rt:
        with pytest.raises(fnrt.InvalidConfig, match="not inline"):
            await rt.add_function("a", "lambda_function.lambda_handler", code_root=root)
        await rt.add_function("b", "handlers.echo:noop")
        with pytest.raises(fnrt.InvalidConfig, match="not inline"):
            await rt.update_function_configuration("b", code_root=root)
        assert rt.functions().keys() == {"b"}
