"""``python -m fnrt``: serve functions over Lambda's Invoke API, and talk to a running server.

``serve`` hosts a runtime; ``invoke``, ``list``, ``stats`` and ``streams`` are clients of a
running server (``--endpoint``, default ``$FNRT_ENDPOINT`` or http://127.0.0.1:9001), using
only the standard library. Errors print one line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._loop import LOOPS, loop_name, run
from .sandbox import KINDS

if TYPE_CHECKING:
    from ._runtime import Runtime

DEFAULT_ENDPOINT = "http://127.0.0.1:9001"
EXIT_FUNCTION_ERROR = 1
EXIT_REQUEST_ERROR = 2


class CliError(Exception):
    """A one-line message for the user; exit code 2."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- serve ----------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    import logging

    try:
        from . import http  # noqa: F401 - checked first: the core install has no aiohttp
    except ImportError as exc:  # say what to install
        raise CliError("'serve' needs aiohttp, not in the core install: pip install 'fnrt[http]'") from exc

    _configure_logging(logging.INFO if args.verbose else logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    phase = {"serving": False}

    def on_signal() -> None:
        stop.set()
        if not phase["serving"] and main is not None:  # still starting: stop that now
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await _serve_until_stopped(args, stop, phase)
    except asyncio.CancelledError:
        if not stop.is_set() or main is None:
            raise
        main.uncancel()
        _progress("stopped before serving (the runtime closed what it had started)")
        return 0


def _function_name(rt: Runtime, ref: str) -> str:
    """The name of the function ``ref`` names (a name, partial or full ARN); ``ref`` itself
    when none is registered (adding the mapping then says so)."""
    from .errors import FunctionNotFound

    try:
        return rt.get_function(ref).name
    except FunctionNotFound:
        return ref


async def _serve_until_stopped(
    args: argparse.Namespace, stop: asyncio.Event, phase: dict[str, bool]
) -> int:
    """Start the runtime and the server, serve until ``stop``, drain and close."""
    from . import Runtime
    from .http import InvokeServer

    if args.state and args.state_dir:
        raise CliError("give --state or --state-dir (the same thing), not both")
    async with Runtime(
        concurrency_limit=args.concurrency_limit,
        sandbox=args.sandbox,
        store=args.state or args.state_dir,
        reload=args.reload,
    ) as rt:
        for module in args.modules:
            _progress(f"deploying {module} ...")
            names = await rt.deploy(module)
            _progress(f"  {module}: {', '.join(names)}")
        for spec in args.stream or []:
            name, _, shards = spec.partition(":")
            if shards and not shards.isdecimal():
                raise CliError(f"--stream {spec!r}: the shard count must be a number (NAME[:SHARDS])")
            stream = await rt.create_stream(name, shard_count=int(shards or 1))
            _progress(f"stream {stream.name}: {len(await stream.shards())} shard(s)")
        # The mappings stored before (a restart; or another host's, on a shared store) of the
        # functions deployed here go on from their checkpoints, as Lambda's outlive a restart.
        for mapping in await rt.resume_stream_mappings():
            _progress(f"mapping {mapping.stream.name} -> {mapping.function} ({mapping.uuid}, resumed)")
        resumed = {(m.stream.name, m.function) for m in rt.stream_mappings()}
        for spec in args.mapping or []:
            stream_name, sep, function = spec.partition("=")
            if not sep:
                raise CliError(f"--mapping takes STREAM=FUNCTION, got {spec!r}")
            # the mapping resumed under the function's name, whatever the spec calls it (an
            # ARN, a partial ARN): the same mapping, not a second one
            if (stream_name, _function_name(rt, function)) in resumed:
                continue
            mapping = await rt.add_stream_mapping(stream_name, function)
            _progress(f"mapping {stream_name} -> {function} ({mapping.uuid})")
        async with InvokeServer(
            rt, host=args.host, port=args.port, auth=args.auth, auth_file=args.auth_file,
            max_connections=args.max_connections,
        ) as server:
            rt.host_info["url"] = server.url
            if server.verifier is not None:
                _progress(f"SigV4 authentication on: {len(server.verifier.credentials)} access key(s)")
            for spec in args.url or []:
                function, prefix, payload_format = _url_spec(spec)
                server.add_url(function, path_prefix=prefix, payload_format=payload_format)
            for route in server.urls.routes:  # --url's, and those the handlers declare
                _progress(f"url {route.function}: {server.url}{route.path_prefix}/  "
                          f"(payload format {route.payload_format})")
            _progress(f"listening on {server.url}  (event loop: {loop_name()}; Ctrl-C to stop)")
            _progress(f"  console: {server.url}/console/")
            _progress(f"  try: python -m fnrt invoke {next(iter(rt.functions()), 'NAME')} '{{}}' "
                      f"--endpoint {server.url}")
            phase["serving"] = True
            await stop.wait()
            await _drain(rt, stop, args.grace)
            _progress("stopping: closing sandboxes ...")
            await rt.aclose()  # what still runs ends now; the server then closes at once
    _progress("stopped")
    return 0


async def _drain(rt: Any, stop: asyncio.Event, grace: float) -> None:
    """After the first Ctrl-C/SIGTERM: let invocations in flight finish, for at most
    ``grace`` seconds, saying what is waited for; a second signal stops at once."""
    in_flight = rt.stats()["concurrency"]["in_flight"]
    if not in_flight or grace <= 0:
        return
    _progress(
        f"stopping: waiting up to {grace:g} s for {in_flight} invocation(s) in flight "
        "(Ctrl-C again to stop now) ..."
    )
    stop.clear()  # the signal handlers set it again on the next signal
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while rt.stats()["concurrency"]["in_flight"] and not stop.is_set() and loop.time() < deadline:
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass
    if stop.is_set():
        _progress("stopping now")
    elif rt.stats()["concurrency"]["in_flight"]:
        _progress(f"grace period over: {rt.stats()['concurrency']['in_flight']} invocation(s) cut off")


def _url_spec(spec: str) -> tuple[str, str | None, str]:
    """``--url FUNCTION[=PREFIX][@FORMAT]``: ``api``, ``api=/``, ``rest@1.0``, ``rest=/v1@1.0``."""
    rest, _, payload_format = spec.partition("@")
    function, sep, prefix = rest.partition("=")
    if not function or (sep and not prefix.startswith("/")) or payload_format not in ("", "1.0", "2.0"):
        raise CliError(f"--url takes FUNCTION[=/PREFIX][@1.0|@2.0], got {spec!r}")
    return function, prefix or None, payload_format or "2.0"


# -- the client commands --------------------------------------------------------------


def _port(value: str) -> int:
    """A TCP port, 0 (any free one) to 65535: argparse's error otherwise, not a traceback."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def _seconds(value: str) -> float:
    """A duration in seconds, 0 or more (``inf``: no limit): argparse's error otherwise."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds >= 0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{value} is not a number of seconds (0 or more)")
    return seconds


def _request(
    endpoint: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    url = endpoint.rstrip("/") + path
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - a malformed endpoint fails here
    except ValueError as exc:  # a bad port, an unclosed [
        raise CliError(f"--endpoint {endpoint!r} is not a URL: {exc}") from None
    headers = dict(headers or {})
    credentials = _client_credentials()
    if credentials is not None:  # sign as boto3 does: a server started with --auth checks it
        from ._http_sigv4 import sign_headers

        headers.update(sign_headers(method, url, headers, body or b"", *credentials))
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=930) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        hint = "is 'python -m fnrt serve' running?"
        raise CliError(f"cannot reach fnrt at {endpoint}: {reason} ({hint})") from None
    except http.client.HTTPException as exc:  # something answered, but not HTTP
        raise CliError(f"{endpoint} did not answer as fnrt does ({type(exc).__name__})") from None


def _client_credentials() -> tuple[str, str] | None:
    """``$FNRT_AUTH`` (``KEY:SECRET``), else ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``."""
    spec = os.environ.get("FNRT_AUTH")
    if spec:
        key, sep, secret = spec.partition(":")
        if not sep or not key or not secret:
            raise CliError("FNRT_AUTH must be ACCESS_KEY:SECRET")
        return key, secret
    env_key, env_secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return (env_key, env_secret) if env_key and env_secret else None


def _api_error(status: int, headers: dict[str, str], body: bytes) -> CliError:
    kind = next((v for k, v in headers.items() if k.lower() == "x-amzn-errortype"), f"HTTP {status}")
    try:
        detail = json.loads(body)
        message = detail.get("message") or detail.get("Message") or ""  # as the model spells it
        if detail.get("Reason"):
            message += f" ({detail['Reason']})"
    except ValueError:
        message = body.decode(errors="replace")[:200]
    return CliError(f"{kind}: {message}")


def _read_payload(arg: str | None) -> bytes:
    if arg is None:
        return b"{}"
    text = sys.stdin.read() if arg == "-" else arg
    try:
        json.loads(text or "{}")
    except ValueError as exc:
        raise CliError(f"the payload is not JSON: {exc}") from None
    return text.encode()


def _invoke(args: argparse.Namespace) -> int:
    payload = _read_payload(args.payload)
    if args.module:
        return run(_invoke_local(args, payload), loop=args.loop)
    headers = {"X-Amz-Invocation-Type": args.type, "Content-Type": "application/json"}
    if args.log:
        headers["X-Amz-Log-Type"] = "Tail"
    name = urllib.parse.quote(args.name, safe="")
    status, resp_headers, body = _request(
        args.endpoint, "POST", f"/2015-03-31/functions/{name}/invocations", payload, headers
    )
    if status >= 400:
        raise _api_error(status, resp_headers, body)
    lower = {k.lower(): v for k, v in resp_headers.items()}
    if args.log and "x-amz-log-result" in lower:
        import base64

        sys.stderr.write(base64.b64decode(lower["x-amz-log-result"]).decode(errors="replace"))
    if status == 202:
        print(json.dumps({"StatusCode": 202, "RequestId": lower.get("x-amzn-requestid")}))
        return 0
    if status == 204:
        print(json.dumps({"StatusCode": 204}))
        return 0
    print(body.decode())
    return EXIT_FUNCTION_ERROR if "x-amz-function-error" in lower else 0


def _configure_logging(level: int) -> None:
    """structlog's console output, at ``level``, with plain tracebacks: its default renders
    them with rich when rich is installed, locals included, and that takes seconds of the
    event loop per traceback (a store outage logs one per retry)."""
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ],
    )


async def _invoke_local(args: argparse.Namespace, payload: bytes) -> int:
    import logging

    from . import Runtime

    _configure_logging(logging.WARNING)
    async with Runtime(sandbox=args.sandbox) as rt:
        for module in args.module:
            await rt.deploy(module)
        result = await rt.invoke_detailed(args.name, payload, args.type)
        if args.type == "Event":  # in-process: the event runs before the runtime closes
            await rt.wait_idle()
    if args.log:
        sys.stderr.write(result.log)
    if result.status_code != 200:
        print(json.dumps({"StatusCode": result.status_code, "RequestId": result.request_id}))
        return 0
    # The result's own bytes, as the endpoint returns them (re-encoding would lose what
    # only the bytes hold: a Decimal's digits); a function error is Lambda's error body.
    print(json.dumps(result.payload) if result.error is not None else result.raw.decode())
    return EXIT_FUNCTION_ERROR if result.error is not None else 0


def _get_json(endpoint: str, path: str) -> Any:
    status, headers, body = _request(endpoint, "GET", path)
    if status >= 400:
        raise _api_error(status, headers, body)
    return json.loads(body)


def _list(args: argparse.Namespace) -> int:
    page = _get_json(args.endpoint, "/2015-03-31/functions/")
    functions = page["Functions"]
    while page.get("NextMarker"):  # ListFunctions answers 50 a page, as Lambda does
        marker = urllib.parse.quote(page["NextMarker"], safe="")
        page = _get_json(args.endpoint, f"/2015-03-31/functions/?Marker={marker}")
        functions += page["Functions"]
    if args.json:
        print(json.dumps(functions, indent=2))
        return 0
    rows = [("NAME", "HANDLER", "TIMEOUT", "MEMORY", "RESERVED", "SANDBOX")]
    for f in functions:
        rows.append(
            (
                f["FunctionName"],
                f["Handler"],
                f"{f['Timeout']:g}s",
                f"{f['MemorySize']} MB",
                str(f.get("Fnrt", {}).get("ReservedConcurrentExecutions", "-")),
                f.get("Fnrt", {}).get("Sandbox", "subprocess"),
            )
        )
    _table(rows)
    return 0


def _stats(args: argparse.Namespace) -> int:
    stats = _get_json(args.endpoint, "/fnrt/stats")
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    c = stats["concurrency"]
    print(
        f"concurrency: {c['in_flight']} in flight of {c['limit']} "
        f"(reserved {c['reserved_total']}, unreserved available {c['unreserved_available']}), "
        f"throttles {c['throttles']}"
    )
    rows = [("FUNCTION", "INVOCATIONS", "ERRORS", "THROTTLES", "IN FLIGHT", "WARM", "BUSY", "COLD STARTS")]
    for name, f in stats["functions"].items():
        rows.append(
            (
                name,
                str(f["invocations"]),
                str(f["errors"]),
                str(f["throttles"]),
                str(f["in_flight"]),
                str(f["warm"]),
                str(f["busy"]),
                str(f["cold_starts"]),
            )
        )
    _table(rows)
    for section in ("async", "streams"):
        if stats.get(section):
            print(f"{section}: {json.dumps(stats[section])}")
    _print_cluster(stats.get("cluster"))
    return 0


def _print_cluster(cluster: Any) -> None:
    """The hosts sharing the store, the shard leases per host, the queue depth."""
    if not isinstance(cluster, dict):
        return
    if "error" in cluster:
        print(f"cluster: {cluster['error']}")
        return
    hosts = cluster.get("hosts", [])
    store = cluster.get("store", {})
    print(f"cluster: {len(hosts)} host(s) alive on {store.get('backend', '?')} {store.get('location', '')}")
    leases: dict[str, int] = {}
    for mapping in cluster.get("streams", {}).values():
        for host, n in mapping.get("leases_per_host", {}).items():
            leases[host] = leases.get(host, 0) + n
    in_flight = cluster.get("in_flight")
    rows = [("HOST", "URL", "SHARD LEASES", "LAST SEEN")]  # a dead host stays for its TTL
    for host in hosts:
        info = host.get("info", {})
        me = " (this host)" if host["host"] == cluster.get("host") else ""
        rows.append((host["host"] + me, str(info.get("url", "-")), str(leases.get(host["host"], 0)),
                     f"{host.get('seen_ago', 0):.1f} s ago"))
    _table(rows)
    for uuid, mapping in cluster.get("streams", {}).items():
        per_host = sorted(mapping.get("leases_per_host", {}).items())
        spread = ", ".join(f"{h}: {n}" for h, n in per_host) or "none"
        print(f"mapping {mapping['stream']} -> {mapping['function']} ({uuid}): shard leases {spread}")
    total = cluster.get("queue", {}).get("total", {})
    print("queue: " + (", ".join(f"{k} {v}" for k, v in sorted(total.items())) or "empty"))
    if in_flight is not None:
        running = ", ".join(f"{k} {v}" for k, v in sorted(in_flight.items()))
        print("in flight (cluster): " + (running or "none"))


def _streams(args: argparse.Namespace) -> int:
    name = urllib.parse.quote(args.stream, safe="")
    if args.action == "describe":
        info = _get_json(args.endpoint, f"/fnrt/streams/{name}")
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(f"{info['StreamName']}  {info['StreamARN']}")
        rows = [("SHARD", "PARENTS", "STATE", "HASH KEYS FROM", "TO")]
        for shard in info["Shards"]:
            parent_ids = (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
            parents = ",".join(p for p in parent_ids if p)
            state = "closed" if shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber") else "open"
            keys = shard.get("HashKeyRange", {})
            rows.append((shard["ShardId"], parents or "-", state,
                         str(keys.get("StartingHashKey", "")), str(keys.get("EndingHashKey", ""))))
        _table(rows)
        for m in info["Mappings"]:
            age = m["IteratorAgeMs"].get("max")
            print(f"mapping {m['UUID']} -> {m['FunctionName']}: batch {m['BatchSize']}, "
                  f"on-failure records {m['OnFailureRecords']}, iterator age max "
                  f"{'-' if age is None else f'{age:.0f} ms'}")
            for shard_id, seq in m["Checkpoints"].items():
                print(f"  checkpoint {shard_id}: {seq or '(none yet)'}")
        return 0
    if args.data is None or args.partition_key is None:
        raise CliError("streams put needs DATA and --partition-key")
    data = sys.stdin.read() if args.data == "-" else args.data
    body = json.dumps({"Records": [{"Data": data, "PartitionKey": args.partition_key}]}).encode()
    status, headers, resp = _request(
        args.endpoint, "POST", f"/fnrt/streams/{name}/records", body, {"Content-Type": "application/json"}
    )
    if status >= 400:
        raise _api_error(status, headers, resp)
    [placed] = json.loads(resp)["Records"]
    print(json.dumps(placed))
    return 0


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# -- entry point ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    endpoint = os.environ.get("FNRT_ENDPOINT", DEFAULT_ENDPOINT)
    parser = argparse.ArgumentParser(
        prog="python -m fnrt", description="Run Lambda-style handlers locally, with Lambda's semantics."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="host handler modules behind Lambda's Invoke API on loopback")
    serve.add_argument("modules", nargs="+", metavar="MODULE", help="handler modules, e.g. handlers.echo")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=9001)
    serve.add_argument(
        "--state",
        default=None,
        metavar="DIR|URL",
        help="keep queues and streams here across restarts: a directory (SQLite) or a "
        "postgresql:// URL (many hosts, one database; pip install 'fnrt[postgres]')",
    )
    serve.add_argument("--state-dir", default=None, help=argparse.SUPPRESS)  # the older name of --state
    serve.add_argument("--concurrency-limit", type=int, default=1000)
    serve.add_argument("--sandbox", default="subprocess", choices=list(KINDS))
    serve.add_argument("--stream", action="append", metavar="NAME[:SHARDS]", help="create a stream")
    serve.add_argument(
        "--mapping", action="append", metavar="STREAM=FUNCTION", help="map a stream to a function"
    )
    serve.add_argument(
        "--url",
        action="append",
        metavar="FUNCTION[=/PREFIX][@FORMAT]",
        help="serve FUNCTION behind a URL (default prefix /FUNCTION, payload format 2.0; "
        "@1.0 for API Gateway REST events)",
    )
    serve.add_argument(
        "--auth",
        action="append",
        metavar="KEY:SECRET",
        help="require AWS SigV4 signatures made with this access key and secret (repeatable); "
        "required to bind beyond loopback",
    )
    serve.add_argument(
        "--auth-file",
        metavar="PATH",
        help="credentials to accept: KEY:SECRET lines, or an AWS shared-credentials file",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open HTTP connections at most (default: a quarter of the open-file limit, 64-4096)",
    )
    serve.add_argument(
        "--grace",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="on Ctrl-C/SIGTERM, let invocations in flight finish for this long (a second signal stops now)",
    )
    serve.add_argument(
        "--reload",
        action="store_true",
        help="load changed handler code into new sandboxes without a restart (pip install 'fnrt[reload]')",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every invocation")
    serve.add_argument(
        "--loop",
        default="auto",
        choices=LOOPS,
        help="event loop: auto (uvloop when installed: pip install 'fnrt[uvloop]'), uvloop, asyncio",
    )
    serve.set_defaults(run=lambda a: run(_serve(a), loop=a.loop))

    invoke = sub.add_parser("invoke", help="invoke a function and print its result")
    invoke.add_argument("name", help="function name or ARN")
    invoke.add_argument("payload", nargs="?", help="JSON event, or - to read it from stdin (default {})")
    invoke.add_argument("--type", default="RequestResponse", choices=["RequestResponse", "Event", "DryRun"])
    invoke.add_argument("--log", action="store_true", help="print the invocation's log tail to stderr")
    invoke.add_argument("--endpoint", default=endpoint)
    invoke.add_argument(
        "--module", action="append", help="run in-process instead: deploy this module first (repeatable)"
    )
    invoke.add_argument("--sandbox", default="subprocess", choices=list(KINDS))
    invoke.add_argument("--loop", default="auto", choices=LOOPS, help="with --module: the event loop")
    invoke.set_defaults(run=_invoke)

    list_ = sub.add_parser("list", help="functions and their config")
    list_.add_argument("--endpoint", default=endpoint)
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(run=_list)

    stats = sub.add_parser("stats", help="metrics, concurrency, warm sandboxes, queues and streams")
    stats.add_argument("--endpoint", default=endpoint)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(run=_stats)

    streams = sub.add_parser("streams", help="put records into a stream, or describe it")
    streams.add_argument("action", choices=["put", "describe"])
    streams.add_argument("stream", help="stream name")
    streams.add_argument("data", nargs="?", help="put: the record's data (- reads stdin)")
    streams.add_argument("--partition-key", help="put: the record's partition key")
    streams.add_argument("--endpoint", default=endpoint)
    streams.add_argument("--json", action="store_true")
    streams.set_defaults(run=_streams)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import FnrtError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (CliError, FnrtError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REQUEST_ERROR
    except KeyboardInterrupt:
        return 130
