"""References between the gateway's ids and the upstream's, both ways.

A resource a laptop created has a gateway id; once filed it also has an upstream id
(``upstream_filed``). A record imported from upstream keeps the upstream's id. So a reference
``Type/<gateway id>`` of a filed resource is ``Type/<upstream id>`` upstream, and back.

Invariants:
- Only relative ``Type/id`` references in a ``reference`` member are rewritten; everything else
  is left untouched. ``Patient`` references never change (patients are imported, same ids).
- ``to_upstream`` reports a reference to a gateway resource that is not filed yet (it has an
  outbox row still to file): the caller waits rather than send a dangling reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sync.protocol.fhir.vocabulary import ID_RE

# (type, id) → the other side's id, a ``urn:uuid:`` of the same Bundle, "" (not there yet),
# or None (leave the reference as it is).
Lookup = Callable[[str, str], str | None]


def _split(reference: str) -> tuple[str, str] | None:
    rtype, _, rid = reference.partition("/")
    if not rtype.isalpha() or not ID_RE.fullmatch(rid):
        return None
    return rtype, rid


def rewrite(value: Any, lookup: Lookup, unresolved: list[str] | None = None) -> Any:
    """A copy of ``value`` with every mapped reference rewritten; references ``lookup`` marks
    unresolved (it returns ``""``) are collected in ``unresolved``."""
    if isinstance(value, list):
        return [rewrite(item, lookup, unresolved) for item in value]
    if not isinstance(value, dict):
        return value
    out = {key: rewrite(item, lookup, unresolved) for key, item in value.items()}
    reference = value.get("reference")
    if isinstance(reference, str) and (parts := _split(reference)) is not None:
        mapped = lookup(*parts)
        if mapped == "" and unresolved is not None:
            unresolved.append(reference)
        elif mapped and mapped.startswith("urn:uuid:"):
            out["reference"] = mapped  # an entry of the same transaction Bundle
        elif mapped:
            out["reference"] = f"{parts[0]}/{mapped}"
    return out


_REFERENCE_MEMBER = re.compile(rb'"reference":"([^"]*)"')


def references_in_json(compact: bytes) -> list[tuple[str, str]]:
    """(type, id) of every reference ``rewrite`` would look up in the value ``compact`` is
    the JSON of, as ``orjson.dumps`` writes it (no whitespace, ``/`` never escaped): in such
    JSON ``"reference":"`` only ever opens a member named ``reference`` holding a string, and
    a value with an escape in it is never a relative reference."""
    found: list[tuple[str, str]] = []
    for match in _REFERENCE_MEMBER.finditer(compact):
        parts = _split(match.group(1).decode("utf-8", "replace"))
        if parts is not None:
            found.append(parts)
    return found
