"""What a module's ``@fnrt.handler`` decorators say, read from its source without running it.

``deploy`` finds a module's handlers by importing it in a sandbox thrown away after. That
import is an init phase like any other: a module that makes a boto3 client at import
(``boto3.client("s3")`` needs ``AWS_REGION``) or reads its own variables
(``os.environ["TABLE_NAME"]``, set by ``@fnrt.handler(environment=...)``) must find them
already set, as it does in Lambda, where a function's configuration exists before its code
runs. Only the import can say what the decorators mean, so the literal arguments of each
decorator are read here first (the ``ast`` of the file, nothing executed, no parent package
imported) and give the discovery sandbox its function's environment.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from typing import Any

from .sandbox._protocol import HOST_CWD, import_path

__all__ = ["HandlerHint", "handler_hints", "module_source"]

#: A decorated function's name and the literal keyword arguments of its decorator.
HandlerHint = tuple[str, dict[str, Any]]


def module_source(module: str, path: Sequence[str] | None = None) -> str | None:
    """The source text of ``module`` found on ``path`` (default ``sys.path``), as the
    import would find a plain ``.py`` file or package; None when there is none (a
    compiled module, a zip, a module that does not exist: the import reports that)."""
    parts = module.split(".")
    for entry in import_path() if path is None else path:
        base = os.path.join(entry or HOST_CWD, *parts)
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            try:
                with open(candidate, encoding="utf-8") as f:
                    return f.read()
            except (OSError, UnicodeDecodeError):
                continue
    return None


def handler_hints(source: str) -> list[HandlerHint]:
    """Each top-level function decorated ``@handler``/``@fnrt.handler`` (called or not),
    with the keyword arguments that are literals; in the order of the file."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []  # the import in the sandbox reports it, as Lambda does
    hints: list[HandlerHint] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            target = call.func if call is not None else decorator
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if name != "handler":
                continue
            literals: dict[str, Any] = {}
            for keyword in call.keywords if call is not None else ():
                if keyword.arg is None:
                    continue
                try:
                    literals[keyword.arg] = ast.literal_eval(keyword.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue
            hints.append((node.name, literals))
            break
    return hints
