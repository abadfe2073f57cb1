"""Lambda's Invoke API over HTTP on loopback, so the AWS SDK and CLI work against fnrt.

    async with fnrt.Runtime() as rt, InvokeServer(rt, port=9001) as server:
        ...   # boto3.client("lambda", endpoint_url=server.url).invoke(FunctionName="echo")

Implements ``Invoke`` (``POST /2015-03-31/functions/{name}/invocations``), ``ListFunctions``
and ``GetFunction``, with Lambda's status codes, headers and JSON error bodies, plus
``GET /fnrt/stats`` for the command line. Needs the ``http`` extra (aiohttp), which is kept
out of the core: ``pip install 'fnrt[http]'``.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from types import TracebackType
from typing import Any

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fnrt.http needs aiohttp: pip install 'fnrt[http]'") from exc

from . import console
from ._pool import FunctionRecord
from ._runtime import SYNC_PAYLOAD_LIMIT, Runtime
from .errors import (
    FnrtError,
    FunctionNotFound,
    InvalidConfig,
    InvalidPayload,
    PayloadTooLarge,
    RuntimeClosed,
    StreamNotFound,
    TooManyRequests,
)

API = "/2015-03-31/functions"
_INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


def _error(status: int, error_type: str, message: str, **extra: Any) -> web.Response:
    body = {"Type": "User" if status < 500 else "Service", "message": message, **extra}
    return web.json_response(
        body,
        status=status,
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": str(uuid.uuid4())},
    )


def function_configuration(record: FunctionRecord) -> dict[str, Any]:
    """Lambda's ``FunctionConfiguration`` for a registered function."""
    config = record.config
    out: dict[str, Any] = {
        "FunctionName": record.name,
        "FunctionArn": record.arn,
        "Runtime": "python3",
        "Handler": record.handler,
        "Timeout": config.timeout,
        "MemorySize": config.memory_mb,
        "Version": "$LATEST",
        "Description": config.description,
        "PackageType": "Zip",
        "State": "Active",
        "Environment": {"Variables": dict(config.environment)},
    }
    if config.reserved_concurrency is not None:
        out["ReservedConcurrentExecutions"] = config.reserved_concurrency
    if config.provisioned_concurrency:
        out["ProvisionedConcurrentExecutions"] = config.provisioned_concurrency
    out["Sandbox"] = record.sandbox_kind
    return out


class InvokeServer:
    """An aiohttp server for a runtime, bound to loopback by default."""

    def __init__(self, runtime: Runtime, *, host: str = "127.0.0.1", port: int = 9001) -> None:
        self.runtime = runtime
        self.host = host
        self.port = port
        self.app = web.Application(client_max_size=SYNC_PAYLOAD_LIMIT * 2)
        self.app.router.add_post(API + "/{name}/invocations", self._invoke)
        self.app.router.add_get(API + "/", self._list)
        self.app.router.add_get(API, self._list)
        self.app.router.add_get(API + "/{name}", self._get)
        self.app.router.add_get("/fnrt/stats", self._stats)
        self.app.router.add_get("/fnrt/streams/{name}", self._describe_stream)
        self.app.router.add_post("/fnrt/streams/{name}/records", self._put_records)
        self.console = console.mount(self.app, runtime)  # the live console at /console/
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port: report the one the OS chose
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> InvokeServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- handlers ---------------------------------------------------------------------

    async def _invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        invocation_type: Any = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in _INVOCATION_TYPES:
            return _error(
                400,
                "InvalidParameterValueException",
                f"X-Amz-Invocation-Type must be one of {', '.join(_INVOCATION_TYPES)}",
            )
        client_context = None
        if "X-Amz-Client-Context" in request.headers:
            try:
                client_context = json.loads(base64.b64decode(request.headers["X-Amz-Client-Context"]))
            except (ValueError, binascii.Error):
                return _error(
                    400, "InvalidRequestContentException", "X-Amz-Client-Context must be base64 JSON"
                )
        body = await request.read()
        try:
            result = await self.runtime.invoke_detailed(
                name, body, invocation_type, client_context=client_context
            )
        except FunctionNotFound:
            arn = self.runtime.config.function_arn(name.split(":")[-1])
            return _error(404, "ResourceNotFoundException", f"Function not found: {arn}")
        except TooManyRequests as exc:
            return _error(
                429,
                "TooManyRequestsException",
                exc.message,
                Reason=exc.reason,
                retryAfterSeconds=str(int(exc.retry_after_seconds)),
            )
        except PayloadTooLarge as exc:
            return _error(
                413,
                "RequestTooLargeException",
                f"Request must be smaller than {exc.limit} bytes for the InvokeFunction operation",
            )
        except InvalidPayload as exc:
            return _error(400, "InvalidRequestContentException", str(exc))
        except InvalidConfig as exc:
            return _error(400, "InvalidParameterValueException", str(exc))
        except RuntimeClosed as exc:
            return _error(503, "ServiceException", str(exc))
        except FnrtError as exc:
            return _error(500, "ServiceException", str(exc))
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": result.request_id}
        if result.status_code != 200:  # Event: 202, DryRun: 204, empty body
            return web.Response(status=result.status_code, headers=headers)
        if request.headers.get("X-Amz-Log-Type") == "Tail":
            headers["X-Amz-Log-Result"] = result.log_result
        if result.error is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
            payload = json.dumps(result.error.to_lambda()).encode()
        else:
            payload = result.raw or b"null"
        return web.Response(status=200, body=payload, headers=headers, content_type="application/json")

    async def _list(self, request: web.Request) -> web.Response:
        functions = [function_configuration(r) for r in self.runtime.functions().values()]
        return web.json_response({"Functions": functions})

    async def _get(self, request: web.Request) -> web.Response:
        try:
            record = self.runtime.get_function(request.match_info["name"])
        except FunctionNotFound:
            arn = self.runtime.config.function_arn(request.match_info["name"])
            return _error(404, "ResourceNotFoundException", f"Function not found: {arn}")
        return web.json_response({"Configuration": function_configuration(record)})

    async def _stats(self, request: web.Request) -> web.Response:
        rt = self.runtime
        stats = rt.stats()
        stats["async"] = await rt.async_queue_counts()
        stats["streams"] = {
            f"{m.stream.name}->{m.function}": {"uuid": m.uuid, "iterator_age_ms": m.iterator_age()}
            for m in rt.stream_mappings()
        }
        stats["metrics"] = rt.metrics.snapshot()
        try:  # the hosts sharing this host's store (one, unless it is shared)
            stats["cluster"] = await rt.cluster_stats()
        except FnrtError as exc:
            stats["cluster"] = {"error": f"{type(exc).__name__}: {exc}"}
        return web.json_response(stats, dumps=lambda o: json.dumps(o, default=str))

    async def _describe_stream(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            stream = await self.runtime.get_stream(name)
        except StreamNotFound as exc:
            return _error(404, "ResourceNotFoundException", str(exc))
        mappings = []
        for m in self.runtime.stream_mappings():
            if m.stream.name != name:
                continue
            mappings.append(
                {
                    "UUID": m.uuid,
                    "FunctionName": m.function,
                    "BatchSize": m.config.batch_size,
                    "Checkpoints": await m.checkpoints(),
                    "IteratorAgeMs": m.iterator_age(),
                    "OnFailureRecords": len(await m.failure_records()),
                }
            )
        body = {
            "StreamName": name,
            "StreamARN": stream.arn,
            "Shards": await stream.shards(),
            "Mappings": mappings,
        }
        return web.json_response(body, dumps=lambda o: json.dumps(o, default=str))

    async def _put_records(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            body = await request.json()
            records = [(r["Data"], r["PartitionKey"]) for r in body["Records"]]
        except (ValueError, KeyError, TypeError):
            return _error(
                400,
                "InvalidArgumentException",
                'body must be {"Records": [{"Data": "...", "PartitionKey": "..."}]}',
            )
        try:
            stream = await self.runtime.get_stream(name)
            placed = await stream.put_records(records)
        except StreamNotFound as exc:
            return _error(404, "ResourceNotFoundException", str(exc))
        except (InvalidConfig, InvalidPayload) as exc:
            return _error(400, "InvalidArgumentException", str(exc))
        return web.json_response(
            {"Records": [{"ShardId": shard, "SequenceNumber": seq} for shard, seq in placed]}
        )
