"""HTTP events: a function behind a URL, as Lambda Function URLs and API Gateway call it.

Each request becomes Lambda's payload format **2.0** event (Function URLs, HTTP APIs) or
**1.0** (REST APIs), the function runs through the runtime's one invoke path (limits,
timeouts, logs, metrics), and its result becomes the HTTP response. Errors answer as the
AWS front doors do: a throttle is 429; a function error, a timeout or a malformed result
502; a path no route matches 404 (2.0) or 403 ``Missing Authentication Token`` (1.0, as
REST APIs answer); each with a JSON ``{"message": ...}`` body and ``x-amzn-ErrorType``.
One request id names the invocation: the event's ``requestId``, the handler's
``context.aws_request_id`` and the response's ``x-amzn-RequestId``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs
from aiohttp import web
from multidict import CIMultiDict

from ._http_lambda import API_PREFIXES
from ._runtime import Runtime
from .errors import (
    FnrtError,
    InvalidConfig,
    PayloadTooLarge,
    RuntimeClosed,
    TooManyRequests,
)

PayloadFormat = Literal["1.0", "2.0"]
AuthType = Literal["NONE", "AWS_IAM"]
_TEXT_TYPES = re.compile(
    r"^(text/.*|application/(json|xml|javascript|x-www-form-urlencoded|graphql|[\w.+-]*\+(json|xml)))$"
)
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_PARAM = re.compile(r"^\{([A-Za-z_][\w-]*)(\+?)\}$")
# What HTTP/1.1 lets a response carry (RFC 9110 5.1, 5.5): a header name is a token; a value
# holds no control character but the tab. Anything else would split or break the response.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# How each front door words its 500/502: REST APIs (1.0) and HTTP APIs / Function URLs (2.0)
# differ in one letter's case, and clients that match the body see it.
_INTERNAL_ERROR: dict[PayloadFormat, str] = {"1.0": "Internal server error", "2.0": "Internal Server Error"}


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise InvalidConfig(f"cors {what} must be a list of strings, got {value!r}")
    return tuple(value)


@attrs.frozen
class Cors:
    """A Function URL's CORS configuration (the keys ``CreateFunctionUrlConfig`` takes)."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int = 0
    allow_credentials: bool = False

    _KEYS = {
        "AllowOrigins": "allow_origins",
        "AllowMethods": "allow_methods",
        "AllowHeaders": "allow_headers",
        "ExposeHeaders": "expose_headers",
        "MaxAge": "max_age",
        "AllowCredentials": "allow_credentials",
    }

    @classmethod
    def build(cls, value: Cors | Mapping[str, Any] | None) -> Cors | None:
        """From AWS's keys (``AllowOrigins``...) or their snake_case names."""
        if value is None or isinstance(value, Cors):
            return value
        if not isinstance(value, Mapping):
            raise InvalidConfig(f"cors must be a mapping like {{'AllowOrigins': ['*']}}, got {value!r}")
        known = set(cls._KEYS) | set(cls._KEYS.values())
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidConfig(f"unknown cors keys {', '.join(unknown)}; known: {', '.join(cls._KEYS)}")
        args = {cls._KEYS.get(k, k): v for k, v in value.items()}
        max_age = args.get("max_age", 0)
        if isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= 86400:
            raise InvalidConfig(f"cors MaxAge must be 0-86400 seconds, got {max_age!r}")
        credentials = args.get("allow_credentials")
        credentials = False if credentials is None else credentials
        if not isinstance(credentials, bool):  # bool("false") would allow them
            raise InvalidConfig(f"cors AllowCredentials must be true or false, got {credentials!r}")
        methods = tuple(m.upper() for m in _strings(args.get("allow_methods"), "AllowMethods"))
        bad = [m for m in methods if m != "*" and m not in _METHODS]
        if bad:
            raise InvalidConfig(f"cors AllowMethods has unknown methods {bad}")
        return cls(
            allow_origins=_strings(args.get("allow_origins"), "AllowOrigins"),
            allow_methods=methods,
            allow_headers=tuple(h.lower() for h in _strings(args.get("allow_headers"), "AllowHeaders")),
            expose_headers=_strings(args.get("expose_headers"), "ExposeHeaders"),
            max_age=max_age,
            allow_credentials=credentials,
        )

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allow_origins or origin in self.allow_origins

    def _allow_origin(self, origin: str) -> str:
        if "*" in self.allow_origins and not self.allow_credentials:
            return "*"
        return origin

    def preflight(self, origin: str, method: str, headers: str) -> dict[str, str]:
        """The headers answering a preflight; empty when the request is not allowed."""
        if not self.origin_allowed(origin):
            return {}
        if "*" not in self.allow_methods and method.upper() not in self.allow_methods:
            return {}
        asked = [h.strip().lower() for h in headers.split(",") if h.strip()]
        if "*" not in self.allow_headers and any(h not in self.allow_headers for h in asked):
            return {}
        out = {
            "Access-Control-Allow-Origin": self._allow_origin(origin),
            "Access-Control-Allow-Methods": ",".join(self.allow_methods),
            "Vary": "Origin",
        }
        if self.allow_headers:
            out["Access-Control-Allow-Headers"] = ",".join(self.allow_headers)
        if self.max_age:
            out["Access-Control-Max-Age"] = str(self.max_age)
        if self.allow_credentials:
            out["Access-Control-Allow-Credentials"] = "true"
        return out

    def response_headers(self, origin: str) -> dict[str, str]:
        if not self.origin_allowed(origin):
            return {}
        out = {"Access-Control-Allow-Origin": self._allow_origin(origin), "Vary": "Origin"}
        if self.expose_headers:
            out["Access-Control-Expose-Headers"] = ",".join(self.expose_headers)
        if self.allow_credentials:
            out["Access-Control-Allow-Credentials"] = "true"
        return out


def _normalize_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise InvalidConfig(f"path_prefix must start with '/', got {prefix!r}")
    return prefix.rstrip("/")


@attrs.frozen
class UrlRoute:
    """One function mounted on a URL path (see :func:`fnrt.http.add_url`)."""

    function: str
    path_prefix: str  # "" for the root
    payload_format: PayloadFormat
    route: str  # "$default", or a template like "/orders/{id}" or "/{proxy+}"
    methods: tuple[str, ...]  # empty: any method
    auth_type: AuthType
    cors: Cors | None
    stage: str
    stage_variables: tuple[tuple[str, str], ...]  # the stage's, for API Gateway events
    _pattern: re.Pattern[str] | None = attrs.field(eq=False, repr=False)
    _params: tuple[str, ...] = attrs.field(eq=False, repr=False)

    @property
    def url_id(self) -> str:
        """A stable id in the shape of a Function URL's ``<url-id>``."""
        digest = hashlib.sha256(f"{self.function}{self.path_prefix}".encode()).digest()
        return base64.b32encode(digest).decode().lower()[:32]

    @property
    def route_key(self) -> str:
        if self.route == "$default":
            return "$default"
        method = self.methods[0] if len(self.methods) == 1 else "ANY"
        return f"{method} {self.route}"

    @property
    def specificity(self) -> tuple[int, int, int, int]:
        """Higher sorts first: longer prefix, literal before template before greedy."""
        greedy = self.route == "$default" or self.route.endswith("+}")
        literal = len(re.sub(r"\{[^}]*\}", "", self.route)) if self.route != "$default" else 0
        return (len(self.path_prefix), 0 if greedy else 1, -len(self._params), literal)

    def match(self, rel_path: str) -> dict[str, str] | None:
        if self._pattern is None:
            return {}
        found = self._pattern.match(rel_path)
        if found is None:
            # the default REST mount ``/{proxy+}`` serves the root too (API Gateway's
            # console pairs it with ``ANY /``)
            return {} if rel_path == "/" and self.route == "/{proxy+}" else None
        return found.groupdict()


def make_route(
    function: str,
    *,
    path_prefix: str,
    payload_format: str,
    route: str | None,
    methods: Iterable[str] | None,
    auth_type: str,
    cors: Cors | Mapping[str, Any] | None,
    stage: str | None,
    stage_variables: Mapping[str, str] | None = None,
) -> UrlRoute:
    if payload_format not in ("1.0", "2.0"):
        raise InvalidConfig(f"payload_format must be '1.0' or '2.0', got {payload_format!r}")
    if auth_type not in ("NONE", "AWS_IAM"):
        raise InvalidConfig(f"auth_type must be 'NONE' or 'AWS_IAM', got {auth_type!r}")
    method_list = tuple(m.upper() for m in (methods or ()))
    if route is not None and " " in route:  # "GET /orders/{id}", as HTTP API route keys are written
        method, _, route = route.partition(" ")
        method_list = () if method.upper() == "ANY" else (method.upper(),)
    bad = [m for m in method_list if m not in _METHODS]
    if bad:
        raise InvalidConfig(f"unknown HTTP methods {bad}")
    if route is None:
        route = "$default" if payload_format == "2.0" else "/{proxy+}"
    pattern, params = _compile(route)
    return UrlRoute(
        function=function,
        path_prefix=_normalize_prefix(path_prefix),
        payload_format=payload_format,  # type: ignore[arg-type]
        route=route,
        methods=method_list,
        auth_type=auth_type,  # type: ignore[arg-type]
        cors=Cors.build(cors),
        stage=stage or "$default",
        stage_variables=_stage_variables(stage_variables),
        pattern=pattern,
        params=params,
    )


_STAGE_VARIABLE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}\Z")
_STAGE_VARIABLE_VALUE = re.compile(r"[A-Za-z0-9\-._~:/?#&=,]{1,2048}\Z")


def _stage_variables(value: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """API Gateway's rules for stage variables: names of letters, digits and ``_``; values
    of letters, digits and ``-._~:/?#&=,``, up to 2,048 characters."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise InvalidConfig(f"stage_variables must be a mapping of names to strings, got {value!r}")
    for name, text in value.items():
        if not isinstance(name, str) or not _STAGE_VARIABLE_NAME.match(name):
            raise InvalidConfig(f"stage variable name {name!r} must be letters, digits and '_' (at most 64)")
        if not isinstance(text, str) or not _STAGE_VARIABLE_VALUE.match(text):
            raise InvalidConfig(
                f"stage variable {name} value {text!r} must be 1-2048 of letters, digits and -._~:/?#&=,"
            )
    return tuple(value.items())


def _compile(route: str) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    if route == "$default":
        return None, ()
    if not route.startswith("/"):
        raise InvalidConfig(f"route must be '$default' or start with '/', got {route!r}")
    parts, params = [], []
    segments = route.strip("/").split("/") if route != "/" else []
    for index, segment in enumerate(segments):
        found = _PARAM.match(segment)
        if found is None:
            if "{" in segment or "}" in segment:
                raise InvalidConfig(f"route segment {segment!r} must be literal or a whole {{name}}")
            parts.append(re.escape(segment))
            continue
        name, greedy = found.group(1), found.group(2)
        if name in params:
            raise InvalidConfig(f"route {route!r} names {name!r} twice")
        params.append(name)
        if greedy:
            if index != len(segments) - 1:
                raise InvalidConfig(f"{{{name}+}} must be the last segment of {route!r}")
            parts.append(f"(?P<{name}>.+)")
        else:
            parts.append(f"(?P<{name}>[^/]+)")
    body = "/" + "/".join(parts)
    return re.compile(f"^{body}/?$" if parts else "^/?$"), tuple(params)


# -- the event ----------------------------------------------------------------------------


def _is_text(content_type: str) -> bool:
    return bool(_TEXT_TYPES.match(content_type.split(";")[0].strip().lower()))


def _body(request: web.Request, raw: bytes) -> tuple[str | None, bool]:
    if not raw:
        return None, False
    if _is_text(request.headers.get("Content-Type", "")):
        try:
            return raw.decode(), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(raw).decode(), True


def _text(value: str) -> str:
    """A header value as text a handler can encode: aiohttp keeps bytes that are not UTF-8
    as lone surrogates, which no UTF-8 writer (a print, a log, a JSON dump) accepts; they
    become U+FFFD, as in the query string."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _header_values(request: web.Request, key: str) -> list[str]:
    return [_text(v) for v in request.headers.getall(key, [])]


def _time_fields(now: float) -> tuple[str, int]:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return moment.strftime("%d/%b/%Y:%H:%M:%S +0000"), int(now * 1000)


def _source_ip(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "127.0.0.1"


def _host(request: web.Request) -> str:
    return request.headers.get("Host", request.host)


def _raw_below(raw_path: str, prefix: str) -> str:
    """The raw (still-encoded) path below ``prefix``. The prefix matched the decoded path,
    whose length differs from the raw one's wherever a character is encoded (``/%65cho``
    is ``/echo``), so the cut is by path segments, not characters."""
    if not prefix:
        return raw_path or "/"
    below = raw_path.split("/")[prefix.count("/") + 1 :]
    return "/" + "/".join(below) if below else "/"


def event_v2(
    route: UrlRoute,
    request: web.Request,
    rel_path: str,
    params: dict[str, str],
    raw: bytes,
    now: float,
    identity: Mapping[str, str] | None,
    request_id: str,
) -> dict[str, Any]:
    """Payload format 2.0 (Function URLs and HTTP APIs); ``request_id`` is the invocation's."""
    headers: dict[str, str] = {}
    for key in request.headers:
        lower = key.lower()
        if lower == "cookie" or lower in headers:
            continue
        headers[lower] = ",".join(_header_values(request, key))
    query: dict[str, str] = {}
    for key in request.query:
        if key not in query:
            query[key] = ",".join(request.query.getall(key))
    cookies = [
        c.strip() for value in _header_values(request, "Cookie") for c in value.split(";") if c.strip()
    ]
    # as sent (yarl's query_string is decoded), and the path part alone: an absolute-form
    # target ("GET http://host/path") names the host first, and a fragment is no part of it
    url = request.rel_url
    raw_path, raw_query = url.raw_path, url.raw_query_string
    body, is_b64 = _body(request, raw)
    host = _host(request)
    time_text, epoch = _time_fields(now)
    context: dict[str, Any] = {
        "accountId": "anonymous" if identity is None else identity["accountId"],
        "apiId": route.url_id,
        "domainName": host,
        "domainPrefix": host.split(".")[0].split(":")[0],
        "http": {
            "method": request.method,
            "path": rel_path,
            "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
            "sourceIp": _source_ip(request),
            "userAgent": _text(request.headers.get("User-Agent", "")),
        },
        "requestId": request_id,
        "routeKey": route.route_key,
        "stage": route.stage,
        "time": time_text,
        "timeEpoch": epoch,
    }
    if identity is not None:
        context["authorizer"] = {"iam": dict(identity)}
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": _raw_below(raw_path, route.path_prefix),
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if query:
        event["queryStringParameters"] = query
    if params:
        event["pathParameters"] = params
    if route.stage_variables:
        event["stageVariables"] = dict(route.stage_variables)
    event["requestContext"] = context
    if body is not None:
        event["body"] = body
    event["isBase64Encoded"] = is_b64
    return event


def event_v1(
    route: UrlRoute,
    request: web.Request,
    rel_path: str,
    params: dict[str, str],
    raw: bytes,
    now: float,
    identity: Mapping[str, str] | None,
    request_id: str,
) -> dict[str, Any]:
    """Payload format 1.0 (REST APIs, and HTTP APIs configured for 1.0); ``request_id`` is
    the invocation's (``extendedRequestId`` too: fnrt has no gateway id apart from it)."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for key in request.headers:
        if key in multi_headers:
            continue
        values = _header_values(request, key)
        multi_headers[key] = values
        headers[key] = values[-1]
    query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for key in request.query:
        if key not in multi_query:
            values = request.query.getall(key)
            multi_query[key] = list(values)
            query[key] = values[-1]
    body, is_b64 = _body(request, raw)
    host = _host(request)
    time_text, epoch = _time_fields(now)
    if route.route in ("$default", "/{proxy+}") and rel_path == "/":
        # the root is not the proxy's: API Gateway serves it with the ``ANY /`` resource
        resource, params = "/", {}
    elif route.route == "$default":
        resource, params = "/{proxy+}", {"proxy": rel_path.lstrip("/")}
    else:
        resource = route.route
    stage_path = rel_path if route.stage == "$default" else f"/{route.stage}{rel_path}"
    identity_block: dict[str, Any] = {
        "sourceIp": _source_ip(request),
        "userAgent": _text(request.headers.get("User-Agent", "")),
        "accountId": None,
        "accessKey": None,
        "caller": None,
        "user": None,
        "userArn": None,
        "cognitoIdentityId": None,
        "cognitoIdentityPoolId": None,
        "cognitoAuthenticationType": None,
        "cognitoAuthenticationProvider": None,
    }
    if identity is not None:
        identity_block.update(
            accountId=identity["accountId"], accessKey=identity["accessKey"], caller=identity["callerId"],
            user=identity["userId"], userArn=identity["userArn"],
        )
    return {
        "version": "1.0",
        "resource": resource,
        "path": rel_path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": params or None,
        "stageVariables": dict(route.stage_variables) or None,
        "requestContext": {
            "accountId": identity["accountId"] if identity else "000000000000",
            "apiId": route.url_id[:10],
            "domainName": host,
            "domainPrefix": host.split(".")[0].split(":")[0],
            "extendedRequestId": request_id,
            "httpMethod": request.method,
            "identity": identity_block,
            "path": stage_path,
            "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
            "requestId": request_id,
            "requestTime": time_text,
            "requestTimeEpoch": epoch,
            "resourceId": route.url_id[:6],
            "resourcePath": resource,
            "stage": route.stage,
        },
        "body": body,
        "isBase64Encoded": is_b64,
    }


# -- the response -------------------------------------------------------------------------


class MalformedResult(Exception):
    pass


def gateway_error(status: int, message: str, error_type: str, request_id: str | None = None) -> web.Response:
    """The front door's own error: ``{"message": ...}``, as API Gateway and Function URLs.
    ``request_id`` is the invocation's when there is one (a fresh id otherwise)."""
    return web.json_response(
        {"message": message},
        status=status,
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": request_id or str(uuid.uuid4())},
    )


def internal_error(status: int, payload_format: PayloadFormat, request_id: str | None = None) -> web.Response:
    """A 500 or 502, worded as the front door of ``payload_format`` words it."""
    return gateway_error(status, _INTERNAL_ERROR[payload_format], "InternalServerErrorException", request_id)


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise MalformedResult(f"header name {name!r} is not an HTTP token")
    return name


def _header_text(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise MalformedResult(f"header value {value!r} is not a string")
    if _HEADER_VALUE_BAD.search(text):
        raise MalformedResult(f"header value {text!r} holds a control character")
    _utf8(text, "a header value")
    return text


def _utf8(text: str, what: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (JSON's ``"\\ud800"``) has none."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise MalformedResult(f"{what} is not valid Unicode (a lone surrogate)") from None


def _flag(value: Any) -> bool:
    """A boolean of the result, as API Gateway reads one: ``true``, or the string
    ``"true"`` in any case; a string like ``"false"`` is not true because it is not empty."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def build_response(route: UrlRoute, raw: bytes) -> web.Response:
    """The HTTP response for the handler's result (``raw`` is its JSON)."""
    try:
        result = json.loads(raw) if raw else None
    except ValueError:
        raise MalformedResult("the result is not JSON") from None
    if not (isinstance(result, dict) and "statusCode" in result):
        if route.payload_format == "1.0":
            raise MalformedResult("a payload format 1.0 result needs a statusCode")
        # Function URLs and HTTP APIs infer the format: the whole result is a 200 JSON body
        return web.Response(status=200, body=raw or b"null", content_type="application/json")
    status = result["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    # a 1xx is never a final response: a client would wait for the real one forever
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise MalformedResult(f"statusCode {status!r} is not an HTTP status")
    headers: CIMultiDict[str] = CIMultiDict()
    given = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(given, dict) or not isinstance(multi, dict):
        raise MalformedResult("headers must be an object")
    for key, values in multi.items():
        if not isinstance(values, list):
            raise MalformedResult("multiValueHeaders values must be lists")
        for value in values:
            headers.add(_header_name(key), _header_text(value))
    # API Gateway merges the two into one list per name; a pair given in both appears once,
    # as multiValueHeaders has it
    for key, value in given.items():
        text = _header_text(value)
        if text not in headers.getall(_header_name(key), ()):
            headers.add(key, text)
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
        raise MalformedResult("cookies must be a list of strings")
    for cookie in cookies:
        headers.add("Set-Cookie", _header_text(cookie))
    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        if route.payload_format == "1.0":
            raise MalformedResult("body must be a string")
        data = json.dumps(body).encode()
    elif _flag(result.get("isBase64Encoded")):
        try:
            data = base64.b64decode(body, validate=True)
        except (ValueError, binascii.Error):
            raise MalformedResult("body is not valid base64") from None
    else:
        data = _utf8(body, "body")
    for framing in ("Content-Length", "Transfer-Encoding", "Connection"):  # the server frames it
        headers.popall(framing, None)
    if "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    return web.Response(status=status, body=data, headers=headers)


# -- the router ---------------------------------------------------------------------------

#: Paths fnrt's own routes take before any URL: Lambda's APIs and the console.
RESERVED_PREFIXES = (*(p.rstrip("/") for p in API_PREFIXES), "/console")


def is_preflight(request: web.Request) -> bool:
    """A browser's CORS preflight: ``OPTIONS`` asking, for an origin, whether a method may
    be sent. Browsers never sign one nor send credentials with it."""
    return (
        request.method == "OPTIONS"
        and bool(request.headers.get("Origin"))
        and "Access-Control-Request-Method" in request.headers
    )


class UrlRouter:
    """The URL routes of one aiohttp application, and the handler that serves them."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.routes: list[UrlRoute] = []

    def add(self, route: UrlRoute) -> UrlRoute:
        prefix = route.path_prefix
        for own in RESERVED_PREFIXES:
            if prefix == own or prefix.startswith(own + "/"):
                # fnrt's own routes take those paths first: the URL would never be reached
                raise InvalidConfig(f"path prefix {prefix} is fnrt's own ({own}): choose another")
        for existing in self.routes:
            if (existing.path_prefix, existing.route, existing.methods) == (
                route.path_prefix,
                route.route,
                route.methods,
            ):
                raise InvalidConfig(
                    f"{route.path_prefix or '/'} {route.route_key} is mounted already "
                    f"(function {existing.function!r})"
                )
        self.routes.append(route)
        self.routes.sort(key=lambda r: r.specificity, reverse=True)
        return route

    def remove_function(self, function: str) -> None:
        self.routes = [r for r in self.routes if r.function != function]

    def prefix_of(self, path: str) -> list[UrlRoute]:
        """The routes whose prefix holds ``path``, best first."""
        out = []
        for route in self.routes:
            prefix = route.path_prefix
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                out.append(route)
        return out

    def find(self, request: web.Request) -> tuple[UrlRoute, str, dict[str, str]] | Literal[False] | None:
        """The route serving ``request``: ``None`` when no prefix holds its path (not a
        URL request at all), ``False`` when a prefix does but no route matches."""
        candidates = self.prefix_of(request.path)
        if not candidates:
            return None
        preflight = is_preflight(request)
        for route in candidates:
            rel = request.path[len(route.path_prefix) :] or "/"
            params = route.match(rel)
            if params is None:
                continue
            # a preflight is the URL's CORS to answer, whatever methods the route takes; without
            # CORS it is a plain OPTIONS request, for a route that takes OPTIONS
            answered = preflight and route.cors is not None
            if route.methods and request.method not in route.methods and not answered:
                continue
            return route, rel, params
        return False

    def unmatched(self, request: web.Request) -> web.Response:
        """The answer when a prefix holds ``request``'s path but no route matches it
        (:meth:`find` is ``False``): HTTP APIs and Function URLs say 404 ``Not Found``;
        REST APIs answer every unknown resource or method with their
        ``MISSING_AUTHENTICATION_TOKEN`` gateway response, 403. A path held by mounts of both
        formats gets the 2.0 answer: no REST API alone serves it."""
        candidates = self.prefix_of(request.path)
        if candidates and all(route.payload_format == "1.0" for route in candidates):
            return gateway_error(403, "Missing Authentication Token", "MissingAuthenticationTokenException")
        return gateway_error(404, "Not Found", "NotFoundException")

    async def serve(
        self,
        request: web.Request,
        found: tuple[UrlRoute, str, dict[str, str]],
        identity: Mapping[str, str] | None = None,
    ) -> web.Response:
        route, rel, params = found
        origin = request.headers.get("Origin")
        if route.cors is not None and origin and is_preflight(request):
            # answered by the URL, never the function
            asked = request.headers["Access-Control-Request-Method"]
            headers = route.cors.preflight(
                origin, asked, request.headers.get("Access-Control-Request-Headers", "")
            )
            return web.Response(status=200, headers=headers)
        response = await self._invoke(request, route, rel, params, identity)
        if route.cors is None:
            return response
        # with CORS configured, the URL's CORS headers are the only ones (the function's are
        # ignored, with an Origin or without)
        for key in list(response.headers):
            if key.lower().startswith("access-control-"):
                del response.headers[key]
        if origin:
            added = route.cors.response_headers(origin)
            vary = added.pop("Vary", None)
            response.headers.update(added)
            if vary is not None:  # the function's own Vary (Accept-Encoding, ...) stays
                own = response.headers.getall("Vary", [])
                varied = [name.strip() for value in own for name in value.split(",") if name.strip()]
                if vary.lower() not in (name.lower() for name in varied):
                    varied.append(vary)
                response.headers["Vary"] = ", ".join(varied)
        return response

    async def _invoke(
        self,
        request: web.Request,
        route: UrlRoute,
        rel: str,
        params: dict[str, str],
        identity: Mapping[str, str] | None,
    ) -> web.Response:
        # one id for the event, the invocation (context.aws_request_id) and the response,
        # so a request's logs can be found from its x-amzn-RequestId
        request_id = str(uuid.uuid4())
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # over the server's client_max_size
            return gateway_error(413, "Request Entity Too Large", "RequestEntityTooLarge", request_id)
        build = event_v2 if route.payload_format == "2.0" else event_v1
        event = build(route, request, rel, params, raw, self.runtime.clock.time(), identity, request_id)
        try:
            result = await self.runtime.invoke_detailed(route.function, event, request_id=request_id)
        except TooManyRequests:
            return gateway_error(429, "Too Many Requests", "TooManyRequestsException", request_id)
        except PayloadTooLarge:
            return gateway_error(413, "Request Entity Too Large", "RequestEntityTooLarge", request_id)
        except RuntimeClosed:
            return gateway_error(503, "Service Unavailable", "ServiceUnavailableException", request_id)
        except FnrtError:  # FunctionNotFound (removed since it was routed) among them
            return internal_error(500, route.payload_format, request_id)
        if result.error is not None:
            # a timeout is the function's error too: 504 is only API Gateway's own
            # integration timeout (29 s), which fnrt does not model
            return internal_error(502, route.payload_format, result.request_id)
        try:
            response = build_response(route, result.raw)
        except MalformedResult:
            return internal_error(502, route.payload_format, result.request_id)
        response.headers["x-amzn-RequestId"] = result.request_id
        return response


__all__ = [
    "Cors",
    "UrlRoute",
    "UrlRouter",
    "build_response",
    "event_v1",
    "event_v2",
    "gateway_error",
    "internal_error",
    "is_preflight",
    "make_route",
]
