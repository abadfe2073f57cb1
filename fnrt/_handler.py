"""The ``@fnrt.handler`` decorator and handler references (``"module:function"``).

The decorator only attaches a validated config to the function and returns the function
unchanged, so handlers stay plain, directly testable Python. Discovery reads these marks
inside the sandbox that imported the module; the host never imports handler modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar, overload

import attrs

from ._config import AsyncConfig, FunctionConfig, check_function_name
from .errors import InvalidConfig

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__fnrt__"
# Config keys that are not FunctionConfig fields but are read by a source, each with the
# validator that checks it where it is written. Anything else is a typo and rejected.
_URL_OPTIONS = {
    "path_prefix",
    "payload_format",
    "route",
    "methods",
    "cors",
    "auth_type",
    "stage",
    "stage_variables",
}


def _check_url(value: Any) -> object:
    """``url=True`` or ``url={...}`` with ``fnrt.http.add_url`` options (read by the HTTP
    server, which mounts the function's URL; checked here without importing aiohttp)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        raise InvalidConfig(f"url must be True or a dict of add_url options, got {value!r}")
    unknown = sorted(set(value) - _URL_OPTIONS)
    if unknown:
        raise InvalidConfig(f"unknown url options {unknown}; known: {', '.join(sorted(_URL_OPTIONS))}")
    if value.get("payload_format", "2.0") not in ("1.0", "2.0"):
        raise InvalidConfig(f"url payload_format must be '1.0' or '2.0', got {value['payload_format']!r}")
    if value.get("auth_type", "NONE") not in ("NONE", "AWS_IAM"):
        raise InvalidConfig(f"url auth_type must be 'NONE' or 'AWS_IAM', got {value['auth_type']!r}")
    return value


EXTRA_KEYS: dict[str, Callable[[Any], object]] = {
    "async_config": lambda value: AsyncConfig.from_kwargs(value or {}),  # the async queue
    "url": _check_url,  # the HTTP server's function URLs
}
_REFERENCE = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)[:.]([A-Za-z_]\w*)$")


@attrs.frozen
class HandlerSpec:
    """What the decorator records: the function's name and config."""

    name: str
    config: FunctionConfig
    extra: dict[str, Any] = attrs.field(factory=dict)


@overload
def handler(fn: F, /) -> F: ...
@overload
def handler(fn: None = None, /, *, name: str | None = None, **config: Any) -> Callable[[F], F]: ...


def handler(fn: Any = None, /, *, name: str | None = None, **config: Any) -> Any:
    """Mark a function as a Lambda-style handler.

    ``@fnrt.handler`` or ``@fnrt.handler(timeout=3, memory_mb=256, reserved_concurrency=10)``.
    The function's own name is the function name unless ``name=`` says otherwise. Config
    is validated here, at import, so a bad value fails the init phase with a clear message.
    Keys not in :class:`FunctionConfig` (for example ``async_config``, read by the async
    queue) are kept as ``extra``.
    """
    function_config, extra = split_config(config)

    def mark(f: F) -> F:
        if not callable(f):
            raise InvalidConfig(f"@fnrt.handler needs a callable, got {f!r}")
        fname = check_function_name(name or f.__name__)
        setattr(f, MARK, HandlerSpec(fname, function_config, extra))
        return f

    return mark(fn) if fn is not None else mark


def split_config(config: dict[str, Any]) -> tuple[FunctionConfig, dict[str, Any]]:
    """Validate keyword config: FunctionConfig fields, plus keys a source reads."""
    function_keys = {a.name for a in attrs.fields(FunctionConfig)}
    unknown = sorted(set(config) - function_keys - set(EXTRA_KEYS))
    if unknown:
        known = ", ".join(sorted(function_keys | set(EXTRA_KEYS)))
        raise InvalidConfig(f"unknown function config {', '.join(unknown)}; known: {known}")
    function_config = FunctionConfig.from_kwargs({k: v for k, v in config.items() if k in function_keys})
    extra = {k: v for k, v in config.items() if k not in function_keys}
    for key, value in extra.items():
        EXTRA_KEYS[key](value)
    return function_config, extra


def parse_reference(reference: str) -> tuple[str, str]:
    """Split Lambda's handler string ``"package.module.function"`` or ``"module:function"``."""
    if not isinstance(reference, str):
        raise InvalidConfig(f"handler reference must be a string like 'module:function', got {reference!r}")
    match = _REFERENCE.match(reference)
    if not match:
        raise InvalidConfig(
            f"handler reference {reference!r} is not valid: write 'module:function' "
            "(or Lambda's 'module.function')"
        )
    return match.group(1), match.group(2)
