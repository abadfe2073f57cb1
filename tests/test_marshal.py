"""A handler's result comes back as the bytes Lambda's Python runtime writes: simplejson's
spacing, NaN allowed, Decimals as their digits, non-ASCII escaped before Python 3.12 and
written as is from 3.12 on. Compared with the encoder Lambda itself uses
(awslambdaric's: simplejson with ``use_decimal=False`` and a Decimal hook), on real sandboxes
and on random values."""

from __future__ import annotations

import decimal
import math
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fnrt
from fnrt.sandbox._marshal import ENSURE_ASCII, to_json

simplejson = pytest.importorskip("simplejson")


class LambdaEncoder(simplejson.JSONEncoder):  # type: ignore[misc,name-defined]
    """awslambdaric's ``lambda_runtime_marshaller.Encoder``, for the Python running the test.
    ``allow_nan=True``: simplejson 3's default, the one Lambda's runtime was written against
    (it maps a NaN Decimal to a NaN float); simplejson 4 turned it off."""

    def __init__(self) -> None:
        if sys.version_info >= (3, 12):
            super().__init__(use_decimal=False, ensure_ascii=False, allow_nan=True)
        else:
            super().__init__(use_decimal=False, allow_nan=True)

    def default(self, obj: Any) -> Any:
        if isinstance(obj, decimal.Decimal):
            if obj.is_nan():
                return math.nan
            return simplejson.raw_json.RawJSON(str(obj))
        return super().default(obj)


def lambda_bytes(value: Any) -> bytes:
    return LambdaEncoder().encode(value).encode()


async def test_results_come_back_as_lambdas_runtime_writes_them() -> None:
    async with fnrt.Runtime() as rt:
        for name in ("item", "greeting", "not_a_number"):
            await rt.add_function(name, f"handlers.results:{name}")
            result = await rt.invoke_detailed(name, {})
            module = __import__("handlers.results", fromlist=[name])
            assert result.raw == lambda_bytes(getattr(module, name)({}, None)), name
        item = await rt.invoke_detailed("item", {})
        assert item.raw == b'{"sku": "apple", "price": 1.10, "stock": 42, "rating": NaN}'
        greeting = (await rt.invoke_detailed("greeting", {})).raw
        if ENSURE_ASCII:
            assert greeting == b'{"message": "\\u3053\\u3093\\u306b\\u3061\\u306f", "city": "Z\\u00fcrich"}'
        else:
            assert greeting == '{"message": "こんにちは", "city": "Zürich"}'.encode()


async def test_a_decimal_subclass_cannot_write_its_own_text_into_the_result() -> None:
    """A Decimal goes into the JSON as its digits, raw: Decimal's own text is used, so a
    subclass's __str__ cannot make the result something that is not JSON (which broke the
    async source's destination record, and with it the runtime)."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("sneaky", "handlers.results:sneaky_decimal")
        assert (await rt.invoke_detailed("sneaky", {})).raw == b'{"a": 1.5}'
        assert await rt.invoke("sneaky", {}) == {"a": 1.5}
        rt.configure_async("sneaky", on_success="sink:ok")
        await rt.invoke("sneaky", {}, invocation_type="Event")
        await rt.wait_idle()
        [record] = await rt.destination_records("ok")
        assert record["responsePayload"] == {"a": 1.5}


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(value=values)
def test_any_result_is_written_as_lambda_writes_it(value: Any) -> None:
    assert to_json(value) == lambda_bytes(value)


def test_what_lambda_cannot_marshal_is_refused() -> None:
    for value in ({1, 2}, object(), {"k": {decimal.Decimal(1): 1}}, b"bytes"):
        with pytest.raises(TypeError):
            to_json(value)
