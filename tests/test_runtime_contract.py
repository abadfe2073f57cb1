"""The embedded runtime's contract: lifecycle, registration all or none, metrics, removal."""

from __future__ import annotations

import pytest

import fnrt

from .conftest import alive


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
