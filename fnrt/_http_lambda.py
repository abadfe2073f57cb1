"""Lambda's Invoke API and read-only calls (REST-JSON, ``/2015-03-31/functions``).

``Invoke``, ``ListFunctions`` (``MaxItems``/``Marker``/``NextMarker``), ``GetFunction``
and ``GetFunctionConfiguration``, with Lambda's status codes, headers and error bodies;
:meth:`LambdaApi.register` also adds the control plane of :mod:`fnrt._http_control`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import platform
import re
import sys
import uuid
from typing import Any

from aiohttp import web

from ._config import RuntimeConfig, parse_destination
from ._http_errors import AwsError
from ._lambda import role_arn
from ._registry import FunctionRecord
from ._runtime import Runtime
from .errors import FunctionNotFound

API = "/2015-03-31/functions"
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
LOG_TYPES = ("None", "Tail")
CLIENT_CONTEXT_LIMIT = 3583  # bytes of base64, Lambda's documented limit
LIST_DEFAULT, LIST_MAX = 50, 10_000
#: "ListFunctions returns a maximum of 50 items in each response, even if you set the
#: number higher" (Lambda's API reference): the paginator follows NextMarker for the rest.
LIST_PAGE_MAX = 50
LATEST = "$LATEST"
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
ARCHITECTURE = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86_64"
# name, partial ARN or full ARN, with an optional ":qualifier" (Lambda's FunctionName
# pattern admits "." in the name; \Z, not $, which would let a trailing newline through)
_NAME = re.compile(
    r"(?:arn:aws[\w-]*:lambda:([\w-]+):)?(?:(\d{12}):)?(?:function:)?([a-zA-Z0-9_.-]{1,64})"
    r"(?::([\w$-]{1,128}))?\Z"
)
_QUALIFIER = re.compile(r"[a-zA-Z0-9$_-]{1,128}\Z")


#: The paths of Lambda's APIs (each operation is versioned by its own date).
API_PREFIXES = (
    "/2015-03-31/",
    "/2016-08-19/",
    "/2017-03-31/",
    "/2017-10-31/",
    "/2019-09-25/",
    "/2019-09-30/",
    "/fnrt/",
)


def lambda_time(seconds: float, *, millis: bool = True) -> str:
    """Lambda's ``Timestamp`` strings: ``2019-09-24T18:50:03.113+0000`` (function
    configuration) or ``2019-12-31T20:28:49+0000`` (provisioned concurrency)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if millis:
        text += f".{moment.microsecond // 1000:03d}"
    return text + "+0000"


class Stamps:
    """When each thing was last modified through any face: fnrt's records keep no times,
    so the first time a thing is seen (or changed) here is its ``LastModified``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._at: dict[tuple[str, str], float] = {}
        self._functions: dict[str, tuple[int, float]] = {}
        #: Each function's tags (``TagResource``), by function name.
        self.tags: dict[str, dict[str, str]] = {}
        #: What ``CreateFunction``/``UpdateFunctionCode`` were given, by function name: the
        #: role, and the deployment package (where it was unpacked, its ``CodeSha256`` and
        #: ``CodeSize``).
        self.roles: dict[str, str] = {}
        self.code: dict[str, tuple[str, str, int]] = {}

    def touch(self, kind: str, key: str) -> float:
        now = self._at[(kind, key)] = self.runtime.clock.time()
        return now

    def get(self, kind: str, key: str) -> float:
        found = self._at.get((kind, key))
        return found if found is not None else self.touch(kind, key)

    def forget(self, kind: str, key: str) -> None:
        self._at.pop((kind, key), None)

    def forget_function(self, name: str) -> None:
        """A deleted function's times and tags: a function added again under its name
        starts afresh, as a new function does in Lambda."""
        self._functions.pop(name, None)
        self.tags.pop(name, None)
        self.roles.pop(name, None)
        self.code.pop(name, None)
        for key in [key for key in self._at if key[1] == name]:
            del self._at[key]

    def modified(self, record: FunctionRecord) -> None:
        """The function changed without a new generation (its dead-letter queue)."""
        self._functions[record.name] = (record.generation, self.runtime.clock.time())

    def function(self, record: FunctionRecord) -> str:
        """A function's ``LastModified``: a new generation (an update) is a new time."""
        seen = self._functions.get(record.name)
        if seen is None or seen[0] != record.generation:
            seen = self._functions[record.name] = (record.generation, self.runtime.clock.time())
        return lambda_time(seen[1])


_REVISIONS = uuid.UUID("6f1c2a3e-5b4d-4e8f-9a7b-0c1d2e3f4a5b")


def revision_id(record: FunctionRecord, dead_letter: str | None = None, role: str | None = None) -> str:
    """``RevisionId``: changes whenever the function's configuration does, its dead-letter
    queue (kept with the async config) and a role set over the API included."""
    key = f"{record.name}#{record.generation}#{record.config!r}#{dead_letter}"
    if role is not None:
        key += f"#{role}"
    return str(uuid.uuid5(_REVISIONS, key))


def destination_arn(config: RuntimeConfig, target: str) -> str:
    """A destination as Lambda shows it: ``function:x`` is a function ARN, ``sink:x`` an
    SQS queue ARN (an ARN stays as it was given)."""
    if target.startswith("arn:"):
        return target
    kind, name = parse_destination(target)
    if kind == "function":
        return config.function_arn(name)
    return f"arn:aws:sqs:{config.region}:{config.account_id}:{name}"


def function_configuration(record: FunctionRecord, stamps: Stamps | None = None) -> dict[str, Any]:
    """Lambda's ``FunctionConfiguration`` for a registered function (with ``LastModified``
    and the dead-letter queue when the API's ``stamps`` are given)."""
    config = record.config
    out: dict[str, Any] = {
        "FunctionName": record.name,
        "FunctionArn": record.arn,
        "Runtime": RUNTIME,  # the sandboxes run this interpreter (AWS_EXECUTION_ENV says so too)
        "Role": role_arn(record.arn.split(":")[4]),
        "Handler": record.handler,
        "Timeout": config.timeout,
        "MemorySize": config.memory_mb,
        "Version": LATEST,
        "Description": config.description,
        "PackageType": "Zip",
        "Architectures": [ARCHITECTURE],
        "EphemeralStorage": {"Size": 512},
        "LoggingConfig": _logging_config(config, record.name),
        "State": "Active",
        "LastUpdateStatus": "Successful",
    }
    if config.environment:  # Lambda leaves Environment out when there are no variables
        out["Environment"] = {"Variables": dict(config.environment)}
    dead_letter = role = None
    if stamps is not None:
        out["LastModified"] = stamps.function(record)
        role = stamps.roles.get(record.name)
        out["Role"] = role or out["Role"]
        code = stamps.code.get(record.name)
        if code is not None and code[0] == config.code_root:  # still the package it was given
            out["CodeSha256"], out["CodeSize"] = code[1], code[2]
        dead_letter = stamps.runtime.async_config(record.name).dead_letter
        if dead_letter:
            out["DeadLetterConfig"] = {"TargetArn": destination_arn(stamps.runtime.config, dead_letter)}
    out["RevisionId"] = revision_id(record, dead_letter, role)
    return out


def _logging_config(config: Any, name: str) -> dict[str, Any]:
    """Lambda's ``LoggingConfig`` of a function (its levels only with the JSON format)."""
    out: dict[str, Any] = {"LogFormat": config.log_format}
    if config.log_format == "JSON":
        out["ApplicationLogLevel"] = config.log_level
        out["SystemLogLevel"] = config.system_level
    out["LogGroup"] = config.log_group or f"/aws/lambda/{name}"
    return out


def _fnrt_extras(record: FunctionRecord) -> dict[str, Any]:
    """What fnrt adds outside Lambda's shapes (read by ``python -m fnrt list``)."""
    config = record.config
    out: dict[str, Any] = {"Sandbox": record.sandbox_kind}
    if config.reserved_concurrency is not None:
        out["ReservedConcurrentExecutions"] = config.reserved_concurrency
    if config.provisioned_concurrency:
        out["ProvisionedConcurrentExecutions"] = config.provisioned_concurrency
    return out


def _not_found(runtime: Runtime, name: str, qualifier: str | None = None) -> AwsError:
    arn = runtime.config.function_arn(name)
    if qualifier:
        arn += f":{qualifier}"
    return AwsError(404, "ResourceNotFoundException", f"Function not found: {arn}")


def resolve(
    runtime: Runtime, raw_name: str, qualifier: str | None, *, any_qualifier: bool = False
) -> tuple[FunctionRecord, str | None]:
    """The function a ``FunctionName`` (+ ``Qualifier``) names, and the qualifier used.

    Only ``$LATEST`` exists in fnrt (no published versions or aliases): any other
    qualifier is ``ResourceNotFoundException``, as in Lambda for an unknown alias, unless
    ``any_qualifier`` (the caller judges the qualifier itself)."""
    match = _NAME.match(raw_name)
    if match is None:
        raise AwsError(
            400,
            "ValidationException",
            f"1 validation error detected: Value '{raw_name}' at 'functionName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern",
        )
    if qualifier is not None and not _QUALIFIER.match(qualifier):
        raise AwsError(
            400,
            "ValidationException",
            f"1 validation error detected: Value '{qualifier}' at 'qualifier' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)",
        )
    region, account, name, derived = match.groups()
    config = runtime.config
    foreign_region = region is not None and region != config.region
    if foreign_region or (account is not None and account != config.account_id):
        # Another region's or account's function: not one of this runtime's.
        raise AwsError(404, "ResourceNotFoundException", f"Function not found: {raw_name}")
    if derived and qualifier and derived != qualifier:
        raise AwsError(
            400,
            "InvalidParameterValueException",
            "The derived qualifier from the function name does not match the specified qualifier.",
        )
    qualifier = qualifier or derived
    try:
        record = runtime.get_function(name)
    except FunctionNotFound:
        raise _not_found(runtime, name) from None
    if qualifier is not None and qualifier != LATEST and not any_qualifier:
        raise _not_found(runtime, name, qualifier)
    return record, qualifier


def decode_marker(marker: str) -> str:
    """A ``Marker`` fnrt handed out as ``NextMarker`` (URL-safe base64 of a key); anything
    else is refused, not read as the start of the list."""
    try:
        return base64.b64decode(marker.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, binascii.Error):
        raise AwsError(400, "InvalidParameterValueException", f"Marker is not valid: {marker!r}") from None


def parse_client_context(value: str) -> dict[str, Any]:
    """``X-Amz-Client-Context``: base64 of a JSON object, at most 3,583 bytes."""
    size = len(value.encode("utf-8", "surrogateescape"))  # the header's bytes, as sent
    if size > CLIENT_CONTEXT_LIMIT:
        raise AwsError(
            400,
            "InvalidRequestContentException",
            f"Client context must be at most {CLIENT_CONTEXT_LIMIT} bytes of base64, got {size}",
        )
    try:
        if not value.isascii():  # base64 is ASCII; bytes that are not UTF-8 are not it either
            raise ValueError(value)
        decoded = json.loads(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error, RecursionError):
        decoded = None
    if not isinstance(decoded, dict):
        raise AwsError(
            400, "InvalidRequestContentException", "Client context must be a valid Base64-encoded JSON object"
        )
    return decoded


class LambdaApi:
    """The routes under ``/2015-03-31/functions``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.stamps = Stamps(runtime)

    def register(self, app: web.Application) -> None:
        """Invoke and the read-only calls, then the control plane (``_http_control``)."""
        from ._http_control import ControlApi

        app.router.add_post(API + "/{name}/invocations", self.invoke)
        app.router.add_get(API + "/", self.list_functions)
        app.router.add_get(API, self.list_functions)
        app.router.add_get(API + "/{name}", self.get_function)
        app.router.add_get(API + "/{name}/configuration", self.get_function_configuration)
        ControlApi(self.runtime, self.stamps).register(app)

    async def invoke(self, request: web.Request) -> web.Response:
        rt = self.runtime
        invocation_type: Any = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                f"X-Amz-Invocation-Type must be one of {', '.join(INVOCATION_TYPES)}",
            )
        record, qualifier = resolve(rt, request.match_info["name"], request.query.get("Qualifier"))
        log_type = request.headers.get("X-Amz-Log-Type", "None")
        if log_type not in LOG_TYPES:
            raise AwsError(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{log_type}' at 'logType' failed to satisfy "
                "constraint: Member must satisfy enum value set: [None, Tail]",
            )
        client_context = None
        if "X-Amz-Client-Context" in request.headers:
            client_context = parse_client_context(request.headers["X-Amz-Client-Context"])
        body = await request.read()
        kwargs: dict[str, Any] = {"client_context": client_context}
        if qualifier is not None:
            kwargs["qualifier"] = qualifier
        result = await rt.invoke_detailed(record.name, body, invocation_type, **kwargs)
        headers = {"X-Amz-Executed-Version": LATEST, "x-amzn-RequestId": result.request_id}
        if result.status_code != 200:  # Event: 202, DryRun: 204, empty body
            return web.Response(status=result.status_code, headers=headers)
        if log_type == "Tail":
            headers["X-Amz-Log-Result"] = result.log_result
        if result.error is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
            payload = json.dumps(result.error.to_lambda()).encode()
        else:
            payload = result.raw or b"null"
        return web.Response(status=200, body=payload, headers=headers, content_type="application/json")

    async def list_functions(self, request: web.Request) -> web.Response:
        raw_max = request.query.get("MaxItems", str(LIST_DEFAULT))
        try:
            max_items = int(raw_max)
        except ValueError:
            max_items = 0
        if not 1 <= max_items <= LIST_MAX:
            raise AwsError(
                400, "InvalidParameterValueException", f"MaxItems must be 1-{LIST_MAX}, got {raw_max!r}"
            )
        records = sorted(self.runtime.functions().values(), key=lambda r: r.name)
        marker = request.query.get("Marker")
        if marker:
            start_name = decode_marker(marker)
            records = [r for r in records if r.name >= start_name]
        page_size = min(max_items, LIST_PAGE_MAX)
        page, rest = records[:page_size], records[page_size:]
        body: dict[str, Any] = {
            "Functions": [{**function_configuration(r, self.stamps), "Fnrt": _fnrt_extras(r)} for r in page]
        }
        if rest:
            body["NextMarker"] = base64.urlsafe_b64encode(rest[0].name.encode()).decode()
        return web.json_response(body)

    async def get_function(self, request: web.Request) -> web.Response:
        record, _ = resolve(self.runtime, request.match_info["name"], request.query.get("Qualifier"))
        body: dict[str, Any] = {
            "Configuration": function_configuration(record, self.stamps),
            "Code": {"RepositoryType": "Local", "Location": record.module},
        }
        if record.config.reserved_concurrency is not None:
            body["Concurrency"] = {"ReservedConcurrentExecutions": record.config.reserved_concurrency}
        tags = self.stamps.tags.get(record.name)
        if tags:
            body["Tags"] = dict(tags)
        return web.json_response(body)

    async def get_function_configuration(self, request: web.Request) -> web.Response:
        record, _ = resolve(self.runtime, request.match_info["name"], request.query.get("Qualifier"))
        return web.json_response(function_configuration(record, self.stamps))


__all__ = [
    "API",
    "API_PREFIXES",
    "LambdaApi",
    "Stamps",
    "decode_marker",
    "destination_arn",
    "function_configuration",
    "lambda_time",
    "parse_client_context",
    "resolve",
    "revision_id",
]
