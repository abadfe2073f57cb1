"""AWS Signature Version 4, verified exactly as boto3 and the AWS CLI sign (and signed, for
fnrt's own command line), with the standard library's ``hmac`` and ``hashlib``.

The canonical request is the method, the URI-encoded path (each segment encoded again,
as every service but S3 wants), the sorted, re-encoded query string, the signed headers
(lower-cased, values trimmed, repeated values comma-joined), the signed header names and
the payload hash (``X-Amz-Content-SHA256``, which may be ``UNSIGNED-PAYLOAD``, else the
SHA-256 of the body). The signing key is derived from the secret, the scope's date,
region and service; ``X-Amz-Date`` may be at most 15 minutes off the server's clock.
Failures answer AWS's 403s: ``MissingAuthenticationTokenException``,
``IncompleteSignatureException``, ``UnrecognizedClientException`` and
``InvalidSignatureException``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._http_errors import AwsError
from .errors import InvalidConfig

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_SKEW = 15 * 60
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_UNRESERVED = "-_.~"
_AUTH_PART = re.compile(r"\s*(\w+)=([^,]*)\s*(?:,|$)")


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe=_UNRESERVED)


def _remove_dot_segments(path: str) -> str:
    if not path:
        return "/"
    out: list[str] = []
    for part in path.split("/"):
        if part and part != ".":
            if part == "..":
                if out:
                    out.pop()
            else:
                out.append(part)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and out else ""
    return first + "/".join(out) + last


def canonical_uri(raw_path: str) -> str:
    """The path as sent (percent-encoded), dot segments removed, encoded once more."""
    return urllib.parse.quote(_remove_dot_segments(raw_path), safe="/~")


def canonical_query(raw_query: str) -> str:
    pairs = []
    for item in raw_query.split("&") if raw_query else []:
        if not item:
            continue
        key, _, value = item.partition("=")
        pairs.append((_quote(urllib.parse.unquote(key)), _quote(urllib.parse.unquote(value))))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, list[str]],
    signed: list[str],
    payload_hash: str,
) -> str:
    lines = [f"{name}:{','.join(' '.join(v.split()) for v in headers.get(name, []))}" for name in signed]
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            "\n".join(lines) + "\n",
            ";".join(signed),
            payload_hash,
        ]
    )


def _bytes(text: str) -> bytes:
    """Text back to the bytes the client sent and signed: aiohttp keeps header bytes that
    are not UTF-8 as lone surrogates, which ``surrogateescape`` turns back into them."""
    return text.encode("utf-8", "surrogateescape")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, _bytes(msg), hashlib.sha256).digest()


def signature(secret: str, amz_date: str, scope: list[str], creq: str) -> str:
    """Sign ``creq`` for ``scope`` (date, region, service, ``aws4_request``)."""
    date, region, service, terminator = scope
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, "/".join(scope), hashlib.sha256(_bytes(creq)).hexdigest()]
    )
    key = _hmac(f"AWS4{secret}".encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    key = _hmac(key, terminator)
    return hmac.new(key, _bytes(string_to_sign), hashlib.sha256).hexdigest()


def _incomplete(message: str) -> AwsError:
    return AwsError(403, "IncompleteSignatureException", message)


class Verifier:
    """Checks a request's SigV4 ``Authorization`` header against known credentials."""

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        now: Callable[[], float] = time.time,
        max_skew: float = MAX_SKEW,
    ) -> None:
        self.credentials = dict(credentials)
        self.now = now
        self.max_skew = max_skew

    def verify(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Mapping[str, list[str]],
        body: bytes,
    ) -> str:
        """The access key that signed the request; raises :class:`AwsError` (403)."""
        values = headers.get("authorization") or []
        if not values:
            raise AwsError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        auth = values[0].strip()
        algorithm, _, rest = auth.partition(" ")
        if algorithm != ALGORITHM:
            raise _incomplete(f"Unsupported authorization type: {algorithm!r}; use {ALGORITHM}")
        parts = {k: v.strip() for k, v in _AUTH_PART.findall(rest)}
        missing = [p for p in ("Credential", "SignedHeaders", "Signature") if p not in parts]
        if missing:
            raise _incomplete(
                f"Authorization header requires {', '.join(repr(m) for m in missing)} parameter(s). "
                f"Authorization={auth[:200]}"
            )
        credential = parts["Credential"].split("/")
        if len(credential) != 5 or credential[4] != "aws4_request":
            raise _incomplete(
                f"Credential should be scoped to a valid region and service, not {parts['Credential']!r}"
            )
        access_key, scope = credential[0], credential[1:]
        secret = self.credentials.get(access_key)
        if secret is None:
            raise AwsError(
                403, "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        amz_dates = headers.get("x-amz-date") or []
        if not amz_dates:
            raise _incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
            )
        amz_date = amz_dates[0].strip()
        try:
            signed_at = datetime.datetime.strptime(amz_date, _DATE_FORMAT).replace(tzinfo=datetime.UTC)
        except ValueError:
            raise _incomplete(f"X-Amz-Date {amz_date!r} is not in the format YYYYMMDD'T'HHMMSS'Z'") from None
        now = self.now()
        if abs(now - signed_at.timestamp()) > self.max_skew:
            server_time = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime(_DATE_FORMAT)
            raise AwsError(
                403,
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier or later than {server_time} "
                f"(more than {int(self.max_skew // 60)} min off).",
            )
        if scope[0] != amz_date[:8]:
            raise AwsError(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to a valid date: {scope[0]} is not {amz_date[:8]}",
            )
        signed = parts["SignedHeaders"].split(";")
        if "host" not in signed or signed != sorted(signed):
            raise AwsError(
                403, "InvalidSignatureException", "SignedHeaders must be sorted and include 'host'"
            )
        content_hashes = headers.get("x-amz-content-sha256") or []
        content_hash = content_hashes[0] if content_hashes else None
        actual_hash = hashlib.sha256(body).hexdigest()
        if content_hash is not None and content_hash != UNSIGNED_PAYLOAD and content_hash != actual_hash:
            raise AwsError(
                403,
                "InvalidSignatureException",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        payload_hash = content_hash or actual_hash
        creq = canonical_request(method, raw_path, raw_query, headers, signed, payload_hash)
        expected = signature(secret, amz_date, scope, creq)
        if not hmac.compare_digest(expected, parts["Signature"]):
            raise AwsError(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method. Consult the service documentation "
                "for details.",
            )
        return str(access_key)


def sign_headers(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    secret: str,
    *,
    region: str = "us-east-1",
    service: str = "lambda",
    now: float | None = None,
) -> dict[str, str]:
    """The headers to add (``X-Amz-Date``, ``Authorization``) to sign a request as boto3 does."""
    parts = urllib.parse.urlsplit(url)
    amz_date = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC).strftime(
        _DATE_FORMAT
    )
    all_headers: dict[str, list[str]] = {k.lower(): [v] for k, v in headers.items()}
    all_headers["host"] = [parts.netloc]
    all_headers["x-amz-date"] = [amz_date]
    signed = sorted(all_headers)
    scope = [amz_date[:8], region, service, "aws4_request"]
    creq = canonical_request(
        method, parts.path or "/", parts.query, all_headers, signed, hashlib.sha256(body).hexdigest()
    )
    sig = signature(secret, amz_date, scope, creq)
    return {
        "X-Amz-Date": amz_date,
        "Authorization": f"{ALGORITHM} Credential={access_key}/{'/'.join(scope)}, "
        f"SignedHeaders={';'.join(signed)}, Signature={sig}",
    }


def parse_credentials(specs: Iterable[Any]) -> dict[str, str]:
    """``[(access_key, secret), "KEY:SECRET", ...]`` as a mapping; ``InvalidConfig`` if bad."""
    out: dict[str, str] = {}
    for spec in specs:
        if isinstance(spec, str):
            key, sep, secret = spec.partition(":")
            if not sep:
                raise InvalidConfig("credentials are written ACCESS_KEY:SECRET")
        elif isinstance(spec, tuple | list) and len(spec) == 2:
            key, secret = spec
        else:
            raise InvalidConfig(f"credentials must be (access_key, secret) pairs, got {spec!r}")
        if not isinstance(key, str) or not isinstance(secret, str) or not key or not secret:
            raise InvalidConfig("an access key and its secret must both be non-empty strings")
        if not re.fullmatch(r"[\w+=,.@-]{1,128}", key):
            raise InvalidConfig(f"access key {key!r} has characters a SigV4 credential cannot carry")
        out[key] = secret
    return out


def load_credentials_file(path: str) -> dict[str, str]:
    """Credentials from a file: ``ACCESS_KEY:SECRET`` lines (``#`` comments), or an AWS
    shared-credentials file (``aws_access_key_id`` / ``aws_secret_access_key``)."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise InvalidConfig(f"cannot read the credentials file {path}: {exc.strerror}") from None
    if "aws_access_key_id" in text:
        import configparser

        parser = configparser.ConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error as exc:
            raise InvalidConfig(f"{path} is not a valid credentials file: {exc}") from None
        pairs = [
            (section["aws_access_key_id"].strip(), section.get("aws_secret_access_key", "").strip())
            for section in parser.values()
            if "aws_access_key_id" in section
        ]
        out = parse_credentials(pairs)
    else:
        lines = [ln.strip() for ln in text.splitlines()]
        out = parse_credentials([ln for ln in lines if ln and not ln.startswith("#")])
    if not out:
        raise InvalidConfig(f"{path} holds no credentials")
    return out


__all__ = [
    "Verifier",
    "canonical_request",
    "load_credentials_file",
    "parse_credentials",
    "sign_headers",
    "signature",
]
