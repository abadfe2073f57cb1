"""The embedded runtime's contract: lifecycle, registration all or none, metrics, removal."""

from __future__ import annotations

import pytest

import fnrt


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
