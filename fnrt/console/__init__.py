"""The live console: a web page over a runtime's functions, sandboxes, queues and streams.

``fnrt.http.InvokeServer`` mounts it, so ``python -m fnrt serve`` serves it at
``http://127.0.0.1:9001/console/``; an aiohttp application of your own mounts it with
``fnrt.console.mount(app, runtime)``. It rides on the server's bind (loopback by default)
and is read-only except for its invoke form. Needs the ``http`` extra (aiohttp).

On a loopback socket it answers only requests addressed to a loopback name (a DNS-rebinding
page cannot read it), its invoke API takes only ``application/json`` (which a cross-site
form cannot send) and its plain form refuses cross-origin posts.

The page is server-rendered HTML (it works without JavaScript); a small script keeps it
live over server-sent events and draws the charts with uPlot (vendored under ``static/``:
nothing is fetched from the network).

JSON API (every response is JSON; times are seconds since the epoch unless named ``time``):

``GET /console/api/overview``
    ``host``, ``concurrency`` (limit, in flight, reserved, unreserved pool, throttles,
    ``throttles_by_reason``), ``functions`` (config, warm/busy/starting sandboxes, cold
    starts, in flight, invocations, errors, throttles, timeouts, p50/p99 duration ms,
    ``throttles_by_reason``, ``sandboxes``: each busy or warm one with its ``age_s``,
    ``idle_s`` and invocations) and ``recent_seq`` (grows with every finished invocation).
``GET /console/api/series``
    ``interval`` and ``points``: the last minutes, one point a sample with ``t``,
    ``in_flight``, ``throttles``, ``functions.{name}.{invocations, errors, throttles,
    timeouts, cold_starts, p50_ms, p99_ms, in_flight, warm, busy}`` (counts are per sample)
    and ``iterator_age_ms.{mapping uuid}`` (the mean over batches read in the sample).
``GET /console/api/invocations?function=&outcome=&limit=``
    ``invocations``: the recent ones, newest first; ``outcome`` is ``success``, ``error`` or
    ``timeout``; ``limit`` 1-1000 (default 100).
``GET /console/api/invocations/{request_id}``
    One invocation: outcome, cold/warm, sandbox, ``report`` (duration, billed duration,
    memory size, max memory used, init duration, the REPORT line), ``payload`` and
    ``result`` (text, cut to 4 KB, with their sizes and ``*_truncated``) and ``log``.
    404 once it has left the ring.
``GET /console/api/queues``
    ``open`` (whether the async queue is open), ``functions`` (events by state, event age
    p50/max ms, the async config) and ``sinks`` (each durable sink's count and newest records).
``GET /console/api/streams``
    ``streams``: each stream with a mapping, its ``shards`` (Kinesis' shape: hash-key range,
    parents) and ``mappings`` (checkpoints, shards owned, iterator age, bisects, records
    skipped, on-failure records).
``GET /console/api/cluster``
    ``shared`` (whether this host runs on a durable store others may share) and, if so,
    ``hosts`` alive (id, info, last heartbeat), ``streams`` (each mapping's shard leases
    per host), ``queue`` depth over all hosts and ``in_flight`` per function cluster-wide.
``GET /console/api/events``
    Server-sent events: one ``tick`` event a sample with ``overview``, ``queues``,
    ``streams``, ``cluster``, ``point`` (the newest series point) and ``html`` (the page's sections).
    ``?function=&outcome=`` filter its recent-invocations section.
``POST /console/api/invoke``
    Body ``{"function": "echo", "payload": {...}, "invocation_type": "RequestResponse"}``
    (``Content-Type: application/json``; ``Event`` queues it). Answers ``request_id``,
    ``status_code``, ``function_error``, ``result`` (text, cut to 4 KB) and ``log`` (its
    tail), or ``{"error": ..., "error_type": ...}`` with Lambda's status code.

The recent invocations come from :class:`fnrt._recent.RecentInvocations` (``Runtime.recent``):
bounded by count and by bytes, no payload kept beyond 4 KB.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fnrt.console needs aiohttp: pip install 'fnrt[http]'") from exc

from .. import _observe
from .._recent import FIELD_LIMIT, OUTCOMES
from ..errors import (
    FnrtError,
    FunctionNotFound,
    InvalidConfig,
    InvalidPayload,
    PayloadTooLarge,
    TooManyRequests,
)
from . import _data, _html
from ._series import Series

if TYPE_CHECKING:
    from .._runtime import Runtime

STATIC = Path(__file__).parent / "static"
SECTIONS = ("host", "functions", "concurrency", "queues", "streams", "cluster")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SUBSCRIBER_BACKLOG = 4  # ticks a slow event-stream client may fall behind before it skips


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=_dumps)


def _cut(data: bytes, limit: int = FIELD_LIMIT) -> tuple[str, bool]:
    return data[:limit].decode(errors="replace"), len(data) > limit


class Console:
    """The console of one runtime: its time series, its event-stream clients, its pages."""

    def __init__(
        self, runtime: Runtime, *, interval: float = 1.0, now: Callable[[], float] = time.time
    ) -> None:
        self.runtime = runtime
        self.interval = interval
        self.now = now
        self.started = now()
        self.series = Series()
        self.finished = _data.FinishedCounts()
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._log = _observe.logger().bind(component="console")

    # -- lifecycle (the aiohttp app's signals) -----------------------------------------

    async def _on_startup(self, app: web.Application) -> None:
        self._task = asyncio.ensure_future(self._sample_forever())

    async def _on_shutdown(self, app: web.Application) -> None:
        for queue in list(self._subscribers):  # event streams end, so the server can stop
            self._offer(queue, None)

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # a bad sample must not end the console
                self._log.warning("console sample failed", error=repr(exc))
            await asyncio.sleep(self.interval)

    # -- data ----------------------------------------------------------------------------

    async def tick(self) -> dict[str, Any]:
        """Take a series point; if anyone listens, send them everything with it."""
        point = self.series.sample(self.runtime, self.now())
        if not self._subscribers:
            return {"point": point}
        state = await self.state()
        state["point"] = point
        for queue in list(self._subscribers):
            self._offer(queue, state)
        return state

    @staticmethod
    def _offer(queue: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
        if queue.full():
            queue.get_nowait()  # a slow client skips a tick rather than grow a backlog
        queue.put_nowait(item)

    async def state(self) -> dict[str, Any]:
        rt = self.runtime
        overview = _data.overview(rt, self.started)
        cluster = await _data.cluster(rt)
        try:
            queues = await _data.queues(rt, self.finished)
            streams = await _data.streams(rt)
        except FnrtError as exc:  # e.g. the state store is unavailable: say so, keep serving
            self._log.warning("console could not read the state", error=str(exc))
            queues, streams = (
                {"open": False, "functions": [], "sinks": [], "error": str(exc)},
                {"streams": []},
            )
        html = {
            "host": _html.host(overview),
            "functions": _html.functions(overview),
            "concurrency": _html.concurrency(overview),
            "queues": _html.queues(queues),
            "streams": _html.streams(streams),
            "cluster": _html.cluster(cluster),
        }
        return {"overview": overview, "queues": queues, "streams": streams, "cluster": cluster, "html": html}

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)

    # -- handlers: pages ----------------------------------------------------------------

    def _filter(self, request: web.Request, *, api: bool = False) -> tuple[str | None, str | None]:
        function = request.query.get("function") or None
        outcome = request.query.get("outcome") or None
        if outcome is not None and outcome not in OUTCOMES:
            message = f"outcome must be one of {', '.join(OUTCOMES)}"
            if api:
                raise web.HTTPBadRequest(text=_dumps({"error": message}), content_type="application/json")
            raise web.HTTPBadRequest(text=message)
        return function, outcome

    async def _index(self, request: web.Request) -> web.Response:
        return await self._render_index(request, None)

    async def _render_index(
        self, request: web.Request, invoked: dict[str, Any] | None, form: dict[str, str] | None = None
    ) -> web.Response:
        function, outcome = self._filter(request)
        state = await self.state()
        names = sorted(self.runtime.functions())
        entries = self.runtime.recent.select(function, outcome)
        html = state["html"]
        form = form or {}

        def section(key: str, title: str, inner: str, extra: str = "") -> str:
            return (
                f'<section id="{key}" aria-labelledby="h-{key}"><h2 id="h-{key}">{title}</h2>{extra}'
                f'<div id="sec-{key}">{inner}</div></section>'
            )

        charts = (
            '<div id="charts" class="charts"><noscript><p>The charts need JavaScript; '
            "the tables show the totals.</p></noscript></div>"
        )
        body = (
            '<a class="skip" href="#main">Skip to content</a>'
            '<header><h1>fnrt console</h1><nav aria-label="Sections"><ul>'
            + "".join(
                f'<li><a href="#{k}">{t}</a></li>'
                for k, t in (
                    ("functions", "Functions"),
                    ("concurrency", "Concurrency"),
                    ("recent", "Recent invocations"),
                    ("queues", "Async queue"),
                    ("streams", "Streams"),
                    ("invoke", "Invoke"),
                    ("cluster", "Cluster"),
                    ("host", "This host"),
                )
            )
            + '</ul></nav><p id="live-status" role="status">Showing the state at load time '
            '(live updates need JavaScript).</p></header><main id="main">'
            + section("functions", "Functions", html["functions"], "")
            + '<section id="charts-section" aria-labelledby="h-charts"><h2 id="h-charts">Last minutes</h2>'
            + charts
            + "</section>"
            + section("concurrency", "Concurrency", html["concurrency"])
            + section(
                "recent",
                "Recent invocations",
                _html.recent(entries),
                _html.recent_filter(names, function, outcome),
            )
            + section("queues", "Async queue", html["queues"])
            + section("streams", "Streams", html["streams"])
            + '<section id="invoke" aria-labelledby="h-invoke"><h2 id="h-invoke">Invoke</h2>'
            + _html.invoke_form(names, form.get("function"), form.get("payload", "{}"))
            + f'<div id="invoke-result" aria-live="polite">{_html.invoke_result(invoked)}</div></section>'
            + section("cluster", "Cluster", html["cluster"])
            + section("host", "This host", html["host"])
            + "</main>"
        )
        return web.Response(text=_html.page("fnrt console", body), content_type="text/html")

    async def _detail_page(self, request: web.Request) -> web.Response:
        entry = self.runtime.recent.get(request.match_info["request_id"])
        back = f'<p><a href="{_html.BASE}/#recent">Back to the console</a></p>'
        if entry is None:
            body = (
                f"<main><h1>Invocation not found</h1><p>{_html._e(request.match_info['request_id'])} "
                f"is not among the recent invocations (the ring keeps the newest).</p>{back}</main>"
            )
            return web.Response(
                status=404, text=_html.page("not found", body, script=False), content_type="text/html"
            )
        title = f"<h1>Invocation {_html._e(entry.request_id)}</h1>"
        body = f"<main>{title}{back}{_html.detail(entry.detail())}</main>"
        return web.Response(
            text=_html.page(f"invocation {entry.request_id}", body, script=False), content_type="text/html"
        )

    async def _invoke_form(self, request: web.Request) -> web.Response:
        """The invoke form without JavaScript: a plain form POST, answered with the page."""
        _check_same_origin(request)
        form = await request.post()
        fields = {k: str(form.get(k, "")) for k in ("function", "payload", "invocation_type")}
        try:
            payload = json.loads(fields["payload"] or "{}")
        except ValueError as exc:
            result, status = {"error": f"the payload is not JSON: {exc}", "error_type": "InvalidPayload"}, 400
        else:
            result, status = await self._do_invoke(
                fields["function"], payload, fields["invocation_type"] or "RequestResponse"
            )
        response = await self._render_index(request, result, fields)
        response.set_status(status)
        return response

    # -- handlers: the JSON API -----------------------------------------------------------

    async def _api_overview(self, request: web.Request) -> web.Response:
        return _json(_data.overview(self.runtime, self.started))

    async def _api_series(self, request: web.Request) -> web.Response:
        return _json({"interval": self.interval, "points": self.series.history()})

    async def _api_invocations(self, request: web.Request) -> web.Response:
        function, outcome = self._filter(request, api=True)
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _json({"error": "limit must be a whole number 1-1000"}, 400)
        entries = self.runtime.recent.select(function, outcome, limit)
        return _json({"invocations": [e.summary() for e in entries]})

    async def _api_invocation(self, request: web.Request) -> web.Response:
        rid = request.match_info["request_id"]
        entry = self.runtime.recent.get(rid)
        if entry is None:
            return _json({"error": f"no recent invocation {rid}"}, 404)
        return _json(entry.detail())

    async def _api_queues(self, request: web.Request) -> web.Response:
        return _json(await _data.queues(self.runtime))

    async def _api_streams(self, request: web.Request) -> web.Response:
        return _json(await _data.streams(self.runtime))

    async def _api_cluster(self, request: web.Request) -> web.Response:
        return _json(await _data.cluster(self.runtime))

    async def _api_invoke(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":  # a cross-site form cannot send this
            return _json({"error": "Content-Type must be application/json"}, 415)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return _json(
                {"error": 'body must be {"function": ..., "payload": ..., "invocation_type": ...}'}, 400
            )
        result, status = await self._do_invoke(
            body.get("function"), body.get("payload"), body.get("invocation_type", "RequestResponse")
        )
        return _json(result, status)

    async def _do_invoke(
        self, function: Any, payload: Any, invocation_type: Any
    ) -> tuple[dict[str, Any], int]:
        if not isinstance(function, str) or not function:
            return {"error": "function must be a function name", "error_type": "InvalidParameterValue"}, 400
        if invocation_type not in ("RequestResponse", "Event"):
            return {
                "error": "invocation_type must be RequestResponse or Event",
                "error_type": "InvalidParameterValue",
            }, 400
        try:
            result = await self.runtime.invoke_detailed(function, payload, invocation_type)
        except FunctionNotFound as exc:
            return {"error": str(exc), "error_type": "ResourceNotFound"}, 404
        except TooManyRequests as exc:
            return {"error": f"{exc.message} ({exc.reason})", "error_type": "TooManyRequests"}, 429
        except PayloadTooLarge as exc:
            return {"error": str(exc), "error_type": "RequestTooLarge"}, 413
        except (InvalidPayload, InvalidConfig) as exc:
            return {"error": str(exc), "error_type": type(exc).__name__}, 400
        except FnrtError as exc:
            return {"error": str(exc), "error_type": "ServiceException"}, 500
        out: dict[str, Any] = {
            "request_id": result.request_id,
            "function": result.function_name,
            "invocation_type": invocation_type,
            "status_code": result.status_code,
            "function_error": result.function_error,
            "result": None,
            "result_truncated": False,
            "log": None,
        }
        if result.status_code == 200:
            raw = result.raw if result.error is None else json.dumps(result.error.to_lambda()).encode()
            out["result"], out["result_truncated"] = _cut(raw or b"null")
            out["log"] = _observe.log_tail(result.log)
        return out, 200

    async def _api_events(self, request: web.Request) -> web.StreamResponse:
        function, outcome = self._filter(request, api=True)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue = self.subscribe()
        seen = -1
        try:
            state: dict[str, Any] | None = await self.state()
            assert state is not None
            state["point"] = self.series.points[-1] if self.series.points else None
            while state is not None:
                recent_seq = state["overview"]["recent_seq"]
                html = dict(state["html"])
                if recent_seq != seen:  # the recent list only when something new finished
                    seen = recent_seq
                    html["recent"] = _html.recent(self.runtime.recent.select(function, outcome))
                message = {k: state[k] for k in ("overview", "queues", "streams", "point")}
                message["html"] = html
                await response.write(f"event: tick\ndata: {_dumps(message)}\n\n".encode())
                state = await queue.get()
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self.unsubscribe(queue)
        return response


def _loopback_name(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guard(handler: Handler) -> Handler:
    """On a loopback socket, serve only requests addressed to a loopback name: a web page
    that rebinds its own DNS name to 127.0.0.1 must not read the console under that name."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        if sockname and _loopback_name(str(sockname[0])) and not _loopback_name(request.url.host):
            raise web.HTTPForbidden(text="the console answers loopback names only (localhost, 127.0.0.1)")
        return await handler(request)

    return guarded


def _check_same_origin(request: web.Request) -> None:
    """A form POST from another site (which a browser would send) is refused."""
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise web.HTTPForbidden(text="cross-site form posts are refused")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlparse(origin).netloc != request.host:
        raise web.HTTPForbidden(text="cross-origin form posts are refused")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(_html.BASE + "/")


CONSOLE = web.AppKey("fnrt_console", Console)


def mount(app: web.Application, runtime: Runtime, *, interval: float = 1.0) -> Console:
    """Serve the console of ``runtime`` from ``app`` under ``/console/``."""
    console = Console(runtime, interval=interval)
    app[CONSOLE] = console
    base = _html.BASE
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "", _redirect),
        ("GET", "/", console._index),
        ("POST", "/invoke", console._invoke_form),
        ("GET", "/invocations/{request_id}", console._detail_page),
        ("GET", "/api/overview", console._api_overview),
        ("GET", "/api/series", console._api_series),
        ("GET", "/api/invocations", console._api_invocations),
        ("GET", "/api/invocations/{request_id}", console._api_invocation),
        ("GET", "/api/queues", console._api_queues),
        ("GET", "/api/streams", console._api_streams),
        ("GET", "/api/cluster", console._api_cluster),
        ("GET", "/api/events", console._api_events),
        ("POST", "/api/invoke", console._api_invoke),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, base + path, _guard(handler))
    app.router.add_static(base + "/static/", STATIC)  # the page's script, styles and uPlot
    app.on_startup.append(console._on_startup)
    app.on_shutdown.append(console._on_shutdown)
    app.on_cleanup.append(console._on_cleanup)
    return console


__all__ = ["CONSOLE", "Console", "mount"]
