"""Bounded JSON parsing for everything that arrives over the wire (NW-3).

Invariants guaranteed by :func:`loads_bounded`:

- The size is checked **before** any parsing: more than ``max_bytes`` is refused unread.
- The result nests at most ``max_depth`` containers deep (``{}`` and ``[]`` count 1 each; a
  scalar counts 0) and holds at most ``max_items`` array elements plus object members in total.
- An object never has two members with the same key (a later one cannot silently shadow an
  earlier one that a validator or another parser might have seen).
- ``NaN``, ``Infinity`` and numbers that overflow a double are refused; the input must be
  strict UTF-8 JSON (no BOM, no lone surrogates).
- Every failure, whatever its cause, is one exception type, :class:`BoundedJsonError`, with a
  stable ``reason``: ``too_large``, ``too_deep``, ``too_many_items``, ``malformed`` or
  ``duplicate_key``. No other exception escapes (a Hypothesis test feeds it arbitrary bytes).
  The message never quotes the input: it may hold patient data.

How: orjson parses (it is strict and fast; it stops by itself past 1,024 levels, which we map
to ``too_deep``), then a breadth-first walk over the containers, one level at a time — no
recursion, so hostile nesting cannot blow the stack — checks depth and item count.

Duplicate keys. orjson keeps the last of duplicate keys without saying so. Rather than
re-parse every page slowly, we count: outside strings, a ``:`` appears in JSON only between a
member's key and its value, so the raw input holds exactly (members + colons inside strings)
colons. Re-serialising the parsed value with orjson (fast, C) gives the same figure for what
was kept. When the input has no ``\\u003a``/``\\u003A`` escape (an escaped colon is the only
way the two counts can differ legitimately), the counts are equal if and only if no member
was dropped, i.e. there was no duplicate. Only when such an escape is present do we fall back
to an exact check with the standard library (``object_pairs_hook``); that is slower but still
bounded, because it runs only after size, depth and item count have passed.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import orjson

from sync.protocol.errors import ProtocolError

# One page of a FHIR search or history answer. A page of 1,000 resources of the size our
# gateway serves is about 2-4 MiB; 32 MiB leaves room for large notes and other servers' pages
# while keeping a hostile answer from exhausting a laptop's memory.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

# A control-plane answer (enrolment, login, policy, commands, time) is small.
MAX_CONTROL_BYTES = 1 * 1024 * 1024

# FHIR resources nest modestly: Bundle > entry > resource > component > code > coding is
# about 10 levels, nested extensions a few more. 32 is ample for any real resource and
# cheap to walk.
MAX_DEPTH = 32

# A page of a search or history answer (Bundle > entry[] > {} > resource: 3 levels above a
# resource) may carry a resource nested past MAX_DEPTH: that resource is quarantined on its
# own and the rest of the page goes on. A page nested past this is refused as a whole.
MAX_PAGE_DEPTH = 128

# Array elements plus object members in one document. A 32 MiB page of real resources holds
# well under a million values; this bounds the Python objects a hostile page can create.
MAX_ITEMS = 2_000_000

_ESCAPED_COLONS = (b"\\u003a", b"\\u003A")


class BoundedJsonError(ProtocolError, ValueError):
    """The input is not bounded, strict JSON. ``reason`` is a stable code for logs and audit."""

    REASONS = frozenset({"too_large", "too_deep", "too_many_items", "malformed", "duplicate_key"})

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in self.REASONS, reason
        super().__init__(reason, detail)
        self.detail = detail


def _fail(reason: str, detail: str = "") -> NoReturn:
    raise BoundedJsonError(reason, detail)


_CONTAINERS = frozenset({dict, list})


def _check_shape(value: Any, max_depth: int, max_items: int) -> tuple[int, int]:
    """Walk the containers level by level (no recursion); return (object members, depth)."""
    level = [value] if type(value) in _CONTAINERS else []
    depth = 0
    items = 0
    members = 0
    while level:
        depth += 1
        if depth > max_depth:
            _fail("too_deep", f"more than {max_depth} levels")
        children: list[Any] = []
        extend = children.extend
        for node in level:
            if type(node) is dict:
                members += len(node)
                extend(node.values())
            else:
                extend(node)
        items += len(children)
        if items > max_items:
            _fail("too_many_items", f"more than {max_items} items")
        level = [child for child in children if type(child) in _CONTAINERS]
    return members, depth


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (``{}``/``[]`` count 1 each, a scalar 0), no recursion."""
    return _check_shape(value, max_depth=2**31, max_items=2**62)[1]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        _fail("duplicate_key", "an object repeats a key")
    return result


def _reject_constant(name: str) -> NoReturn:
    _fail("malformed", f"non-finite number {name}")


def _exact_duplicate_check(data: bytes) -> None:
    try:
        json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except BoundedJsonError:
        raise
    except (ValueError, RecursionError) as exc:  # pragma: no cover - orjson accepted it
        raise BoundedJsonError("malformed", type(exc).__name__) from None


def loads_bounded(
    data: bytes,
    *,
    max_bytes: int = MAX_RESPONSE_BYTES,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
) -> Any:
    """Parse ``data`` as strict JSON within the given bounds, or raise BoundedJsonError."""
    return loads_bounded_with_depth(
        data, max_bytes=max_bytes, max_depth=max_depth, max_items=max_items
    )[0]


def loads_bounded_with_depth(
    data: bytes,
    *,
    max_bytes: int = MAX_RESPONSE_BYTES,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
) -> tuple[Any, int]:
    """``loads_bounded``, also returning the document's nesting depth (same walk, no extra
    cost): a page parsed with ``MAX_PAGE_DEPTH`` tells whether any resource in it may be too
    deep, so that resource alone can be quarantined."""
    if not isinstance(data, bytes | bytearray | memoryview):
        _fail("malformed", "input is not bytes")
    if len(data) > max_bytes:
        _fail("too_large", f"{len(data)} bytes > {max_bytes}")
    raw = bytes(data)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):
            raise BoundedJsonError("too_deep", "past the parser's own limit") from None
        raise BoundedJsonError("malformed", "not strict JSON") from None
    members, depth = _check_shape(value, max_depth, max_items)
    if members:
        raw_colons = raw.count(b":")
        if b"\\u003" in raw and any(escape in raw for escape in _ESCAPED_COLONS):
            _exact_duplicate_check(raw)
        elif raw_colons != orjson.dumps(value).count(b":"):
            _fail("duplicate_key", "an object repeats a key")
    return value, depth


def dumps(value: Any) -> bytes:
    """Serialise ``value`` as compact UTF-8 JSON (orjson): the codec every sender uses."""
    return orjson.dumps(value)
