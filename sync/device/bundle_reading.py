"""Reading what a FHIR server sent, for the pull (``sync.device.pull``): links, totals,
instants and stamps of a page, and a quarantined entry. Pure functions; nothing here fetches.

Invariants:
- A link is stored without its origin (``origin_free``), so a gateway that moves does not
  strand a stored cursor.
- ``bundle_total`` is a non-negative int or None; ``stamps`` refuses a searched resource with no
  ``meta.lastUpdated`` (``bad_response``), because the keyset search orders by it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from sync.device.outcome import SyncError
from sync.device.replica import Quarantined
from sync.protocol.fhir.validate import InvalidResource, parse_instant


def origin_free(url: str) -> str:
    """A link as stored in a cursor: path and query only, never the host, so a gateway that
    moves (a new URL in a new policy) does not strand every stored cursor."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def is_history(url: str) -> bool:
    return "/_history" in url.split("?", 1)[0]


def bundle_link(bundle: Any, relation: str) -> str | None:
    links = bundle.get("link") if isinstance(bundle, dict) else None
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == relation:
            url = link.get("url")
            if isinstance(url, str):
                return url
    return None


def bundle_total(bundle: Any) -> int | None:
    total = bundle.get("total") if isinstance(bundle, dict) else None
    return total if type(total) is int and total >= 0 else None


def fhir_instant(moment: dt.datetime) -> str:
    """A FHIR instant in UTC with millisecond precision (what servers store)."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def since_of(cursor: str) -> dt.datetime | None:
    """The ``_lastUpdated=ge…`` instant of a stored search cursor (None: from the start)."""
    for name, value in parse_qsl(urlsplit(cursor).query):
        if name == "_lastUpdated" and value.startswith("ge"):
            try:
                return parse_instant(value[2:])
            except ValueError:
                return None
    return None


def page_stamps(resources: Sequence[Mapping[str, Any]]) -> list[dt.datetime]:
    """Each resource's ``meta.lastUpdated`` (validated resources always carry one)."""
    stamps = []
    for resource in resources:
        stamp = last_updated(resource)
        if stamp is None:
            raise SyncError("bad_response", "a searched resource has no lastUpdated")
        stamps.append(stamp)
    return stamps


def newest_stamp(resources: Sequence[Mapping[str, Any]]) -> dt.datetime | None:
    """The newest ``meta.lastUpdated`` of a page (only needed where no link gives a cursor)."""
    stamps = [stamp for r in resources if (stamp := last_updated(r)) is not None]
    return max(stamps, default=None)


def last_updated(resource: Mapping[str, Any]) -> dt.datetime | None:
    meta = resource.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("lastUpdated"), str):
        try:
            return parse_instant(meta["lastUpdated"])
        except ValueError:
            return None
    return None


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
