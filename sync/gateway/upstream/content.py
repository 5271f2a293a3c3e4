"""When two versions of a note are "the same note": what filing and the import compare.

Invariants:
- Everything but ``id``, ``meta`` and ``text`` is compared (the server's id, version, stamps,
  tags and narrative are its own), with JSON numbers compared by value: ``99`` and ``99.0``
  are the same (servers reformat them).
- Pure: no I/O, nothing logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_NOT_CONTENT = ("id", "meta", "text")


def _numbers_as_values(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numbers_as_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_values(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def content_of(resource: Mapping[str, Any]) -> bytes:
    """The note's content, canonical (sorted keys, numbers by value)."""
    body = {k: v for k, v in resource.items() if k not in _NOT_CONTENT}
    return orjson.dumps(_numbers_as_values(body), option=orjson.OPT_SORT_KEYS)


def same_content(one: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    return content_of(one) == content_of(other)
