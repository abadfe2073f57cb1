"""JSON decoding gives exactly json's result, with msgspec (``fnrt[msgspec]``) and without:
the same values of the same types, the same errors. The cases are the ones where a fast
parser, left alone, differs (big integers, NaN, 1e400, lone surrogates, BOMs, deep
nesting), random documents and random number literals."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fnrt import _json
from fnrt._lambda import loads as strict_loads

EDGES = [
    "123456789012345678901234567890",
    "-9223372036854775809",
    "18446744073709551616",
    '{"id": 123456789012345678901234567890, "n": [1, 99999999999999999999]}',
    "[1, -99999999999999999999 ]",
    "NaN",
    "[Infinity, -Infinity]",
    "1e400",
    "1.7976931348623159e308",
    '"\\ud800"',
    '{"k": "\\udfff"}',
    "[" * 1100 + "]" * 1100,
]
SAME_IN_BOTH = [
    "0",
    "-0",
    "-0.0",
    "0.1",
    "1e-400",
    "5e-324",
    "18446744073709551615",
    "-922337203685477580",
    "0.30000000000000000000000000000001",
    '{"a": 1, "a": 2}',
    '"\\ud83d\\ude00"',
    '"\\u0000 \\/ \\u00e9 é"',
    '  {"x": [1, 2.5, "s", null, true, false]}  ',
    # digits inside strings that look like big numbers: still exact
    '{"seq": "49000000000000000000000000000000000000000000000000001234", "id": "s:49000000000000000000001"}',
    '{"note": "ids: [1234567890123456789012]"}',
]
INVALID = ["", "[1,]", "01", "+1", ".5", "True", '"a\tb"', '{"a":1}x', "\x0c{}", "[", '"\\x41"']


@pytest.fixture(params=["msgspec", "json"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "msgspec":
        pytest.importorskip("msgspec")
        monkeypatch.setattr(_json, "FAST", True)
    else:
        monkeypatch.setattr(_json, "FAST", False)
    yield request.param


def outcome(fn: Any, data: Any) -> tuple[str, str]:
    """A value's exact repr with its types, or the error's type (RecursionError for the
    deep document may leave json as RecursionError either way)."""
    try:
        value = fn(data)
    except (ValueError, RecursionError) as exc:
        return ("error", type(exc).__name__)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))  # a value as deep as the deep document
    try:
        return ("value", typed_repr(value))
    finally:
        sys.setrecursionlimit(limit)


def typed_repr(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{typed_repr(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(typed_repr(v) for v in value) + "]"
    if isinstance(value, float) and math.isnan(value):
        return "float:nan"
    return f"{type(value).__name__}:{value!r}"


def json_loads_utf8(data: bytes) -> Any:
    return json.loads(data.decode())


@pytest.mark.parametrize("text", EDGES + SAME_IN_BOTH + INVALID)
def test_loads_is_json_loads_for_text_and_bytes(mode: str, text: str) -> None:
    assert outcome(_json.loads, text) == outcome(json.loads, text)
    data = text.encode("utf-8", "surrogatepass")
    assert outcome(_json.loads, data) == outcome(json.loads, data)
    assert outcome(_json.loads_utf8, data) == outcome(json_loads_utf8, data)


@pytest.mark.parametrize(
    "data",
    ['\ufeff{"a": 1}'.encode(), '{"a": 1}'.encode("utf-16"), b"\xff{}", '"a\ud800b"', '["\udfff"]'],
)
def test_encodings_json_detects_are_read_as_json_reads_them(mode: str, data: bytes | str) -> None:
    assert outcome(_json.loads, data) == outcome(json.loads, data)
    if isinstance(data, bytes):  # a sandbox's event: UTF-8 or an UnmarshalError, as before
        assert outcome(_json.loads_utf8, data) == outcome(json_loads_utf8, data)


def test_an_input_type_json_refuses_is_refused_alike(mode: str) -> None:
    for data in (memoryview(b"{}"), 12, None):
        with pytest.raises(TypeError):
            json.loads(data)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            _json.loads(data)  # type: ignore[arg-type]


def test_big_integers_stay_integers(mode: str) -> None:
    value = _json.loads(b'{"n": 123456789012345678901234567890, "m": -9223372036854775809}')
    assert value == {"n": 123456789012345678901234567890, "m": -9223372036854775809}
    assert all(type(v) is int for v in value.values())


def test_strict_loads_refuses_nan_and_infinity_as_lambda_does(mode: str) -> None:
    for text in ("NaN", "[1, Infinity]", '{"a": -Infinity}'):
        with pytest.raises(ValueError, match="is not valid JSON"):
            strict_loads(text)
    assert strict_loads("1e400") == math.inf  # a float literal, as json reads it
    assert strict_loads(b'{"n": 123456789012345678901234567890}') == {"n": 123456789012345678901234567890}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**130), max_value=2**130)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, ensure_ascii=st.booleans())
def test_random_documents_decode_as_json_decodes_them(value: Any, ensure_ascii: bool) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    data = text.encode("utf-8", "surrogatepass")
    for fast in (True, False):
        _json.FAST, before = fast and _json._decode is not None, _json.FAST
        try:
            assert outcome(_json.loads, text) == outcome(json.loads, text)
            assert outcome(_json.loads, data) == outcome(json.loads, data)
            assert outcome(_json.loads_utf8, data) == outcome(json_loads_utf8, data)
        finally:
            _json.FAST = before


number_literals = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?", fullmatch=True
)


@settings(max_examples=500, deadline=None)
@given(literal=number_literals)
def test_number_literals_decode_to_the_same_number(literal: str) -> None:
    for fast in (True, False):
        _json.FAST, before = fast and _json._decode is not None, _json.FAST
        try:
            assert outcome(_json.loads, f"[{literal}]") == outcome(json.loads, f"[{literal}]")
        finally:
            _json.FAST = before
