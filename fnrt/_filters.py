"""Lambda's event filtering (``FilterCriteria``) for stream event source mappings.

A mapping's filters are EventBridge-style patterns (JSON text). :class:`RecordFilter`
checks them all when the mapping is configured (a bad pattern is
:class:`~fnrt.errors.InvalidConfig` then, never at the first record) and compiles each to
a tree of small closures; a record passes when any pattern matches it, and a record that
matches none is not sent to the function (its checkpoint moves past it all the same).

The grammar is Lambda's (the comparison operators of "Control which events Lambda sends to
your function", which are EventBridge's): exact strings, numbers, booleans and ``null`` in
a list; ``prefix``, ``suffix``, ``equals-ignore-case``, ``wildcard``, ``anything-but``
(values, or one of the string operators), ``numeric`` (``=`` or a range), ``exists``,
``cidr``; keys of one object must all match; ``$or`` takes a list of patterns. Strings
match character by character, and so do numbers, as Lambda documents: ``300``, ``300.0``
and ``3.0e2`` are not equal to each other (``numeric`` compares values).

For a Kinesis record the pattern sees the record's ``kinesis`` fields at its top level
(``partitionKey``, ``sequenceNumber``, ``approximateArrivalTimestamp``,
``kinesisSchemaVersion``), its ``eventID``, and ``data`` decoded as JSON. A pattern on ``data`` must be an
object, and it matches no record whose data is not valid JSON (Lambda drops those).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import InvalidConfig

MAX_FILTERS = 5  # Lambda's default quota of filters per event source mapping
MAX_PATTERN_LENGTH = 4096  # the API's limit on a Pattern
# How deep a pattern's objects may nest: matching recurses that deep, so a pattern of
# 4,096 characters nested all the way down would not fit Python's stack when a record comes.
MAX_DEPTH = 64
_MISSING: Any = object()
Rule = Callable[[Any], bool]  # one rule of a list, on one leaf value
Test = Callable[[Any], bool]  # a pattern object, on an event object


class Number:
    """A JSON number as written: exact matching compares the text, ``numeric`` the value."""

    __slots__ = ("text", "value")

    def __init__(self, text: str) -> None:
        self.text = text
        self.value = float(text)

    def __repr__(self) -> str:
        return self.text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """Strict JSON with numbers kept as :class:`Number` (``NaN`` and ``Infinity`` refused)."""
    return json.loads(text, parse_int=Number, parse_float=Number, parse_constant=_no_constant)


def _finite(text: str) -> Number:
    number = Number(text)
    if not math.isfinite(number.value):
        raise ValueError(f"{text} is out of range")
    return number


def _load_pattern(text: str) -> Any:
    """A pattern's JSON: :func:`loads`, and every number finite (``1e999`` is refused)."""
    return json.loads(text, parse_int=_finite, parse_float=_finite, parse_constant=_no_constant)


def _invalid(what: str) -> InvalidConfig:
    """A filter pattern that is not valid, in Lambda's words and then what is wrong."""
    return InvalidConfig(f"Invalid filter pattern definition: {what}")


def _is_number(value: Any) -> bool:
    return isinstance(value, Number)


def _string(value: Any, operator: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{operator} takes a string, got {value!r}")
    return value


# -- one rule of a list ---------------------------------------------------------------


def _exact(expected: Any) -> Rule:
    if isinstance(expected, str):
        return lambda v: isinstance(v, str) and v == expected
    if isinstance(expected, Number):
        text = expected.text
        return lambda v: isinstance(v, Number) and v.text == text
    if isinstance(expected, bool):
        return lambda v: isinstance(v, bool) and v is expected
    if expected is None:
        return lambda v: v is None
    raise _invalid(f"a rule must be a string, number, boolean, null or an operator object, got {expected!r}")


def _string_operator(operator: str, argument: Any) -> Rule:
    """``prefix``, ``suffix``, ``equals-ignore-case`` or ``wildcard`` (the first two may take
    ``{"equals-ignore-case": text}``)."""
    if operator in ("prefix", "suffix"):
        fold = False
        if isinstance(argument, dict):
            if list(argument) != ["equals-ignore-case"]:
                raise _invalid(
                    f"{operator} takes a string or {{'equals-ignore-case': string}}, got {argument!r}"
                )
            argument, fold = argument["equals-ignore-case"], True
        text = _string(argument, operator)
        if fold:
            text = text.casefold()
            if operator == "prefix":
                return lambda v: isinstance(v, str) and v.casefold().startswith(text)
            return lambda v: isinstance(v, str) and v.casefold().endswith(text)
        if operator == "prefix":
            return lambda v: isinstance(v, str) and v.startswith(text)
        return lambda v: isinstance(v, str) and v.endswith(text)
    if operator == "equals-ignore-case":
        folded = _string(argument, operator).casefold()
        return lambda v: isinstance(v, str) and v.casefold() == folded
    if operator == "wildcard":
        text = _string(argument, operator)
        if "**" in text:
            raise _invalid(f"wildcard may not have consecutive '*': {text!r}")
        return _wildcard(text.split("*"))
    raise _invalid(f"unknown operator {operator!r}")


def _wildcard(parts: list[str]) -> Rule:
    """``*`` matches any run of characters: the first part is a prefix, the last a suffix,
    and each one between is found leftmost after the one before (linear in the value; a
    regular expression of many ``.*`` backtracks for ever on a long value)."""
    head, tail, middle = parts[0], parts[-1], parts[1:-1]
    least = sum(map(len, parts))
    if len(parts) == 1:
        return lambda v: isinstance(v, str) and v == head

    def rule(value: Any) -> bool:
        if not isinstance(value, str) or len(value) < least:
            return False
        if not value.startswith(head) or not value.endswith(tail):
            return False
        position, end = len(head), len(value) - len(tail)
        for part in middle:
            found = value.find(part, position, end)
            if found < 0:
                return False
            position = found + len(part)
        return True

    return rule


def _anything_but(argument: Any) -> Rule:
    if isinstance(argument, dict):
        if len(argument) != 1:
            raise _invalid(f"anything-but takes one operator, got {argument!r}")
        [(operator, inner)] = argument.items()
        if operator not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
            raise _invalid(f"anything-but does not take {operator!r}")
        if operator in ("equals-ignore-case", "wildcard") and isinstance(inner, list):
            if not inner:
                raise _invalid(f"anything-but {operator} takes a non-empty list")
            rules = [_string_operator(operator, item) for item in inner]
        elif operator in ("prefix", "suffix") and isinstance(inner, dict):
            raise _invalid(f"anything-but {operator} takes a string, got {inner!r}")
        else:
            rules = [_string_operator(operator, inner)]
        return lambda v: isinstance(v, str) and not any(rule(v) for rule in rules)
    values = argument if isinstance(argument, list) else [argument]
    if not values:
        raise _invalid("anything-but takes a non-empty list")
    if not all(isinstance(x, str) for x in values) and not all(isinstance(x, Number) for x in values):
        raise _invalid(f"anything-but takes strings or numbers (not both), got {argument!r}")
    excluded = [_exact(x) for x in values]
    return lambda v: not any(rule(v) for rule in excluded)


_LOWER = {">": float.__gt__, ">=": float.__ge__}
_UPPER = {"<": float.__lt__, "<=": float.__le__}


def _numeric(argument: Any) -> Rule:
    if not isinstance(argument, list) or len(argument) not in (2, 4):
        raise _invalid(f"numeric takes [op, number] or [op, number, op, number], got {argument!r}")
    comparisons: list[tuple[Callable[[float, float], bool], float]] = []
    kinds = []
    for op, bound in zip(argument[::2], argument[1::2], strict=True):
        if not isinstance(bound, Number):
            raise _invalid(f"numeric bounds must be numbers, got {bound!r}")
        if op == "=":
            kinds.append("=")
            comparisons.append((float.__eq__, bound.value))
        elif op in _LOWER or op in _UPPER:
            kinds.append("lower" if op in _LOWER else "upper")
            comparisons.append(({**_LOWER, **_UPPER}[op], bound.value))
        else:
            raise _invalid(f"numeric operator must be one of =, <, <=, >, >=, got {op!r}")
    if len(kinds) == 2:
        if sorted(kinds) != ["lower", "upper"]:
            raise _invalid(
                f"a numeric range is a lower bound (> or >=) and an upper one (< or <=), got {argument!r}"
            )
        low, high = comparisons if kinds[0] == "lower" else comparisons[::-1]
        if low[1] > high[1]:
            raise _invalid(f"a numeric range's lower bound is above its upper bound: {argument!r}")
    pairs = tuple(comparisons)
    return lambda v: isinstance(v, Number) and all(compare(v.value, bound) for compare, bound in pairs)


def _cidr(argument: Any) -> Rule:
    text = _string(argument, "cidr")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _invalid(f"cidr takes an IP network such as 10.0.0.0/24, got {text!r}") from None

    def rule(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            return ipaddress.ip_address(value) in network
        except ValueError:
            return False

    return rule


def _rule(item: Any) -> Rule | bool:
    """One element of a rule list: a rule on a leaf value, or ``exists``' wanted answer."""
    if not isinstance(item, dict):
        return _exact(item)
    if len(item) != 1:
        raise _invalid(f"an operator object has exactly one operator, got {item!r}")
    [(operator, argument)] = item.items()
    if operator == "exists":
        if not isinstance(argument, bool):
            raise _invalid(f"exists takes true or false, got {argument!r}")
        return argument
    if operator == "anything-but":
        return _anything_but(argument)
    if operator == "numeric":
        return _numeric(argument)
    if operator == "cidr":
        return _cidr(argument)
    return _string_operator(operator, argument)


# -- objects --------------------------------------------------------------------------


def _leaves(value: Any) -> list[Any]:
    """The leaf values a rule list is matched against: one for a scalar, each scalar of an
    array (arrays match when any element does), none for a missing key or an object.
    Iterative: a record's data may nest arrays as deep as JSON allows."""
    if value is _MISSING or isinstance(value, dict):
        return []
    if not isinstance(value, list):
        return [value]
    out: list[Any] = []
    pending = [iter(value)]
    while pending:
        for item in pending[-1]:
            if isinstance(item, list):
                pending.append(iter(item))
                break
            if not isinstance(item, dict):
                out.append(item)
        else:
            pending.pop()
    return out


def _field_rules(key: str, items: list[Any]) -> Test:
    if not items:
        raise _invalid(f"the rules of {key!r} are an empty list")
    rules: list[Rule] = []
    exists: set[bool] = set()
    for item in items:
        compiled = _rule(item)
        if isinstance(compiled, bool):
            exists.add(compiled)
        else:
            rules.append(compiled)

    def test(obj: Any) -> bool:
        leaves = _leaves(obj.get(key, _MISSING))
        if leaves:
            return True in exists or any(rule(v) for rule in rules for v in leaves)
        return False in exists

    return test


def _field_object(key: str, sub: Test) -> Test:
    def test(obj: Any) -> bool:
        value = obj.get(key, _MISSING)
        if isinstance(value, dict):
            return sub(value)
        if isinstance(value, list):
            objects = [v for v in value if isinstance(v, dict)]
            if objects:
                return any(sub(v) for v in objects)
        return sub({})  # only what matches absence can match here (``exists: false``)

    return test


def _any_of(branches: list[Test]) -> Test:
    return lambda obj: any(branch(obj) for branch in branches)


def _compile(pattern: Any, where: str = "the pattern", depth: int = 0) -> Test:
    if not isinstance(pattern, dict):
        raise _invalid(f"{where} must be a JSON object, got {pattern!r}")
    if depth >= MAX_DEPTH:
        raise _invalid(f"a pattern nests objects at most {MAX_DEPTH} deep")
    tests: list[Test] = []
    for key, rule in pattern.items():
        if key == "$or":
            if not isinstance(rule, list) or not rule:
                raise _invalid("$or takes a list of patterns")
            branches = [_compile(branch, "each pattern of $or", depth + 1) for branch in rule]
            tests.append(_any_of(branches))
        elif isinstance(rule, dict):
            tests.append(_field_object(key, _compile(rule, f"the pattern of {key!r}", depth + 1)))
        elif isinstance(rule, list):
            tests.append(_field_rules(key, rule))
        else:
            raise _invalid(f"the value of {key!r} must be a list of rules or an object, got {rule!r}")
    if len(tests) == 1:
        return tests[0]
    return lambda obj: all(test(obj) for test in tests)


def _data_keys(pattern: dict[str, Any]) -> Iterable[Any]:
    """The values of ``data`` at the pattern's top level (also inside top-level ``$or``)."""
    if "data" in pattern:
        yield pattern["data"]
    for branch in pattern.get("$or", ()):
        if isinstance(branch, dict):
            yield from _data_keys(branch)


class _Pattern:
    __slots__ = ("test", "uses_data")

    def __init__(self, text: Any) -> None:
        if isinstance(text, dict):
            text = json.dumps(text)
        if not isinstance(text, str):
            raise _invalid(f"a pattern is JSON text, got {text!r}")
        if len(text) > MAX_PATTERN_LENGTH:
            raise _invalid(f"a pattern is at most {MAX_PATTERN_LENGTH} characters, got {len(text)}")
        try:
            pattern = _load_pattern(text)
        except (ValueError, RecursionError):
            raise _invalid(f"not JSON (or a number out of range): {text[:200]!r}") from None
        self.test = _compile(pattern)
        data = list(_data_keys(pattern))
        if any(not isinstance(d, dict) for d in data):
            raise _invalid("the filter pattern for data must be a JSON object (the record's data, as JSON)")
        self.uses_data = bool(data)


class RecordFilter:
    """A mapping's filters, compiled: :meth:`matches` a record's view if any of them does."""

    def __init__(self, patterns: Sequence[Any]) -> None:
        if len(patterns) > MAX_FILTERS:
            raise InvalidConfig(
                f"an event source mapping takes at most {MAX_FILTERS} filters, got {len(patterns)}"
            )
        self._patterns = [_Pattern(p) for p in patterns]
        self.uses_data = any(p.uses_data for p in self._patterns)

    def matches(self, record: dict[str, Any]) -> bool:
        """``record``: a record's fields (see :func:`kinesis_fields`); its ``data`` is
        ``_MISSING`` when it is not valid JSON, which no pattern on ``data`` matches."""
        has_data = record.get("data", _MISSING) is not _MISSING
        return any((has_data or not p.uses_data) and p.test(record) for p in self._patterns)


def normalize(patterns: Any) -> tuple[str, ...]:
    """Filters as given to the Python API (JSON text, or dicts dumped to it), checked."""
    if patterns is None:
        return ()
    if isinstance(patterns, (str, bytes, dict)) or not isinstance(patterns, Iterable):
        raise InvalidConfig(f"filters must be a list of patterns (JSON text), got {patterns!r}")
    out = tuple(json.dumps(p) if isinstance(p, dict) else p for p in patterns)
    RecordFilter(out)  # raises for a bad one
    return out


def decode_data(data: str) -> Any:
    """A record's base64 data as JSON, or ``_MISSING`` when it is not (valid UTF-8) JSON."""
    try:
        return loads(base64.b64decode(data, validate=True))
    except (ValueError, binascii.Error, RecursionError, UnicodeDecodeError):
        return _MISSING


def kinesis_fields(
    shard_id: str, partition_key: str, sequence_number: str, data: str, arrival: float, *, with_data: bool
) -> dict[str, Any]:
    """What a pattern sees of a Kinesis record: its ``kinesis`` fields (``data`` decoded) and
    its ``eventID``. The fields every record of the source shares (``eventSource``,
    ``eventSourceARN``, ``awsRegion``, ...) are not there to filter on, as in Lambda."""
    fields = {
        "eventID": f"{shard_id}:{sequence_number}",
        "kinesisSchemaVersion": "1.0",
        "partitionKey": partition_key,
        "sequenceNumber": sequence_number,
        "approximateArrivalTimestamp": Number(repr(arrival)),
    }
    if with_data:
        fields["data"] = decode_data(data)
    return fields


__all__ = ["MAX_FILTERS", "RecordFilter", "kinesis_fields", "normalize"]
