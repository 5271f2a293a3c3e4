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
   every ``RECONCILE_INTERVAL``) compares id lists (``reconcile.reconcile_type``: ids and
   versions listed by patient, only new or changed records fetched whole by ``_id``) and
   deletes here what upstream no longer has; otherwise an **incremental** read per type
   (``_history``, ``$export?_since`` or a ``_lastUpdated`` keyset search from the high-water
   mark less ``OVERLAP``, or from the mark itself when it is an export's ``transactionTime``:
   Bulk Data promises every change up to that instant, so nothing needs re-reading).
   Patients new to the gateway have their records read whole by ``patient=`` search in
   either case; a Group-linked site never loaded by ``$export`` is
   loaded by it (where offered) and is reconciled by id lists afterwards.
5. a completed reconciliation closes the quarantine rows it did not meet again
   (``close_unseen_quarantine``): every record in scope was just read afresh, so a row not renewed
   is of a record deleted upstream, out of scope, or an export line since superseded.

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
- The quarantine lists open rows only: a row leaves it when its record imports cleanly, when
  a completed reconciliation does not meet it again (except ``missing_patient_reference``: a
  record naming no patient is never listed by patient, so it waits for its import or for IT),
  or when IT clears it; ``upstream_quarantine_log`` keeps when and why.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sync.gateway.store.sql import SqlStore
from sync.gateway.store.upstream_tables import SiteLink
from sync.gateway.upstream.capabilities import UpstreamCapabilities
from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.exports import ExportResult, export_group, last_export
from sync.gateway.upstream.history import read_history
from sync.gateway.upstream.membership import Membership, read_membership
from sync.gateway.upstream.reconcile import PATIENT_CHUNK, chunks, reconcile_type
from sync.gateway.upstream.search import keyset_search
from sync.gateway.upstream.writer import ImportWriter, offer_page
from sync.protocol.fhir.validate import parse_instant
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES, PATIENT

OVERLAP = dt.timedelta(minutes=5)  # re-read before the mark: commits land out of stamp order
RECONCILE_INTERVAL = dt.timedelta(hours=1)
_RECONCILED = "reconciled"
ELEMENTS_STREAM = "reconcile:elements"  # "honoured" or "ignored": what the last listing met


def _import_patients(
    connection: UpstreamConnection, writer: ImportWriter, membership: Membership
) -> set[str]:
    """Write the members' Patients; return the ids upstream returned."""
    found: set[str] = set()
    for chunk in chunks(sorted(membership.site_of), PATIENT_CHUNK):
        for page in keyset_search(connection, PATIENT, {"_id": ",".join(chunk)}):
            for patient in page:
                pid = str(patient.get("id"))
                if pid in membership.site_of:
                    found.add(pid)
                    writer.offer(patient, membership.site_of[pid], pid)
    writer.counts["missing_patients"] += len(set(membership.site_of) - found)
    writer.flush()
    return found


def _remove_leavers(writer: ImportWriter, present: set[str]) -> None:
    """Patients held here who are no longer members of a linked site (or no longer exist
    upstream): deleted here, with every record imported for them."""
    for pid in sorted(set(writer.held(PATIENT)) - present):
        for row in writer.store.imported_of_patient(pid):
            if row.rtype != PATIENT:
                writer.remove(row.rtype, row.rid)
        writer.remove(PATIENT, pid)
        writer.counts["left"] += 1
    writer.flush()


def _by_patient(
    connection: UpstreamConnection,
    writer: ImportWriter,
    rtype: str,
    patients: Sequence[str],
    site_of: dict[str, str],
    newest: list[Any],
) -> set[str]:
    seen: set[str] = set()
    for chunk in chunks(sorted(patients), PATIENT_CHUNK):
        params = {"patient": ",".join(f"Patient/{p}" for p in chunk)}
        for page in keyset_search(connection, rtype, params):
            seen |= offer_page(writer, page, site_of, newest)
    return seen


def _mark(store: SqlStore, stream: str) -> dt.datetime | None:
    text = store.upstream_mark(stream)
    try:
        return None if text is None else parse_instant(text)
    except ValueError:
        return None


def _save_mark(store: SqlStore, stream: str, moment: dt.datetime, now: dt.datetime) -> None:
    _save_text(store, stream, moment.isoformat(), now)


def _complete_stream(stream: str) -> str:
    return f"{stream}:complete"


def _read_from(store: SqlStore, stream: str, mark: dt.datetime) -> dt.datetime:
    """Where an incremental read of ``stream`` starts: at ``mark`` when it is an export's
    ``transactionTime`` (saved as complete), else ``OVERLAP`` before it (commits upstream land
    out of ``lastUpdated`` order, so a stamp seen is no promise about earlier stamps)."""
    complete = store.upstream_mark(_complete_stream(stream))
    return mark if complete == mark.isoformat() else mark - OVERLAP


def _save_text(store: SqlStore, stream: str, text: str, now: dt.datetime) -> None:
    with store.write():
        store.set_mark_in_tx(stream, text, now)


def _refuse_emptied(store: SqlStore, membership: Membership) -> None:
    held_sites = Counter(row.site for row in store.imported(PATIENT).values())
    for link in store.site_links():
        if held_sites[link.site] and not membership.patients(link.site):
            raise UpstreamError("membership_emptied", link.site)


def _history(capabilities: UpstreamCapabilities | None, rtype: str) -> bool:
    return capabilities is not None and capabilities.profile.of(rtype).history_type


def _apply_history(
    connection: UpstreamConnection,
    writer: ImportWriter,
    rtype: str,
    since: dt.datetime,
    site_of: dict[str, str],
    newest: list[Any],
) -> None:
    """``rtype``'s changes since ``since``: the newest change per resource is applied; a
    deletion removes what the gateway holds."""
    applied: dict[str, dt.datetime | None] = {}
    for page in read_history(connection, rtype, since):
        writer.counts["history_entries"] += len(page)
        for change in page:
            if change.rtype != rtype:
                continue
            if change.at is not None and (newest[0] is None or change.at > newest[0]):
                newest[0] = change.at
            if change.rid in applied:
                before = applied[change.rid]
                if change.at is None or before is None or change.at <= before:
                    continue  # an older version than one already applied in this read
            applied[change.rid] = change.at
            if change.resource is not None:
                offer_page(writer, [change.resource], site_of, [None])
                continue
            mine = writer.filed(rtype).get(change.rid)
            rid = mine.rid if mine is not None else change.rid
            if rid in writer.held(rtype):
                writer.remove(rtype, rid)
                writer.counts["history_deleted"] += 1


def _export_sites(
    connection: UpstreamConnection,
    writer: ImportWriter,
    links: Sequence[SiteLink],
    membership: Membership,
) -> dict[str, ExportResult]:
    """Full ``Group/[id]/$export`` of every Group-linked site never loaded by export (its
    initial load; its reconciliations are by id lists); a site whose kick-off is refused is
    searched instead."""
    exported: dict[str, ExportResult] = {}
    for link in links:
        if link.kind != "group" or last_export(writer, link.ref) is not None:
            continue
        try:
            exported[link.site] = export_group(connection, writer, link, membership.site_of)
        except UpstreamError as refused:
            if refused.reason != "export_refused":
                raise
            writer.counts["export_refused"] += 1
    return exported


def import_records(
    connection: UpstreamConnection,
    store: SqlStore,
    *,
    now: dt.datetime,
    reconcile: bool | None = None,
    capabilities: UpstreamCapabilities | None = None,
) -> dict[str, int]:
    """One import pass (module docstring); returns its counts."""
    links = store.site_links()
    if not links:
        return {"site_links": 0}
    writer = ImportWriter(store, now)
    try:
        return _import_pass(connection, store, writer, links, now, reconcile, capabilities)
    finally:
        writer.abandon()  # a pass that failed: its last batch is done before the lease goes


def _import_pass(
    connection: UpstreamConnection,
    store: SqlStore,
    writer: ImportWriter,
    links: Sequence[SiteLink],
    now: dt.datetime,
    reconcile: bool | None,
    capabilities: UpstreamCapabilities | None,
) -> dict[str, int]:
    membership = read_membership(connection, links, now)
    _refuse_emptied(store, membership)
    before = set(writer.held(PATIENT))
    last = _mark(store, _RECONCILED)
    if reconcile is None:
        reconcile = last is None or now - last >= RECONCILE_INTERVAL
    group_export = capabilities is not None and capabilities.group_export
    exported = _export_sites(connection, writer, links, membership) if group_export else {}
    searched = Membership({p: s for p, s in membership.site_of.items() if s not in exported})
    found = _import_patients(connection, writer, searched)
    for result in exported.values():
        found |= result.patients
    _remove_leavers(writer, found)
    held = writer.held(PATIENT)
    site_of = {p: s for p, s in membership.site_of.items() if p in found and p in held}
    by_search = {p: s for p, s in site_of.items() if s not in exported}
    newcomers = sorted(set(by_search) - before)
    known = sorted(set(by_search) & before)  # reconciled by id lists
    loaded_at = min((r.transaction_time for r in exported.values()), default=None)
    no_history = tuple(t for t in CLINICAL_TYPES if not _history(capabilities, t))
    by_export_since: tuple[str, ...] = ()
    if group_export and not reconcile and no_history and all(k.kind == "group" for k in links):
        by_export_since = no_history  # every site is a Group: its increments come by $export
        for link in links:
            since = last_export(writer, link.ref)
            if link.site not in exported and since is not None:
                export_group(
                    connection, writer, link, site_of, types=no_history, since=since
                )  # complete up to the last export's transactionTime: no overlap needed
    for rtype in CLINICAL_TYPES:
        stream = f"search:{rtype}"
        mark = _mark(store, stream)
        newest: list[Any] = [mark]
        complete = False  # the new mark is an export's transactionTime (every site exported)
        if reconcile or mark is None:
            seen = _by_patient(connection, writer, rtype, newcomers, site_of, newest)
            seen |= reconcile_type(connection, writer, rtype, known, site_of, newest)
            for result in exported.values():
                seen |= result.seen[rtype]
            writer.flush()
            for rid, (_, site) in sorted(writer.held(rtype).items()):
                if rid not in seen and site in {link.site for link in links}:
                    writer.remove(rtype, rid)
            if loaded_at is not None:  # the exports are complete up to their transactionTime
                newest[0] = loaded_at if newest[0] is None else min(newest[0], loaded_at)
                complete = not by_search and newest[0] == loaded_at
        else:
            _by_patient(connection, writer, rtype, newcomers, site_of, newest)
            since = _read_from(store, stream, mark)
            if _history(capabilities, rtype):
                _apply_history(connection, writer, rtype, since, site_of, newest)
            elif rtype not in by_export_since:
                for page in keyset_search(connection, rtype, {}, since=since):
                    offer_page(writer, page, site_of, newest)
        writer.flush()
        if newest[0] is not None and newest[0] != mark:
            _save_mark(store, stream, newest[0], now)
        if complete:
            _save_mark(store, _complete_stream(stream), newest[0], now)
    if reconcile:
        if writer.counts["reconcile_listed"]:
            ignored = writer.counts["reconcile_filter_ignored"] > 0
            _save_text(store, ELEMENTS_STREAM, "ignored" if ignored else "honoured", now)
        writer.counts["quarantine_closed"] += store.close_unseen_quarantine(now)
        _save_mark(store, _RECONCILED, now, now)
    writer.counts["quarantine_imported"] += store.settle_quarantine_log(now)
    counts = dict(writer.counts)
    counts.update(
        site_links=len(links),
        patients=len(site_of),
        conflicts=membership.conflicts,
        reconciled=int(reconcile),
        exported_sites=len(exported),
    )
    return counts
