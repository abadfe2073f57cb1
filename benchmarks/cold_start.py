"""Cold start to first result: a new fnrt sandbox against starting a fresh Python process.

Baselines measured in the same run: ``python -c`` importing asyncio and calling the handler
(what a naive process-per-event runner pays), and python-lambda-local's ``invoke`` (the
usual local Lambda runner), both on the same handler module.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time

import fnrt

from ._common import Report, median, ms, pct


async def _fnrt_cold(rounds: int, sandbox: str) -> list[float]:
    samples = []
    async with fnrt.Runtime(sandbox=sandbox) as rt:
        await rt.add_function("warmup", "handlers.echo:noop")
        await rt.invoke("warmup", {})  # the template process is up: measure sandboxes only
        for i in range(rounds):
            name = f"cold{i}"
            await rt.add_function(name, "handlers.echo:echo")
            t = time.perf_counter()
            await rt.invoke(name, {"i": i})
            samples.append(time.perf_counter() - t)
    return samples


async def _process(argv: list[str], rounds: int, cwd: str) -> list[float]:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"{argv[:3]} failed")
        samples.append(time.perf_counter() - t)
    return samples


async def run(report: Report, rounds: int = 30) -> None:
    section = "cold start to first result"
    cwd = os.getcwd()
    fnrt_samples = await _fnrt_cold(rounds, "subprocess")
    code = (
        "import asyncio, json, types, handlers.echo as h; "
        "print(json.dumps(h.echo({'i': 1}, types.SimpleNamespace(aws_request_id='r'))))"
    )
    fresh = await _process([sys.executable, "-c", code], rounds, cwd)
    report.add(
        section,
        "fnrt subprocess sandbox (fork from template + init + invoke)",
        f"{ms(median(fnrt_samples))} p50, {ms(pct(fnrt_samples, 0.99))} p99",
        baseline=f"fresh python -c: {ms(median(fresh))} p50",
        ratio=f"{median(fresh) / median(fnrt_samples):.1f}x faster",
    )
    lambda_local = shutil.which("python-lambda-local", path=os.path.dirname(sys.executable))
    if lambda_local:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as event:
            event.write('{"i": 1}')
        try:
            pll = await _process([lambda_local, "-f", "echo", "-t", "3", "handlers/echo.py", event.name],
                                 max(5, rounds // 3), cwd)
        finally:
            os.unlink(event.name)
        report.add(
            section,
            "  vs python-lambda-local invoke",
            f"{ms(median(fnrt_samples))} p50",
            baseline=f"python-lambda-local: {ms(median(pll))} p50",
            ratio=f"{median(pll) / median(fnrt_samples):.1f}x faster",
        )
    if sys.version_info >= (3, 13):
        sub = await _fnrt_cold(rounds, "subinterpreter")
        report.add(
            section,
            "fnrt subinterpreter sandbox (create + init + invoke)",
            f"{ms(median(sub))} p50, {ms(pct(sub, 0.99))} p99",
            baseline=f"fresh python -c: {ms(median(fresh))} p50",
            ratio=f"{median(fresh) / median(sub):.1f}x faster",
        )
