"""Reading an upstream type's ``_history`` since an instant: its changes, deletions included.

Invariants:
- ``[type]/_history?_since=`` is asked with the instant in FHIR's millisecond ``Z`` form (a
  server may compare it as text: sekmet-fhir does) and paged by the server's own ``next``
  links, which ``connection.url`` keeps on the upstream's origin. A history is append-only, so
  a next link by offset over it may repeat an entry when the upstream changes meanwhile but
  never skips one; the caller keeps the newest change per resource.
- Only changes at or after ``since`` are handed over: a ``next`` link that drops ``_since``
  (sekmet-fhir 0.1.1's does) gets it back before it is followed, and an entry older than
  ``since`` is never yielded (applying it would take a resource back to an older version).
- At most ``MAX_PAGES`` pages per read (``history_too_long`` beyond: the caller's mark does
  not move, and the reconciliation still runs); a refused read is ``history_refused``.
- A deletion is a ``Change`` without a resource. Entries that name no type and id are
  skipped. Resources are handed over as the server sent them: validation is the writer's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.search import get_json
from sync.protocol.fhir.paging import bundle_link, fhir_instant, last_updated
from sync.protocol.fhir.validate import parse_instant
from sync.protocol.fhir.vocabulary import ID_RE

PAGE_COUNT = 500
MAX_PAGES = 10_000


@dataclass(frozen=True)
class Change:
    rtype: str
    rid: str
    resource: dict[str, Any] | None  # None: deleted
    at: dt.datetime | None


def _instant(value: Any) -> dt.datetime | None:
    try:
        return parse_instant(value) if isinstance(value, str) else None
    except ValueError:
        return None


def change_of(entry: Any) -> Change | None:
    if not isinstance(entry, dict):
        return None
    response = entry.get("response")
    response = response if isinstance(response, dict) else {}
    resource = entry.get("resource")
    if isinstance(resource, dict):
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            return None
        at = last_updated(resource) or _instant(response.get("lastModified"))
        return Change(rtype, rid, resource, at)
    request = entry.get("request")
    request = request if isinstance(request, dict) else {}
    if str(request.get("method", "")).upper() != "DELETE":
        return None
    url = request.get("url") or entry.get("fullUrl")
    if not isinstance(url, str):
        return None
    parts = url.split("?", 1)[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not ID_RE.fullmatch(parts[-1]):
        return None
    return Change(parts[-2], parts[-1], None, _instant(response.get("lastModified")))


def _keep_since(url: str, since: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "_since" for name, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("_since", since)])))


def read_history(
    connection: UpstreamConnection, rtype: str, since: dt.datetime
) -> Iterator[list[Change]]:
    """The changes of ``rtype`` at or after ``since``, page by page, as the server orders them."""
    since_text = fhir_instant(since)
    path = f"{rtype}/_history?" + urlencode({"_since": since_text, "_count": str(PAGE_COUNT)})
    for _ in range(MAX_PAGES):
        status, bundle = get_json(connection, path)
        if status != 200 or not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise UpstreamError("history_refused", f"{rtype} HTTP {status}")
        entries = bundle.get("entry")
        changes = [
            change
            for entry in (entries if isinstance(entries, list) else [])
            if (change := change_of(entry)) is not None
        ]
        fresh = [c for c in changes if c.at is None or c.at >= since]
        yield fresh
        following = bundle_link(bundle, "next")
        if not following or (changes and not fresh):
            return
        path = _keep_since(following, since_text)
    raise UpstreamError("history_too_long", rtype)
