"""Reading resources from the upstream: one read, and searches paged by ``_lastUpdated``
keyset (never by offset, never by the server's own ``next`` links).

Invariants:
- Each page asks for ``_sort=_lastUpdated`` from ``_lastUpdated=ge<key>``, where the key is the
  newest instant already read; resources at exactly the key that were already yielded are
  skipped, so a page boundary inside one instant neither loses nor repeats a resource. A page
  made entirely of one instant is asked again with a doubled ``_count`` (up to ``MAX_COUNT``,
  or until the server caps it). Past that, the instant is listed on its own
  (``_lastUpdated=eq<key>``, following the server's ``next`` links, which only this one
  instant's listing ever does) until two listings in a row return the same ids: a record that
  leaves the instant mid-listing (edited or deleted) may shift a server's offset paging past
  another, and the second listing shows it. Then the search goes on from ``gt<key>``. A
  listing that does not settle in ``MAX_INSTANT_LISTINGS``, or holds more than
  ``MAX_AT_ONE_INSTANT`` resources, fails with ``keyset_stuck`` rather than skip anything.
- A page shorter than asked ends the search only when the Bundle has no ``next`` link: a
  server that caps ``_count`` (sekmet-fhir 0.1.1 returns at most 1,000, with a ``next``
  link) is read on from the page's newest instant, never taken as "no more" (a reconciliation
  deletes what a search did not return).
- A page is read through the size/depth bounds of ``sync.protocol.fhir.bounded_json``; a
  refused search is ``UpstreamError("search_refused")``. Resources are yielded as the server
  sent them: validation is the caller's (``load``), so one bad resource never stops a page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.protocol.fhir.bounded_json import MAX_PAGE_DEPTH, BoundedJsonError, loads_bounded
from sync.protocol.fhir.paging import bundle_link, fhir_instant, last_updated

FHIR_JSON = "application/fhir+json"
PAGE_COUNT = 200
MAX_COUNT = 3_200
MAX_INSTANT_LISTINGS = 4
MAX_AT_ONE_INSTANT = 200_000


def _entries(bundle: Any) -> list[dict[str, Any]]:
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        mode = (
            entry.get("search", {}).get("mode") if isinstance(entry.get("search"), dict) else None
        )
        if mode in (None, "match"):
            out.append(entry["resource"])
    return out


def get_json(connection: UpstreamConnection, path: str) -> tuple[int, Any]:
    """GET ``path`` (relative to the base): its status and bounded JSON (None if not JSON)."""
    response = connection.get(path, headers={"Accept": FHIR_JSON})
    try:
        return response.status, loads_bounded(response.body, max_depth=MAX_PAGE_DEPTH)
    except BoundedJsonError:
        return response.status, None


def _search(
    connection: UpstreamConnection, rtype: str, query: Mapping[str, str]
) -> tuple[list[dict[str, Any]], bool]:
    """One page's matches, and whether the server says more follow (a ``next`` link)."""
    page, following = _page(connection, rtype, f"{rtype}?{urlencode(query)}")
    return page, following is not None


def _page(
    connection: UpstreamConnection, rtype: str, path: str
) -> tuple[list[dict[str, Any]], str | None]:
    """One page's matches and its ``next`` link (None: the last page)."""
    status, bundle = get_json(connection, path)
    if status != 200 or not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise UpstreamError("search_refused", f"{rtype} HTTP {status}")
    return _entries(bundle), bundle_link(bundle, "next")


def _millisecond(resource: dict[str, Any]) -> str | None:
    stamp = last_updated(resource)
    return None if stamp is None else fhir_instant(stamp)


def _one_instant(
    connection: UpstreamConnection,
    rtype: str,
    params: Mapping[str, str],
    key: dt.datetime,
    count: int,
    yielded: set[str],
) -> Iterator[list[dict[str, Any]]]:
    """Every resource of ``rtype`` matching ``params`` last updated at ``key``, listed until
    two listings in a row agree (module docstring); each is yielded once (``yielded``: ids
    already yielded at ``key``, grown here)."""
    previous: set[str] | None = None
    instant = fhir_instant(key)  # what ``eq`` and the ``gt`` after it mean: this millisecond
    for _ in range(MAX_INSTANT_LISTINGS):
        query = {**params, "_lastUpdated": "eq" + instant, "_sort": "_id"}
        path: str | None = f"{rtype}?{urlencode({**query, '_count': str(count)})}"
        listed: set[str] = set()
        asked: set[str] = set()
        while path is not None:
            if path in asked or len(listed) > MAX_AT_ONE_INSTANT:
                raise UpstreamError("keyset_stuck", f"{rtype}: one instant's listing loops")
            asked.add(path)
            page, path = _page(connection, rtype, path)
            at_key = [r for r in page if _millisecond(r) == instant]
            fresh = [r for r in at_key if str(r.get("id")) not in yielded]
            listed |= {str(r.get("id")) for r in at_key}
            yielded |= {str(r.get("id")) for r in fresh}
            if fresh:
                yield fresh
        if listed == previous:
            return
        previous = listed
    raise UpstreamError("keyset_stuck", f"{rtype}: one instant's listing never settled")


def search_page(
    connection: UpstreamConnection, rtype: str, query: Mapping[str, str]
) -> list[dict[str, Any]]:
    return _search(connection, rtype, query)[0]


def keyset_search(
    connection: UpstreamConnection,
    rtype: str,
    params: Mapping[str, str],
    *,
    since: dt.datetime | None = None,
    count: int = PAGE_COUNT,
) -> Iterator[list[dict[str, Any]]]:
    """Every resource of ``rtype`` matching ``params`` (updated at or after ``since``), page by
    page, in ``_lastUpdated`` order."""
    key = since
    seen_at_key: set[str] = set()
    past_key = False  # the instant ``key`` was listed whole: go on after it
    while True:
        query = {**params, "_sort": "_lastUpdated", "_count": str(count)}
        if key is not None:
            query["_lastUpdated"] = ("gt" if past_key else "ge") + fhir_instant(key)
        page, more = _search(connection, rtype, query)
        fresh = [
            r for r in page if not (last_updated(r) == key and str(r.get("id")) in seen_at_key)
        ]
        if fresh:
            yield fresh
        if len(page) < count and not more:
            return
        stamps = [stamp for r in page if (stamp := last_updated(r)) is not None]
        newest = max(stamps, default=None)
        if newest is None:
            raise UpstreamError("keyset_stuck", f"{rtype}: no lastUpdated")
        at_newest = {str(r.get("id")) for r in page if last_updated(r) == newest}
        if newest == key and key is not None:
            if past_key:
                raise UpstreamError("keyset_stuck", f"{rtype}: the server ignores gt")
            seen_at_key |= at_newest
            if count < MAX_COUNT and len(page) >= count:
                count *= 2
                continue
            yield from _one_instant(connection, rtype, params, key, count, seen_at_key)
            past_key = True
            continue
        key, seen_at_key, past_key = newest, at_newest, False
