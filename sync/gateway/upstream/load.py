"""Records in (issue 14): the linked sites' patients and their records, from the upstream into
the gateway store, where the existing change feed, ids, versions and site filtering serve the
laptops unchanged.

A pass (``import_records``):
1. membership (``membership.read_membership``): each upstream patient of a linked site;
2. those Patients, by ``_id`` (keyset-paged), written with ``managingOrganization`` set to
   ``Organization/<site>``: a patient whose site changes is a transfer in the store (today's
   behaviour: the old site's laptops purge after their unsent work is sent);
3. patients who left every linked site: deleted here with the records imported for them;
4. clinical records per type: a **reconciliation** (the first pass, ``upstream sync``, and
   every ``RECONCILE_INTERVAL``) searches per type by patient (``patient=`` in chunks,
   ``_lastUpdated`` keyset) and deletes here what upstream no longer has; otherwise an
   **incremental** search per type from the high-water mark less ``OVERLAP``, plus the full
   by-patient search for patients new to the gateway. (The upstream's ``_history`` and Bulk
   ``$export`` are not used yet: see docs/deploy.md.)

Invariants:
- Every resource goes through the same strict validator as a laptop's push
  (``validate_resource``) and the store's structural checks before it is written; one that
  fails is quarantined (type, id, reason code, JSON path; ``upstream status`` lists them) and
  the rest of the pass goes on.
- An upstream version already held (same ``versionId``, same site) is never written again: a
  pass that finds nothing new adds nothing to any site's feed.
- A resource and its ``upstream_imported`` row commit in one store transaction; high-water
  marks are saved only after every write they cover has committed. So a pass killed anywhere
  is redone by the next one without loss or duplication (a re-read version is "unchanged").
- A note filed from here comes back from the upstream under the upstream's id: it is held
  under the gateway's own id (``upstream_filed``), its echo is never written again, and an
  upstream edit of it becomes its next version here, tagged filed (it is the health
  record's version: ``sync.protocol.fhir.filing``), or tagged conflict when the laptop edit
  last queued for it met an upstream 412 (that laptop opens a conflict); references to filed
  resources are rewritten back to the gateway's ids.
- A linked site whose membership reads as empty while the gateway holds patients for it is
  refused (``membership_emptied``) rather than purge a whole prison on a misconfigured Group.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sync.gateway.store import resources as res
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.upstream_tables import Filed
from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.membership import Membership, read_membership
from sync.gateway.upstream.references import rewrite
from sync.gateway.upstream.search import keyset_search
from sync.protocol.fhir.filing import CONFLICT, FILED, FilingTag, with_filing_tag
from sync.protocol.fhir.paging import last_updated
from sync.protocol.fhir.validate import InvalidResource, parse_instant, validate_resource
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES, PATIENT

PATIENT_CHUNK = 50  # patients per by-patient search (``patient=Patient/a,Patient/b,…``)
WRITE_BATCH = 200  # resources per store transaction
OVERLAP = dt.timedelta(minutes=5)  # re-read before the mark: commits land out of stamp order
RECONCILE_INTERVAL = dt.timedelta(hours=1)
_RECONCILED = "reconciled"


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _patient_of(resource: dict[str, Any]) -> str | None:
    try:
        return res.patient_id_of(resource)
    except res.ResourceError:
        return None


class _Writer:
    """Validated, changed resources written in batches; quarantine for the rest."""

    def __init__(self, store: SqlStore, now: dt.datetime) -> None:
        self.store = store
        self.now = now
        self.counts: Counter[str] = Counter()
        self._pending: list[tuple[str, str, dict[str, Any] | None, str, str, str]] = []
        self._held: dict[str, dict[str, tuple[str, str]]] = {}
        self._filed: dict[str, dict[str, Filed]] = {}

    def filed(self, rtype: str) -> dict[str, Filed]:
        """Upstream id → the gateway resource filed as it (notes written on laptops)."""
        if rtype not in self._filed:
            self._filed[rtype] = self.store.filed_by_upstream(rtype)
        return self._filed[rtype]

    def _to_gateway(self, rtype: str, upstream_id: str) -> str | None:
        filed = self.filed(rtype).get(upstream_id) if rtype != PATIENT else None
        return filed.rid if filed is not None else None

    def held(self, rtype: str) -> dict[str, tuple[str, str]]:
        """(upstream version, site) of every ``rtype`` held, as of the last flush."""
        if rtype not in self._held:
            self._held[rtype] = {
                rid: (row.upstream_version, row.site)
                for rid, row in self.store.imported(rtype).items()
            }
        return self._held[rtype]

    def offer(self, resource: dict[str, Any], site: str, patient_id: str) -> str | None:
        """Write ``resource`` (an upstream version) if it is valid and new here; returns the
        gateway id it is held under (None: quarantined)."""
        rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
        mine = self.filed(rtype).get(rid) if rtype != PATIENT else None
        if mine is not None:
            version = (resource.get("meta") or {}).get("versionId")
            if version == mine.upstream_version:
                self.counts["own_filed"] += 1  # a note filed from here, seen back: no change
                return mine.rid
            rid = mine.rid  # edited upstream: a new version of the gateway's own resource
        try:
            validate_resource(resource)
            body = rewrite(resource, self._to_gateway)
            body["id"] = rid
            if rtype == PATIENT:
                body["managingOrganization"] = {"reference": f"Organization/{site}"}
            res.check_resource(body, rtype)
        except InvalidResource as bad:
            self._quarantine(rtype, rid, bad.reason, bad.path)
            return None
        except res.ResourceError as bad:
            self._quarantine(rtype, rid, bad.reason, "$")
            return None
        version = str(resource["meta"]["versionId"])
        if self.held(rtype).get(rid) == (version, site):
            self.counts["unchanged"] += 1
            return rid
        if mine is not None:  # the health record's version of a note filed from here
            body = with_filing_tag(body, self._tag_of(rtype, rid))
        self._pending.append((rtype, rid, body, version, site, patient_id))
        self.held(rtype)[rid] = (version, site)
        if mine is not None:
            self.filed(rtype)[mine.upstream_id] = Filed(rtype, rid, mine.upstream_id, version)
        if len(self._pending) >= WRITE_BATCH:
            self.flush()
        return rid

    def _tag_of(self, rtype: str, rid: str) -> FilingTag:
        """Filed; or, when the laptop edit last queued for it met an upstream 412, a conflict
        naming that edit's version (the laptop that wrote it opens it in its conflict flow)."""
        latest = self.store.latest_outbox(rtype, rid)
        if latest is not None and latest.state == "conflict":
            self.counts["conflict_sent_down"] += 1
            return FilingTag(CONFLICT, version=str(latest.version_id))
        return FilingTag(FILED)

    def remove(self, rtype: str, rid: str) -> None:
        self._pending.append((rtype, rid, None, "", "", ""))
        self.held(rtype).pop(rid, None)
        if len(self._pending) >= WRITE_BATCH:
            self.flush()

    def quarantine(self, resource: dict[str, Any], reason: str) -> None:
        self._quarantine(str(resource.get("resourceType")), str(resource.get("id")), reason, "$")

    def _quarantine(self, rtype: str, rid: str, reason: str, path: str) -> None:
        self.counts["quarantined"] += 1
        with self.store.write():
            self.store.quarantine_in_tx(rtype[:64], rid[:64], reason, path[:200], self.now)

    def flush(self) -> None:
        if not self._pending:
            return
        with self.store.write() as tx:
            for rtype, rid, body, version, site, patient_id in self._pending:
                if body is None:
                    current = tx.current(rtype, rid)
                    if current is not None and not current.deleted:
                        tx.delete(rtype, rid)
                        self.counts["deleted"] += 1
                    self.store.forget_import_in_tx(rtype, rid)
                    continue
                tx.put(rtype, rid, body)
                self.store.record_import_in_tx(rtype, rid, version, site, patient_id, self.now)
                self.store.refile_version_in_tx(rtype, rid, version)
                self.counts["written"] += 1
        self._pending.clear()


def _import_patients(
    connection: UpstreamConnection, writer: _Writer, membership: Membership
) -> set[str]:
    """Write the members' Patients; return the ids upstream returned."""
    found: set[str] = set()
    for chunk in _chunks(sorted(membership.site_of), PATIENT_CHUNK):
        for page in keyset_search(connection, PATIENT, {"_id": ",".join(chunk)}):
            for patient in page:
                pid = str(patient.get("id"))
                if pid in membership.site_of:
                    found.add(pid)
                    writer.offer(patient, membership.site_of[pid], pid)
    writer.counts["missing_patients"] += len(set(membership.site_of) - found)
    writer.flush()
    return found


def _remove_leavers(writer: _Writer, present: set[str]) -> None:
    """Patients held here who are no longer members of a linked site (or no longer exist
    upstream): deleted here, with every record imported for them."""
    for pid in sorted(set(writer.held(PATIENT)) - present):
        for row in writer.store.imported_of_patient(pid):
            if row.rtype != PATIENT:
                writer.remove(row.rtype, row.rid)
        writer.remove(PATIENT, pid)
        writer.counts["left"] += 1
    writer.flush()


def _offer_page(
    writer: _Writer, page: Iterable[dict[str, Any]], site_of: dict[str, str], newest: list[Any]
) -> set[str]:
    ids = set()
    for resource in page:
        stamp = last_updated(resource)
        if stamp is not None and (newest[0] is None or stamp > newest[0]):
            newest[0] = stamp
        pid = _patient_of(resource)
        if pid is None:
            writer.quarantine(resource, "missing_patient_reference")
            continue
        if pid not in site_of:
            continue
        held_as = writer.offer(resource, site_of[pid], pid)
        ids.add(held_as or str(resource.get("id")))
    return ids


def _by_patient(
    connection: UpstreamConnection,
    writer: _Writer,
    rtype: str,
    patients: Sequence[str],
    site_of: dict[str, str],
    newest: list[Any],
) -> set[str]:
    seen: set[str] = set()
    for chunk in _chunks(sorted(patients), PATIENT_CHUNK):
        params = {"patient": ",".join(f"Patient/{p}" for p in chunk)}
        for page in keyset_search(connection, rtype, params):
            seen |= _offer_page(writer, page, site_of, newest)
    return seen


def _mark(store: SqlStore, stream: str) -> dt.datetime | None:
    text = store.upstream_mark(stream)
    try:
        return None if text is None else parse_instant(text)
    except ValueError:
        return None


def _save_mark(store: SqlStore, stream: str, moment: dt.datetime, now: dt.datetime) -> None:
    with store.write():
        store.set_mark_in_tx(stream, moment.isoformat(), now)


def _refuse_emptied(store: SqlStore, membership: Membership) -> None:
    held_sites = Counter(row.site for row in store.imported(PATIENT).values())
    for link in store.site_links():
        if held_sites[link.site] and not membership.patients(link.site):
            raise UpstreamError("membership_emptied", link.site)


def import_records(
    connection: UpstreamConnection,
    store: SqlStore,
    *,
    now: dt.datetime,
    reconcile: bool | None = None,
) -> dict[str, int]:
    """One import pass (module docstring); returns its counts."""
    links = store.site_links()
    if not links:
        return {"site_links": 0}
    membership = read_membership(connection, links, now)
    _refuse_emptied(store, membership)
    writer = _Writer(store, now)
    before = set(writer.held(PATIENT))
    found = _import_patients(connection, writer, membership)
    _remove_leavers(writer, found)
    held = writer.held(PATIENT)
    site_of = {p: s for p, s in membership.site_of.items() if p in found and p in held}
    last = _mark(store, _RECONCILED)
    if reconcile is None:
        reconcile = last is None or now - last >= RECONCILE_INTERVAL
    newcomers = sorted(set(site_of) - before)
    for rtype in CLINICAL_TYPES:
        stream = f"search:{rtype}"
        mark = _mark(store, stream)
        newest: list[Any] = [mark]
        if reconcile or mark is None:
            seen = _by_patient(connection, writer, rtype, sorted(site_of), site_of, newest)
            writer.flush()
            for rid, (_, site) in sorted(writer.held(rtype).items()):
                if rid not in seen and site in {link.site for link in links}:
                    writer.remove(rtype, rid)
        else:
            _by_patient(connection, writer, rtype, newcomers, site_of, newest)
            for page in keyset_search(connection, rtype, {}, since=mark - OVERLAP):
                _offer_page(writer, page, site_of, newest)
        writer.flush()
        if newest[0] is not None and newest[0] != mark:
            _save_mark(store, stream, newest[0], now)
    if reconcile:
        _save_mark(store, _RECONCILED, now, now)
    counts = dict(writer.counts)
    counts.update(
        site_links=len(links),
        patients=len(site_of),
        conflicts=membership.conflicts,
        reconciled=int(reconcile),
    )
    return counts
