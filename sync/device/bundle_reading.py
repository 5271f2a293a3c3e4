"""Reading what a FHIR server sent, for the pull (``sync.device.pull``): the stamps of a page
and a quarantined entry. Pure functions; nothing here fetches. Links, totals and instants,
which the gateway's upstream import reads too, are in ``sync.protocol.fhir.paging``.

Invariants:
- ``page_stamps`` refuses a searched resource with no ``meta.lastUpdated``
  (``bad_response``), because the keyset search orders by it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from sync.device.outcome import SyncError
from sync.device.replica import Quarantined
from sync.protocol.fhir.paging import last_updated
from sync.protocol.fhir.validate import InvalidResource


def page_stamps(resources: Sequence[Mapping[str, Any]]) -> list[dt.datetime]:
    """Each resource's ``meta.lastUpdated`` (validated resources always carry one)."""
    stamps = []
    for resource in resources:
        stamp = last_updated(resource)
        if stamp is None:
            raise SyncError("bad_response", "a searched resource has no lastUpdated")
        stamps.append(stamp)
    return stamps


def quarantined(entry: Any, error: InvalidResource) -> Quarantined:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    ident = resource.get("id") if isinstance(resource, dict) else None
    try:
        raw = orjson.dumps(entry)
    except TypeError:
        raw = b""
    return Quarantined(
        kind if isinstance(kind, str) else None,
        ident if isinstance(ident, str) else None,
        error.reason,
        error.path,
        raw,
    )
