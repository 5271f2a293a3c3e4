"""Pull: every resource type's changes, page by page, into the replica (DESIGN.md §Sync).

Invariants:
- Pull is history-based per resource type with paging; every page is validated, then applied
  with its cursor in ONE replica transaction (``apply_page``): a cursor is stored only with the
  page it follows, so a sync killed at any instant resumes from the last committed page without
  loss or duplicates (CR-1).
- The cursor after the last page is the server's ``x-resume`` link (a server change sequence,
  which never skips a change committed out of order). A server without it is resumed with
  ``_since`` = the newest ``lastUpdated`` seen minus ``SINCE_OVERLAP`` (overlap, then dedupe by
  version in the replica); see docs/sync.md. Links are checked against the gateway before any
  cursor is stored, and stored without their origin.
- Every inbound resource is validated (``sync.protocol.fhir.validate``) before it reaches the
  replica; a bad one is quarantined with its reason and the rest of the page goes on (NW-3).
  That includes a resource nested deeper than ``MAX_DEPTH``: a page may be ``MAX_PAGE_DEPTH``
  deep, and only a page past that (or otherwise not bounded JSON) is refused as a whole.
- Pages are read one ahead: a worker downloads page N+1 while page N is applied; never more
  than one request is in flight and at most two pages are held. Only the caller's thread
  parses, validates and calls the replica.
- A stream's pages cannot loop (a link seen before ends the pull with ``bad_link``), and
  cancellation is checked between pages, never inside a replica transaction.
- ``caseload_confirmed`` is set only when every stream was pulled to its end through
  ``_history`` (the search fallback cannot see deletions or transfers).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from sync.device.outcome import FHIR_JSON, SyncError, SyncResult, raise_if_cancelled
from sync.device.replica import Deletion, Page, Quarantined, Replica
from sync.device.transport import Response, Transport, TransportError
from sync.protocol.fhir.bounded_json import (
    MAX_DEPTH,
    MAX_PAGE_DEPTH,
    BoundedJsonError,
    json_depth,
    loads_bounded_with_depth,
)
from sync.protocol.fhir.bundle import bundle_entries, next_link, parse_history_entry
from sync.protocol.fhir.validate import InvalidResource, parse_instant, validate_resource

PAGE_SIZE = 500  # resources per history page: ~1-2 MiB of JSON, one replica transaction
SINCE_OVERLAP = dt.timedelta(minutes=5)  # re-read window for servers without a change sequence
RESUME_RELATION = "x-resume"
# Answers meaning "this server has no type-level _history" (not found, bad request, not
# allowed, not implemented): the engine then falls back to a _lastUpdated search.
NO_HISTORY_STATUSES = frozenset({400, 404, 405, 501})
MAX_PAGES_PER_STREAM = 100_000  # 50M resources at 500 a page: a loop guard, not a real limit
ENTRY_RESOURCE_LEVELS = 3  # Bundle {} > entry [] > entry {} > the resource


class HistoryPull:
    """One pull of every resource type over the engine's transport, counted in its result."""

    def __init__(
        self,
        transport: Transport,
        replica: Replica,
        result: SyncResult,
        *,
        resource_types: Sequence[str],
        page_size: int = PAGE_SIZE,
        report: Callable[[str, int], None],
        cancel: threading.Event,
    ) -> None:
        self._transport = transport
        self._replica = replica
        self.result = result
        self._types = tuple(resource_types)
        self._page_size = page_size
        self._report = report
        self._cancel = cancel

    def run(self) -> None:
        histories = [self._pull_type(resource_type) for resource_type in self._types]
        self.result.caseload_confirmed = all(histories)

    def _pull_type(self, resource_type: str) -> bool:
        """Pull one stream, reading one page ahead: while the replica applies page N on this
        thread, a worker downloads page N+1, so the network and the server's work overlap the
        local writes. The worker only moves bytes (it waits on the socket, holding the GIL
        briefly): parsing and validating stay on this thread, because a busy second Python
        thread makes SQLite's per-row GIL hand-back crawl. The worker touches only the
        transport, which this thread leaves alone until the worker is done; the replica is
        only ever called on the caller's thread. At most two pages are held in memory."""
        stream = f"history:{resource_type}"
        url = self._replica.read_cursor(stream) or self._start_url(resource_type, history=True)
        seen = {url}
        response = self._transport.get(url, headers={"Accept": FHIR_JSON})
        if (
            response.status in NO_HISTORY_STATUSES
            and _is_history(url)
            and not self._replica.read_cursor(stream)
        ):
            # A server without type-level _history: fall back to a _lastUpdated search
            # (new and changed resources only; deletions are not seen: docs/sync.md).
            url = self._start_url(resource_type, history=False)
            seen.add(url)
            response = self._transport.get(url, headers={"Accept": FHIR_JSON})
        fetched = self._parsed(response, url, resource_type)
        history = fetched.history  # True: deletions and transfers are seen on this stream
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatehouse-pull") as worker:
            for _ in range(MAX_PAGES_PER_STREAM):
                following = _origin_free(fetched.following) if fetched.following else None
                upcoming: Future[Response] | None = None
                if following is not None and following not in seen and not self._cancel.is_set():
                    seen.add(following)
                    upcoming = worker.submit(self._download, following)
                try:
                    stats = self._replica.apply_page(self._page(stream, resource_type, fetched))
                except BaseException:
                    if upcoming is not None:
                        upcoming.cancel()  # or, if already running, waited for on exit
                    raise
                self.result.pulled += stats.applied
                self.result.deleted += stats.deleted
                self.result.quarantined += stats.quarantined
                self.result.skipped_older += stats.skipped_older
                self._report(resource_type, self.result.pulled)
                if following is None:
                    return history
                raise_if_cancelled(self._cancel)
                if upcoming is None:
                    raise SyncError("bad_link", f"the gateway's {resource_type} pages loop")
                fetched = self._parsed(upcoming.result(), following, resource_type)
        raise SyncError("bad_link", f"too many {resource_type} pages in one sync")

    def _download(self, url: str) -> Response:
        """GET one page (runs on the read-ahead worker: the transport only)."""
        return self._transport.get(url, headers={"Accept": FHIR_JSON})

    def _parsed(self, response: Response, url: str, resource_type: str) -> _Fetched:
        """A page answer validated entry by entry, its links checked (no replica needed)."""
        if response.status != 200:
            raise SyncError("pull_refused", f"the gateway refused the {resource_type} changes")
        try:
            bundle, depth = loads_bounded_with_depth(response.body, max_depth=MAX_PAGE_DEPTH)
        except BoundedJsonError as error:
            raise SyncError(
                "bad_response", f"the gateway's {resource_type} page is not acceptable"
            ) from error
        # Bundle > entry[] > {} > resource: only past this can a resource be too deep.
        may_be_too_deep = depth > ENTRY_RESOURCE_LEVELS + MAX_DEPTH
        history = _is_history(url)
        try:
            entries = bundle_entries(bundle, "history" if history else "searchset")
            following = next_link(bundle)
        except InvalidResource as error:
            raise SyncError("bad_response", "a page of changes is malformed") from error
        fetched = _Fetched(history, following, _link(bundle, RESUME_RELATION))
        for index, entry in enumerate(entries):
            try:
                item = parse_history_entry(entry, index)
                if item.resource_type != resource_type:
                    raise InvalidResource("wrong_type", f"Bundle.entry[{index}]")
                if item.deleted:
                    fetched.deletions.append(
                        Deletion(item.resource_type, item.resource_id, item.version_id)
                    )
                    continue
                if may_be_too_deep and json_depth(item.resource) > MAX_DEPTH:
                    raise InvalidResource("too_deep", f"Bundle.entry[{index}].resource")
                resource = validate_resource(item.resource)
            except InvalidResource as error:
                fetched.quarantined.append(_quarantine(entry, error))
                continue
            fetched.resources.append(resource)
        for link in (fetched.following, fetched.resume):  # checked BEFORE any cursor is stored
            if link is not None:
                try:
                    self._transport.url(link)
                except TransportError as error:
                    raise SyncError("bad_link", "a page link points outside the gateway") from error
        return fetched

    def _start_url(
        self, resource_type: str, *, history: bool, since: dt.datetime | None = None
    ) -> str:
        if history:
            query: dict[str, str | int] = {"_count": self._page_size}
            if since is not None:
                query["_since"] = since.isoformat()
            return f"fhir/{resource_type}/_history?" + urlencode(query)
        query = {"_sort": "_lastUpdated", "_count": self._page_size}
        if since is not None:
            query["_lastUpdated"] = "ge" + since.isoformat()
        return f"fhir/{resource_type}?" + urlencode(query)

    def _page(self, stream: str, resource_type: str, fetched: _Fetched) -> Page:
        """The page to apply, with the cursor to store alongside it (caller's thread)."""
        if fetched.following:
            cursor = _origin_free(fetched.following)
        elif fetched.resume:
            cursor = _origin_free(fetched.resume)
        elif (newest := _newest(fetched.resources)) is not None:
            # No change sequence: resume from the newest lastUpdated seen minus an overlap;
            # re-read resources are deduplicated by version in the replica.
            cursor = self._start_url(
                resource_type, history=fetched.history, since=newest - SINCE_OVERLAP
            )
        else:
            cursor = self._replica.read_cursor(stream) or self._start_url(
                resource_type, history=fetched.history
            )
        return Page(stream, fetched.resources, fetched.deletions, fetched.quarantined, cursor)


@dataclass
class _Fetched:
    """One page as received: valid resources, deletions, quarantined entries and its links."""

    history: bool
    following: str | None
    resume: str | None
    resources: list[Mapping[str, Any]] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


def _origin_free(url: str) -> str:
    """A link as stored in a cursor: path and query only, never the host, so a gateway that
    moves (a new URL in a new policy) does not strand every stored cursor."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _is_history(url: str) -> bool:
    return "/_history" in url.split("?", 1)[0]


def _link(bundle: Any, relation: str) -> str | None:
    links = bundle.get("link") if isinstance(bundle, dict) else None
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == relation:
            url = link.get("url")
            if isinstance(url, str):
                return url
    return None


def _newest(resources: Sequence[Mapping[str, Any]]) -> dt.datetime | None:
    """The newest ``meta.lastUpdated`` of a page (only needed where no link gives a cursor)."""
    stamps = [stamp for r in resources if (stamp := _last_updated(r)) is not None]
    return max(stamps, default=None)


def _last_updated(resource: Mapping[str, Any]) -> dt.datetime | None:
    meta = resource.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("lastUpdated"), str):
        try:
            return parse_instant(meta["lastUpdated"])
        except ValueError:
            return None
    return None


def _quarantine(entry: Any, error: InvalidResource) -> Quarantined:
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
