"""Lambda's control plane over REST-JSON, as boto3 and the AWS CLI call it.

The operations, with the paths, methods, shapes and error codes of Lambda's service model
(``botocore/data/lambda/2015-03-31/service-2.json``):

- ``CreateFunction`` and ``UpdateFunctionCode`` from a .zip package (``ZipFile``; S3 and
  container images are refused): it is unpacked and put first on the sandboxes' import
  path (``code_root``, Lambda's ``LAMBDA_TASK_ROOT``). ``DeleteFunction`` (a version's
  ``Qualifier`` deletes nothing: fnrt publishes none; ``$LATEST`` is refused).
- ``UpdateFunctionConfiguration`` (``Timeout``, ``MemorySize``, ``Environment``,
  ``Description``, ``Handler``, ``Role``, ``DeadLetterConfig``): new execution
  environments get the new configuration.
- ``TagResource``, ``UntagResource``, ``ListTags`` (function ARNs); ``GetPolicy`` (no
  function has a resource policy: ``ResourceNotFoundException``).
- ``Put/Get/DeleteFunctionConcurrency``.
- ``Put/Get/Delete/ListProvisionedConcurrencyConfig(s)``. fnrt has no published versions,
  so the qualifier is ``$LATEST`` (which Lambda itself refuses for provisioned concurrency).
- ``Put/Get/Update/Delete/ListFunctionEventInvokeConfig(s)``: destinations are Lambda
  function ARNs (an ``Event`` to that function) or the ARNs of SQS queues, SNS topics,
  EventBridge event buses and S3 buckets (on failure only, as in Lambda): each a durable sink
  read with ``Runtime.destination_records``.
- ``Create/Get/List/Update/DeleteEventSourceMapping`` for fnrt's streams, named by their
  Kinesis ARN (``arn:aws:kinesis:<region>:<account>:stream/<name>``).
- ``GetAccountSettings``.

A value out of Lambda's range is a ``ValidationException`` worded as Lambda words it; what
fnrt's own validation refuses is an ``InvalidParameterValueException`` with its message; a
setting fnrt cannot honour is refused by name rather than ignored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ._config import (
    APPLICATION_LOG_LEVELS,
    LOG_FORMATS,
    SYSTEM_LOG_LEVELS,
    AsyncConfig,
    parse_destination,
)
from ._handler import parse_reference
from ._http_errors import AwsError
from ._http_lambda import (
    ARCHITECTURE,
    Stamps,
    decode_marker,
    destination_arn,
    function_configuration,
    lambda_time,
    resolve,
    revision_id,
)
from ._lambda import LATEST
from ._registry import FunctionRecord
from ._runtime import Runtime
from .errors import InvalidConfig
from .sources._streams import StreamMapping

__all__ = ["ControlApi"]

_CREATE = "/2015-03-31/functions"
_FUNCTIONS = "/2015-03-31/functions/{name}"
_CONCURRENCY_PUT = "/2017-10-31/functions/{name}/concurrency"
_CONCURRENCY_GET = "/2019-09-30/functions/{name}/concurrency"
_PROVISIONED = "/2019-09-30/functions/{name}/provisioned-concurrency"
_EVENT_INVOKE = "/2019-09-25/functions/{name}/event-invoke-config"
_MAPPINGS = "/2015-03-31/event-source-mappings"
_ACCOUNT = "/2016-08-19/account-settings"
_TAGS = "/2017-03-31/tags/{arn}"

_KINESIS_ARN = re.compile(r"^arn:aws[\w-]*:kinesis:[\w-]+:\d{12}:stream/([\w.-]+)$")
_UPDATABLE = (
    "Timeout",
    "MemorySize",
    "Environment",
    "Description",
    "DeadLetterConfig",
    "LoggingConfig",
    "RevisionId",
    "Handler",
    "Runtime",
    "Role",
)
#: ``LoggingConfig``'s members: the API's name, fnrt's setting, the values Lambda takes.
_LOGGING = (
    ("LogFormat", "log_format", LOG_FORMATS),
    ("ApplicationLogLevel", "application_log_level", APPLICATION_LOG_LEVELS),
    ("SystemLogLevel", "system_log_level", SYSTEM_LOG_LEVELS),
    ("LogGroup", "log_group", None),
)
_LOG_GROUP = re.compile(r"^[\.\-_/#A-Za-z0-9]+$")
_NOT_FOUND = "The resource you requested does not exist."
_TAG_LIMIT = 50  # tags per function, Lambda's quota
_UNZIPPED_LIMIT = 262_144_000  # bytes, Lambda's CodeSizeUnzipped
_LARGE_BODY = 256 * 1024
_ROLE = re.compile(r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+\Z")
_PLAIN_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}\Z")
#: CreateFunction's members fnrt honours; the rest are refused by name, or accepted only
#: with the value fnrt runs with (see ``_create_defaults``).
_CREATABLE = (
    "FunctionName",
    "Role",
    "Runtime",
    "Handler",
    "Code",
    "Description",
    "Timeout",
    "MemorySize",
    "Environment",
    "DeadLetterConfig",
    "LoggingConfig",
    "Tags",
    "Publish",
    "PackageType",
    "Architectures",
    "EphemeralStorage",
    "TracingConfig",
    "Layers",
)
_CODE_SOURCES = ("S3Bucket", "S3Key", "S3ObjectVersion", "ImageUri")
_ZIP_MANDATORY = "Runtime and Handler are mandatory parameters for functions created with Zip packages."
# Lambda's TagKey and TagValue: letters, spaces, digits and _.:/=+-@
_TAG_TEXT = re.compile(r"[\w\s.:/=+\-@]*\Z")
_UNCHANGED = object()


# -- request bodies and values --------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        # a deployment package makes a body of megabytes: parsed off the event loop
        body = json.loads(raw) if len(raw) < _LARGE_BODY else await asyncio.to_thread(json.loads, raw)
    except (ValueError, RecursionError) as exc:
        raise AwsError(
            400, "InvalidRequestContentException", f"Could not parse request body into json: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise AwsError(
            400, "InvalidRequestContentException", "Could not parse request body into json: not an object"
        )
    return body


def _camel(key: str) -> str:
    return key[0].lower() + key[1:]


def _invalid(key: str, value: Any, constraint: str) -> AwsError:
    return AwsError(
        400,
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{_camel(key)}' failed to satisfy "
        f"constraint: {constraint}",
    )


def _integer(body: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise _invalid(key, value, "Member must be an integer")
    if value < low:
        raise _invalid(key, value, f"Member must have value greater than or equal to {low}")
    if high is not None and value > high:
        raise _invalid(key, value, f"Member must have value less than or equal to {high}")
    return int(value)


def _boolean(body: Mapping[str, Any], key: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        raise _invalid(key, value, "Member must be a boolean")
    return value


def _string(body: Mapping[str, Any], key: str, limit: int) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise _invalid(key, value, "Member must be a string")
    if len(value) > limit:
        raise _invalid(key, value, f"Member must have length less than or equal to {limit}")
    return value


def _logging_config(value: Any) -> dict[str, Any]:
    """``LoggingConfig`` as fnrt's settings, each value checked as Lambda's model checks it."""
    if not isinstance(value, dict):
        raise _invalid("LoggingConfig", value, "Member must be an object")
    known = [name for name, _, _ in _LOGGING]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise _unsupported(unknown, "LoggingConfig", tuple(known))
    changes: dict[str, Any] = {}
    for name, setting, choices in _LOGGING:
        if name not in value:
            continue
        member = value[name]
        if not isinstance(member, str):
            raise _invalid(name, member, "Member must be a string")
        if choices is not None and member not in choices:
            raise _invalid(name, member, f"Member must satisfy enum value set: [{', '.join(choices)}]")
        if choices is None and not 1 <= len(member) <= 512:
            raise _invalid(name, member, "Member must have length between 1 and 512")
        if choices is None and not _LOG_GROUP.match(member):
            pattern = "Member must satisfy regular expression pattern: [\\.\\-_/#A-Za-z0-9]+"
            raise _invalid(name, member, pattern)
        changes[setting] = member
    return changes


def _unsupported(names: list[str], what: str, supported: tuple[str, ...]) -> AwsError:
    return AwsError(
        400,
        "InvalidParameterValueException",
        f"fnrt does not support {', '.join(names)} in {what}; it supports {', '.join(supported)}",
    )


def _destination(config: Any, key: str) -> str | None:
    """``DestinationConfig.<key>.Destination``: an ARN, or empty for none."""
    if not isinstance(config, dict):
        raise _invalid("DestinationConfig", config, "Member must be a structure")
    part = config.get(key)
    if part is None:
        return None
    if not isinstance(part, dict):
        raise _invalid(key, part, "Member must be a structure")
    target = part.get("Destination")
    if target in (None, ""):
        return None
    if not isinstance(target, str):
        raise _invalid("Destination", target, "Member must be a string")
    try:
        parse_destination(target)
    except InvalidConfig:
        raise AwsError(
            400,
            "InvalidParameterValueException",
            f"The destination ARN {target} is invalid: fnrt delivers to a Lambda function ARN, "
            "or to an SQS queue, SNS topic, EventBridge event bus or S3 bucket ARN (a durable "
            "sink read with Runtime.destination_records)",
        ) from None
    return target


def _qualifier(request: web.Request, record: FunctionRecord, *, required: bool) -> None:
    qualifier = request.query.get("Qualifier")
    if qualifier is None:
        if required:
            raise AwsError(400, "InvalidParameterValueException", "Qualifier is required")
        return
    if qualifier != LATEST:
        raise AwsError(404, "ResourceNotFoundException", f"Function not found: {record.arn}:{qualifier}")


def _stale_revision() -> AwsError:
    return AwsError(
        412,
        "PreconditionFailedException",
        "The Revision Id provided does not match the latest Revision Id. Call the "
        "GetFunction/GetAlias API to retrieve the latest Revision Id",
    )


def _tags(tags: Any) -> dict[str, str]:
    """``Tags``, validated as Lambda's ``TagKey``/``TagValue`` and its reserved prefix."""
    if not isinstance(tags, dict):
        raise _invalid("Tags", tags, "Member must be a map of strings to strings")
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or not _TAG_TEXT.match(key):
            raise _invalid(
                "Tags",
                key,
                "Map keys must have length 1-128 and satisfy regular expression pattern: "
                "([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)",
            )
        if key.lower().startswith("aws:"):
            raise AwsError(
                400,
                "InvalidParameterValueException",
                f"Tag keys that start with aws: are reserved for AWS use: {key}",
            )
        if not isinstance(value, str) or len(value) > 256 or not _TAG_TEXT.match(value):
            raise _invalid(
                "Tags",
                value,
                "Map values must be strings of length 0-256 that satisfy regular expression "
                "pattern: ([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)",
            )
    if len(tags) > _TAG_LIMIT:
        raise AwsError(
            400,
            "InvalidParameterValueException",
            f"A function can have at most {_TAG_LIMIT} tags, got {len(tags)}",
        )
    return dict(tags)


def _role(body: Mapping[str, Any]) -> str:
    role = body["Role"]
    if not isinstance(role, str) or not _ROLE.match(role):
        raise _invalid(
            "Role",
            role,
            "Member must satisfy regular expression pattern: "
            "arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+",
        )
    return role


def _python(body: Mapping[str, Any]) -> None:
    """``Runtime``: a Python 3 runtime (the sandboxes run the host's interpreter)."""
    runtime = body["Runtime"]
    if not isinstance(runtime, str) or not re.fullmatch(r"python3\.\d+", runtime):
        raise AwsError(
            400,
            "InvalidParameterValueException",
            f"fnrt runs Python functions only (runtime python3.x), not {runtime!r}",
        )


def _created_name(runtime: Runtime, raw: Any) -> str:
    """The name ``CreateFunction`` is given: a name, or an unqualified ARN of this
    runtime's region and account."""
    if not isinstance(raw, str):
        raise _invalid("FunctionName", raw, "Member must be a string")
    name = raw
    if ":" in raw:
        prefix = f"arn:aws:lambda:{runtime.config.region}:{runtime.config.account_id}:function:"
        partial = f"{runtime.config.account_id}:function:"
        for head in (prefix, partial):
            if raw.startswith(head):
                name = raw[len(head) :]
                break
    if not _PLAIN_NAME.match(name):
        raise _invalid(
            "FunctionName",
            raw,
            "Member must satisfy regular expression pattern: "
            "(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\\d{1}:)?(\\d{12}:)?"
            "(function:)?([a-zA-Z0-9-_]+)",
        )
    return name


def _create_defaults(body: Mapping[str, Any]) -> None:
    """Settings fnrt accepts only with the value it runs with: anything else is refused
    by name rather than ignored."""
    checks: tuple[tuple[str, Any, str], ...] = (
        ("Publish", False, "fnrt publishes no versions: leave Publish out or false"),
        ("PackageType", "Zip", "fnrt runs .zip packages only (PackageType Zip)"),
        ("Architectures", [ARCHITECTURE], f"fnrt runs on this host's architecture: [{ARCHITECTURE}]"),
        ("EphemeralStorage", {"Size": 512}, "fnrt's /tmp is the host's: EphemeralStorage Size 512"),
        ("TracingConfig", {"Mode": "PassThrough"}, "fnrt does no X-Ray tracing: Mode PassThrough"),
        ("Layers", [], "fnrt does not support Layers: put the code in the package"),
    )
    for key, value, why in checks:
        if key in body and body[key] != value:
            raise AwsError(400, "InvalidParameterValueException", f"Unsupported {key} {body[key]!r}: {why}")


def _unpack_package(zipped: str, parent: str, name: str) -> tuple[str, str, int]:
    """Decode, hash and unpack a ``ZipFile`` under ``parent`` (in a worker thread): the
    directory, ``CodeSha256`` and ``CodeSize``."""
    try:
        data = base64.b64decode(zipped, validate=True)
    except (ValueError, binascii.Error):
        raise _invalid("ZipFile", "...", "Member must be base64-encoded") from None
    sha = hashlib.sha256(data).digest()
    target = os.path.join(parent, f"{name}-{sha.hex()[:16]}")
    _unzip(data, target)
    return target, base64.b64encode(sha).decode(), len(data)


def _unzip(data: bytes, target: str) -> None:
    """Unpack a .zip deployment package into ``target`` (made here; kept if it exists,
    as the same package unpacked before). A package that is not a zip, whose members
    climb out of it, or that unpacks to more than Lambda's 250 MB is refused."""
    if os.path.isdir(target):
        return
    unreadable = AwsError(
        400,
        "InvalidParameterValueException",
        "Could not unzip uploaded file. Please check your file, then try to upload again.",
    )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise unreadable from None
    with archive:
        members = archive.infolist()
        if sum(member.file_size for member in members) > _UNZIPPED_LIMIT:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                f"Unzipped size must be smaller than {_UNZIPPED_LIMIT} bytes",
            )
        for member in members:
            parts = member.filename.replace("\\", "/").split("/")
            if member.filename.startswith("/") or ".." in parts:
                raise unreadable
        staging = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(target))
        try:
            archive.extractall(staging)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError):
            _remove_tree(staging)
            raise unreadable from None
    try:
        os.rename(staging, target)
    except OSError:  # unpacked meanwhile by another request for the same package
        _remove_tree(staging)


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _page(request: web.Request, keys: list[str], default: int, limit: int) -> tuple[int, int]:
    """``Marker``/``MaxItems``: the slice of ``keys`` (sorted) to answer."""
    raw = request.query.get("MaxItems", str(default))
    try:
        max_items = int(raw)
    except ValueError:
        max_items = 0
    if not 1 <= max_items <= limit:
        raise AwsError(400, "InvalidParameterValueException", f"MaxItems must be 1-{limit}, got {raw!r}")
    start = 0
    marker = request.query.get("Marker")
    if marker:
        after = decode_marker(marker)
        start = sum(1 for k in keys if k < after)
    return start, max_items


def _marker(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


class ControlApi:
    """The control-plane routes; :meth:`register` adds them to an application."""

    def __init__(self, runtime: Runtime, stamps: Stamps | None = None) -> None:
        self.runtime = runtime
        self.stamps = stamps or Stamps(runtime)
        self._packages: tempfile.TemporaryDirectory[str] | None = None
        #: Per function name: one code request at a time from unpacking to registering, so
        #: one that removes a package it leaves unused never removes another's.
        self._code_locks: dict[str, asyncio.Lock] = {}

    def register(self, app: web.Application) -> None:
        add = app.router.add_route
        for path in (_CREATE, _CREATE + "/"):
            add("POST", path, self.create_function)
        add("PUT", _FUNCTIONS + "/code", self.update_function_code)
        add("POST", _FUNCTIONS + "/versions", self.publish_version)
        add("GET", _FUNCTIONS + "/versions", self.list_versions_by_function)
        add("POST", _FUNCTIONS + "/aliases", self.create_alias)
        add("GET", _FUNCTIONS + "/aliases", self.list_aliases)
        for method in ("GET", "PUT", "DELETE"):
            add(method, _FUNCTIONS + "/aliases/{alias}", self.no_such_alias)
        add("DELETE", _FUNCTIONS, self.delete_function)
        add("GET", _FUNCTIONS + "/policy", self.get_policy)
        add("PUT", _FUNCTIONS + "/configuration", self.update_function_configuration)
        add("PUT", _CONCURRENCY_PUT, self.put_function_concurrency)
        add("DELETE", _CONCURRENCY_PUT, self.delete_function_concurrency)
        add("GET", _CONCURRENCY_GET, self.get_function_concurrency)
        add("PUT", _PROVISIONED, self.put_provisioned_concurrency)
        add("GET", _PROVISIONED, self.get_provisioned_concurrency)
        add("DELETE", _PROVISIONED, self.delete_provisioned_concurrency)
        add("PUT", _EVENT_INVOKE, self.put_event_invoke_config)
        add("POST", _EVENT_INVOKE, self.update_event_invoke_config)
        add("GET", _EVENT_INVOKE, self.get_event_invoke_config)
        add("DELETE", _EVENT_INVOKE, self.delete_event_invoke_config)
        add("GET", _EVENT_INVOKE + "/list", self.list_event_invoke_configs)
        for path in (_MAPPINGS, _MAPPINGS + "/"):
            add("POST", path, self.create_event_source_mapping)
            add("GET", path, self.list_event_source_mappings)
        add("GET", _MAPPINGS + "/{uuid}", self.get_event_source_mapping)
        add("PUT", _MAPPINGS + "/{uuid}", self.update_event_source_mapping)
        add("DELETE", _MAPPINGS + "/{uuid}", self.delete_event_source_mapping)
        for path in (_ACCOUNT, _ACCOUNT + "/"):
            add("GET", path, self.get_account_settings)
        add("POST", _TAGS, self.tag_resource)
        add("DELETE", _TAGS, self.untag_resource)
        add("GET", _TAGS, self.list_tags)

    def _function(self, request: web.Request) -> FunctionRecord:
        """The function the path names (a name or ARN; a qualifier in it must be ``$LATEST``)."""
        record, _ = resolve(self.runtime, request.match_info["name"], None)
        return record

    # -- functions ----------------------------------------------------------------------

    async def _unpack(self, name: str, zipped: Any) -> tuple[str, str, int]:
        """``ZipFile`` (base64, as the SDKs send the blob) unpacked into a directory of its
        own, off the event loop: the directory, ``CodeSha256`` and ``CodeSize``."""
        if not isinstance(zipped, str):
            raise _invalid("ZipFile", type(zipped).__name__, "Member must be a blob")
        if self._packages is None:
            self._packages = tempfile.TemporaryDirectory(prefix="fnrt-code-")
        return await asyncio.to_thread(_unpack_package, zipped, self._packages.name, name)

    def _code_lock(self, name: str) -> asyncio.Lock:
        return self._code_locks.setdefault(name, asyncio.Lock())

    async def _drop_unused(self, root: str) -> None:
        """Remove the unpacked package ``root`` unless a function runs it (off the loop):
        each can be 250 MB, and nothing else would remove it before the server closes."""
        if not any(r.config.code_root == root for r in self.runtime.functions().values()):
            await asyncio.to_thread(_remove_tree, root)

    def _package(self, body: Mapping[str, Any], what: str) -> Any:
        """The ``ZipFile`` a request carries; the other code sources are refused by name."""
        sources = sorted(key for key in _CODE_SOURCES if body.get(key))
        if sources:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                f"fnrt does not support {', '.join(sources)} in {what}: it takes the deployment "
                "package as ZipFile (it reads no S3 bucket and runs no container image)",
            )
        if not body.get("ZipFile"):
            raise AwsError(
                400, "InvalidParameterValueException", f"{what} needs the ZipFile of a .zip package"
            )
        return body["ZipFile"]

    async def create_function(self, request: web.Request) -> web.Response:
        """``CreateFunction`` from a .zip deployment package: it is unpacked and its
        directory goes first on the sandboxes' import path (``LAMBDA_TASK_ROOT``)."""
        rt = self.runtime
        body = await _body(request)
        unknown = sorted(set(body) - set(_CREATABLE))
        if unknown:
            raise _unsupported(unknown, "CreateFunction", _CREATABLE)
        for key in ("FunctionName", "Role", "Code"):
            if key not in body:
                raise AwsError(400, "InvalidParameterValueException", f"{key} is required")
        name = _created_name(rt, body["FunctionName"])
        role = _role(body)
        _create_defaults(body)
        if body.get("Runtime") is None:
            raise AwsError(400, "InvalidParameterValueException", _ZIP_MANDATORY)
        _python(body)
        handler = body.get("Handler")
        if not isinstance(handler, str) or not handler:
            raise AwsError(400, "InvalidParameterValueException", _ZIP_MANDATORY)
        code = body["Code"]
        if not isinstance(code, dict):
            raise _invalid("Code", code, "Member must be a structure")
        zipped = self._package(code, "Code")
        config: dict[str, Any] = self._settings(body)
        tags = _tags(body.get("Tags") or {})
        dead_letter = self._dead_letter(body)
        if name in rt.functions():
            raise AwsError(409, "ResourceConflictException", f"Function already exist: {name}")
        parse_reference(handler)  # a handler Lambda refuses, before the package is unpacked
        async with self._code_lock(name):
            root, sha, size = await self._unpack(name, zipped)
            try:
                if name in rt.functions():  # created by another request while this one unpacked
                    raise AwsError(409, "ResourceConflictException", f"Function already exist: {name}")
                record = await rt.add_function(name, handler, code_root=root, **config)
            finally:
                await self._drop_unused(root)  # the package of a request that failed
        if dead_letter is not _UNCHANGED:
            rt.set_dead_letter(name, dead_letter)
        self.stamps.forget_function(name)
        self.stamps.roles[name] = role
        self.stamps.code[name] = (root, sha, size)
        if tags:
            self.stamps.tags[name] = tags
        return web.json_response(self.function_configuration(record), status=201)

    async def update_function_code(self, request: web.Request) -> web.Response:
        """``UpdateFunctionCode``: new environments import the new package; the ones running
        the old code finish what they run and retire."""
        record = self._function(request)
        body = await _body(request)
        known: tuple[str, ...] = ("ZipFile", *_CODE_SOURCES, "Architectures", "Publish", "DryRun")
        known += ("RevisionId", "FunctionName")
        unknown = sorted(set(body) - set(known))
        if unknown:
            raise _unsupported(unknown, "UpdateFunctionCode", known)
        _create_defaults({k: body[k] for k in ("Architectures", "Publish") if k in body})
        zipped = self._package(body, "UpdateFunctionCode")
        dead_letter_now = self.runtime.async_config(record.name).dead_letter
        role_now = self.stamps.roles.get(record.name)
        if "RevisionId" in body and body["RevisionId"] != revision_id(record, dead_letter_now, role_now):
            raise _stale_revision()
        dry_run = body.get("DryRun", False)
        if not isinstance(dry_run, bool):
            raise _invalid("DryRun", dry_run, "Member must be a boolean")
        async with self._code_lock(record.name):
            root, sha, size = await self._unpack(record.name, zipped)
            try:
                if not dry_run:
                    record = await self.runtime.update_function_configuration(record.name, code_root=root)
                    self.stamps.code[record.name] = (root, sha, size)
            finally:
                await self._drop_unused(root)  # a dry run's package, or an update's that failed
        shape = self.function_configuration(record)
        if dry_run:
            shape["CodeSha256"], shape["CodeSize"] = sha, size
        return web.json_response(shape)

    async def delete_function(self, request: web.Request) -> web.Response:
        """``DeleteFunction``: the function goes (its concurrency, pool, event-invoke config
        and tags with it); its event source mappings stay, as in Lambda. With a version's
        ``Qualifier`` only that version would go: fnrt publishes none, so there is nothing
        to delete (Lambda answers 204 for a version that does not exist too)."""
        record, qualifier = resolve(
            self.runtime, request.match_info["name"], request.query.get("Qualifier"), any_qualifier=True
        )
        if qualifier == LATEST:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                "$LATEST version cannot be deleted without deleting the function.",
            )
        if qualifier is None:
            await self.runtime.remove_function(record.name)
            self.stamps.forget_function(record.name)
        return web.Response(status=204)

    async def get_policy(self, request: web.Request) -> web.Response:
        """``GetPolicy``: fnrt functions have no resource-based policy (it serves no
        ``AddPermission``), so it is Lambda's answer for a function without one."""
        resolve(self.runtime, request.match_info["name"], request.query.get("Qualifier"))
        raise AwsError(404, "ResourceNotFoundException", _NOT_FOUND)

    # -- versions and aliases: fnrt runs $LATEST only --------------------------------------

    async def publish_version(self, request: web.Request) -> web.Response:
        record = self._function(request)
        raise AwsError(
            400,
            "InvalidParameterValueException",
            f"fnrt does not publish versions of {record.name}: every invocation runs $LATEST "
            "(its configuration changes take effect on the next execution environment)",
        )

    async def list_versions_by_function(self, request: web.Request) -> web.Response:
        """The one version fnrt has, ``$LATEST``, as Lambda lists it (a qualified ARN)."""
        record = self._function(request)
        _page(request, [], 50, 10_000)  # validates MaxItems/Marker
        latest = {**self.function_configuration(record), "FunctionArn": f"{record.arn}:{LATEST}"}
        return web.json_response({"Versions": [latest]})

    async def create_alias(self, request: web.Request) -> web.Response:
        record = self._function(request)
        body = await _body(request)
        for key in ("Name", "FunctionVersion"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise AwsError(400, "InvalidParameterValueException", f"{key} is required")
        version = body["FunctionVersion"]
        if version != LATEST:  # no published version exists
            raise AwsError(404, "ResourceNotFoundException", f"Function not found: {record.arn}:{version}")
        raise AwsError(
            400,
            "InvalidParameterValueException",
            "fnrt does not serve aliases: invoke the function unqualified (or with $LATEST)",
        )

    async def list_aliases(self, request: web.Request) -> web.Response:
        self._function(request)
        _page(request, [], 50, 10_000)
        return web.json_response({"Aliases": []})

    async def no_such_alias(self, request: web.Request) -> web.Response:
        """``GetAlias``/``UpdateAlias``/``DeleteAlias``: fnrt has no aliases."""
        record = self._function(request)
        alias = request.match_info["alias"]
        raise AwsError(404, "ResourceNotFoundException", f"Alias not found: {record.arn}:{alias}")

    # -- tags ---------------------------------------------------------------------------

    def _tagged(self, request: web.Request) -> FunctionRecord:
        """The function a tag request's ``Resource`` ARN names (unqualified: Lambda tags
        functions, not their versions or aliases)."""
        arn = request.match_info["arn"]
        if not arn.startswith("arn:") or ":function:" not in arn:
            raise AwsError(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{arn}' at 'resource' failed to satisfy "
                "constraint: Member must satisfy regular expression pattern: "
                "arn:(aws[a-zA-Z-]*):lambda:[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\\d{1}:\\d{12}:"
                "function:[a-zA-Z0-9-_]+(:(\\$LATEST|[a-zA-Z0-9-_]+))?",
            )
        record, qualifier = resolve(self.runtime, arn, None, any_qualifier=True)
        if qualifier is not None:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                f"Tags are not supported on a function's versions or aliases: {arn}",
            )
        return record

    async def tag_resource(self, request: web.Request) -> web.Response:
        record = self._tagged(request)
        body = await _body(request)
        if "Tags" not in body:
            raise AwsError(400, "InvalidParameterValueException", "Tags is required")
        tags = _tags(body["Tags"])
        merged = {**self.stamps.tags.get(record.name, {}), **tags}
        if len(merged) > _TAG_LIMIT:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                f"A function can have at most {_TAG_LIMIT} tags; this request would give it {len(merged)}",
            )
        self.stamps.tags[record.name] = merged
        return web.Response(status=204)

    async def untag_resource(self, request: web.Request) -> web.Response:
        record = self._tagged(request)
        keys = request.query.getall("tagKeys", [])
        if not keys:
            raise AwsError(400, "InvalidParameterValueException", "TagKeys is required")
        tags = self.stamps.tags.get(record.name, {})
        for key in keys:
            tags.pop(key, None)
        return web.Response(status=204)

    async def list_tags(self, request: web.Request) -> web.Response:
        record = self._tagged(request)
        return web.json_response({"Tags": dict(self.stamps.tags.get(record.name, {}))})

    # -- function configuration ---------------------------------------------------------

    def function_configuration(self, record: FunctionRecord) -> dict[str, Any]:
        return function_configuration(record, self.stamps)

    def _settings(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """fnrt's function settings for a request's ``Timeout``, ``MemorySize``,
        ``Description`` and ``Environment``, validated as Lambda validates them."""
        changes: dict[str, Any] = {}
        if "Timeout" in body:
            changes["timeout"] = _integer(body, "Timeout", 1, 900)
        if "MemorySize" in body:
            changes["memory_mb"] = _integer(body, "MemorySize", 128, 10_240)
        if "Description" in body:
            changes["description"] = _string(body, "Description", 256)
        if "Environment" in body:
            environment = body["Environment"]
            if not isinstance(environment, dict) or set(environment) - {"Variables"}:
                raise _invalid("Environment", environment, 'Member must be {"Variables": {...}}')
            variables = environment.get("Variables") or {}
            if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
                raise _invalid("Variables", variables, "Member must be a map of strings to strings")
            changes["environment"] = variables
        if "LoggingConfig" in body:
            changes.update(_logging_config(body["LoggingConfig"]))
        return changes

    def _dead_letter(self, body: Mapping[str, Any], current: str | None = None) -> Any:
        """``DeadLetterConfig``'s target (fnrt's async ``dead_letter`` sink), validated;
        ``_UNCHANGED`` when the request leaves it as it is."""
        if "DeadLetterConfig" not in body:  # Lambda's DLQ: fnrt's async dead_letter sink
            return _UNCHANGED
        dead_letter = body["DeadLetterConfig"]
        if not isinstance(dead_letter, dict) or set(dead_letter) - {"TargetArn"}:
            raise _invalid("DeadLetterConfig", dead_letter, 'Member must be {"TargetArn": "..."}')
        target = dead_letter.get("TargetArn") or None
        if target is not None and not isinstance(target, str):
            raise _invalid("TargetArn", target, "Member must be a string")
        if target == current:
            return _UNCHANGED
        AsyncConfig(dead_letter=target)  # validated before anything changes
        return target

    async def update_function_configuration(self, request: web.Request) -> web.Response:
        record = self._function(request)
        body = await _body(request)
        unknown = sorted(set(body) - set(_UPDATABLE) - {"FunctionName"})
        if unknown:
            raise _unsupported(unknown, "UpdateFunctionConfiguration", _UPDATABLE)
        changes = self._settings(body)
        role = _role(body) if "Role" in body else None
        if "Runtime" in body:
            _python(body)  # the sandboxes run the host's Python 3, whichever is named
        if "Handler" in body:
            handler = body["Handler"]
            if not isinstance(handler, str) or not handler:
                raise _invalid("Handler", handler, "Member must have length greater than or equal to 1")
            if handler != record.handler:
                changes["handler"] = handler
        dead_letter_now = self.runtime.async_config(record.name).dead_letter
        role_now = self.stamps.roles.get(record.name)
        if "RevisionId" in body and body["RevisionId"] != revision_id(record, dead_letter_now, role_now):
            raise _stale_revision()
        dead_letter = self._dead_letter(body, dead_letter_now)
        if changes:
            record = await self.runtime.update_function_configuration(record.name, **changes)
        if role is not None:
            self.stamps.roles[record.name] = role
        if dead_letter is not _UNCHANGED:
            self.runtime.set_dead_letter(record.name, dead_letter)
        if not changes and (dead_letter is not _UNCHANGED or role is not None):
            self.stamps.modified(record)  # no new generation: LastModified moves all the same
        return web.json_response(self.function_configuration(record))

    # -- reserved concurrency -----------------------------------------------------------

    async def put_function_concurrency(self, request: web.Request) -> web.Response:
        record = self._function(request)
        body = await _body(request)
        if "ReservedConcurrentExecutions" not in body:
            raise AwsError(400, "InvalidParameterValueException", "ReservedConcurrentExecutions is required")
        reserved = _integer(body, "ReservedConcurrentExecutions", 0)
        record = self.runtime.put_function_concurrency(record.name, reserved)
        return web.json_response({"ReservedConcurrentExecutions": record.config.reserved_concurrency})

    async def get_function_concurrency(self, request: web.Request) -> web.Response:
        reserved = self._function(request).config.reserved_concurrency
        return web.json_response({} if reserved is None else {"ReservedConcurrentExecutions": reserved})

    async def delete_function_concurrency(self, request: web.Request) -> web.Response:
        self.runtime.delete_function_concurrency(self._function(request).name)
        return web.Response(status=204)

    # -- provisioned concurrency --------------------------------------------------------

    def _provisioned(self, record: FunctionRecord) -> dict[str, Any]:
        status = self.runtime.provisioned_concurrency(record.name)
        modified = self.stamps.get("provisioned", record.name)
        out = {**status, "LastModified": lambda_time(modified, millis=False)}
        if status["Status"] == "FAILED":
            out["StatusReason"] = "The function's execution environments failed to initialize (see the logs)"
        return out

    async def put_provisioned_concurrency(self, request: web.Request) -> web.Response:
        record = self._function(request)
        _qualifier(request, record, required=True)
        body = await _body(request)
        if "ProvisionedConcurrentExecutions" not in body:
            raise AwsError(
                400, "InvalidParameterValueException", "ProvisionedConcurrentExecutions is required"
            )
        count = _integer(body, "ProvisionedConcurrentExecutions", 1)
        self.runtime.put_provisioned_concurrency(record.name, count)
        self.stamps.touch("provisioned", record.name)
        return web.json_response(self._provisioned(record), status=202)

    async def get_provisioned_concurrency(self, request: web.Request) -> web.Response:
        record = self._function(request)
        if request.query.get("List") == "ALL":  # ListProvisionedConcurrencyConfigs
            _page(request, [], 50, 50)  # validates MaxItems/Marker; one config at most
            configs = []
            if record.config.provisioned_concurrency:
                configs.append({"FunctionArn": f"{record.arn}:{LATEST}", **self._provisioned(record)})
            return web.json_response({"ProvisionedConcurrencyConfigs": configs})
        _qualifier(request, record, required=True)
        if not record.config.provisioned_concurrency:
            raise AwsError(
                404,
                "ProvisionedConcurrencyConfigNotFoundException",
                "No Provisioned Concurrency Config found for this function",
            )
        return web.json_response(self._provisioned(record))

    async def delete_provisioned_concurrency(self, request: web.Request) -> web.Response:
        record = self._function(request)
        _qualifier(request, record, required=True)
        self.runtime.delete_provisioned_concurrency(record.name)
        self.stamps.forget("provisioned", record.name)
        return web.Response(status=204)

    # -- event-invoke config ------------------------------------------------------------

    def _destination_arn(self, target: str) -> str:
        return destination_arn(self.runtime.config, target)

    def _event_invoke(self, record: FunctionRecord) -> dict[str, Any]:
        config = self.runtime.async_config(record.name)
        destinations: dict[str, dict[str, str]] = {"OnSuccess": {}, "OnFailure": {}}
        if config.on_success:
            destinations["OnSuccess"]["Destination"] = self._destination_arn(config.on_success)
        if config.on_failure:
            destinations["OnFailure"]["Destination"] = self._destination_arn(config.on_failure)
        return {
            "LastModified": self.stamps.get("event-invoke", record.name),
            "FunctionArn": f"{record.arn}:{LATEST}",
            "MaximumRetryAttempts": config.max_retry_attempts,
            "MaximumEventAgeInSeconds": _number(config.max_event_age),
            "DestinationConfig": destinations,
        }

    def _event_invoke_changes(self, body: dict[str, Any]) -> dict[str, Any]:
        fields = ("MaximumRetryAttempts", "MaximumEventAgeInSeconds", "DestinationConfig")
        unknown = sorted(set(body) - set(fields) - {"FunctionName", "Qualifier"})
        if unknown:
            raise _unsupported(unknown, "FunctionEventInvokeConfig", fields)
        changes: dict[str, Any] = {}
        if "MaximumRetryAttempts" in body:
            changes["max_retry_attempts"] = _integer(body, "MaximumRetryAttempts", 0, 2)
        if "MaximumEventAgeInSeconds" in body:
            changes["max_event_age"] = _integer(body, "MaximumEventAgeInSeconds", 60, 21_600)
        destinations = body.get("DestinationConfig")
        if destinations is not None:
            if not isinstance(destinations, dict):
                raise _invalid("DestinationConfig", destinations, "Member must be a structure")
            for key, setting in (("OnSuccess", "on_success"), ("OnFailure", "on_failure")):
                if key in destinations:
                    changes[setting] = _destination(destinations, key)
        return changes

    def _no_event_invoke(self, record: FunctionRecord) -> AwsError:
        return AwsError(
            404,
            "ResourceNotFoundException",
            f"The function {record.arn}:{LATEST} doesn't have an EventInvokeConfig",
        )

    async def put_event_invoke_config(self, request: web.Request) -> web.Response:
        """Replace: what the request leaves out goes back to Lambda's defaults (fnrt's own
        ``retry_delays`` and ``dead_letter`` are kept: this API cannot set them)."""
        record = self._function(request)
        _qualifier(request, record, required=False)
        changes = self._event_invoke_changes(await _body(request))
        current = self.runtime.async_config(record.name)
        config = {
            "retry_delays": current.retry_delays,
            "dead_letter": current.dead_letter,
            "max_retry_attempts": 2,
            "max_event_age": 21_600,
            "on_success": None,
            "on_failure": None,
            **changes,
        }
        self.runtime.configure_async(record.name, **config)
        self.stamps.touch("event-invoke", record.name)
        return web.json_response(self._event_invoke(record))

    async def update_event_invoke_config(self, request: web.Request) -> web.Response:
        """Merge: only what the request names changes."""
        record = self._function(request)
        _qualifier(request, record, required=False)
        if not self.runtime.has_async_config(record.name):
            raise self._no_event_invoke(record)
        changes = self._event_invoke_changes(await _body(request))
        current = self.runtime.async_config(record.name).to_dict()
        self.runtime.configure_async(record.name, **{**current, **changes})
        self.stamps.touch("event-invoke", record.name)
        return web.json_response(self._event_invoke(record))

    async def get_event_invoke_config(self, request: web.Request) -> web.Response:
        record = self._function(request)
        _qualifier(request, record, required=False)
        if not self.runtime.has_async_config(record.name):
            raise self._no_event_invoke(record)
        return web.json_response(self._event_invoke(record))

    async def delete_event_invoke_config(self, request: web.Request) -> web.Response:
        record = self._function(request)
        _qualifier(request, record, required=False)
        if not self.runtime.has_async_config(record.name):
            raise self._no_event_invoke(record)
        self.runtime.delete_async_config(record.name)
        self.stamps.forget("event-invoke", record.name)
        return web.Response(status=204)

    async def list_event_invoke_configs(self, request: web.Request) -> web.Response:
        record = self._function(request)
        _page(request, [], 50, 50)  # validates MaxItems/Marker; one config at most
        configs = [self._event_invoke(record)] if self.runtime.has_async_config(record.name) else []
        return web.json_response({"FunctionEventInvokeConfigs": configs})

    # -- event source mappings ----------------------------------------------------------

    def _mapping(self, request: web.Request) -> StreamMapping:
        key = request.match_info["uuid"]
        for mapping in self.runtime.stream_mappings():
            if mapping.uuid == key:
                return mapping
        raise AwsError(404, "ResourceNotFoundException", _NOT_FOUND)

    def _mapping_shape(self, mapping: StreamMapping, state: str | None = None) -> dict[str, Any]:
        config = mapping.config
        config_region = self.runtime.config
        out: dict[str, Any] = {
            "UUID": mapping.uuid,
            "StartingPosition": config.starting_position,
            "BatchSize": config.batch_size,
            "MaximumBatchingWindowInSeconds": _number(config.max_batching_window),
            "ParallelizationFactor": config.parallelization_factor,
            "EventSourceArn": mapping.stream.arn,
            "FunctionArn": config_region.function_arn(mapping.function),
            "LastModified": self.stamps.get("mapping", mapping.uuid),
            "State": state or ("Enabled" if config.enabled and not mapping.stream_deleted else "Disabled"),
            "LastProcessingResult": mapping.last_processing_result,
            # a mapping whose stream was deleted: Lambda disabled it
            "StateTransitionReason": "Lambda initiated" if mapping.stream_deleted else "User action",
            "DestinationConfig": {"OnFailure": {}},
            "MaximumRecordAgeInSeconds": config.max_record_age,
            "BisectBatchOnFunctionError": config.bisect_on_error,
            "MaximumRetryAttempts": config.max_retry_attempts,
            "TumblingWindowInSeconds": 0,
            "FunctionResponseTypes": ["ReportBatchItemFailures"] if config.report_batch_item_failures else [],
            "EventSourceMappingArn": (
                f"arn:aws:lambda:{config_region.region}:{config_region.account_id}:"
                f"event-source-mapping:{mapping.uuid}"
            ),
        }
        if config.starting_position_timestamp is not None:
            out["StartingPositionTimestamp"] = config.starting_position_timestamp
        if config.on_failure:
            out["DestinationConfig"]["OnFailure"]["Destination"] = self._destination_arn(config.on_failure)
        if config.filters:
            out["FilterCriteria"] = {"Filters": [{"Pattern": pattern} for pattern in config.filters]}
        return out

    _MAPPING_FIELDS: tuple[str, ...] = (
        "BatchSize",
        "MaximumBatchingWindowInSeconds",
        "ParallelizationFactor",
        "BisectBatchOnFunctionError",
        "MaximumRetryAttempts",
        "MaximumRecordAgeInSeconds",
        "DestinationConfig",
        "FunctionResponseTypes",
        "Enabled",
        "TumblingWindowInSeconds",
        "FilterCriteria",
        "FunctionName",
    )

    def _mapping_changes(self, body: dict[str, Any], *, create: bool) -> dict[str, Any]:
        """fnrt's :class:`~fnrt.StreamMappingConfig` settings for a request's fields."""
        fields: tuple[str, ...] = self._MAPPING_FIELDS
        if create:
            fields = (*fields, "EventSourceArn", "StartingPosition", "StartingPositionTimestamp")
        unknown = sorted(set(body) - set(fields))
        if unknown:
            raise _unsupported(unknown, "event source mappings for Kinesis streams", fields)
        changes: dict[str, Any] = {}
        ranges = {
            "BatchSize": ("batch_size", 1, 10_000),
            "MaximumBatchingWindowInSeconds": ("max_batching_window", 0, 300),
            "ParallelizationFactor": ("parallelization_factor", 1, 10),
            "MaximumRetryAttempts": ("max_retry_attempts", -1, 10_000),
            "MaximumRecordAgeInSeconds": ("max_record_age", -1, 604_800),
        }
        for key, (setting, low, high) in ranges.items():
            if key in body:
                changes[setting] = _integer(body, key, low, high)
        age = changes.get("max_record_age")
        if age is not None and age != -1 and age < 60:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                "MaximumRecordAgeInSeconds must be -1 (infinite) or between 60 and 604800",
            )
        if "BisectBatchOnFunctionError" in body:
            changes["bisect_on_error"] = _boolean(body, "BisectBatchOnFunctionError")
        if "Enabled" in body:
            changes["enabled"] = _boolean(body, "Enabled")
        if "FunctionResponseTypes" in body:
            types = body["FunctionResponseTypes"]
            if not isinstance(types, list) or any(t != "ReportBatchItemFailures" for t in types):
                raise _invalid(
                    "FunctionResponseTypes",
                    types,
                    "Member must satisfy enum value set: [ReportBatchItemFailures]",
                )
            changes["report_batch_item_failures"] = bool(types)
        if "DestinationConfig" in body:
            destinations = body["DestinationConfig"]
            if isinstance(destinations, dict) and _destination(destinations, "OnSuccess"):
                raise AwsError(
                    400,
                    "InvalidParameterValueException",
                    "Unsupported DestinationConfig parameter for given event source mapping type: "
                    "OnSuccess (Kinesis streams take OnFailure only)",
                )
            changes["on_failure"] = _destination(destinations, "OnFailure")
        if body.get("TumblingWindowInSeconds") not in (None, 0):
            raise _unsupported(["TumblingWindowInSeconds"], "event source mappings", ("0",))
        if "FilterCriteria" in body:
            changes["filters"] = _filter_patterns(body["FilterCriteria"])
        if "StartingPosition" in body:
            position = body["StartingPosition"]
            if position not in ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"):
                raise _invalid(
                    "StartingPosition",
                    position,
                    "Member must satisfy enum value set: [TRIM_HORIZON, LATEST, AT_TIMESTAMP]",
                )
            changes["starting_position"] = position
        if body.get("StartingPositionTimestamp") is not None:
            changes["starting_position_timestamp"] = _timestamp(body["StartingPositionTimestamp"])
        return changes

    def _mapped_function(self, body: dict[str, Any]) -> FunctionRecord:
        raw = body.get("FunctionName")
        if not isinstance(raw, str) or not raw:
            raise AwsError(400, "InvalidParameterValueException", "FunctionName is required")
        record, _ = resolve(self.runtime, raw, None)
        return record

    async def create_event_source_mapping(self, request: web.Request) -> web.Response:
        rt = self.runtime
        body = await _body(request)
        changes = self._mapping_changes(body, create=True)
        arn = body.get("EventSourceArn")
        match = _KINESIS_ARN.match(arn) if isinstance(arn, str) else None
        if match is None:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                f"Unrecognized event source {arn!r}: fnrt maps Kinesis streams "
                "(arn:aws:kinesis:<region>:<account>:stream/<name>)",
            )
        record = self._mapped_function(body)
        name = match.group(1)
        if name not in await rt.list_streams():
            raise AwsError(400, "InvalidParameterValueException", f"Stream not found: {arn}")
        stream = await rt.get_stream(name)
        if stream.arn != arn:
            raise AwsError(400, "InvalidParameterValueException", f"Stream not found: {arn}")
        if "starting_position" not in changes:
            raise AwsError(
                400, "InvalidParameterValueException", "StartingPosition is required for Kinesis streams"
            )
        for mapping in rt.stream_mappings():
            if mapping.stream.name == name and mapping.function == record.name:
                raise AwsError(
                    409,
                    "ResourceConflictException",
                    f'An event source mapping with Kinesis arn " {arn} " and function " {record.name} " '
                    f"already exists. Please update or delete the existing mapping with UUID {mapping.uuid}",
                )
        mapping = await rt.add_stream_mapping(name, record.name, **changes)
        self.stamps.touch("mapping", mapping.uuid)
        return web.json_response(self._mapping_shape(mapping, "Creating"), status=202)

    async def get_event_source_mapping(self, request: web.Request) -> web.Response:
        return web.json_response(self._mapping_shape(self._mapping(request)))

    async def list_event_source_mappings(self, request: web.Request) -> web.Response:
        mappings = sorted(self.runtime.stream_mappings(), key=lambda m: m.uuid)
        arn = request.query.get("EventSourceArn")
        if arn:
            mappings = [m for m in mappings if m.stream.arn == arn]
        function = request.query.get("FunctionName")
        if function:
            record, _ = resolve(self.runtime, function, None)
            mappings = [m for m in mappings if m.function == record.name]
        start, max_items = _page(request, [m.uuid for m in mappings], 100, 10_000)
        page = mappings[start : start + max_items]
        body: dict[str, Any] = {"EventSourceMappings": [self._mapping_shape(m) for m in page]}
        if start + max_items < len(mappings):
            body["NextMarker"] = _marker(mappings[start + max_items].uuid)
        return web.json_response(body)

    async def update_event_source_mapping(self, request: web.Request) -> web.Response:
        mapping = self._mapping(request)
        body = await _body(request)
        changes = self._mapping_changes(body, create=False)
        if "FunctionName" in body and self._mapped_function(body).name != mapping.function:
            raise AwsError(
                400,
                "InvalidParameterValueException",
                "fnrt cannot move an event source mapping to another function: delete it and "
                "create a new one",
            )
        was_enabled = mapping.config.enabled
        updated = await self.runtime.update_stream_mapping(mapping.uuid, **changes)
        self.stamps.touch("mapping", updated.uuid)
        state = "Updating"
        if updated.config.enabled != was_enabled:
            state = "Enabling" if updated.config.enabled else "Disabling"
        return web.json_response(self._mapping_shape(updated, state), status=202)

    async def delete_event_source_mapping(self, request: web.Request) -> web.Response:
        mapping = self._mapping(request)
        shape = self._mapping_shape(mapping, "Deleting")
        await self.runtime.remove_stream_mapping(mapping.uuid)
        self.stamps.forget("mapping", mapping.uuid)
        return web.json_response(shape, status=202)

    # -- account ------------------------------------------------------------------------

    async def get_account_settings(self, request: web.Request) -> web.Response:
        settings = self.runtime.account_settings()
        functions = self.runtime.functions()
        # the packages CreateFunction/UpdateFunctionCode were given, for the functions using them
        settings["AccountUsage"]["TotalCodeSize"] = sum(
            size
            for name, (root, _, size) in self.stamps.code.items()
            if name in functions and functions[name].config.code_root == root
        )
        return web.json_response(settings)


def _filter_patterns(criteria: Any) -> list[str]:
    """``FilterCriteria`` (``{"Filters": [{"Pattern": "<json>"}, ...]}``) as the mapping's
    patterns; ``null``, ``{}`` or an empty ``Filters`` list is none (an update removes them).
    The patterns themselves are checked by the mapping's config (InvalidParameterValue)."""
    if criteria is None:
        return []
    if not isinstance(criteria, dict):
        raise _invalid("FilterCriteria", criteria, "Member must be a structure")
    unknown = sorted(set(criteria) - {"Filters"})
    if unknown:
        raise _invalid("FilterCriteria", criteria, f"Unknown member {unknown[0]!r} (it takes Filters)")
    filters = criteria.get("Filters")
    if filters is None:
        return []
    if not isinstance(filters, list):
        raise _invalid("FilterCriteria.Filters", filters, "Member must be a list")
    patterns = []
    for item in filters:
        if not isinstance(item, dict) or set(item) - {"Pattern"}:
            raise _invalid("FilterCriteria.Filters", item, 'Member must be a structure {"Pattern": string}')
        pattern = item.get("Pattern")
        if not isinstance(pattern, str):
            raise AwsError(400, "InvalidParameterValueException", "Invalid filter pattern definition.")
        patterns.append(pattern)
    return patterns


def _timestamp(value: Any) -> float:
    """``StartingPositionTimestamp``: epoch seconds (as the SDKs send it) or ISO 8601."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
            return moment.timestamp()
    raise _invalid("StartingPositionTimestamp", value, "Member must be a timestamp")
