"""The console shows the cluster when hosts share a store (PostgreSQL, started for real)."""

from __future__ import annotations

import asyncio

import pytest

import fnrt

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("asyncpg", reason="pip install 'fnrt[postgres]'")

from fnrt.http import InvokeServer

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
