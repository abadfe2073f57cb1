"""fnrt's HTTP face, on loopback: Lambda's APIs for the AWS SDK and CLI, Kinesis' data
plane, and functions behind URLs.

    async with fnrt.Runtime() as rt, InvokeServer(rt, port=9001) as server:
        server.add_url("api")   # http://127.0.0.1:9001/api/... -> payload format 2.0 events
        ...   # boto3.client("lambda", endpoint_url=server.url).invoke(FunctionName="echo")

- Lambda (REST-JSON, ``/2015-03-31/functions``): ``Invoke`` (qualifier ``$LATEST``, client
  context checks), ``ListFunctions`` (``MaxItems``/``Marker``), ``GetFunction``,
  ``GetFunctionConfiguration``, and the control plane (``CreateFunction`` from a .zip,
  ``UpdateFunctionCode``, ``DeleteFunction``, tags, ``UpdateFunctionConfiguration``,
  function and provisioned concurrency, event-invoke configs, event source mappings for
  streams, ``GetAccountSettings``: see ``fnrt._http_control``); ``GET /fnrt/stats`` and
  ``/fnrt/streams`` for the CLI.
- Kinesis (JSON 1.1, ``POST /`` routed by ``X-Amz-Target``): see ``fnrt._http_kinesis``.
- Function URLs and API Gateway events: :func:`add_url` (payload formats 2.0 and 1.0,
  route templates, CORS, auth type ``NONE``/``AWS_IAM``).
- Every error is AWS's JSON error shape with ``x-amzn-ErrorType``.
- Security: SigV4 verified when ``auth`` credentials are given (required to bind beyond
  loopback); unsigned cross-origin browser requests refused; connections bounded
  (``max_connections``, ``header_timeout``, ``body_timeout``, ``keepalive_timeout``,
  ``send_timeout``).

Needs the ``http`` extra (aiohttp), kept out of the core: ``pip install 'fnrt[http]'``.
"""

from __future__ import annotations

import json
from types import TracebackType

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fnrt.http needs aiohttp: pip install 'fnrt[http]'") from exc

import asyncio
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from . import _observe, console
from ._http_errors import AwsError, errors_middleware, lambda_error
from ._http_guard import IDENTITY_KEY, ConnectionGuard, default_max_connections, security_middleware
from ._http_kinesis import KinesisApi
from ._http_lambda import API, API_PREFIXES, LambdaApi, function_configuration
from ._http_sigv4 import Verifier, load_credentials_file, parse_credentials
from ._http_urls import Cors, UrlRoute, UrlRouter, is_preflight, make_route
from ._runtime import SYNC_PAYLOAD_LIMIT, Runtime
from .errors import FnrtError, InvalidConfig, InvalidPayload, StreamNotFound

_ROUTER = web.AppKey("fnrt.urls", UrlRouter)


def add_url(
    server_or_app: InvokeServer | web.Application,
    function: str,
    *,
    path_prefix: str | None = None,
    payload_format: str = "2.0",
    route: str | None = None,
    methods: Iterable[str] | None = None,
    cors: Cors | Mapping[str, Any] | None = None,
    auth_type: str = "NONE",
    stage: str | None = None,
    stage_variables: Mapping[str, str] | None = None,
    runtime: Runtime | None = None,
) -> UrlRoute:
    """Serve ``function`` behind a URL: each request is an HTTP event, its result the response.

    ``path_prefix`` (default ``/<function>``) is where the URL lives on the server; the
    event's ``rawPath``/``path`` is the path under it, as a Function URL's is under its host.
    ``payload_format`` ``"2.0"`` (Function URLs, HTTP APIs) or ``"1.0"`` (REST APIs).
    ``route`` is an API Gateway route under the prefix: ``"$default"`` (2.0's default,
    everything), a template such as ``"/orders/{id}"`` or ``"/{proxy+}"`` (1.0's default),
    optionally with a method (``"GET /orders/{id}"``); several routes may share a prefix,
    the most specific one serves. ``cors`` takes a Function URL's CORS keys
    (``{"AllowOrigins": ["https://app.example"], "AllowMethods": ["GET"], ...}``) and
    answers preflight requests itself. ``auth_type`` ``"AWS_IAM"`` requires SigV4
    signatures, verified against ``InvokeServer(auth=...)`` (a server without credentials
    checks only that the request is signed, as its APIs accept any SDK's dummy keys) and
    the caller shows in ``requestContext.authorizer.iam``; ``"NONE"`` is open, as in AWS.
    ``stage`` and ``stage_variables`` (``{"env": "dev"}``) are an API Gateway stage's: its
    name in ``requestContext.stage`` (and a 1.0 event's ``requestContext.path``), its
    variables in ``stageVariables``.

    ``server_or_app`` is an :class:`InvokeServer` (at any time) or your own
    ``aiohttp.web.Application`` (before it starts; pass ``runtime=``).
    """
    if isinstance(server_or_app, InvokeServer):
        router = server_or_app.urls
    else:
        app = server_or_app
        if _ROUTER not in app:
            if runtime is None:
                raise InvalidConfig("add_url() on an aiohttp Application needs runtime=")
            app[_ROUTER] = UrlRouter(runtime)
        router = app[_ROUTER]
        prefix = (path_prefix or f"/{function}").rstrip("/")
        app.router.add_route("*", prefix + "/{tail:.*}", _app_handler)
        if prefix:
            app.router.add_route("*", prefix, _app_handler)
    router.runtime.get_function(function)  # FunctionNotFound now, not at the first request
    spec = make_route(
        function,
        path_prefix=path_prefix if path_prefix is not None else f"/{function}",
        payload_format=payload_format,
        route=route,
        methods=methods,
        auth_type=auth_type,
        cors=cors,
        stage=stage,
        stage_variables=stage_variables,
    )
    return router.add(spec)


async def _app_handler(request: web.Request) -> web.StreamResponse:
    router = request.app[_ROUTER]
    found = router.find(request)
    if not found:
        return router.unmatched(request)
    return await router.serve(request, found)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class InvokeServer:
    """An aiohttp server for a runtime, bound to loopback by default."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        host: str = "127.0.0.1",
        port: int = 9001,
        auth: Iterable[tuple[str, str] | str] | None = None,
        auth_file: str | None = None,
        max_connections: int | None = None,
        header_timeout: float = 10.0,
        keepalive_timeout: float = 15.0,
        send_timeout: float = 30.0,
        body_timeout: float = 30.0,
        kinesis_write_limits: bool = True,
    ) -> None:
        self.runtime = runtime
        self.host = host
        self.port = port
        credentials = parse_credentials(auth or [])
        if auth_file is not None:
            credentials.update(load_credentials_file(auth_file))
        if not credentials and not _is_loopback(host):
            raise InvalidConfig(
                f"refusing to serve on {host} without authentication: anyone who can reach it could "
                "run your functions. Pass auth=[(access_key, secret)] (--auth KEY:SECRET or "
                "--auth-file PATH), or bind 127.0.0.1"
            )
        if max_connections is None:
            max_connections = default_max_connections()
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise InvalidConfig(f"max_connections must be a positive integer, got {max_connections!r}")
        timeouts = (
            ("header_timeout", header_timeout),
            ("keepalive_timeout", keepalive_timeout),
            ("send_timeout", send_timeout),
            ("body_timeout", body_timeout),
        )
        for label, value in timeouts:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidConfig(f"{label} must be a positive number of seconds, got {value!r}")
        self.verifier = Verifier(credentials) if credentials else None
        self.max_connections = max_connections
        self.header_timeout = float(header_timeout)
        self.keepalive_timeout = float(keepalive_timeout)
        self.send_timeout = float(send_timeout)
        self.body_timeout = float(body_timeout)
        self.connections: ConnectionGuard | None = None
        self._server: asyncio.Server | None = None
        security = security_middleware(
            self.verifier, self._url_auth, runtime.config.account_id, lambda: self.connections, host
        )
        self.app = web.Application(
            client_max_size=SYNC_PAYLOAD_LIMIT * 2, middlewares=[errors_middleware, security]
        )
        LambdaApi(runtime).register(self.app)
        self.app.router.add_get("/fnrt/stats", self._stats)
        self.app.router.add_get("/fnrt/streams/{name}", self._describe_stream)
        self.app.router.add_post("/fnrt/streams/{name}/records", self._put_records)
        self.console = console.mount(self.app, runtime)  # the live console at /console/
        self._catch_all = self.app.router.add_route("*", "/{tail:.*}", self._dispatch).resource
        self.urls = UrlRouter(runtime)
        self.kinesis = KinesisApi(runtime, write_limits=kinesis_write_limits)
        self._auto_mounted: set[str] = set()
        #: Functions deployed after the start whose declared URL could not be mounted, and why.
        self.refused_urls: dict[str, str] = {}
        self._runner: web.AppRunner | None = None

    def add_url(self, function: str, **options: Any) -> UrlRoute:
        """:func:`add_url` on this server."""
        return add_url(self, function, **options)

    def _url_auth(self, request: web.Request) -> str | None:
        """The auth type of the function URL serving ``request``; ``None`` for the APIs."""
        path = request.path
        if path.startswith(API_PREFIXES):
            return None
        if "X-Amz-Target" in request.headers and path == "/":
            return None
        self._mount_declared_urls()
        found = self.urls.find(request)
        if found is False:  # under a URL, no route: its 404 (403 for REST) answers, nothing runs
            return "NONE"
        if found and found[0].cors is not None and is_preflight(request):
            return "NONE"  # the URL's CORS answers preflights (never signed), nothing runs
        return found[0].auth_type if found else None

    def _mount_declared_urls(self, *, strict: bool = False) -> None:
        """Mount the functions that ask for a URL (``@fnrt.handler(url=True)`` or
        ``url={...}`` options); checked as functions come and go.

        At start (``strict``) a URL that cannot be mounted (fnrt's own paths, a prefix
        taken) fails the start. A function deployed later with such a URL is refused its
        URL alone, once, with a warning (the server, its console and the other URLs keep
        serving); :attr:`refused_urls` says why."""
        functions = self.runtime.functions()
        if set(functions) == self._auto_mounted:
            return
        for name in self._auto_mounted - set(functions):
            self.urls.remove_function(name)
            self.refused_urls.pop(name, None)
        mounted = set(self._auto_mounted & set(functions))
        for name, record in functions.items():
            if name in mounted:
                continue
            declared = record.extra.get("url")
            mounted.add(name)
            if not declared:
                continue
            try:
                self.add_url(name, **(declared if isinstance(declared, Mapping) else {}))
            except InvalidConfig as exc:
                if strict:
                    raise
                self.refused_urls[name] = str(exc)
                _observe.logger().warning("function URL refused", function=name, error=str(exc))
        self._auto_mounted = mounted

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        """Everything the fixed routes do not take: Kinesis (routed by ``X-Amz-Target``
        as AWS's JSON protocol is), a function URL, or nothing."""
        if "X-Amz-Target" in request.headers and request.path == "/":
            return await self.kinesis.handle(request)
        self._mount_declared_urls()
        found = self.urls.find(request)
        if found is None:
            for resource in self.app.router.resources():
                if resource is not self._catch_all:
                    match, allowed = await resource.resolve(request)
                    if match is None and allowed:  # the path exists, with other methods
                        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
            raise web.HTTPNotFound()
        if found is False:
            return self.urls.unmatched(request)
        return await self.urls.serve(request, found, request.get(IDENTITY_KEY))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._mount_declared_urls(strict=True)
        # Stopping does not wait for handlers: the CLI's grace period does that, and a
        # closing runtime ends what is left at once (their callers get an error response).
        self._runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.keepalive_timeout, shutdown_timeout=2.0
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self.connections = ConnectionGuard(
            self._runner.server,
            max_connections=self.max_connections,
            header_timeout=self.header_timeout,
            send_timeout=self.send_timeout,
            body_timeout=self.body_timeout,
            clock=self.runtime.clock,
        )
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self.connections, self.host, self.port, backlog=128, reuse_address=True
            )
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise InvalidConfig(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        if self.port == 0:  # an ephemeral port: report the one the OS chose
            self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if server is not None:
            for conn in list(self.connections.open if self.connections else ()):
                if conn.transport is not None:
                    conn.transport.abort()
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except TimeoutError:
                pass

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
        if rt.shares_store:  # the hosts sharing this host's store; a temporary one has none
            try:
                stats["cluster"] = await rt.cluster_stats()
            except FnrtError as exc:
                stats["cluster"] = {"error": f"{type(exc).__name__}: {exc}"}
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
                    "OnFailureRecords": await m.failure_count(),
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


__all__ = ["API", "Cors", "InvokeServer", "UrlRoute", "add_url", "function_configuration", "lambda_error"]
