"""Which event loop fnrt's own entry points run on: uvloop when it is installed.

``fnrt.run(main())`` is :func:`asyncio.run` that picks the loop: ``loop="auto"`` (the
default) takes uvloop when it can be imported (``pip install 'fnrt[uvloop]'``) and asyncio's
own loop otherwise; ``"uvloop"`` insists on it; ``"asyncio"`` never uses it. ``python -m fnrt
serve`` and the in-process ``invoke`` run on it (``--loop``), and so can an app that embeds
fnrt. An app that makes its own loop keeps it: fnrt works on either.

uvloop (libuv) cuts the loop's own cost per callback and per socket read; on the warm path
that is a measured 20-25 % of the host's latency (``python -m benchmarks --uvloop``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from .errors import InvalidConfig

T = TypeVar("T")
LoopChoice = Literal["auto", "uvloop", "asyncio"]
LOOPS: tuple[LoopChoice, ...] = ("auto", "uvloop", "asyncio")


def loop_factory(loop: LoopChoice | str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory :class:`asyncio.Runner` takes for ``loop`` (None: asyncio's default)."""
    if loop not in LOOPS:
        raise InvalidConfig(f"loop must be one of {', '.join(LOOPS)}, not {loop!r}")
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise InvalidConfig("loop='uvloop' needs uvloop: pip install 'fnrt[uvloop]'") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: what the running (or given) loop is."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, loop: LoopChoice | str = "auto", debug: bool | None = None) -> T:
    """Run ``main`` to completion on a new loop (uvloop when installed, see the module)."""
    try:
        factory = loop_factory(loop)
    except BaseException:
        main.close()  # never "coroutine was never awaited"
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
