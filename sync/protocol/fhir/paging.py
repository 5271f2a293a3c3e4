"""Reading the pages a FHIR server sends, on either end (the laptop's pull, the gateway's
upstream import): links, totals, instants and ``meta.lastUpdated`` stamps. Pure functions;
nothing here fetches. (Moved unchanged from ``sync.device.bundle_reading``.)

Invariants:
- A link is stored without its origin (``origin_free``), so a server that moves does not
  strand a stored cursor.
- ``bundle_total`` is a non-negative int or None; an unreadable stamp reads as None.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sync.protocol.fhir.validate import parse_instant


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
