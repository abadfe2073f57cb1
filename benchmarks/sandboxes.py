"""Subprocess vs subinterpreter sandboxes, measured in the same run.

    python -m benchmarks.sandboxes [--cold 20] [--warm 2000] [--spin 3000000] [--rounds 5]

Prints a Markdown table: cold start (a new sandbox: create, init, first invoke) and warm
invoke (one round trip to a warm sandbox) as p50/p99 per kind, then two CPU-bound
handlers at once in two subinterpreter sandboxes against two threads in one interpreter.
Subinterpreters need Python 3.13+; on older Pythons only the subprocess rows are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import threading
import time

import structlog

import fnrt
from handlers.cpu import spin


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


async def _cold_starts(rt: fnrt.Runtime, kind: str, count: int, gap: float = 0.0) -> list[float]:
    """Milliseconds for ``count`` invocations that each need a new sandbox, ``gap`` seconds
    apart (a quiet runtime) or back to back (a burst)."""
    samples = []
    for i in range(count):
        name = f"cold-{kind}-{int(gap * 1000)}-{i}"
        await rt.add_function(name, "handlers.echo:noop", sandbox=kind)
        await asyncio.sleep(gap)
        started = time.perf_counter()
        out = await rt.invoke_detailed(name, {})
        samples.append((time.perf_counter() - started) * 1000)
        assert out.cold_start and out.error is None, out.error
        await rt.remove_function(name)
    return samples


async def _warm_invokes(rt: fnrt.Runtime, kind: str, count: int) -> list[float]:
    name = f"warm-{kind}"
    await rt.add_function(name, "handlers.echo:noop", sandbox=kind)
    await rt.invoke(name, {})
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await rt.invoke(name, {})
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def _parallel(rt: fnrt.Runtime, kind: str, n: int, rounds: int) -> tuple[float, float]:
    """Seconds for one CPU-bound handler alone, then for two at once in two warm sandboxes
    (best of ``rounds``: the least disturbed run)."""
    name = f"spin-{kind}"
    await rt.add_function(name, "handlers.cpu:spin", sandbox=kind, timeout=600)
    await asyncio.gather(*(rt.invoke(name, {"n": 10}) for _ in range(2)))  # two warm sandboxes
    ones, twos = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        await rt.invoke(name, {"n": n})
        ones.append(time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(rt.invoke(name, {"n": n}) for _ in range(2)))
        twos.append(time.perf_counter() - started)
    return min(ones), min(twos)


def _threads(n: int, rounds: int) -> tuple[float, float]:
    """The same loop in threads of this one interpreter (one GIL)."""
    ones, twos = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        spin({"n": n}, None)
        ones.append(time.perf_counter() - started)
        threads = [threading.Thread(target=spin, args=({"n": n}, None)) for _ in range(2)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        twos.append(time.perf_counter() - started)
    return min(ones), min(twos)


async def main(cold: int, warm: int, n: int, rounds: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    kinds = ["subprocess"] + (["subinterpreter"] if sys.version_info >= (3, 13) else [])
    rows = []
    parallel = []
    async with fnrt.Runtime() as rt:
        for kind in kinds:
            await _cold_starts(rt, kind, 2)  # warm up: template process, imports, caches
            c50, c99 = _percentiles(await _cold_starts(rt, kind, cold, gap=0.5))
            b50, b99 = _percentiles(await _cold_starts(rt, kind, cold))
            w50, w99 = _percentiles(await _warm_invokes(rt, kind, warm))
            rows.append(
                f"| {kind} | {c50:.1f} / {c99:.1f} ms | {b50:.1f} / {b99:.1f} ms "
                f"| {w50:.0f} / {w99:.0f} µs |"
            )
            one, two = await _parallel(rt, kind, n, rounds)
            parallel.append((f"2 {kind} sandboxes", one, two))
    one, two = _threads(n, rounds)
    parallel.append(("2 threads, one interpreter", one, two))

    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}\n")
    print("| sandbox | cold start p50 / p99 | cold starts in a burst p50 / p99 | warm invoke p50 / p99 |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nCPU-bound handler, a pure-Python loop of {n:,} steps (best of {rounds} runs):\n")
    print("| two at once in | one alone | two at once | speed-up (2 x one / two) |")
    print("|---|---|---|---|")
    for label, one, two in parallel:
        print(f"| {label} | {one:.2f} s | {two:.2f} s | {2 * one / two:.2f}x |")
    print(
        f"\ncold start: a new sandbox's first invoke (create, init, invoke), {cold} of them 0.5 s apart; "
        f"in a burst: {cold} back to back; warm invoke: {warm} calls of a no-op handler."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=20)
    parser.add_argument("--warm", type=int, default=2000)
    parser.add_argument("--spin", type=int, default=3_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.cold, args.warm, args.spin, args.rounds))
