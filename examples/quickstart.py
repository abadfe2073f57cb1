"""fnrt in one screen: cold and warm starts, scale-out, a throttle, a timeout, a crash.

Run it with:  python -m examples.quickstart
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time

import structlog

import fnrt


def say(text: str) -> None:
    print(text, flush=True)


async def main() -> None:
    # Invocation logs (START/END/REPORT) are structlog events; keep this demo's output short.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    release = os.path.join(tempfile.mkdtemp(prefix="fnrt-quickstart-"), "release")

    async with fnrt.Runtime(concurrency_limit=100) as rt:
        t0 = time.perf_counter()
        names = await rt.deploy("handlers.echo")
        say(f"deployed handlers.echo -> {names} in {(time.perf_counter() - t0) * 1000:.0f} ms "
            "(the module was imported in a sandbox, never in this process)")

        # 1. cold start, then warm reuse of the same sandbox
        await rt.add_function("whoami", "handlers.chaos:whoami")
        first = await rt.invoke_detailed("whoami", {})
        second = await rt.invoke_detailed("whoami", {})
        say(f"\n1. cold start: pid {first.payload['pid']}, init {first.init_duration_ms:.1f} ms, "
            f"duration {first.duration_ms:.2f} ms")
        say(f"   warm start: pid {second.payload['pid']} (same sandbox, init ran "
            f"{second.payload['inits']} time), duration {second.duration_ms:.2f} ms")
        say("   " + second.log.strip().splitlines()[-1])

        t0 = time.perf_counter()
        n = 2000
        for _ in range(n):
            await rt.invoke("noop", {})
        say(f"   {n} warm invokes, one after another: "
            f"{(time.perf_counter() - t0) / n * 1e6:.0f} us each")

        # 2. concurrent events scale out to distinct sandboxes; reserved concurrency throttles
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=3)
        calls = [asyncio.ensure_future(rt.invoke("hold", {"release": release})) for _ in range(3)]
        while rt.stats()["functions"]["hold"]["busy"] < 3:
            await asyncio.sleep(0.01)
        try:
            await rt.invoke("hold", {"release": release})
        except fnrt.TooManyRequests as exc:
            say(f"\n2. 3 events in flight with reserved_concurrency=3; a 4th is throttled at once: "
                f"TooManyRequests({exc.reason})")
        with open(release, "w"):  # noqa: ASYNC230 - a tiny local file, once
            pass
        pids = {out["pid"] for out in await asyncio.gather(*calls)}
        say(f"   the 3 ran in {len(pids)} distinct sandboxes")

        # 3. a timeout kills the sandbox; the next event gets a fresh one
        await rt.add_function("stuck", "handlers.chaos:hold", timeout=0.5)
        try:
            await rt.invoke("stuck", {})
        except fnrt.FunctionTimeout as exc:
            say(f"\n3. timeout: {exc.error_type}: {exc.error_message}")

        # 4. a crash (segfault) is a function error; the runtime carries on
        await rt.add_function("segfault", "handlers.chaos:segfault")
        try:
            await rt.invoke("segfault", {})
        except fnrt.FunctionError as exc:
            say(f"\n4. crash: {exc.error_type}: {exc.error_message}")

        # 5. an exception in the handler comes back in Lambda's error shape, with the log
        await rt.add_function("talk", "handlers.chaos:talk")
        try:
            await rt.invoke("talk", {"fail": True})
        except fnrt.FunctionError as exc:
            say(f"\n5. handler error: {exc.to_lambda()['errorType']}: {exc.error_message}; log tail:")
            for line in exc.log_tail.strip().splitlines()[:4]:
                say(f"   | {line}")

        stats = rt.stats()
        say(f"\nstats: {stats['concurrency']['in_flight']} in flight, throttles "
            f"{stats['concurrency']['throttles']}; warm sandboxes: "
            + ", ".join(f"{k}={v['warm']}" for k, v in stats["functions"].items()))
    say("runtime closed: every sandbox and the template process have exited")


if __name__ == "__main__":
    asyncio.run(main())
