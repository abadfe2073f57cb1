"""Handlers that end their execution environment, as they would end a Python process: by
``sys.exit`` or an uncaught ``BaseException`` that is not an ``Exception``.

``end(how)`` takes a JSON-able description, so the same ending can come in an event (the
invoke phase) or in the variable ``FNRT_EXITS_AT_INIT`` (the module's import, the init
phase): ``{"exit": code}`` calls ``sys.exit(code)``, ``{"raise": name}`` raises one of
:data:`RAISES`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


class Shutdown(BaseException):
    """A handler's own ``BaseException``: ``except Exception`` does not catch it."""


RAISES: dict[str, type[BaseException]] = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "Shutdown": Shutdown,
}


def end(how: dict[str, Any]) -> None:
    if "exit" in how:
        sys.exit(how["exit"])
    raise RAISES[how["raise"]](how.get("message", "kb"))


def handler(event: Any, context: Any) -> Any:
    if event:
        end(event)
    return {"ok": True, "pid": os.getpid()}


if "FNRT_EXITS_AT_INIT" in os.environ:
    end(json.loads(os.environ["FNRT_EXITS_AT_INIT"]))
