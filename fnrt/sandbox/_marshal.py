"""A handler's return value as Lambda's Python runtime writes it (awslambdaric's marshaller).

Lambda encodes the result with simplejson's defaults: ``", "`` and ``": "`` between items,
``NaN`` and ``Infinity`` allowed, non-ASCII characters escaped on Python 3.11 and earlier
and written as they are from Python 3.12 on (Lambda's documented "Response format");
and ``decimal.Decimal`` written as its own digits (``Decimal("1.10")`` is ``1.10``, a NaN
``Decimal`` is ``NaN``: what a DynamoDB read returns can be returned as it is). Users
compare these bytes (boto3's ``Payload``), so fnrt writes the same ones, with the standard
library's encoder.

The standard encoder cannot write raw text for an object, so a ``Decimal`` becomes a marker
string the encoder quotes (``"\\u0000<nonce>:<n>\\u0000"``, a NUL-delimited random nonce no
user string can hold by chance) and the marker is replaced by the digits afterwards: only a
result holding a ``Decimal`` pays for it.

Not reproduced: simplejson writes a named tuple as an object (``namedtuple_as_object``),
here it is an array, as the standard library writes it; Lambda returns a ``bytes`` result
as it is, here it is a ``Runtime.MarshalError`` (every consumer of a result, destinations
and Function URLs included, reads it as JSON).
"""

from __future__ import annotations

import decimal
import json
import math
import re
import secrets
import sys
from typing import Any

from .. import _json

_not_json = json.JSONEncoder().default  # raises json's own TypeError for what it cannot encode

#: Lambda's Python 3.12+ runtimes write non-ASCII characters as they are.
ENSURE_ASCII = sys.version_info < (3, 12)


class _Decimals:
    """The ``default`` hook of one encoding: Decimals become markers, remembered in order."""

    __slots__ = ("digits", "nonce")

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.digits: list[str] = []

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, decimal.Decimal):
            if obj.is_nan():
                return math.nan
            # Decimal's own text, never a subclass's __str__: what goes into the JSON
            # raw must be a number (a subclass could write anything there).
            self.digits.append(decimal.Decimal.__str__(obj))
            return f"\x00{self.nonce}:{len(self.digits) - 1}\x00"
        return _not_json(obj)

    def substitute(self, text: str) -> str:
        marker = re.compile(rf'"\\u0000{self.nonce}:([0-9]+)\\u0000"')
        return marker.sub(lambda m: self.digits[int(m[1])], text)


def _no_default(obj: Any) -> Any:
    if isinstance(obj, decimal.Decimal):
        raise _HasDecimal
    return _not_json(obj)


class _HasDecimal(Exception):
    pass


_encode = _json.encoder(separators=(", ", ": "), ensure_ascii=ENSURE_ASCII, default=_no_default)


def to_json(result: Any) -> bytes:
    """``result`` as the bytes Lambda returns for it; raises ``TypeError``/``ValueError``
    (Lambda's ``Runtime.MarshalError``) for what it cannot encode."""
    try:
        return _encode(result).encode()
    except _HasDecimal:
        pass
    decimals = _Decimals()
    text = json.JSONEncoder(ensure_ascii=ENSURE_ASCII, default=decimals).encode(result)
    return decimals.substitute(text).encode()
