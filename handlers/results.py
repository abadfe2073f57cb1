"""Results Lambda's Python runtime marshals its own way: a DynamoDB-style Decimal, text
beyond ASCII, NaN."""

from decimal import Decimal

import fnrt


@fnrt.handler
def item(event, context):
    """What a DynamoDB read returns: numbers are Decimals."""
    return {"sku": "apple", "price": Decimal("1.10"), "stock": Decimal("42"), "rating": Decimal("NaN")}


@fnrt.handler
def greeting(event, context):
    return {"message": "こんにちは", "city": "Zürich"}


@fnrt.handler
def not_a_number(event, context):
    return [float("nan"), float("inf"), 1.5]


class _Sneaky(Decimal):
    """A Decimal whose text is not a number (what went into the JSON raw was its __str__)."""

    def __str__(self) -> str:
        return '1, "injected": true}, "x": ['


@fnrt.handler
def sneaky_decimal(event, context):
    return {"a": _Sneaky("1.5")}
