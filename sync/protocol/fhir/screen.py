"""Screening one Bulk Data NDJSON line: its bounded parse and its strict validation, a pure
function of the line's bytes, so that it can run in another process (the gateway's import uses
a second core for it: ``sync.gateway.upstream.screening``).

Invariants:
- ``screen_parsed`` parses exactly as the in-process import does (``loads_bounded_with_depth``
  with ``MAX_PAGE_DEPTH``): a line that fails is ``ndjson_unreadable``; a value that is not an
  object with a string ``resourceType`` is ``ndjson_not_a_resource``.
- ``valid`` is True only when ``validate_resource`` accepted the parsed resource. The bytes are
  the whole input: parsing the same bytes again with a strict JSON parser gives an equal
  resource, which that validator accepts too, so a caller that re-parses them need not
  validate again. False says nothing more (the caller validates again for the reason and path).
- This module imports nothing but the protocol's JSON and validation (a worker process starts
  fast).
- A worker started with ``watch_parent`` exits within a second of the process that started it
  going away, however it went (kill -9 included): no orphan is left screening for no one.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from sync.protocol.fhir.bounded_json import (
    MAX_PAGE_DEPTH,
    BoundedJsonError,
    loads_bounded_with_depth,
)
from sync.protocol.fhir.validate import InvalidResource, validate_resource

UNREADABLE = "ndjson_unreadable"
NOT_A_RESOURCE = "ndjson_not_a_resource"

# (reason a line is not a resource, or ""; nesting depth; validate_resource accepted it)
Verdict = tuple[str, int, bool]


def screen_parsed(line: bytes) -> tuple[Verdict, dict[str, Any] | None]:
    """The verdict on one line (module docstring), and the resource it parsed to (None: not
    a resource; the caller may go on with it, e.g. to serialise it, in the same worker)."""
    try:
        value, depth = loads_bounded_with_depth(line, max_depth=MAX_PAGE_DEPTH)
    except BoundedJsonError:
        return (UNREADABLE, 0, False), None
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return (NOT_A_RESOURCE, 0, False), None
    try:
        validate_resource(value)
    except InvalidResource:
        return ("", depth, False), value
    return ("", depth, True), value


def watch_parent(parent: int, interval_s: float = 1.0) -> None:
    """Worker initializer: exit as soon as ``parent`` is no longer this process's parent."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
