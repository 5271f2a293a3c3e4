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
- A pull is complete only when the server says so (issue 13): a history stream that ends (no
  ``next``) while its ``Bundle.total`` says more entries exist than were received is an
  ``incomplete_pull`` error, and the stream's cursor stays where that page started.
- Without type-level ``_history`` a type is read by a ``_lastUpdated`` keyset search, never by
  offsets or the server's own ``next`` links: each page asks for ``_lastUpdated=ge<key>``
  sorted by ``_lastUpdated``, where the key is the newest instant already read and the ids
  read at exactly that instant are skipped (the id tiebreak), so an edit made while paging
  moves a record forward, never past the reader. The search ends when ``Bundle.total`` says
  the page held everything left, or a page brings nothing new; a server that does not sort,
  or a group of same-instant records that cannot be paged past, is an ``incomplete_pull``
  (or ``unsorted_search``) error, never a silent end.
- Types are isolated: a refused or malformed page of one type ends that type's pull only; the
  others still run, and ``result.failed_types`` names each failed type with its reason. Only a
  connection-level failure (``CONNECTION_REASONS``) ends the whole pull.
- A type the server's CapabilityStatement lists without ``history-type`` is searched at once
  (no probe); a server that does not describe itself is probed: ``_history`` first.
- Patient is pulled first, so a clinical record's patient is already known when it arrives.
- Every inbound resource is validated (``sync.protocol.fhir.validate``) before it reaches the
  replica; a bad one is quarantined with its reason and the rest of the page goes on (NW-3).
  That includes a resource nested deeper than ``MAX_DEPTH``: a page may be ``MAX_PAGE_DEPTH``
  deep, and only a page past that (or otherwise not bounded JSON) is refused as a whole.
- A type resumed by ``_history`` may have its first page handed in, read with the others in
  one batch (``sync.device.first_pages``): it is exactly the answer to a GET of its cursor and
  is validated and applied like any page.
- Pages are read one ahead: a worker downloads page N+1 while page N is applied; never more
  than one request is in flight and at most two pages are held. Only the caller's thread
  parses, validates and calls the replica.
- A stream's pages cannot loop (a link seen before ends the pull with ``bad_link``), and
  cancellation is checked between pages, never inside a replica transaction.
- ``caseload_confirmed`` is set only when no type failed and the Patients are current: pulled
  to the end of their ``_history`` stream, or searched to the end and then every held Patient
  checked by id (``sync.device.reconcile``: a deleted one leaves; a transfer is a changed
  Patient the search saw). Without ``_history`` a searched Patient page's patients the device
  does not hold are remembered durably BEFORE the page is applied (stream ``backfill``) and
  each one then held gets every resumed type's records fetched by ``patient=``; other types
  are reconciled by id every ``RECONCILE_INTERVAL``.
- URLs are built on ``fhir_base``: a path relative to the transport's URL (``fhir``, the
  gateway) or an absolute URL on the transport's origin with any path (``…/fhir/R4``).

Length: one class, ``HistoryPull``, whose steps (history, keyset search, backfill, the id
checks) share the page-and-cursor invariants above; reading a page's links, totals and
stamps lives in ``sync.device.bundle_reading``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import pairwise
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson

from sync.device.bundle_reading import page_stamps, quarantined
from sync.device.outcome import (
    CONNECTION_REASONS,
    FHIR_JSON,
    Cancelled,
    SyncError,
    SyncResult,
    raise_if_cancelled,
)
from sync.device.reconcile import (
    RECONCILE_INTERVAL,
    RECONCILE_STREAM,
    Reconciled,
    Reconciler,
    is_due,
)
from sync.device.replica import ApplyStats, Deletion, Page, Quarantined, Replica
from sync.device.transport import Response, Transport, TransportError
from sync.protocol.fhir.bounded_json import (
    MAX_DEPTH,
    MAX_PAGE_DEPTH,
    BoundedJsonError,
    json_depth,
    loads_bounded_with_depth,
)
from sync.protocol.fhir.bundle import bundle_entries, next_link, parse_history_entry
from sync.protocol.fhir.capability import ServerProfile
from sync.protocol.fhir.paging import (
    bundle_link,
    bundle_total,
    fhir_instant,
    is_history,
    newest_stamp,
    origin_free,
    since_of,
)
from sync.protocol.fhir.validate import InvalidResource, validate_resource
from sync.protocol.fhir.vocabulary import ID_RE, PATIENT, PATIENT_REFERENCE_PREFIX

PAGE_SIZE = 500  # resources per history page: ~1-2 MiB of JSON, one replica transaction
SINCE_OVERLAP = dt.timedelta(minutes=5)  # re-read window for servers without a change sequence
RESUME_RELATION = "x-resume"
# Answers meaning "this server has no type-level _history" (not found, bad request, not
# allowed, not implemented): the engine then falls back to a _lastUpdated search.
NO_HISTORY_STATUSES = frozenset({400, 404, 405, 501})
MAX_PAGES_PER_STREAM = 100_000  # 50M resources at 500 a page: a loop guard, not a real limit
ENTRY_RESOURCE_LEVELS = 3  # Bundle {} > entry [] > entry {} > the resource
DEFAULT_FHIR_BASE = "fhir"  # the gateway's FHIR base, relative to its URL
# A keyset page full of records sharing one instant is asked again with a larger _count, up to
# this; past it the type's pull is incomplete (an error), never silently cut short.
MAX_SEARCH_COUNT = 10_000
# Patients a searched Patient page brought in, still to be backfilled (cursor: a JSON id list);
# each backfilled type's pages go to "backfill:<type>".
BACKFILL_STREAM = "backfill"
_T = TypeVar("_T")


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
        fhir_base: str = DEFAULT_FHIR_BASE,
        profile: ServerProfile | None = None,
        reconcile_every: dt.timedelta = RECONCILE_INTERVAL,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        first_pages: Mapping[str, Response] | None = None,
    ) -> None:
        self._transport = transport
        # Answers to each type's stored history cursor, already read in one batch by the
        # engine (sync.device.first_pages): used instead of a GET of that cursor.
        self._first_pages = dict(first_pages or {})
        self._reconcile_every = reconcile_every
        self._now = now
        self._backfill_types: tuple[str, ...] = ()
        self._held_patients: set[str] | None = None
        self._profile = profile
        self._base = fhir_base.rstrip("/")
        self._replica = replica
        self.result = result
        self._types = tuple(resource_types)
        self._page_size = page_size
        self._report = report
        self._cancel = cancel

    def run(self) -> None:
        """Pull every type, Patient first; a type that fails is recorded and the rest go on.
        Without ``_history``, Patients newly in scope are backfilled and ids are reconciled
        (``sync.device.reconcile``). Raises the first type's ``SyncError`` at the end (its
        message names every failed type)."""
        failed = self.result.failed_types
        history: set[str] = set()
        searched: set[str] = set()
        self._backfill_types = self._resumed_searches()
        for resource_type in sorted(self._types, key=lambda kind: kind != PATIENT):
            read_by_history = self._guarded(resource_type, partial(self._pull_type, resource_type))
            if read_by_history is not None:
                (history if read_by_history else searched).add(resource_type)
            if resource_type == PATIENT:
                self._backfill()
        patients_current = PATIENT in history
        for resource_type in sorted(searched, key=lambda kind: kind != PATIENT):
            if resource_type in failed:
                continue
            if resource_type == PATIENT:  # every sync: it confirms the caseload (retention)
                patients_current = self._guarded(PATIENT, self._confirm_patients) is True
            elif self._reconcile_due(resource_type):
                self._guarded(resource_type, partial(self._reconcile, resource_type))
        if PATIENT not in self._types:
            patients_current = not searched
        self.result.caseload_confirmed = patients_current and not failed
        if failed:
            first = next(iter(failed.values()))
            names = ", ".join(failed)
            raise SyncError(first, f"some records could not be pulled ({names}); kept for retry")

    def _guarded(self, resource_type: str, step: Callable[[], _T]) -> _T | None:
        """Run one type's step and return what it returns; a failure is recorded in
        ``failed_types`` (None) unless it is the connection's own or a cancellation, which end
        the pull."""
        try:
            return step()
        except Cancelled:
            raise
        except (SyncError, TransportError) as error:
            if isinstance(error, TransportError) and error.reason in CONNECTION_REASONS:
                raise
            self.result.failed_types.setdefault(resource_type, error.reason)
            return None

    # -- without _history: backfill and reconciliation -----------------------------------------

    def _resumed_searches(self) -> tuple[str, ...]:
        """Clinical types this sync resumes by keyset search: a patient entering scope has
        records there older than the key, which only a backfill brings."""
        resumed = []
        for kind in self._types:
            if kind == PATIENT:
                continue
            cursor = self._replica.read_cursor(f"history:{kind}")
            if cursor is not None and not is_history(cursor):
                resumed.append(kind)
        return tuple(resumed)

    def _pending_backfill(self) -> set[str]:
        stored = self._replica.read_cursor(BACKFILL_STREAM)
        try:
            ids = orjson.loads(stored) if stored else []
        except orjson.JSONDecodeError:
            return set()
        if not isinstance(ids, list):
            return set()
        return {i for i in ids if isinstance(i, str) and ID_RE.fullmatch(i)}

    def _set_pending_backfill(self, patient_ids: set[str]) -> None:
        cursor = orjson.dumps(sorted(patient_ids)).decode()
        self._replica.apply_page(Page(BACKFILL_STREAM, [], [], [], cursor))

    def _note_newcomers(self, resources: Sequence[Mapping[str, Any]]) -> None:
        """Before a searched Patient page is applied: remember (durably, in its own transaction)
        the patients it may bring into scope, so a sync killed after the page still backfills
        them next time."""
        if not self._backfill_types:
            return
        if self._held_patients is None:
            self._held_patients = set(self._replica.held_ids(PATIENT))
        newcomers = {str(r["id"]) for r in resources} - self._held_patients
        if newcomers:
            pending = self._pending_backfill()
            if not newcomers <= pending:
                self._set_pending_backfill(pending | newcomers)
            self._held_patients |= newcomers

    def _backfill(self) -> None:
        """Fetch every resumed type's records of each patient who entered scope (``patient=``
        keyset search), one patient at a time; a patient is forgotten once all are in. A type
        that fails is recorded and the rest waits for the next sync."""
        pending = self._pending_backfill()
        if not pending:
            return
        held = set(self._replica.held_ids(PATIENT))
        remaining = set(pending)
        for patient_id in sorted(pending):
            if patient_id in held:
                for kind in self._backfill_types:
                    params = {"patient": PATIENT_REFERENCE_PREFIX + patient_id}
                    stream = f"{BACKFILL_STREAM}:{kind}"
                    search = partial(self._search_type, kind, stream, None, params)
                    if self._guarded(kind, search) is None:
                        self._set_pending_backfill(remaining)
                        return
                self.result.backfilled += 1
            remaining.discard(patient_id)
            self._set_pending_backfill(remaining)

    def _reconcile_due(self, resource_type: str) -> bool:
        stream = RECONCILE_STREAM + resource_type
        cursor = self._replica.read_cursor(stream)
        now = self._now()
        if cursor is None and self._reconcile_every > dt.timedelta(0):
            # First keyset pull of this type: it read everything; the clock starts now.
            self._replica.apply_page(Page(stream, [], [], [], fhir_instant(now)))
            return False
        return is_due(cursor, now, self._reconcile_every)

    def _reconciler(self) -> Reconciler:
        return Reconciler(
            self._transport,
            self._replica,
            fhir_base=self._base,
            cancel=self._cancel,
            parse_page=self._parsed,
        )

    def _confirm_patients(self) -> bool:
        """Every held Patient checked by id: the deleted leave; True: the caseload is current."""
        self._record(PATIENT, self._reconciler().confirm_held(PATIENT, self._now()))
        return True

    def _reconcile(self, resource_type: str) -> None:
        done = self._reconciler().reconcile(resource_type, self._now(), fetch_missed=True)
        self._record(resource_type, done)

    def _record(self, resource_type: str, done: Reconciled) -> None:
        self._count(done.stats)
        self.result.reconciled[resource_type] = {
            "listed": done.listed,
            "gone": done.gone,
            "missed": done.missed,
        }

    def _pull_type(self, resource_type: str) -> bool:
        """Pull one type; True when it was read through ``_history`` (deletions seen)."""
        stream = f"history:{resource_type}"
        stored = self._replica.read_cursor(stream)
        if stored is not None and not is_history(stored):
            return self._search_type(resource_type, stream, stored)
        if stored is None and self._profile and not self._profile.of(resource_type).history_type:
            return self._search_type(resource_type, stream, None)  # the server says: no history
        url = stored or self._start_url(resource_type, history=True)
        first = self._first_pages.pop(resource_type, None) if stored is not None else None
        response = first or self._transport.get(url, headers={"Accept": FHIR_JSON})
        if response.status in NO_HISTORY_STATUSES and stored is None:
            # A server without type-level _history: a _lastUpdated keyset search instead
            # (new and changed resources only; deletions are not seen: docs/sync.md).
            return self._search_type(resource_type, stream, None)
        return self._history_type(resource_type, stream, url, response)

    def _history_type(self, resource_type: str, stream: str, url: str, response: Response) -> bool:
        """Pull one stream, reading one page ahead: while the replica applies page N on this
        thread, a worker downloads page N+1, so the network and the server's work overlap the
        local writes. The worker only moves bytes (it waits on the socket, holding the GIL
        briefly): parsing and validating stay on this thread, because a busy second Python
        thread makes SQLite's per-row GIL hand-back crawl. The worker touches only the
        transport, which this thread leaves alone until the worker is done; the replica is
        only ever called on the caller's thread. At most two pages are held in memory.

        The stream is complete only when the server says so: a last page (no ``next``) whose
        ``Bundle.total`` exceeds the entries received is applied with the cursor left at that
        page, and the type fails with ``incomplete_pull``."""
        seen = {url}
        fetched = self._parsed(response, url, resource_type)
        received = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatehouse-pull") as worker:
            for _ in range(MAX_PAGES_PER_STREAM):
                following = origin_free(fetched.following) if fetched.following else None
                upcoming: Future[Response] | None = None
                if following is not None and following not in seen and not self._cancel.is_set():
                    seen.add(following)
                    upcoming = worker.submit(self._download, following)
                received += fetched.received
                short = following is None and fetched.total is not None and fetched.total > received
                try:
                    page = self._page(stream, resource_type, fetched)
                    if short:  # the server stopped early: keep the cursor at this page
                        page = replace(page, next_cursor=origin_free(url))
                    stats = self._replica.apply_page(page)
                except BaseException:
                    if upcoming is not None:
                        upcoming.cancel()  # or, if already running, waited for on exit
                    raise
                self._count(stats)
                self._report(resource_type, self.result.pulled)
                if short:
                    raise SyncError(
                        "incomplete_pull",
                        f"the server sent {received} of {fetched.total} {resource_type} changes",
                    )
                if following is None:
                    return fetched.history
                raise_if_cancelled(self._cancel)
                if upcoming is None:
                    raise SyncError("bad_link", f"the gateway's {resource_type} pages loop")
                url = following
                fetched = self._parsed(upcoming.result(), following, resource_type)
        raise SyncError("bad_link", f"too many {resource_type} pages in one sync")

    def _search_type(
        self,
        resource_type: str,
        stream: str,
        cursor: str | None,
        params: Mapping[str, str] | None = None,
    ) -> bool:
        """Read one type by ``_lastUpdated`` keyset search (module docstring); always False:
        a search cannot see deletions or transfers. ``params`` narrow it (a backfill's
        ``patient=``) and are kept in every page's URL."""
        key = resumed_at = since_of(cursor) if cursor is not None else None
        at_key: set[str] = set()  # ids already read at exactly ``key`` (the id tiebreak)
        count = self._page_size
        for _ in range(MAX_PAGES_PER_STREAM):
            raise_if_cancelled(self._cancel)
            url = self._search_url(resource_type, key, count, params)
            response = self._transport.get(url, headers={"Accept": FHIR_JSON})
            fetched = self._parsed(response, url, resource_type)
            stamps = page_stamps(fetched.resources)
            if any(b < a for a, b in pairwise(stamps)) or (
                key is not None and stamps and stamps[0] < key
            ):
                raise SyncError(
                    "unsorted_search", f"the server did not sort the {resource_type} search"
                )
            fresh = [
                resource
                for resource, stamp in zip(fetched.resources, stamps, strict=True)
                if not (stamp == key and resource["id"] in at_key)
            ]
            complete = fetched.total is not None and fetched.total <= fetched.received
            if not fresh and not complete:
                if fetched.total is None:
                    complete = True  # a page with nothing past the key: the end
                elif fetched.received >= count and count < MAX_SEARCH_COUNT:
                    count = min(count * 4, MAX_SEARCH_COUNT)  # same-instant group > a page
                    continue
                else:
                    raise SyncError(
                        "incomplete_pull",
                        f"the server's {resource_type} search cannot be paged to its end",
                    )
            if stamps:
                newest = stamps[-1]
                pairs = zip(fetched.resources, stamps, strict=True)
                same = {resource["id"] for resource, stamp in pairs if stamp == newest}
                at_key = (at_key | same) if newest == key else same
                key = newest
            if complete:
                # The overlap is taken once from the newest record read; a search that read
                # nothing newer keeps its stored key (it already holds the overlap), so an
                # idle type's cursor never drifts back 5 minutes per sync.
                advanced = key is not None and key != resumed_at
                since = key - SINCE_OVERLAP if advanced and key is not None else key
                next_cursor = self._search_url(resource_type, since, self._page_size, params)
            else:
                next_cursor = self._search_url(resource_type, key, self._page_size, params)
            if resource_type == PATIENT and params is None:
                self._note_newcomers(fresh)
            stats = self._replica.apply_page(
                Page(stream, fresh, [], fetched.quarantined, origin_free(next_cursor))
            )
            self._count(stats)
            self._report(resource_type, self.result.pulled)
            if complete:
                return False
        raise SyncError("bad_link", f"too many {resource_type} pages in one sync")

    def _count(self, stats: ApplyStats) -> None:
        self.result.pulled += stats.applied
        self.result.deleted += stats.deleted
        self.result.quarantined += stats.quarantined
        self.result.skipped_older += stats.skipped_older
        self.result.out_of_scope += stats.out_of_scope

    def _download(self, url: str) -> Response:
        """GET one page (runs on the read-ahead worker: the transport only)."""
        return self._transport.get(url, headers={"Accept": FHIR_JSON})

    def _parsed(self, response: Response, url: str, resource_type: str) -> _Fetched:
        """A page answer validated entry by entry, its links checked (no replica needed)."""
        if response.status != 200:
            raise SyncError(
                "pull_refused",
                f"the server refused the {resource_type} changes (HTTP {response.status})",
            )
        try:
            bundle, depth = loads_bounded_with_depth(response.body, max_depth=MAX_PAGE_DEPTH)
        except BoundedJsonError as error:
            raise SyncError(
                "bad_response", f"the gateway's {resource_type} page is not acceptable"
            ) from error
        # Bundle > entry[] > {} > resource: only past this can a resource be too deep.
        may_be_too_deep = depth > ENTRY_RESOURCE_LEVELS + MAX_DEPTH
        history = is_history(url)
        try:
            entries = bundle_entries(bundle, "history" if history else "searchset")
            following = next_link(bundle)
        except InvalidResource as error:
            raise SyncError("bad_response", "a page of changes is malformed") from error
        fetched = _Fetched(
            history,
            following if history else None,  # a search is paged by keyset, never by its links
            bundle_link(bundle, RESUME_RELATION) if history else None,
            total=bundle_total(bundle),
            received=len(entries),
        )
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
                fetched.quarantined.append(quarantined(entry, error))
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
            return f"{self._base}/{resource_type}/_history?" + urlencode(query)
        return self._search_url(resource_type, since, self._page_size)

    def _search_url(
        self,
        resource_type: str,
        key: dt.datetime | None,
        count: int,
        params: Mapping[str, str] | None = None,
    ) -> str:
        """One keyset page: sorted by ``_lastUpdated``, from ``key`` (inclusive) on."""
        query: dict[str, str | int] = {**(params or {}), "_sort": "_lastUpdated", "_count": count}
        if key is not None:
            query["_lastUpdated"] = "ge" + fhir_instant(key)
        return f"{self._base}/{resource_type}?" + urlencode(query)

    def _page(self, stream: str, resource_type: str, fetched: _Fetched) -> Page:
        """The page to apply, with the cursor to store alongside it (caller's thread)."""
        if fetched.following:
            cursor = origin_free(fetched.following)
        elif fetched.resume:
            cursor = origin_free(fetched.resume)
        elif (newest := newest_stamp(fetched.resources)) is not None:
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
    total: int | None = None  # Bundle.total, when the server sends one
    received: int = 0  # entries in this page (valid, deleted or quarantined)
    resources: list[Mapping[str, Any]] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
