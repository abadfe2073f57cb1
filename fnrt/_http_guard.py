"""Who may talk to the HTTP face, and how many at once.

- :class:`ConnectionGuard` wraps the server's protocol factory: at most
  ``max_connections`` are open; a connection must deliver its first request's headers
  within ``header_timeout`` seconds and each request's body within ``body_timeout`` seconds
  of its head (else it is answered 408 and closed); and when the limit is reached, the
  oldest connection that has not delivered a request yet (a slow-header client), else the
  one idle longest between keep-alive requests, makes room for the new one, so neither
  slow-header floods nor idle keep-alive connections lock everyone else out (only
  connections serving a request count for good). A client that stops reading a
  response for ``send_timeout`` seconds is cut off, so unread responses do not pile up in
  memory (each connection holds at most one: aiohttp waits for the socket to drain
  before it reads the next pipelined request). Idle keep-alive connections are closed by
  aiohttp's ``keepalive_timeout``.
- :func:`security_middleware` verifies SigV4 when credentials are configured, and rejects
  unsigned browser requests from another origin (a web page can reach loopback); without
  credentials it answers only requests whose ``Host`` is this machine (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler

from ._clock import Clock, TimerHandle
from ._http_errors import AwsError, BodyTimeout, Handler, lambda_error
from ._http_sigv4 import Verifier
from ._observe import logger

_BUSY_BODY = (
    b'{"Type":"Service","message":"fnrt is at its connection limit; retry shortly '
    b'(InvokeServer(max_connections=...) / --max-connections)"}'
)
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"x-amzn-ErrorType: ServiceException\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


def default_max_connections() -> int:
    """A quarter of the open-file limit (sandboxes and the store need the rest), 64-4,096."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, soft // 4))


def _parse_error_text(message: str | None, status: int) -> str:
    """aiohttp's parser words an error over several lines, quoting the bytes with a caret
    under them: its first line, without the quoted bytes, says what was wrong."""
    lines = (message or "").strip().splitlines()
    first = lines[0] if lines else ""
    first = first.split(": b'")[0].split(": b\"")[0].rstrip(": ")[:200]
    return first or ("bad request" if status < 500 else "internal error")


class _AwsAnswers(RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse (a bad request line,
    method or header, a header too long, too many headers, bad framing) with Lambda's JSON
    error, as every other answer is, instead of text with a caret under the raw bytes; and
    logging it as one structured event, not a traceback per bad request.

    Its layout is its base's (no slots of its own), so :class:`ConnectionGuard` gives the
    handler aiohttp built this class: aiohttp's construction and arguments stay its own."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the response began: nothing can follow it
            raise ConnectionError("a response was already being sent")
        text = _parse_error_text(message, status)
        logger().debug("malformed http request", status=status, error=text, peer=request.remote)
        if status < 500:
            error = f"malformed HTTP request: {text}"
            response = lambda_error(status, "InvalidRequestContentException", error)
        else:
            response = lambda_error(status, "ServiceException", text)
        response.force_close()
        return response


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's protocol; counts the connection and times its first head."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.timer: TimerHandle | None = None
        self.stalled: TimerHandle | None = None  # the client stopped reading our response
        self.live = False
        self.serving = 0  # requests of this connection in the handlers now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass (uvloop's
        # are not): typed as one, checked by what it can do.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        if not self.guard.admit(self):  # every slot serves a request: say so, and close
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self.live = True
        self.timer = self.guard.clock.call_later(self.guard.header_timeout, self.expire)
        self.inner.connection_made(transport)

    def expire(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def head_received(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.guard.pending.pop(self, None)
        self.guard.idle.pop(self, None)
        self.serving += 1

    def request_done(self) -> None:
        self.serving -= 1
        if self.serving == 0 and self.live and self in self.guard.open:
            self.guard.idle[self] = None  # newest last: the one idle longest goes first

    def evictable(self) -> bool:
        """Nothing of a response is left to send (aiohttp writes it in the same step as the
        handler returns, so an empty write buffer means it was all handed to the kernel)."""
        transport = self.transport
        return self.stalled is None and (transport is None or transport.get_write_buffer_size() == 0)

    def data_received(self, data: bytes) -> None:
        if self.live:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.live else None

    def pause_writing(self) -> None:
        if self.live:
            if self.stalled is None:
                self.stalled = self.guard.clock.call_later(self.guard.send_timeout, self.expire)
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.live:
            if self.stalled is not None:
                self.stalled.cancel()
                self.stalled = None
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.timer, self.stalled):
            if timer is not None:
                timer.cancel()
        self.timer = self.stalled = None
        if not self.live:
            return
        self.live = False
        self.guard.release(self)
        self.inner.connection_lost(exc)


class ConnectionGuard:
    """A protocol factory for ``loop.create_server`` around aiohttp's ``web.Server``."""

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        max_connections: int,
        header_timeout: float,
        clock: Clock,
        send_timeout: float = 30.0,
        body_timeout: float = 30.0,
    ) -> None:
        self.factory = factory
        self.clock = clock
        self.send_timeout = send_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: set[_Guarded] = set()
        self.pending: OrderedDict[_Guarded, None] = OrderedDict()  # no request head yet, oldest first
        self.idle: OrderedDict[_Guarded, None] = OrderedDict()  # between requests, idle longest first
        self.by_transport: dict[asyncio.BaseTransport, _Guarded] = {}
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0  # requests whose body did not arrive in time

    def __call__(self) -> _Guarded:
        inner = self.factory()
        if type(inner) is RequestHandler:
            # An aiohttp whose handler's layout changed keeps its own answers (TypeError).
            with contextlib.suppress(TypeError):
                inner.__class__ = _AwsAnswers
        return _Guarded(self, inner)

    def admit(self, conn: _Guarded) -> bool:
        if len(self.open) >= self.max_connections:
            victim = next(iter(self.pending), None)  # no request head yet, oldest first
            if victim is None:  # else idle between keep-alive requests, idle longest first
                victim = next((c for c in self.idle if c.evictable()), None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            if victim.transport is not None:
                victim.transport.abort()
            self.release(victim)
        self.open.add(conn)
        self.pending[conn] = None
        assert conn.transport is not None
        self.by_transport[conn.transport] = conn
        return True

    def release(self, conn: _Guarded) -> None:
        self.open.discard(conn)
        self.pending.pop(conn, None)
        self.idle.pop(conn, None)
        if conn.transport is not None:
            self.by_transport.pop(conn.transport, None)

    def head_received(self, request: web.Request) -> Callable[[], None] | None:
        """The connection of ``request`` serves it now; the callable says it is done."""
        conn = self.by_transport.get(request.transport) if request.transport is not None else None
        if conn is None:
            return None
        conn.head_received()
        return conn.request_done

    def watch_body(self, request: web.Request) -> TimerHandle | None:
        """A deadline for the rest of ``request``'s body (``None`` when it has all
        arrived): a client that sends its head, then trickles or withholds the body, would
        otherwise hold its connection, and the handler reading it, for ever."""
        payload = request.content
        if not request.body_exists or payload.is_eof():
            return None
        seconds = self.body_timeout

        def expire() -> None:
            if not payload.is_eof():
                self.timed_out += 1
                payload.set_exception(BodyTimeout(seconds))

        return self.clock.call_later(seconds, expire)

    def stats(self) -> dict[str, int]:
        return {
            "open": len(self.open),
            "pending": len(self.pending),
            "idle": len(self.idle),
            "refused": self.refused,
            "evicted": self.evicted,
            "body_timeouts": self.timed_out,
            "limit": self.max_connections,
        }


def headers_of(request: web.Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.headers.items():
        out.setdefault(key.lower(), []).append(value)
    return out


def cross_origin(request: web.Request) -> bool:
    """A browser request from another origin (an ``Origin`` that is not this server, or
    ``Sec-Fetch-Site: cross-site``)."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin.rstrip("/").lower() not in (f"http://{request.host}".lower(), f"https://{request.host}".lower())


def local_host(request: web.Request, bound: str) -> bool:
    """The ``Host`` header names this machine (a loopback address, ``localhost``, or the
    address the server is bound to): a DNS-rebinding page names its own domain instead."""
    host = request.host
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.lower().rstrip(".")
    if name in ("localhost", bound.lower()) or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def identity(access_key: str, account_id: str) -> dict[str, str]:
    """``requestContext.authorizer.iam`` of a signed function URL request."""
    return {
        "accessKey": access_key,
        "accountId": account_id,
        "callerId": f"AIDA{access_key[-12:].upper()}",
        "cognitoIdentity": None,  # type: ignore[dict-item]
        "principalOrgId": None,  # type: ignore[dict-item]
        "userArn": f"arn:aws:iam::{account_id}:user/{access_key}",
        "userId": f"AIDA{access_key[-12:].upper()}",
    }


#: Where the middleware leaves a verified caller's identity for the URL events.
IDENTITY_KEY: Any = web.RequestKey("fnrt.identity", dict) if hasattr(web, "RequestKey") else "fnrt.identity"


def security_middleware(
    verifier: Verifier | None,
    url_auth: Callable[[web.Request], str | None],
    account_id: str,
    guard: Callable[[], ConnectionGuard | None],
    bound_host: str = "127.0.0.1",
) -> Middleware:
    """``url_auth(request)`` is the function URL's auth type serving the request, or
    ``None`` for the APIs. Verified identities go to ``request[IDENTITY_KEY]``."""

    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        connections = guard()
        if connections is None:
            return await secured(request, handler)
        done = connections.head_received(request)
        deadline = connections.watch_body(request)
        try:
            return await secured(request, handler)
        finally:
            if deadline is not None:
                deadline.cancel()
            if done is not None:
                done()

    async def secured(request: web.Request, handler: Handler) -> web.StreamResponse:
        if verifier is None and not local_host(request, bound_host):
            # without credentials fnrt serves loopback only; a page that rebinds its own
            # domain to 127.0.0.1 sends that domain as the Host
            raise AwsError(
                403,
                "AccessDeniedException",
                f"Host {request.host!r} is not this machine; unauthenticated fnrt answers "
                "requests to localhost / 127.0.0.1 only",
            )
        auth_type = url_auth(request)
        if auth_type == "NONE":  # an open function URL, as in AWS; CORS is its guard
            return await handler(request)
        signed = "Authorization" in request.headers
        if verifier is None:
            if auth_type is None and not signed and cross_origin(request):
                raise AwsError(
                    403,
                    "AccessDeniedException",
                    "cross-origin browser requests to fnrt's APIs must be signed (SigV4)",
                )
            if auth_type == "AWS_IAM" and not signed:
                raise AwsError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
            return await handler(request)
        body = await request.read()
        target = request.rel_url  # the path and query as sent, whatever the target's form
        access_key = verifier.verify(
            request.method, target.raw_path, target.raw_query_string, headers_of(request), body
        )
        request[IDENTITY_KEY] = identity(access_key, account_id)
        return await handler(request)

    return security


__all__ = [
    "IDENTITY_KEY",
    "ConnectionGuard",
    "cross_origin",
    "default_max_connections",
    "security_middleware",
]
