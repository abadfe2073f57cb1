"""Decoding JSON: msgspec when it is installed (``fnrt[msgspec]``), with exactly json's result.

``loads(data)`` returns what ``json.loads(data)`` returns, and raises what it raises; only
faster (2-3x on events of kilobytes, 6x on small ones). msgspec reads the documents it
accepts as json does: the same types (integers of any size stay ``int``), correctly rounded
floats, duplicate keys last-wins, key order. It accepts less; what it refuses goes to json,
which reads it or raises its own error, as it always did:

- ``NaN`` and ``Infinity`` (json reads them as floats; Lambda's JSON has no such thing);
- a literal too large for a float (``1e400``: json gives ``inf``);
- an escaped lone surrogate (``"\\ud800"``), or one in a ``str``; a UTF-8 BOM, UTF-16 or
  UTF-32 bytes;
- nesting too deep for msgspec's recursion check.

The strict variant, :func:`loads_strict`, is Lambda's: ``NaN`` and ``Infinity`` are errors.

Encoding stays with json (:func:`encoder`): Lambda's runtime writes a result with
simplejson's encoder, whose output (spacing, ``NaN``, ``Decimal``) users compare byte for byte.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
from collections.abc import Callable
from typing import Any

_decode: Callable[[Any], Any] | None
try:  # an optional extra; a subinterpreter may not import it, and then json does the work
    import msgspec

    _decode = msgspec.json.Decoder().decode
except ImportError:  # pragma: no cover - depends on the install
    _decode = None

_TYPES = (bytes, bytearray, str)  # what json.loads takes (msgspec takes any buffer too)

#: msgspec is used when installed (tests switch it off to check the plain path).
FAST = _decode is not None

# Without msgspec: json's C scanner called directly, which skips what ``json.loads`` does per
# call (encoding detection, whitespace handling) for a document of plain UTF-8 JSON; anything
# else (whitespace around it, a BOM, another encoding, an error) is ``json.loads``'s.
_c_make_scanner = getattr(json.scanner, "c_make_scanner", None)
_scan_once = _c_make_scanner(json.JSONDecoder()) if _c_make_scanner is not None else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _plain(data: bytes | bytearray | str) -> Any:
    """``json.loads(data)``, exactly, with the C scanner when it is plain UTF-8 JSON."""
    if _scan_once is not None and isinstance(data, _TYPES):
        try:
            text = data if isinstance(data, str) else data.decode()
            value, end = _scan_once(text, 0)
        except (ValueError, StopIteration):
            pass
        else:
            if end == len(text):
                return value
    return json.loads(data)


_MISS = object()


def _fast(data: Any) -> Any:
    """msgspec's reading of ``data``, or ``_MISS`` when it is not installed, not on, or refuses."""
    if FAST and _decode is not None and isinstance(data, _TYPES):
        try:
            return _decode(data)
        except Exception:  # refused: json decides, reads it or raises its own error
            pass
    return _MISS


def loads(data: bytes | bytearray | str) -> Any:
    """``json.loads(data)``, exactly; with msgspec when installed."""
    value = _fast(data)
    return _plain(data) if value is _MISS else value


def loads_utf8(data: bytes) -> Any:
    """``json.loads(data.decode())``, exactly (UTF-8, nothing else: a sandbox reading its
    event); with msgspec when installed (it takes valid UTF-8 only). Raises
    ``UnicodeDecodeError`` as that does."""
    value = _fast(data)
    return _plain(data.decode()) if value is _MISS else value


def loads_strict(data: bytes | bytearray | str) -> Any:
    """Lambda's JSON: as :func:`loads`, but ``NaN`` and ``Infinity`` are errors (msgspec
    refuses them itself)."""
    value = _fast(data)
    return json.loads(data, parse_constant=_reject_constant) if value is _MISS else value


def encoder(
    *,
    separators: tuple[str, str] = (",", ":"),
    ensure_ascii: bool = True,
    allow_nan: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> Callable[[Any], str]:
    """``json.JSONEncoder(...).encode`` with its C part built once: ``encode`` builds it, a
    closure and the circular-reference markers on every call, which is most of the cost of
    a small document. The C part checks no cycle: a value that contains itself recurses
    until ``RecursionError`` and is encoded again by ``JSONEncoder``, whose error is json's
    own ("Circular reference detected"). Same output, same errors."""
    full = json.JSONEncoder(
        separators=separators, ensure_ascii=ensure_ascii, allow_nan=allow_nan, default=default
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    quote_name = "c_encode_basestring_ascii" if ensure_ascii else "c_encode_basestring"
    quote = getattr(json.encoder, quote_name, None)
    if make is None or quote is None:  # an interpreter without the C accelerator
        return full.encode
    item, key = separators
    iterencode = make(None, full.default, quote, None, key, item, False, False, allow_nan)

    def encode(value: Any) -> str:
        try:
            return "".join(iterencode(value, 0))
        except RecursionError:
            return full.encode(value)

    return encode
