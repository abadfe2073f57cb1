"""A host for the kill -9 test: ``python -m tests.isolation_host``.

Starts a runtime, has a handler start a long-running child process, prints the child's pid and
another sandbox's TMPDIR, and waits to be killed.
"""

from __future__ import annotations

import asyncio
import logging

import structlog

import fnrt


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    async with fnrt.Runtime() as rt:
        await rt.add_function("child", "handlers.hostile:start_child")
        await rt.add_function("env", "handlers.hostile:environment")
        pid = await rt.invoke("child", {})
        tmp = (await rt.invoke("env", {}))["tempdir"]
        print(pid, tmp, flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
