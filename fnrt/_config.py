"""Frozen, validated configuration objects.

A config is invalid at construction (``FunctionConfig(timeout=0)`` raises
:class:`~fnrt.errors.InvalidConfig` there), never at the first invocation. Ranges follow
Lambda's documented limits.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from ._filters import normalize as normalize_filters
from .errors import InvalidConfig
from .sandbox._protocol import KINDS

SANDBOX_KINDS = tuple(KINDS)  # the registry of kinds is fnrt.sandbox.KINDS
_ENV_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _pattern(pattern: str, example: str) -> Any:
    """A string of this form (it goes into ARNs, which fnrt parses back)."""
    matches = re.compile(pattern).fullmatch

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, str) or not matches(value):
            raise InvalidConfig(f"{attribute.name} must look like {example!r}, got {value!r}")

    return check


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


#: Lambda sets these itself; a function's configuration cannot (the "defined runtime
#: environment variables" that Lambda reserves).
RESERVED_ENVIRONMENT = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
ENVIRONMENT_LIMIT = 4096  # bytes, measured as Lambda does: the variables as one JSON string


def _environment(instance: object, attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
    reserved = sorted(RESERVED_ENVIRONMENT.intersection(value))
    if reserved:
        raise InvalidConfig(
            "Lambda was unable to configure your environment variables because the environment "
            "variables you have provided contains reserved keys that are currently not supported "
            f"for modification. Reserved keys used in this request: {', '.join(reserved)}"
        )
    for key, val in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise InvalidConfig(f"environment variable name {key!r} is not valid (letters, digits, _)")
        if not isinstance(val, str):
            raise InvalidConfig(f"environment variable {key} must be a string, got {type(val).__name__}")
    measured = json.dumps(dict(value), separators=(",", ":"))
    if len(measured.encode()) > ENVIRONMENT_LIMIT:
        raise InvalidConfig(
            "Lambda was unable to configure your environment variables because the environment "
            f"variables you have provided exceeded the 4KB limit. String measured: {measured[:200]}"
            f"{'...' if len(measured) > 200 else ''}"
        )


def _credentials(instance: object, attribute: attrs.Attribute[Any], value: Mapping[str, str] | None) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise InvalidConfig(
            "credentials must be a mapping of AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY[, ...]"
        )
    unknown = sorted(set(value) - set(CREDENTIAL_KEYS))
    if unknown:
        raise InvalidConfig(f"unknown credentials keys {unknown}; known: {', '.join(CREDENTIAL_KEYS)}")
    if not value.get("AWS_ACCESS_KEY_ID") or not value.get("AWS_SECRET_ACCESS_KEY"):
        raise InvalidConfig("credentials need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if not all(isinstance(v, str) for v in value.values()):
        raise InvalidConfig("credentials values must be strings")


def _sandbox(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None and attribute.name == "sandbox" and isinstance(instance, FunctionConfig):
        return  # the function uses the runtime's default kind
    if value not in SANDBOX_KINDS:
        raise InvalidConfig(f"sandbox must be one of {', '.join(SANDBOX_KINDS)}; got {value!r}")
    reason = KINDS[value].unavailable()
    if reason is not None:
        raise InvalidConfig(reason)


def _code_root(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not os.path.isabs(value) or not os.path.isdir(value):
        raise InvalidConfig(f"code_root must be the absolute path of a directory, got {value!r}")


#: Lambda's advanced logging controls (``LoggingConfig``).
LOG_FORMATS = ("Text", "JSON")
APPLICATION_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
SYSTEM_LOG_LEVELS = ("DEBUG", "INFO", "WARN")
_LOG_GROUP = re.compile(r"^[\.\-_/#A-Za-z0-9]{1,512}$")


def _one_of(choices: tuple[str, ...], *, optional: bool = False) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if value not in choices:
            raise InvalidConfig(f"{attribute.name} must be one of {', '.join(choices)}; got {value!r}")

    return check


def _log_group(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not _LOG_GROUP.match(value)):
        raise InvalidConfig(
            f"log_group {value!r} is not valid: 1-512 letters, digits and the characters . - _ / #"
        )


C = TypeVar("C")


def build(cls: type[C], config: Mapping[str, Any], what: str) -> C:
    """A config class from keyword settings; unknown keys and wrong types are
    :class:`InvalidConfig` naming what to fix."""
    if not isinstance(config, Mapping):
        raise InvalidConfig(f"{what} must be a dict of settings, got {config!r}")
    known = {a.name for a in attrs.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(config) - known)
    if unknown:
        raise InvalidConfig(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**config)
    except TypeError as exc:  # e.g. environment=5 fails dict()
        raise InvalidConfig(f"{what}: {exc}") from None


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
    initialized ahead of traffic. ``code_root`` is a directory put first on the sandbox's
    import path, Lambda's ``LAMBDA_TASK_ROOT``: where a deployment package was unpacked
    (``CreateFunction``'s ``ZipFile``), so that its modules are the function's own.
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
    #: What Lambda's execution role gives: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
    #: and ``AWS_SESSION_TOKEN`` in the sandbox's environment (never the host's own).
    credentials: Mapping[str, str] | None = attrs.field(default=None, repr=False, validator=_credentials)
    code_root: str | None = attrs.field(default=None, validator=_code_root)
    #: Lambda's advanced logging controls: ``"JSON"`` writes the ``logging`` module's records
    #: and the platform's lines as JSON objects; the levels (JSON only, default ``INFO``
    #: each) filter the application's records and the platform's lines.
    log_format: str = attrs.field(default="Text", validator=_one_of(LOG_FORMATS))
    application_log_level: str | None = attrs.field(
        default=None, validator=_one_of(APPLICATION_LOG_LEVELS, optional=True)
    )
    system_log_level: str | None = attrs.field(
        default=None, validator=_one_of(SYSTEM_LOG_LEVELS, optional=True)
    )
    #: Where the function's logs go (Lambda's default: ``/aws/lambda/<name>``).
    log_group: str | None = attrs.field(default=None, validator=_log_group)

    def __attrs_post_init__(self) -> None:
        if self.log_format != "JSON" and (
            self.application_log_level is not None or self.system_log_level is not None
        ):
            raise InvalidConfig(
                'LogLevel is not supported when LogFormat is set to "Text". Remove LogLevel from '
                'your request or change the LogFormat to "JSON" and try again.'
            )
        if self.reserved_concurrency is not None and self.provisioned_concurrency > self.reserved_concurrency:
            raise InvalidConfig(
                f"provisioned_concurrency ({self.provisioned_concurrency}) cannot exceed "
                f"reserved_concurrency ({self.reserved_concurrency})"
            )

    @classmethod
    def from_kwargs(cls, config: Mapping[str, Any]) -> FunctionConfig:
        """Build from keyword arguments, naming any unknown key in the error."""
        return build(cls, config, "function config")

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @property
    def log_level(self) -> str | None:
        """The application log level in force (JSON: ``INFO`` unless set), else ``None``."""
        if self.log_format != "JSON":
            return None
        return self.application_log_level or "INFO"

    @property
    def system_level(self) -> str | None:
        """The system log level in force (JSON: ``INFO`` unless set), else ``None``."""
        if self.log_format != "JSON":
            return None
        return self.system_log_level or "INFO"


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
    region: str = attrs.field(
        default="us-east-1", validator=_pattern(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", "us-east-1")
    )
    account_id: str = attrs.field(default="000000000000", validator=_pattern(r"\d{12}", "123456789012"))
    scaling_limit: int = attrs.field(default=1000, validator=_number(1, 1_000_000, integer=True))
    scaling_window: float = attrs.field(default=10.0, validator=_number(0.001, 86_400))

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


_DESTINATION = re.compile(
    r"^(?:function:(?P<function>[a-zA-Z0-9_-]{1,64})"
    r"|sink:(?P<sink>[a-zA-Z0-9._/-]{1,256})"
    r"|arn:aws[\w-]*:lambda:[\w-]+:\d{12}:function:(?P<lambda>[a-zA-Z0-9_-]{1,64})(?::\$LATEST)?"
    r"|arn:aws[\w-]*:sqs:[\w-]+:\d{12}:(?P<sqs>[a-zA-Z0-9_-]{1,80})"
    r"|arn:aws[\w-]*:sns:[\w-]+:\d{12}:(?P<sns>[a-zA-Z0-9_-]{1,256})"
    r"|arn:aws[\w-]*:events:[\w-]+:\d{12}:event-bus/(?P<events>[a-zA-Z0-9._/-]{1,256})"
    r"|arn:aws[\w-]*:s3:::(?P<s3>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]))$"
)


def _parse(target: str) -> tuple[str, str]:
    """``(kind, name)``: the kind is ``"function"`` or ``"sink"`` (fnrt's own forms) or
    an ARN's service (``"lambda"``, ``"sqs"``, ``"sns"``, ``"events"``, ``"s3"``)."""
    match = _DESTINATION.match(target) if isinstance(target, str) else None
    if match is None:
        raise InvalidConfig(
            f"destination {target!r} is not valid: write 'function:<name>' for another "
            "function or 'sink:<name>' for a durable sink (or a Lambda function, SQS queue, "
            "SNS topic, EventBridge event bus or S3 bucket ARN)"
        )
    kind, name = next((kind, name) for kind, name in match.groupdict().items() if name)
    return kind, name


def destination_kind(target: str) -> str:
    """What a destination string names: ``"function"`` or ``"sink"`` (fnrt's own forms),
    or the AWS service of an ARN (``"lambda"``, ``"sqs"``, ``"sns"``, ``"events"``,
    ``"s3"``). Raises :class:`InvalidConfig` for anything else."""
    return _parse(target)[0]


def parse_destination(target: str) -> tuple[str, str]:
    """``("function", name)`` or ``("sink", name)`` for a destination string.

    A destination is another function (``"function:audit"`` or a Lambda function ARN,
    which gets the record as an Event) or a durable sink read back with
    ``Runtime.destination_records`` (``"sink:failed-payments"``, or the ARN of an SQS
    queue, SNS topic, EventBridge event bus or S3 bucket: Lambda's other destination
    kinds, each a sink named by its queue, topic, bus or bucket name).
    """
    kind, name = _parse(target)
    if kind in ("function", "sink"):
        return kind, name
    return ("function" if kind == "lambda" else "sink"), name


def _destination(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        parse_destination(value)


def _success_destination(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and destination_kind(value) == "s3":
        raise InvalidConfig(
            f"on_success {value!r} is not valid: Lambda takes S3 buckets as on-failure "
            "destinations only (use a queue, topic, event bus, function or sink for successes)"
        )


def _bare_sink(value: Any) -> Any:
    """A bare name is a durable sink (``"orders-dlq"`` is ``"sink:orders-dlq"``), as
    ``Runtime.destination_records`` reads it."""
    if isinstance(value, str) and value and ":" not in value:
        return f"sink:{value}"
    return value


def _sink(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    # Lambda's dead-letter queue is an SQS queue or an SNS topic.
    if value is not None and destination_kind(value) not in ("sink", "sqs", "sns"):
        raise InvalidConfig(
            f"dead_letter must be a sink ('sink:<name>', an SQS queue ARN or an SNS topic ARN), got {value!r}"
        )


def _delays(instance: object, attribute: attrs.Attribute[Any], value: tuple[float, ...]) -> None:
    if not value:
        raise InvalidConfig("retry_delays needs at least one delay in seconds (Lambda: about 60 then 120)")
    check = _number(0, 21_600)
    for delay in value:
        check(instance, attribute, delay)


def _tuple(value: Any) -> tuple[Any, ...]:
    if isinstance(value, (int, float)):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise InvalidConfig(f"retry_delays must be a list of seconds, got {value!r}") from None


@attrs.frozen(kw_only=True)
class AsyncConfig:
    """How a function's asynchronous (``Event``) invocations are retried and where they end.

    Lambda's event-invoke config: ``max_retry_attempts`` 0-2 (default 2) after a function
    error; ``retry_delays`` before the first and second retry (Lambda: about 1 then 2
    minutes; the last delay repeats; shorten them for tests and demos);
    ``max_event_age`` 60-21,600 s (default 6 h) after which a queued event is given up.
    Throttles and system errors never use a retry attempt: they are retried with backoff
    until the event's age runs out. ``on_success`` / ``on_failure`` are destinations
    (``"function:<name>"``, ``"sink:<name>"``, or a Lambda function, SQS queue, SNS topic,
    EventBridge event bus or S3 bucket ARN, S3 on failure only) that get Lambda's invocation
    record; ``dead_letter`` is a sink (or an SQS queue or SNS topic ARN) that gets the failed
    event itself (Lambda's DLQ).
    """

    max_retry_attempts: int = attrs.field(default=2, validator=_number(0, 2, integer=True))
    retry_delays: tuple[float, ...] = attrs.field(default=(60.0, 120.0), converter=_tuple, validator=_delays)
    max_event_age: float = attrs.field(default=21_600, validator=_number(60, 21_600))
    on_success: str | None = attrs.field(default=None, validator=[_destination, _success_destination])
    on_failure: str | None = attrs.field(default=None, validator=_destination)
    dead_letter: str | None = attrs.field(default=None, validator=_sink)

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(self.retry_delays[min(attempt, len(self.retry_delays)) - 1])

    @classmethod
    def from_kwargs(cls, config: Mapping[str, Any]) -> AsyncConfig:
        return build(cls, config, "async config")

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")


def _minus_one_or(low: float, high: float) -> Any:
    """Lambda's "-1 means unlimited, else within [low, high]" settings."""
    inner = _number(low, high, integer=True)

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value == -1 and not isinstance(value, bool):
            return
        try:
            inner(instance, attribute, value)
        except InvalidConfig:
            raise InvalidConfig(
                f"{attribute.name} must be -1 (unlimited) or between {low:g} and {high:g}, got {value!r}"
            ) from None

    return check


def _bool(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidConfig(f"{attribute.name} must be True or False, got {value!r}")


@attrs.frozen(kw_only=True)
class StreamMappingConfig:
    """An event source mapping from a stream to a function, with Lambda's ranges.

    ``batch_size`` 1-10,000 (default 100); ``max_batching_window`` 0-300 s to gather a
    fuller batch; ``starting_position`` for a new mapping (``TRIM_HORIZON`` here by default,
    ``LATEST``, or ``AT_TIMESTAMP`` with ``starting_position_timestamp``);
    ``parallelization_factor`` 1-10 concurrent batches per shard, order kept per partition
    key; ``bisect_on_error`` splits a failing batch in two (a split is not a retry);
    ``max_retry_attempts`` -1 (until the records expire) or 0-10,000; ``max_record_age`` -1
    (the stream's retention) or 60-604,800 s; ``on_failure`` names the destination that
    receives Lambda's record of what was skipped; ``report_batch_item_failures`` lets the
    handler return ``{"batchItemFailures": [{"itemIdentifier": seq}]}``; ``enabled=False``
    keeps the mapping and its checkpoints but stops polling (Lambda's ``Enabled``);
    ``filters`` are up to 5 event filtering patterns (Lambda's ``FilterCriteria``, each JSON
    text or a dict): only records that match one of them are sent to the function, the others
    are passed over (the checkpoint moves past them).

    fnrt's own: ``lease_seconds`` is how long a shard's lease lasts without a heartbeat
    before another poller may take it over; ``poll_interval`` is how often an idle shard is
    polled for records written by other hosts (writes on this host wake the pollers at once).
    """

    batch_size: int = attrs.field(default=100, validator=_number(1, 10_000, integer=True))
    max_batching_window: float = attrs.field(default=0, validator=_number(0, 300))
    starting_position: str = attrs.field(default="TRIM_HORIZON")
    starting_position_timestamp: float | None = attrs.field(
        default=None, validator=_number(0, 1e11, optional=True)
    )
    parallelization_factor: int = attrs.field(default=1, validator=_number(1, 10, integer=True))
    bisect_on_error: bool = attrs.field(default=False, validator=_bool)
    max_retry_attempts: int = attrs.field(default=-1, validator=_minus_one_or(0, 10_000))
    max_record_age: int = attrs.field(default=-1, validator=_minus_one_or(60, 604_800))
    on_failure: str | None = attrs.field(default=None, converter=_bare_sink, validator=_destination)
    report_batch_item_failures: bool = attrs.field(default=False, validator=_bool)
    enabled: bool = attrs.field(default=True, validator=_bool)
    filters: tuple[str, ...] = attrs.field(default=(), converter=normalize_filters)
    lease_seconds: float = attrs.field(default=10.0, validator=_number(0.01, 3600))
    poll_interval: float = attrs.field(default=1.0, validator=_number(0.001, 300))

    @starting_position.validator
    def _check_position(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in STARTING_POSITIONS:
            raise InvalidConfig(
                f"starting_position must be one of {', '.join(STARTING_POSITIONS)}; got {value!r}"
            )

    def __attrs_post_init__(self) -> None:
        if (self.starting_position == "AT_TIMESTAMP") != (self.starting_position_timestamp is not None):
            raise InvalidConfig(
                "starting_position_timestamp is required with starting_position='AT_TIMESTAMP' "
                "and only allowed with it"
            )

    @classmethod
    def from_kwargs(cls, config: Mapping[str, Any]) -> StreamMappingConfig:
        return build(cls, config, "stream mapping config")

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)
