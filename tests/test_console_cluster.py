"""The console shows the cluster when hosts share a store (PostgreSQL, started for real)."""

from __future__ import annotations

import asyncio

import pytest

import fnrt

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("asyncpg", reason="pip install 'fnrt[postgres]'")

from fnrt.http import InvokeServer
from fnrt.testing import wait_until

pytest_plugins = ["tests.pg"]


async def test_the_console_shows_every_host_on_the_shared_store(postgres_url: str) -> None:
    async with fnrt.Runtime(store=postgres_url) as one, fnrt.Runtime(store=postgres_url) as two:
        await one.add_function("f", "handlers.echo:echo")
        await two.add_function("f", "handlers.echo:echo")
        async with InvokeServer(one, port=0) as server, aiohttp.ClientSession(server.url) as http:

            async def cluster() -> dict:
                async with http.get("/console/api/cluster") as resp:
                    assert resp.status == 200
                    return await resp.json()

            data = await cluster()
            assert data["shared"] is True

            async def both_seen() -> bool:
                hosts = {h["host"] for h in (await cluster())["hosts"]}
                return {one.host_id, two.host_id} <= hosts

            for _ in range(200):  # each host registers with its first heartbeat
                if await both_seen():
                    break
                await asyncio.sleep(0.05)
            assert await both_seen()
            async with http.get("/console/") as resp:
                page = await resp.text()
            assert 'id="cluster"' in page and "Hosts alive" in page and two.host_id in page


async def test_a_host_alone_says_so() -> None:
    async with fnrt.Runtime() as rt, InvokeServer(rt, port=0) as server:
        async with aiohttp.ClientSession(server.url) as http, http.get("/console/api/cluster") as resp:
            assert (await resp.json()) == {"shared": False}


async def test_the_cluster_view_counts_the_queue_depth_only(tmp_path, release_file) -> None:
    """The console reads the cluster each second: it counts the queued and leased events,
    not the day of finished ones (``cluster_stats()`` itself still counts every state)."""
    async with fnrt.Runtime(state_dir=tmp_path) as rt, InvokeServer(rt, port=0) as server:
        await rt.add_function("echo", "handlers.echo:echo")
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=1)
        done = await rt.invoke("echo", {}, invocation_type="Event")

        async def finished() -> bool:
            return (await rt.async_event(done) or {}).get("state") == "done"

        await wait_until(finished, "the first event done")
        held = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
        await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 1, "hold in flight")
        await rt.invoke("hold", {"release": release_file}, invocation_type="Event")  # waits
        async with aiohttp.ClientSession(server.url) as http, http.get("/console/api/cluster") as resp:
            data = await resp.json()
        assert data["shared"] is True
        assert sum(data["queue"]["total"].values()) == 1 and "done" not in data["queue"]["total"]
        assert data["queue"]["functions"]["hold"] == data["queue"]["total"]
        assert data["queue"]["functions"]["echo"] == {}
        assert (await rt.cluster_stats())["queue"]["functions"]["echo"] == {"done": 1}
        open(release_file, "w").close()
        await held
