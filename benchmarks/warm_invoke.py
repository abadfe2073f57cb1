"""Warm sync invoke of a no-op handler, against the floor and the usual alternatives.

Rows: fnrt p50/p99 latency and invokes/s at 1, 2 and 8 concurrent callers; the raw floor
(an asyncio parent and a forked child echoing length-prefixed frames over a socketpair);
a direct in-process call; ProcessPoolExecutor through run_in_executor; loky's reusable
executor. Every baseline runs in the same process, in the same run, right after fnrt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import fnrt

from ._common import Report, pct, us

_P = struct.Struct("!I")
PAYLOAD = {"order_id": "A-1001", "items": [{"sku": "apple", "qty": 3}], "note": "x" * 40}


def noop(event: object, context: object = None) -> None:
    return None


async def _drive(
    call: Callable[[], Awaitable[object]], callers: int, total: int
) -> tuple[list[float], float]:
    """Run ``total`` calls from ``callers`` concurrent tasks; latencies and calls/s."""
    latencies: list[float] = []
    per_caller = total // callers

    async def caller() -> None:
        for _ in range(per_caller):
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return latencies, len(latencies) / (time.perf_counter() - started)


# -- the floor: a forked echo child over a socketpair --------------------------------------


def _echo_child(sock: socket.socket) -> None:
    while True:
        head = sock.recv(4)
        if not head:
            os._exit(0)
        (n,) = _P.unpack(head)
        data = b""
        while len(data) < n:
            data += sock.recv(n - len(data))
        sock.sendall(_P.pack(len(data)) + data)


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= 4:
            (n,) = _P.unpack_from(self.buf)
            if len(self.buf) >= 4 + n:
                del self.buf[: 4 + n]
                assert self.waiter is not None
                self.waiter.set_result(None)


class RawFloor:
    """N forked echo children, one per caller, each used by one caller at a time."""

    def __init__(self, children: int) -> None:
        self.children = children
        self.pids: list[int] = []
        self.channels: list[_Echo] = []
        self.free: list[_Echo] = []

    async def __aenter__(self) -> RawFloor:
        loop = asyncio.get_running_loop()
        for _ in range(self.children):
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                ours.close()
                _echo_child(theirs)
            theirs.close()
            _, proto = await loop.create_unix_connection(_Echo, sock=ours)
            self.pids.append(pid)
            self.channels.append(proto)
        self.free = list(self.channels)
        return self

    async def call(self) -> None:
        channel = self.free.pop()
        channel.waiter = asyncio.get_running_loop().create_future()
        assert channel.transport is not None
        frame = b'{"order_id":"A-1001","items":[{"sku":"apple","qty":3}],"note":"' + b"x" * 40 + b'"}'
        channel.transport.write(_P.pack(len(frame)) + frame)
        await channel.waiter
        self.free.append(channel)

    async def __aexit__(self, *exc: object) -> None:
        for channel in self.channels:
            assert channel.transport is not None
            channel.transport.close()
        await asyncio.sleep(0.05)  # let the transports close, so the children see EOF
        for pid in self.pids:
            await asyncio.to_thread(os.waitpid, pid, 0)


async def run(report: Report, total: int = 6000) -> None:
    section = "warm invoke (no-op)"
    loop = asyncio.get_running_loop()
    results: dict[str, dict[int, tuple[float, float, float]]] = {}

    def record(name: str, callers: int, latencies: list[float], rate: float) -> None:
        results.setdefault(name, {})[callers] = (pct(latencies, 0.5), pct(latencies, 0.99), rate)

    async with fnrt.Runtime() as rt:
        await rt.add_function("noop", "handlers.echo:noop", provisioned_concurrency=8)
        for callers in (1, 2, 8):
            await _drive(lambda: rt.invoke("noop", PAYLOAD), callers, 500)  # warm-up
            record("fnrt", callers, *await _drive(lambda: rt.invoke("noop", PAYLOAD), callers, total))
            async with RawFloor(callers) as floor:
                await _drive(floor.call, callers, 500)
                record("floor", callers, *await _drive(floor.call, callers, total))

    async def direct() -> None:
        noop(PAYLOAD)

    for callers in (1, 2, 8):
        record("direct", callers, *await _drive(direct, callers, total))
    with concurrent.futures.ProcessPoolExecutor(max_workers=8) as pool:
        for callers in (1, 2, 8):
            call = lambda: loop.run_in_executor(pool, noop, PAYLOAD)  # noqa: E731
            await _drive(call, callers, 500)
            record("ProcessPoolExecutor", callers, *await _drive(call, callers, total))
    try:
        from loky import get_reusable_executor
    except ImportError:
        get_reusable_executor = None
    if get_reusable_executor is not None:
        executor = get_reusable_executor(max_workers=8)
        for callers in (1, 2, 8):
            call = lambda: asyncio.wrap_future(executor.submit(noop, PAYLOAD))  # noqa: E731
            await _drive(call, callers, 500)
            record("loky", callers, *await _drive(call, callers, total))
        executor.shutdown(wait=True)

    for callers in (1, 2, 8):
        p50, p99, rate = results["fnrt"][callers]
        f50, f99, frate = results["floor"][callers]
        report.add(
            section,
            f"fnrt, {callers} caller{'s' if callers > 1 else ''}: p50 / p99, invokes/s",
            f"{us(p50)} / {us(p99)}, {rate:,.0f}/s",
            baseline=f"raw floor {us(f50)} / {us(f99)}, {frate:,.0f}/s",
            ratio=f"{p50 / f50:.2f}x floor",
        )
        for name in ("ProcessPoolExecutor", "loky", "direct"):
            if name in results:
                b50, b99, brate = results[name][callers]
                report.add(
                    section,
                    f"  vs {name}, {callers} caller{'s' if callers > 1 else ''}",
                    f"{us(p50)} / {us(p99)}, {rate:,.0f}/s",
                    baseline=f"{us(b50)} / {us(b99)}, {brate:,.0f}/s",
                    ratio=f"{b50 / p50:.2f}x" if name != "direct" else f"{p50 / b50:,.0f}x direct",
                )
    report.series = {name: [(c, v[0] * 1e6) for c, v in sorted(per.items())] for name, per in results.items()}
