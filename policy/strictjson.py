"""Strict JSON decoding for untrusted policy bytes.

Invariant: :func:`loads_strict` accepts only UTF-8 JSON text without a byte-order mark, with
no duplicate object keys and no ``NaN``/``Infinity``; anything else (including nesting deep
enough to exhaust the parser's recursion limit, or an integer with too many digits) raises
:class:`StrictJSONError` and never any other exception.
"""

from __future__ import annotations

import json
from typing import Any


class StrictJSONError(ValueError):
    """The bytes are not strict JSON (the message is safe to show: no input echoed)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError("duplicate key in JSON object")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise StrictJSONError(f"non-standard JSON constant {name}")


def loads_strict(data: bytes) -> Any:
    """Decode ``data`` as strict JSON, or raise :class:`StrictJSONError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJSONError("not UTF-8") from None
    if text.startswith("\ufeff"):
        raise StrictJSONError("byte-order mark not allowed")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError(f"not valid JSON ({type(exc).__name__})") from None
