"""Lambda's Invoke API over HTTP on loopback, so the AWS SDK and CLI work against fnrt.

    async with fnrt.Runtime() as rt, InvokeServer(rt, port=9001) as server:
        ...   # boto3.client("lambda", endpoint_url=server.url).invoke(FunctionName="echo")

Implements ``Invoke`` (``POST /2015-03-31/functions/{name}/invocations``), ``ListFunctions``
and ``GetFunction``, with Lambda's status codes, headers and JSON error bodies, plus
``GET /fnrt/stats`` for the command line. Needs the ``http`` extra (aiohttp), which is kept
out of the core: ``pip install 'fnrt[http]'``.
"""

from __future__ import annotations

import json
from types import TracebackType

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fnrt.http needs aiohttp: pip install 'fnrt[http]'") from exc

from ._http_errors import AwsError, errors_middleware, lambda_error
from ._http_lambda import API, LambdaApi, function_configuration
from ._runtime import SYNC_PAYLOAD_LIMIT, Runtime
from .errors import InvalidConfig, InvalidPayload, StreamNotFound


class InvokeServer:
    """An aiohttp server for a runtime, bound to loopback by default."""

    def __init__(self, runtime: Runtime, *, host: str = "127.0.0.1", port: int = 9001) -> None:
        self.runtime = runtime
        self.host = host
        self.port = port
        self.app = web.Application(
            client_max_size=SYNC_PAYLOAD_LIMIT * 2, middlewares=[errors_middleware]
        )
        LambdaApi(runtime).register(self.app)
        self.app.router.add_get("/fnrt/stats", self._stats)
        self.app.router.add_get("/fnrt/streams/{name}", self._describe_stream)
        self.app.router.add_post("/fnrt/streams/{name}/records", self._put_records)
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

    # -- fnrt's own routes (the command line's) ----------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        rt = self.runtime
        stats = rt.stats()
        stats["async"] = await rt.async_queue_counts()
        stats["streams"] = {
            f"{m.stream.name}->{m.function}": {"uuid": m.uuid, "iterator_age_ms": m.iterator_age()}
            for m in rt.stream_mappings()
        }
        stats["metrics"] = rt.metrics.snapshot()
        return web.json_response(stats, dumps=lambda o: json.dumps(o, default=str))

    async def _describe_stream(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            stream = await self.runtime.get_stream(name)
        except StreamNotFound as exc:
            raise AwsError(404, "ResourceNotFoundException", str(exc)) from None
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
            raise AwsError(
                400,
                "InvalidArgumentException",
                'body must be {"Records": [{"Data": "...", "PartitionKey": "..."}]}',
            ) from None
        try:
            stream = await self.runtime.get_stream(name)
            placed = await stream.put_records(records)
        except StreamNotFound as exc:
            raise AwsError(404, "ResourceNotFoundException", str(exc)) from None
        except (InvalidConfig, InvalidPayload) as exc:
            raise AwsError(400, "InvalidArgumentException", str(exc)) from None
        return web.json_response(
            {"Records": [{"ShardId": shard, "SequenceNumber": seq} for shard, seq in placed]}
        )


__all__ = ["API", "InvokeServer", "function_configuration", "lambda_error"]
