"""Frozen, validated configuration objects.

A config is invalid at construction (``FunctionConfig(timeout=0)`` raises
:class:`~fnrt.errors.InvalidConfig` there), never at the first invocation. Ranges follow
Lambda's documented limits.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import InvalidConfig

SANDBOX_KINDS = ("subprocess", "subinterpreter", "inline")
_ENV_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _number(low: float, high: float, *, integer: bool = False, optional: bool = False) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidConfig(f"{attribute.name} must be a number, got {value!r}")
        if integer and not float(value).is_integer():
            raise InvalidConfig(f"{attribute.name} must be a whole number, got {value!r}")
        if math.isnan(value) or not low <= value <= high:
            raise InvalidConfig(f"{attribute.name} must be between {low:g} and {high:g}, got {value!r}")

    return check


def _environment(instance: object, attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
    for key, val in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise InvalidConfig(f"environment variable name {key!r} is not valid (letters, digits, _)")
        if not isinstance(val, str):
            raise InvalidConfig(f"environment variable {key} must be a string, got {type(val).__name__}")


def _sandbox(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None and attribute.name == "sandbox" and isinstance(instance, FunctionConfig):
        return  # the function uses the runtime's default kind
    if value not in SANDBOX_KINDS:
        raise InvalidConfig(f"sandbox must be one of {', '.join(SANDBOX_KINDS)}; got {value!r}")
    if value == "subinterpreter" and sys.version_info < (3, 13):
        raise InvalidConfig(
            "sandbox='subinterpreter' needs Python 3.13 or newer (this is "
            f"{sys.version_info.major}.{sys.version_info.minor}); use sandbox='subprocess'"
        )


def check_function_name(name: object) -> str:
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise InvalidConfig(
            f"function name {name!r} is not valid: 1-64 letters, digits, hyphens or underscores"
        )
    return name


@attrs.frozen(kw_only=True)
class FunctionConfig:
    """How one function runs: Lambda's function configuration.

    ``timeout`` is in seconds (Lambda: 1-900, default 3; fnrt also accepts fractions of a
    second for tests); ``memory_mb`` sets the sandbox's memory limit (128-10,240);
    ``reserved_concurrency`` both caps the function and reserves that much of the global
    pool (0 throttles every call); ``provisioned_concurrency`` sandboxes are kept
    initialized ahead of traffic.
    """

    timeout: float = attrs.field(default=3, validator=_number(0.001, 900))
    memory_mb: int = attrs.field(default=128, validator=_number(128, 10_240, integer=True))
    reserved_concurrency: int | None = attrs.field(
        default=None, validator=_number(0, 1_000_000, integer=True, optional=True)
    )
    provisioned_concurrency: int = attrs.field(default=0, validator=_number(0, 1_000_000, integer=True))
    init_timeout: float = attrs.field(default=10, validator=_number(0.001, 900))
    environment: Mapping[str, str] = attrs.field(factory=dict, converter=dict, validator=_environment)
    sandbox: str | None = attrs.field(default=None, validator=_sandbox)
    description: str = attrs.field(default="", validator=attrs.validators.instance_of(str))

    def __attrs_post_init__(self) -> None:
        if self.reserved_concurrency is not None and self.provisioned_concurrency > self.reserved_concurrency:
            raise InvalidConfig(
                f"provisioned_concurrency ({self.provisioned_concurrency}) cannot exceed "
                f"reserved_concurrency ({self.reserved_concurrency})"
            )

    @classmethod
    def from_kwargs(cls, config: Mapping[str, Any]) -> FunctionConfig:
        """Build from keyword arguments, naming any unknown key in the error."""
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InvalidConfig(
                f"unknown function config {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**config)
        except TypeError as exc:  # e.g. environment=5 fails dict()
            raise InvalidConfig(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class RuntimeConfig:
    """Runtime-wide settings.

    ``concurrency_limit`` is Lambda's account concurrency (default 1,000);
    ``unreserved_minimum`` is what reserved concurrency can never take from the shared pool
    (Lambda keeps 100 of 1,000; the default here is a tenth of the limit, which is 100 for
    1,000). ``idle_ttl`` is how long a warm sandbox may stay unused before it retires.
    """

    concurrency_limit: int = attrs.field(default=1000, validator=_number(1, 1_000_000, integer=True))
    unreserved_minimum: int | None = attrs.field(
        default=None, validator=_number(0, 1_000_000, integer=True, optional=True)
    )
    idle_ttl: float = attrs.field(default=300.0, validator=_number(0.001, 7 * 86_400))
    sandbox: str = attrs.field(default="subprocess", validator=_sandbox)
    region: str = attrs.field(default="us-east-1", validator=attrs.validators.instance_of(str))
    account_id: str = attrs.field(default="000000000000", validator=attrs.validators.instance_of(str))

    def __attrs_post_init__(self) -> None:
        if self.unreserved_minimum is not None and self.unreserved_minimum > self.concurrency_limit:
            raise InvalidConfig(
                f"unreserved_minimum ({self.unreserved_minimum}) cannot exceed "
                f"concurrency_limit ({self.concurrency_limit})"
            )

    @property
    def unreserved_floor(self) -> int:
        if self.unreserved_minimum is not None:
            return self.unreserved_minimum
        return math.ceil(self.concurrency_limit / 10)

    def function_arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{name}"
