"""Lambda's event filtering grammar (FilterCriteria patterns) on Kinesis records.

Pure tests of the matcher, one per element of the grammar as Lambda documents it ("Control
which events Lambda sends to your function", and its Kinesis section); the mapping's
behaviour with real sandboxes is in test_streams.py and test_http_control.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from fnrt import InvalidConfig, StreamMappingConfig
from fnrt._filters import RecordFilter, kinesis_fields


def record(
    data: Any = None, *, raw: bytes | None = None, key: str = "user-1", seq: str = "0042"
) -> dict[str, Any]:
    payload = raw if raw is not None else json.dumps(data).encode()
    data = base64.b64encode(payload).decode()
    return kinesis_fields("shardId-000000000003", key, seq, data, 1700000000.5, with_data=True)


def passes(pattern: Any, rec: dict[str, Any]) -> bool:
    text = pattern if isinstance(pattern, str) else json.dumps(pattern)
    return RecordFilter([text]).matches(rec)


def on_data(rules: Any) -> dict[str, Any]:
    return {"data": {"field": rules}}


def test_exact_values_in_a_list_match_any_of_them() -> None:
    pattern = on_data(["Credit", "Debit"])
    assert passes(pattern, record({"field": "Credit"}))
    assert passes(pattern, record({"field": "Debit"}))
    assert not passes(pattern, record({"field": "credit"}))  # no case folding
    assert not passes(pattern, record({"other": "Credit"}))  # the field must be there


def test_numbers_match_exactly_as_written_and_strings_are_not_numbers() -> None:
    assert passes(on_data([300]), record({"field": 300}))
    # Lambda: "300, 300.0, and 3.0e2 are not considered equal"
    assert not passes(on_data([300]), record({"field": 300.0}))
    assert not passes(on_data([300]), record({"field": 3.0e2}))
    assert not passes(on_data([300]), record({"field": "300"}))
    assert not passes(on_data(["300"]), record({"field": 300}))
    assert passes(on_data([True]), record({"field": True}))
    assert not passes(on_data([True]), record({"field": 1}))


def test_null_and_empty_string() -> None:
    assert passes(on_data([None]), record({"field": None}))
    assert not passes(on_data([None]), record({}))  # null is a value, not absence
    assert not passes(on_data([None]), record({"field": ""}))
    assert passes(on_data([""]), record({"field": ""}))
    assert not passes(on_data([""]), record({"field": None}))


def test_prefix_and_suffix() -> None:
    assert passes(on_data([{"prefix": "us-"}]), record({"field": "us-east-1"}))
    assert not passes(on_data([{"prefix": "us-"}]), record({"field": "eu-west-1"}))
    assert passes(on_data([{"suffix": ".png"}]), record({"field": "cat.png"}))
    assert not passes(on_data([{"suffix": ".png"}]), record({"field": "cat.PNG"}))
    assert not passes(on_data([{"prefix": "1"}]), record({"field": 12}))  # strings only
    assert passes(on_data([{"prefix": {"equals-ignore-case": "US-"}}]), record({"field": "us-east-1"}))
    assert passes(on_data([{"suffix": {"equals-ignore-case": ".PNG"}}]), record({"field": "cat.png"}))


def test_equals_ignore_case() -> None:
    assert passes(on_data([{"equals-ignore-case": "alice"}]), record({"field": "ALICE"}))
    assert not passes(on_data([{"equals-ignore-case": "alice"}]), record({"field": "alicia"}))


def test_anything_but_values_and_prefix() -> None:
    but = on_data([{"anything-but": ["Raining", "Snowing"]}])
    assert passes(but, record({"field": "Sunny"}))
    assert not passes(but, record({"field": "Raining"}))
    assert not passes(but, record({}))  # a missing field is not "anything"
    assert passes(on_data([{"anything-but": "Raining"}]), record({"field": "Sunny"}))
    assert not passes(on_data([{"anything-but": 100}]), record({"field": 100}))
    assert passes(on_data([{"anything-but": 100}]), record({"field": 101}))
    prefix = on_data([{"anything-but": {"prefix": "us-"}}])
    assert passes(prefix, record({"field": "eu-west-1"}))
    assert not passes(prefix, record({"field": "us-east-1"}))
    suffix = on_data([{"anything-but": {"suffix": ".png"}}])
    assert not passes(suffix, record({"field": "a.png"})) and passes(suffix, record({"field": "a.gif"}))
    folded = on_data([{"anything-but": {"equals-ignore-case": ["A", "b"]}}])
    assert not passes(folded, record({"field": "B"})) and passes(folded, record({"field": "c"}))


def test_numeric_equals_and_ranges() -> None:
    assert passes(on_data([{"numeric": ["=", 100]}]), record({"field": 100.0}))  # by value
    assert not passes(on_data([{"numeric": ["=", 100]}]), record({"field": "100"}))
    between = on_data([{"numeric": [">", 10, "<=", 20]}])
    seen = [passes(between, record({"field": n})) for n in (10, 10.5, 20, 20.01)]
    assert seen == [False, True, True, False]
    assert passes(on_data([{"numeric": [">=", 0]}]), record({"field": 0}))
    upper_first = on_data([{"numeric": ["<=", 20, ">", 10]}])
    assert passes(upper_first, record({"field": 15})) and not passes(upper_first, record({"field": 25}))
    assert not passes(on_data([{"numeric": ["<", 0]}]), record({"field": 0}))


def test_exists_true_and_false() -> None:
    assert passes(on_data([{"exists": True}]), record({"field": "x"}))
    assert not passes(on_data([{"exists": True}]), record({"other": "x"}))
    assert passes(on_data([{"exists": False}]), record({"other": "x"}))
    assert not passes(on_data([{"exists": False}]), record({"field": "x"}))
    # exists is about leaf values: an object in its place is not one
    assert not passes(on_data([{"exists": True}]), record({"field": {"inner": 1}}))


def test_cidr_and_wildcard() -> None:
    assert passes(on_data([{"cidr": "10.0.0.0/24"}]), record({"field": "10.0.0.17"}))
    assert not passes(on_data([{"cidr": "10.0.0.0/24"}]), record({"field": "10.0.1.17"}))
    assert not passes(on_data([{"cidr": "10.0.0.0/24"}]), record({"field": "not an ip"}))
    assert passes(on_data([{"wildcard": "img/*.png"}]), record({"field": "img/cat.png"}))
    assert not passes(on_data([{"wildcard": "img/*.png"}]), record({"field": "doc/cat.png"}))
    assert passes(on_data([{"wildcard": "a*b*a"}]), record({"field": "aba"}))
    assert not passes(on_data([{"wildcard": "ab*ba"}]), record({"field": "aba"}))  # no overlap
    assert passes(on_data([{"wildcard": "*"}]), record({"field": ""}))
    # many stars against a long value that almost matches: answered at once, no backtracking
    assert not passes(on_data([{"wildcard": "*a" * 40 + "*b"}]), record({"field": "a" * 100_000}))


def test_keys_of_one_object_must_all_match_and_or_takes_either() -> None:
    both = {"data": {"Location": ["New York"], "Day": ["Monday"]}}
    assert passes(both, record({"Location": "New York", "Day": "Monday"}))
    assert not passes(both, record({"Location": "New York", "Day": "Tuesday"}))
    either = {"data": {"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]}}
    assert passes(either, record({"Location": "Boston", "Day": "Monday"}))
    assert passes(either, record({"Location": "New York", "Day": "Friday"}))
    assert not passes(either, record({"Location": "Boston", "Day": "Friday"}))
    top = {"$or": [{"partitionKey": ["user-1"]}, {"data": {"vip": [True]}}]}
    assert passes(top, record({}, key="user-1")) and passes(top, record({"vip": True}, key="user-2"))
    assert not passes(top, record({"vip": False}, key="user-2"))


def test_nested_keys_and_arrays() -> None:
    pattern = {"data": {"order": {"type": ["buy"], "quantity": [{"numeric": [">", 100]}]}}}
    buy = {"type": "buy", "stock": "ANYCO", "quantity": 1000}
    assert passes(pattern, record({"record": 1, "order": buy}))
    assert not passes(pattern, record({"order": {"type": "sell", "quantity": 1000}}))
    assert not passes(pattern, record({"order": "buy"}))
    # an array in the event matches when any of its elements does (the same element for an object)
    assert passes(on_data(["b"]), record({"field": ["a", "b"]}))
    items = {"data": {"items": {"sku": ["x"], "qty": [2]}}}
    assert passes(items, record({"items": [{"sku": "y", "qty": 2}, {"sku": "x", "qty": 2}]}))
    assert not passes(items, record({"items": [{"sku": "x", "qty": 1}, {"sku": "y", "qty": 2}]}))


def test_metadata_keys_of_a_kinesis_record() -> None:
    assert passes({"partitionKey": ["user-1"]}, record({}))
    assert not passes({"partitionKey": ["user-2"]}, record({}))
    assert passes({"sequenceNumber": [{"prefix": "00"}]}, record({}))
    assert passes({"kinesisSchemaVersion": ["1.0"]}, record({}))
    assert passes({"eventID": ["shardId-000000000003:0042"]}, record({}))
    assert not passes({"eventSource": ["aws:kinesis"]}, record({}))  # not a field to filter on
    assert passes({"approximateArrivalTimestamp": [{"numeric": [">", 1700000000]}]}, record({}))
    both = {"partitionKey": ["user-1"], "data": {"Location": ["Los Angeles"]}}
    assert passes(both, record({"Location": "Los Angeles"}))
    assert not passes(both, record({"Location": "Los Angeles"}, key="user-9"))


def test_data_that_is_not_json_matches_no_pattern_on_data() -> None:
    text = record(raw=b"plain text, not JSON")
    assert not passes({"data": {"field": [{"exists": False}]}}, text)
    assert not passes({"data": {"field": [{"exists": False}]}}, record(raw=b"\xff\xfe binary"))
    assert not passes({"data": {"field": [{"exists": False}]}}, record(raw=b'{"field": NaN}'))
    assert passes({"partitionKey": ["user-1"]}, text)  # metadata still filters


def test_deeply_nested_data_is_matched_without_running_out_of_stack() -> None:
    deep: Any = "x"
    for _ in range(800):
        deep = [deep]
    assert passes(on_data(["x"]), record({"field": deep}))
    assert not passes(on_data(["y"]), record({"field": deep}))
    nested = {"field": ["x"]}
    for _ in range(60):
        nested = {"n": nested}
    assert passes({"data": nested}, record(json.loads(json.dumps(nested).replace('["x"]', '"x"'))))


def test_a_record_passes_when_any_filter_matches() -> None:
    filters = RecordFilter([json.dumps(on_data(["a"])), json.dumps({"partitionKey": ["vip"]})])
    assert filters.matches(record({"field": "a"}, key="x"))
    assert filters.matches(record({"field": "b"}, key="vip"))
    assert not filters.matches(record({"field": "b"}, key="x"))


@pytest.mark.parametrize(
    "pattern",
    [
        "not json",
        "[]",
        '"text"',
        '{"field": "x"}',  # rules are a list
        '{"field": []}',
        '{"field": [["nested"]]}',
        '{"field": [{"unknown-op": 1}]}',
        '{"field": [{"prefix": "a", "suffix": "b"}]}',
        '{"field": [{"prefix": 1}]}',
        '{"field": [{"exists": "yes"}]}',
        '{"field": [{"numeric": [">", "ten"]}]}',
        '{"field": [{"numeric": [">", 1, ">", 0]}]}',
        '{"field": [{"numeric": [">", 10, "<", 5]}]}',
        '{"field": [{"numeric": ["<", 5, ">", 10]}]}',
        '{"field": [{"numeric": ["=", 5, "<", 10]}]}',
        '{"field": [{"numeric": ["!=", 1]}]}',
        '{"field": [{"anything-but": []}]}',
        '{"field": [{"anything-but": ["a", 1]}]}',
        '{"field": [{"cidr": "10.0.0.0/99"}]}',
        '{"$or": []}',
        '{"$or": [{"a": ["x"]}, ["y"]]}',
        '{"data": ["plain"]}',  # a pattern on data must be JSON (an object)
        '{"a": [1e999999]}',
        "{" * 5000,  # over the API's 4096 characters
        '{"a":' * 600 + '["x"]' + "}" * 600,  # nested deeper than matching may recurse
    ],
)
def test_an_invalid_pattern_is_refused_when_the_mapping_is_configured(pattern: str) -> None:
    with pytest.raises(InvalidConfig, match="filter pattern"):
        StreamMappingConfig(filters=[pattern])


def test_filters_are_json_text_or_dicts_and_at_most_five() -> None:
    config = StreamMappingConfig(filters=[{"partitionKey": ["a"]}, '{"data": {"x": [1]}}'])
    assert config.filters == ('{"partitionKey": ["a"]}', '{"data": {"x": [1]}}')
    assert StreamMappingConfig(filters=[]).filters == ()
    with pytest.raises(InvalidConfig, match="at most 5 filters"):
        StreamMappingConfig(filters=[json.dumps({"partitionKey": [str(n)]}) for n in range(6)])
    with pytest.raises(InvalidConfig, match="list of patterns"):
        StreamMappingConfig(filters='{"partitionKey": ["a"]}')
