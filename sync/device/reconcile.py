"""Reconciliation for a server without type-level ``_history`` (issue 13 items 3 and 4).

A ``_lastUpdated`` keyset search brings new and changed resources but cannot show a deletion.
At every sync the held Patients are checked by id (``confirm_held``: ``_id=a,b,…`` batches, a
cost that grows with the caseload, not the server): one the server no longer has was deleted,
and a complete check confirms the caseload for retention (item 4; a transfer changes the
Patient, so the keyset search sees it). Periodically (``RECONCILE_INTERVAL``, or the policy's
``data.reconcile_hours``) each clinical
type is reconciled (``reconcile``): the ids the server holds of it are listed (keyset pages of
``_elements=id,meta`` plus the patient reference) and compared with what the laptop holds:
- a held resource the server no longer lists was deleted there: it is removed (a Patient
  leaves through the replica's scope exit, so unsent work still holds it back);
- a listed clinical resource of a held patient that the laptop lacks was missed: it is fetched
  by ``_id`` (full, validated) and applied. Missed Patients are not fetched (the listing cannot
  say which site they belong to without reading them whole); the keyset search brings them.

Invariants:
- Nothing is removed unless the listing reached its end: a listing that is refused, malformed,
  unsorted or cannot be paged to its ``Bundle.total`` raises ``SyncError`` and changes nothing.
- The listing happens after that sync's pull of the type, so everything the laptop holds was on
  the server before the listing began; a held id the listing misses was deleted, never "not yet
  created". Unsent device work (``versionId == "local"``) is never in ``held_ids``.
- The deletions and the stream's cursor (``reconcile:<type>`` = the instant of the last complete
  reconciliation, used to schedule the next) are applied in ONE replica transaction.
- A listing entry is read for its id, ``meta.lastUpdated`` and patient reference only; it is
  never stored (a server honouring ``_elements`` sends subsetted resources).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any
from urllib.parse import urlencode

from sync.device.outcome import FHIR_JSON, SyncError, raise_if_cancelled
from sync.device.replica import ApplyStats, Deletion, Page, Replica
from sync.device.transport import Response, Transport
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.bundle import bundle_entries
from sync.protocol.fhir.validate import InvalidResource, parse_instant
from sync.protocol.fhir.vocabulary import ID_RE, PATIENT, PATIENT_FIELD, PATIENT_REFERENCE_PREFIX

RECONCILE_STREAM = "reconcile:"  # + resource type; cursor = ISO instant of the last one
# How often each clinical type is reconciled (a full id listing), unless the engine is told
# otherwise (the client passes policy ``data.reconcile_hours``). Held Patients are checked by
# id at every sync without _history: that check is what confirms the caseload for retention.
RECONCILE_INTERVAL = dt.timedelta(hours=24)
LIST_PAGE_SIZE = 1000  # ids per listing page (subsetted entries: ~100 bytes each)
MAX_LIST_COUNT = 10_000  # a same-instant group larger than this cannot be listed: an error
FETCH_BATCH = 50  # missed ids fetched per ``_id=`` search
CHECK_BATCH = 50  # held ids checked per ``_id=`` search (a URL well under 8 KiB)
MAX_LIST_PAGES = 100_000  # a loop guard, not a real limit


@dataclass(frozen=True)
class Listed:
    """One id the server lists, its ``meta.lastUpdated`` and (clinical types) its patient."""

    resource_id: str
    stamp: dt.datetime
    patient_id: str | None


@dataclass(frozen=True)
class Reconciled:
    """What one reconciliation did: ``listed`` ids on the server, ``gone`` removed from the
    laptop (deleted on the server), ``missed`` fetched because the laptop lacked them."""

    listed: int
    gone: int
    missed: int
    stats: ApplyStats


def is_due(cursor: str | None, now: dt.datetime, interval: dt.timedelta) -> bool:
    """Whether a type whose last reconciliation is ``cursor`` should be reconciled at ``now``.
    A type never reconciled is due only when the interval is zero (a first pull reads it all);
    a cursor that is not an instant (damaged) makes it due."""
    if interval <= dt.timedelta(0):
        return True
    if cursor is None:
        return False
    try:
        return parse_instant(cursor) + interval <= now
    except ValueError:
        return True


class Reconciler:
    """Lists one type's ids on the server and brings the laptop in line (module docstring)."""

    def __init__(
        self,
        transport: Transport,
        replica: Replica,
        *,
        fhir_base: str,
        cancel: Any,
        parse_page: Callable[[Response, str, str], Any],
    ) -> None:
        self._transport = transport
        self._replica = replica
        self._base = fhir_base.rstrip("/")
        self._cancel = cancel
        self._parse_page = parse_page  # the pull's full validation of a page of resources

    def reconcile(self, resource_type: str, now: dt.datetime, *, fetch_missed: bool) -> Reconciled:
        """List the type, remove what the server no longer has, fetch what was missed."""
        listed = {item.resource_id: item for item in self.list_ids(resource_type)}
        held = set(self._replica.held_ids(resource_type))
        gone = sorted(held - listed.keys())
        missed: list[str] = []
        if fetch_missed and resource_type != PATIENT:
            patients = set(self._replica.held_ids(PATIENT))
            missed = sorted(
                rid
                for rid, item in listed.items()
                if rid not in held and item.patient_id is not None and item.patient_id in patients
            )
        stream = RECONCILE_STREAM + resource_type
        previous = self._replica.read_cursor(stream) or ""
        totals = ApplyStats()
        for start in range(0, len(missed), FETCH_BATCH):
            raise_if_cancelled(self._cancel)
            fetched = self._fetch(resource_type, missed[start : start + FETCH_BATCH])
            stats = self._replica.apply_page(
                Page(stream, fetched.resources, [], fetched.quarantined, previous)
            )
            totals = _add(totals, stats)
        deletions = [Deletion(resource_type, rid) for rid in gone]
        stats = self._replica.apply_page(Page(stream, [], deletions, [], _instant(now)))
        return Reconciled(len(listed), len(gone), len(missed), _add(totals, stats))

    def confirm_held(self, resource_type: str, now: dt.datetime) -> Reconciled:
        """Ask the server, ``CHECK_BATCH`` ids at a time (``_id=a,b,…``), which of the held
        resources of ``resource_type`` it still has; remove the others (deleted there). Costs
        one request per ``CHECK_BATCH`` held ids, whatever the server's size: this is the
        caseload check at every sync (Patients). A batch answered with an id it did not ask
        for (a server ignoring ``_id``) or fewer entries than its ``Bundle.total`` is an
        error, and nothing is removed."""
        held = sorted(self._replica.held_ids(resource_type))
        present: set[str] = set()
        for start in range(0, len(held), CHECK_BATCH):
            raise_if_cancelled(self._cancel)
            batch = held[start : start + CHECK_BATCH]
            query: dict[str, str | int] = {
                "_id": ",".join(batch),
                "_count": len(batch),
                "_elements": "id,meta",
            }
            items, total, received = self._ids_page(resource_type, query)
            found = {item.resource_id for item in items}
            if not found <= set(batch) or (total is not None and total > received):
                raise SyncError(
                    "incomplete_pull", f"the server could not say which {resource_type} exist"
                )
            present |= found
        gone = [rid for rid in held if rid not in present]
        deletions = [Deletion(resource_type, rid) for rid in gone]
        stream = RECONCILE_STREAM + resource_type
        stats = self._replica.apply_page(Page(stream, [], deletions, [], _instant(now)))
        return Reconciled(len(present), len(gone), 0, stats)

    def list_ids(self, resource_type: str) -> Iterator[Listed]:
        """Every id of ``resource_type`` on the server, by ``_lastUpdated`` keyset (the pull's
        rules: sorted or ``unsorted_search``; a same-instant group past a page is asked again
        with a larger ``_count``; the end is ``Bundle.total`` or a page with nothing new)."""
        key: dt.datetime | None = None
        at_key: set[str] = set()
        count = LIST_PAGE_SIZE
        seen = 0
        for _ in range(MAX_LIST_PAGES):
            raise_if_cancelled(self._cancel)
            items, total, received = self._list_page(resource_type, key, count)
            stamps = [item.stamp for item in items]
            if any(b < a for a, b in pairwise(stamps)) or (key and stamps and stamps[0] < key):
                raise SyncError(
                    "unsorted_search", f"the server did not sort the {resource_type} listing"
                )
            fresh = [i for i in items if not (i.stamp == key and i.resource_id in at_key)]
            complete = total is not None and total <= received
            if not fresh and not complete:
                if total is None:
                    return
                if received >= count and count < MAX_LIST_COUNT:
                    count = min(count * 4, MAX_LIST_COUNT)
                    continue
                raise SyncError(
                    "incomplete_pull", f"the server's {resource_type} ids cannot be listed"
                )
            seen += len(fresh)
            yield from fresh
            if stamps:
                newest = stamps[-1]
                same = {i.resource_id for i in items if i.stamp == newest}
                at_key = (at_key | same) if newest == key else same
                key = newest
            if complete:
                return
        raise SyncError("bad_link", f"too many {resource_type} listing pages in one sync")

    def _list_page(
        self, resource_type: str, key: dt.datetime | None, count: int
    ) -> tuple[list[Listed], int | None, int]:
        elements = "id,meta" if resource_type == PATIENT else f"id,meta,{_field(resource_type)}"
        query: dict[str, str | int] = {"_sort": "_lastUpdated", "_count": count}
        if key is not None:
            query["_lastUpdated"] = "ge" + _instant(key)
        query["_elements"] = elements
        return self._ids_page(resource_type, query)

    def _ids_page(
        self, resource_type: str, query: Mapping[str, str | int]
    ) -> tuple[list[Listed], int | None, int]:
        """One page of ids: (entries read for id, instant and patient; Bundle.total; count)."""
        url = f"{self._base}/{resource_type}?" + urlencode(query)
        response = self._transport.get(url, headers={"Accept": FHIR_JSON})
        if response.status != 200:
            raise SyncError(
                "pull_refused",
                f"the server refused the {resource_type} id listing (HTTP {response.status})",
            )
        try:
            bundle = loads_bounded(response.body)
            entries = bundle_entries(bundle, "searchset")
            items = [
                _listed(entry, resource_type)
                for entry in entries
                if _mode(entry) in (None, "match")
            ]
        except (BoundedJsonError, InvalidResource) as error:
            raise SyncError(
                "bad_response", f"the server's {resource_type} id listing is malformed"
            ) from error
        total = bundle.get("total")
        return items, total if type(total) is int and total >= 0 else None, len(entries)

    def _fetch(self, resource_type: str, ids: Collection[str]) -> Any:
        query = urlencode({"_id": ",".join(ids), "_count": len(ids)})
        url = f"{self._base}/{resource_type}?{query}"
        response = self._transport.get(url, headers={"Accept": FHIR_JSON})
        return self._parse_page(response, url, resource_type)


def _field(resource_type: str) -> str:
    return PATIENT_FIELD.get(resource_type, "subject")


def _mode(entry: Mapping[str, Any]) -> str | None:
    search = entry.get("search")
    mode = search.get("mode") if isinstance(search, dict) else None
    return mode if isinstance(mode, str) else None


def _listed(entry: Mapping[str, Any], resource_type: str) -> Listed:
    resource = entry.get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        raise InvalidResource("wrong_type", "Bundle.entry.resource")
    rid = resource.get("id")
    if not isinstance(rid, str) or not ID_RE.fullmatch(rid):
        raise InvalidResource("bad_id", "Bundle.entry.resource.id")
    meta = resource.get("meta")
    stamp = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if not isinstance(stamp, str):
        raise InvalidResource("missing", "Bundle.entry.resource.meta.lastUpdated")
    try:
        instant = parse_instant(stamp)
    except ValueError as error:
        raise InvalidResource("bad_instant", "Bundle.entry.resource.meta.lastUpdated") from error
    patient: str | None = None
    if resource_type != PATIENT:
        holder = resource.get(_field(resource_type))
        ref = holder.get("reference") if isinstance(holder, dict) else None
        if isinstance(ref, str) and ref.startswith(PATIENT_REFERENCE_PREFIX):
            candidate = ref[len(PATIENT_REFERENCE_PREFIX) :]
            patient = candidate if ID_RE.fullmatch(candidate) else None
    return Listed(rid, instant, patient)


def _instant(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _add(a: ApplyStats, b: ApplyStats) -> ApplyStats:
    return ApplyStats(
        applied=a.applied + b.applied,
        skipped_older=a.skipped_older + b.skipped_older,
        deleted=a.deleted + b.deleted,
        quarantined=a.quarantined + b.quarantined,
        purged=a.purged + b.purged,
        held=a.held + b.held,
        out_of_scope=a.out_of_scope + b.out_of_scope,
        replaced_local=a.replaced_local + b.replaced_local,
    )
