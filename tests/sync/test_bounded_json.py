"""NW-3: wire JSON is bounded (size, depth, items), strict, and free of duplicate keys."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.protocol.fhir import bounded_json
from sync.protocol.fhir.bounded_json import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_RESPONSE_BYTES,
    BoundedJsonError,
    loads_bounded,
)


def _reason(data: bytes, **limits: int) -> str:
    with pytest.raises(BoundedJsonError) as caught:
        loads_bounded(data, **limits)
    return caught.value.reason


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_NW3_limits_are_named_and_sane() -> None:
    assert MAX_RESPONSE_BYTES == 32 * 1024 * 1024
    assert 16 <= MAX_DEPTH <= 64
    assert MAX_ITEMS >= 100_000


def test_NW3_size_is_checked_before_parsing() -> None:
    # Not JSON at all: only a size check that runs first can answer too_large.
    assert _reason(b"\xff" * 101, max_bytes=100) == "too_large"
    assert loads_bounded(b" " * 90 + b"[1,2]", max_bytes=95) == [1, 2]
    assert _reason(b" " * 91 + b"[1,2]", max_bytes=95) == "too_large"


def test_NW3_depth_is_bounded() -> None:
    assert loads_bounded(_nested(5), max_depth=5) == [[[[[]]]]]
    assert _reason(_nested(6), max_depth=5) == "too_deep"
    assert _reason(b'{"a":{"b":{"c":1}}}', max_depth=2) == "too_deep"
    assert loads_bounded(b'{"a":{"b":{"c":1}}}', max_depth=3) == {"a": {"b": {"c": 1}}}
    assert loads_bounded(b'"scalar"', max_depth=0) == "scalar"
    assert _reason(b"[]", max_depth=0) == "too_deep"


def test_NW3_depth_past_the_parsers_own_limit_is_too_deep_not_a_crash() -> None:
    assert _reason(_nested(100_000), max_bytes=10**6) == "too_deep"
    assert _reason(b'{"a":' * 5000 + b"1" + b"}" * 5000) == "too_deep"


def test_NW3_default_depth_is_enforced() -> None:
    assert loads_bounded(_nested(MAX_DEPTH)) is not None
    assert _reason(_nested(MAX_DEPTH + 1)) == "too_deep"


def test_NW3_item_count_is_bounded() -> None:
    assert loads_bounded(b"[1,2,3,4,5]", max_items=5) == [1, 2, 3, 4, 5]
    assert _reason(b"[1,2,3,4,5,6]", max_items=5) == "too_many_items"
    # Object members and nested elements all count.
    assert _reason(b'{"a":[1,2],"b":{"c":3}}', max_items=4) == "too_many_items"
    assert loads_bounded(b'{"a":[1,2],"b":{"c":3}}', max_items=5) is not None


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',
        b'{"x":{"id":"1","id":"2"}}',
        b'[{"ok":1},{"k":1,"k":1}]',
        b'{"a":1,"\\u0061":2}',  # the same key, once escaped
        b'{"a":{"t":"10:00"},"a":2,"z":"\\u003a"}',  # an escaped colon forces the exact check
        b'{"u":"\\u003A","u":"\\u003a"}',
    ],
)
def test_NW3_duplicate_keys_are_refused(data: bytes) -> None:
    assert _reason(data) == "duplicate_key"


@pytest.mark.parametrize(
    "data",
    [
        b'{"when":"2025-01-01T10:00:00+00:00","url":"http://loinc.org","a:b":"c:d"}',
        b'{"a":"\\u003a","b":"x:\\u003Ay"}',
        b'{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}',
        b'["\\\\u003a",{"k":":"}]',  # a literal backslash before u003a, not an escape
    ],
)
def test_NW3_colons_in_strings_are_not_mistaken_for_duplicates(data: bytes) -> None:
    assert loads_bounded(data) == json.loads(data)


@pytest.mark.parametrize(
    "data",
    [
        b"NaN",
        b"[Infinity]",
        b"[-Infinity]",
        b"1e400",
        b'{"v":-1e999}',
        b"",
        b"   ",
        b"\xef\xbb\xbf{}",
        b'"\xff"',
        b'"\\ud800"',
        b"[1,]",
        b"{'a':1}",
        b"[1] [2]",
        b"[1",
    ],
)
def test_NW3_non_strict_json_is_malformed(data: bytes) -> None:
    assert _reason(data) == "malformed"


def test_non_bytes_input_is_malformed() -> None:
    assert _reason("[]") == "malformed"  # type: ignore[arg-type]


def test_one_exception_type_with_stable_reasons_and_no_input_echo() -> None:
    with pytest.raises(BoundedJsonError) as caught:
        loads_bounded('{"name":"CANARY-Ødegård","name":1}'.encode())
    assert isinstance(caught.value, ValueError)
    assert caught.value.reason in BoundedJsonError.REASONS
    assert "CANARY" not in str(caught.value)


def test_bytearray_and_memoryview_are_accepted() -> None:
    assert loads_bounded(bytearray(b"[1]")) == [1]
    assert loads_bounded(memoryview(b'{"a":2}')) == {"a": 2}


def test_dumps_round_trips() -> None:
    value = {"name": [{"family": "O'Brien", "given": ["Zoë"]}], "n": 1.5}
    assert loads_bounded(bounded_json.dumps(value)) == value


# --- properties ------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(alphabet=':ab\\"é', max_size=3), children, max_size=5)
    ),
    max_leaves=30,
)


def _shape(value: Any, depth: int = 0) -> tuple[int, int]:
    """(depth, items) computed independently, recursively."""
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return depth, 0
    deepest, items = depth + 1, len(children)
    for child in children:
        d, n = _shape(child, depth + 1)
        deepest, items = max(deepest, d), items + n
    return deepest, items


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_NW3_any_bytes_give_a_value_or_BoundedJsonError(data: bytes) -> None:
    try:
        loads_bounded(data, max_bytes=150, max_depth=4, max_items=20)
    except BoundedJsonError as exc:
        assert exc.reason in BoundedJsonError.REASONS


_TOKENS = [b"{", b"}", b"[", b"]", b'"a"', b'"b"', b":", b",", b"1", b"-0.5e3", b"1e999",
           b"true", b"null", b"NaN", b'"\\u003a"', b'"x:y"', b" ", b"\\"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=40).map(b"".join))
def test_NW3_json_like_token_soup_gives_a_value_or_BoundedJsonError(data: bytes) -> None:
    try:
        value = loads_bounded(data, max_depth=3, max_items=8)
    except BoundedJsonError as exc:
        assert exc.reason in BoundedJsonError.REASONS
    else:
        assert value == json.loads(data)  # strict JSON that the standard library agrees on
        assert _shape(value)[0] <= 3 and _shape(value)[1] <= 8


@settings(max_examples=300, deadline=None)
@given(_JSON, st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=30))
def test_NW3_limits_are_exact(value: Any, max_depth: int, max_items: int) -> None:
    depth, items = _shape(value)
    data = orjson.dumps(value)
    try:
        parsed = loads_bounded(data, max_depth=max_depth, max_items=max_items)
    except BoundedJsonError as exc:
        assert depth > max_depth or items > max_items, exc.reason
        assert exc.reason in {"too_deep", "too_many_items"}
    else:
        assert depth <= max_depth and items <= max_items
        assert parsed == value


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(alphabet=':a\\"', max_size=3), _JSON, min_size=1, max_size=4))
def test_NW3_a_repeated_member_is_always_found(obj: dict[str, Any]) -> None:
    key, value = next(iter(obj.items()))
    body = orjson.dumps(obj)[1:-1]
    member = orjson.dumps({key: value})[1:-1]
    doc = b"{" + body + b"," + member + b"}"
    assert _reason(doc) == "duplicate_key"
    # With a colon escaped (the exact fallback path), the duplicate is still found; escaping a
    # structural colon makes the document malformed instead.
    escaped = doc.replace(b":", b"\\u003a", 1)
    assert _reason(escaped) in {"duplicate_key", "malformed"}


def test_the_depth_comes_back_with_the_value_and_json_depth_agrees() -> None:
    for data, depth in [(b"1", 0), (b"[]", 1), (b'{"a":[{"b":1}]}', 3), (_nested(40), 40)]:
        value, seen = bounded_json.loads_bounded_with_depth(data, max_depth=64)
        assert seen == depth == bounded_json.json_depth(value)
    # The page bound is wider than the resource bound, and still a bound.
    assert bounded_json.MAX_PAGE_DEPTH > MAX_DEPTH + 3
    assert (
        _reason(_nested(bounded_json.MAX_PAGE_DEPTH + 1), max_depth=bounded_json.MAX_PAGE_DEPTH)
        == "too_deep"
    )
