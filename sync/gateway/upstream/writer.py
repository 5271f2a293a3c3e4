"""The import's writer: upstream resources validated, compared with what the gateway holds, and
written in batches into the gateway store (records in, issue 14; ``load``, ``exports`` and
``history`` feed it).

Invariants:
- Every resource goes through the same strict validator as a laptop's push
  (``validate_resource``) and the store's structural checks before it is written; one that
  fails is quarantined (type, id, reason code, JSON path; ``upstream status`` lists them) and
  the rest goes on. A ``ReadyLine`` (``offer_ready``) passed both in the screening worker and
  arrives serialised: it is written as it is, unless it is, or names, a note filed from here
  (then it is parsed and takes ``offer``'s way).
- An upstream version already held (same ``versionId``, same site) is never written again:
  re-reading what was imported (a resumed export, an overlapping window) adds nothing to any
  site's feed.
- A resource and its ``upstream_imported`` row commit in one store transaction
  (``WRITE_BATCH`` per transaction).
- A batch is one whole transaction, run again if the database rolled it back to break a
  deadlock (``store.conflicts``; nothing of it had committed).
- Batches commit one at a time, in order. Where the store says it is worth it
  (``bulk_commits_overlap``: PostgreSQL) a full batch is committed on the committer thread
  while the next one is read; on SQLite it is committed right away, on this thread.
  Everything else waits for a batch being committed first (``drain``): ``flush`` returns
  only once every batch has committed (so a high-water mark saved after it covers only
  committed writes), and ``writer.store``, the quarantine and every read go through
  ``drain``; a batch's failure is raised there (or, committed here, at once).
- A note filed from here comes back from the upstream under the upstream's id: it is held
  under the gateway's own id (``upstream_filed``), its echo is never written again, and an
  upstream edit of it becomes its next version here, tagged filed, or tagged conflict when the
  laptop edit last queued for it met an upstream 412 or is still queued (then closed as a
  conflict in the same transaction: made on the version before the upstream's edit, it is
  never sent up over it); references to filed resources are rewritten back to the gateway's
  ids.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson

from sync.gateway.store import resources as res
from sync.gateway.store.base import WriteTx
from sync.gateway.store.conflicts import retry_conflicts
from sync.gateway.store.serialised import Serialised
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.upstream_tables import Filed, OutboxItem
from sync.gateway.upstream.content import same_content
from sync.gateway.upstream.references import references_in_json, rewrite
from sync.gateway.upstream.screening import ReadyLine
from sync.protocol.fhir.filing import CONFLICT, FILED, FilingTag, with_filing_tag
from sync.protocol.fhir.paging import last_updated
from sync.protocol.fhir.validate import InvalidResource, validate_resource
from sync.protocol.fhir.vocabulary import PATIENT, STORED_TYPES

# (type, id, body (a dict, or serialised: ``offer_ready``) or None: remove, upstream version,
# site, patient, filed from here)
Pending = tuple[str, str, dict[str, Any] | Serialised | None, str, str, str, bool]
log = logging.getLogger(__name__)
WRITE_BATCH = 1000  # resources per store transaction (one fsync each; the writer lock ~50 ms)


def patient_of(resource: dict[str, Any]) -> str | None:
    try:
        return res.patient_id_of(resource)
    except res.ResourceError:
        return None


_committer: ThreadPoolExecutor | None = None
_committer_lock = threading.Lock()


def _committer_pool() -> ThreadPoolExecutor:
    """One long-lived thread for every writer of the process (one store connection each)."""
    global _committer
    with _committer_lock:
        if _committer is None:
            _committer = ThreadPoolExecutor(1, thread_name_prefix="import-commit")
        return _committer


class ImportWriter:
    """Validated, changed resources written in batches; quarantine for the rest."""

    def __init__(self, store: SqlStore, now: dt.datetime) -> None:
        self._store = store
        self.now = now
        self.counts: Counter[str] = Counter()
        self._committing: Future[Counter[str]] | None = None
        self._pending: list[Pending] = []
        self._held: dict[str, dict[str, tuple[str, str]]] = {}
        self._filed: dict[str, dict[str, Filed]] = {}
        self._filing: bool | None = None

    @property
    def store(self) -> SqlStore:
        """The store, once every batch handed to the committer has committed."""
        self.drain()
        return self._store

    def drain(self) -> None:
        """Wait for the batch being committed (if any); raise its failure."""
        committing, self._committing = self._committing, None
        if committing is not None:
            self.counts.update(committing.result())

    def abandon(self) -> None:
        """Wait for the batch being committed, if any, whatever its outcome (a pass that
        failed: its own error is the one reported). Nothing pending is written."""
        committing, self._committing = self._committing, None
        self._pending.clear()
        if committing is not None:
            try:
                self.counts.update(committing.result())
            except Exception as failed:  # the pass's own error is the one that goes on up
                log.warning("import batch not committed: %s", type(failed).__name__)

    def _any_filed(self) -> bool:
        """Whether any note was ever filed from here (else no reference needs rewriting)."""
        if self._filing is None:
            self._filing = any(self.filed(t) for t in sorted(STORED_TYPES))
        return self._filing

    def filed(self, rtype: str) -> dict[str, Filed]:
        """Upstream id → the gateway resource filed as it (notes written on laptops)."""
        if rtype not in self._filed:
            self._filed[rtype] = self.store.filed_by_upstream(rtype)
        return self._filed[rtype]

    def held_id(self, rtype: str, upstream_id: str) -> str:
        """The id an upstream resource is (or would be) held under here: a note filed from
        here keeps the gateway's own id; anything else, the upstream's."""
        return self._to_gateway(rtype, upstream_id) or upstream_id

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

    def offer(
        self,
        resource: dict[str, Any],
        site: str,
        patient_id: str,
        *,
        depth: int | None = None,
        validated: bool = False,
    ) -> str | None:
        """Write ``resource`` (an upstream version) if it is valid and new here; returns the
        gateway id it is held under (None: quarantined). ``depth``: its nesting depth as a
        bounded parse measured it (None: measured here). ``validated``: ``validate_resource``
        accepted a resource equal to this one (``screening``: parsed from the same bytes)."""
        rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
        mine = self.filed(rtype).get(rid) if rtype != PATIENT else None
        if mine is not None:
            version = (resource.get("meta") or {}).get("versionId")
            if version == mine.upstream_version and self.held(rtype).get(mine.rid) == (
                version,
                site,
            ):
                self.counts["own_filed"] += 1  # a note filed from here, seen back: no change
                return mine.rid
            rid = mine.rid  # edited upstream, its patient moved or back: a new version here
        else:
            version = (resource.get("meta") or {}).get("versionId")
            if isinstance(version, str) and self.held(rtype).get(rid) == (version, site):
                self.counts["unchanged"] += 1  # this very version was validated and written
                return rid
        try:
            if not validated:
                validate_resource(resource)
            body = rewrite(resource, self._to_gateway) if self._any_filed() else dict(resource)
            body["id"] = rid
            if rtype == PATIENT:
                body["managingOrganization"] = {"reference": f"Organization/{site}"}
            # A Patient gains managingOrganization.reference: two levels, never deeper.
            res.check_resource(body, rtype, depth=None if depth is None else max(depth, 2))
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
        # The health record's version of a note filed from here is tagged when it is
        # committed (``_tagged``: what is queued for it then decides).
        self._pending.append((rtype, rid, body, version, site, patient_id, mine is not None))
        self.held(rtype)[rid] = (version, site)
        if mine is not None:
            self.filed(rtype)[mine.upstream_id] = Filed(rtype, rid, mine.upstream_id, version)
        if len(self._pending) >= WRITE_BATCH:
            self._hand_over()
        return rid

    def offer_ready(self, line: ReadyLine, site: str, patient_id: str) -> str | None:
        """``offer`` of a resource a screening worker validated, checked and serialised: the
        same outcome, without parsing it here unless it is a note filed from here or names
        one (its references are rewritten: ``offer``)."""
        serialised, rid, version = line.serialised, line.rid, line.version
        rtype = serialised.rtype
        if rid in self.filed(rtype) or (self._any_filed() and self._names_filed(serialised)):
            resource = orjson.loads(line.raw)
            return self.offer(resource, site, patient_id, depth=None, validated=True)
        if self.held(rtype).get(rid) == (version, site):
            self.counts["unchanged"] += 1
            return rid
        self._pending.append((rtype, rid, serialised, version, site, patient_id, False))
        self.held(rtype)[rid] = (version, site)
        if len(self._pending) >= WRITE_BATCH:
            self._hand_over()
        return rid

    def _names_filed(self, serialised: Serialised) -> bool:
        """Whether ``serialised`` refers to a resource filed from here (``rewrite`` would change
        it)."""
        compact = serialised.meta_members + b"," + serialised.members
        return any(self._to_gateway(*ref) for ref in references_in_json(compact))

    def _is_version(self, queued: OutboxItem, upstream: dict[str, Any]) -> bool:
        """Whether the queued laptop version holds the content of ``upstream``."""
        if queued.op != "put":
            return False
        stored = self._store.vread(queued.rtype, queued.rid, queued.version_id)
        return stored is not None and same_content(orjson.loads(stored.body), upstream)

    def _tagged(self, tx: WriteTx, item: Pending, counts: Counter[str]) -> Pending | None:
        """The upstream's new version of a note filed from here, tagged in the transaction
        that writes it: filed; or a conflict naming the laptop edit last queued for it when
        that edit met an upstream 412, or is queued and not filed yet. Such an edit was made
        on a version before the upstream's: it is closed as a conflict here (never sent up
        over the upstream's edit) and the laptop that wrote it opens it in its conflict flow.
        None (nothing to write) when a queued edit holds the upstream version's very content:
        that version is the gateway's own edit (applied upstream, its reply lost), which the
        gateway holds already, or a later laptop edit on it; the queued edits go up as queued.
        None too for the very version filed from here, read at another site (its patient
        moved, and the note with it): only the import's record of it moves.
        """
        rtype, rid, body, version = item[:4]
        assert isinstance(body, dict)  # a filed note's version is always parsed (``offer``)
        current = tx.current(rtype, rid)  # its site held (PostgreSQL): no edit queued meanwhile
        store = self._store
        known = store.filed(rtype, rid)
        if known is not None and known.upstream_version == version:
            # The very version filed from here, seen again elsewhere (its patient moved: the
            # store moved the note with the patient): no edit. Written only to bring the
            # note back where the import had removed it (the patient left, then came back).
            if current is not None and not current.deleted:
                return None
            return self._with_tag(item, FilingTag(FILED))
        queued = store.outbox_pending_of(rtype, rid)
        if any(self._is_version(q, body) for q in queued):
            return None  # the gateway's own edit: it holds that content, or a later edit
        for edit in queued:
            store.outbox_done_in_tx(
                edit.seq,
                "conflict",
                self.now,
                reason="upstream_conflict",
                detail=f"upstream version {version}",
            )
            counts["conflict_queued_edit"] += 1
        latest = store.latest_outbox(rtype, rid)
        tag = FilingTag(FILED)
        if latest is not None and latest.state == "conflict":
            counts["conflict_sent_down"] += 1
            tag = FilingTag(CONFLICT, version=str(latest.version_id))
        return self._with_tag(item, tag)

    @staticmethod
    def _with_tag(item: Pending, tag: FilingTag) -> Pending:
        rtype, rid, body, version, site, patient, filed = item
        assert isinstance(body, dict)
        tagged = res.check_resource(with_filing_tag(body, tag), rtype)
        return (rtype, rid, tagged, version, site, patient, filed)

    def remove(self, rtype: str, rid: str) -> None:
        self._pending.append((rtype, rid, None, "", "", "", False))
        self.held(rtype).pop(rid, None)
        if len(self._pending) >= WRITE_BATCH:
            self._hand_over()

    def quarantine(self, resource: dict[str, Any], reason: str) -> None:
        self._quarantine(str(resource.get("resourceType")), str(resource.get("id")), reason, "$")

    def quarantine_id(self, rtype: str, rid: str, reason: str) -> None:
        self._quarantine(rtype, rid, reason, "$")

    def _quarantine(self, rtype: str, rid: str, reason: str, path: str) -> None:
        self.counts["quarantined"] += 1
        with self.store.write():
            self.store.quarantine_in_tx(rtype[:64], rid[:64], reason, path[:200], self.now)

    def flush(self) -> None:
        """Write what is pending; return once everything offered so far has committed."""
        self._hand_over()
        self.drain()

    def _hand_over(self) -> None:
        """The pending batch to the committer, after the previous one has committed."""
        self.drain()
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._store.bulk_commits_overlap:
            self._committing = _committer_pool().submit(self._commit, batch)
        else:
            self.counts.update(self._commit(batch))

    def _commit(self, batch: list[Pending]) -> Counter[str]:
        """``_commit_once``, run again when the database rolled it back to break a deadlock
        (``store.conflicts``: a batch moving a patient locks its old site late)."""
        return retry_conflicts(lambda: self._commit_once(batch))

    def _commit_once(self, batch: list[Pending]) -> Counter[str]:
        """One store transaction, in the order offered: each run of new versions with one
        ``put_many`` and one ``record_imports_in_tx`` (on the committer thread, or this one)."""
        counts: Counter[str] = Counter()
        store = self._store
        with store.write() as tx:
            run: list[Pending] = []
            for item in batch:
                if item[2] is not None:
                    run.append(item)
                    continue
                self._write(tx, run, counts)
                run = []
                rtype, rid = item[0], item[1]
                current = tx.current(rtype, rid)
                if current is not None and not current.deleted:
                    tx.delete(rtype, rid)
                    counts["deleted"] += 1
                store.forget_import_in_tx(rtype, rid)
            self._write(tx, run, counts)
        return counts

    def _write(self, tx: WriteTx, run: list[Pending], counts: Counter[str]) -> None:
        if not run:
            return
        store = self._store
        sites = sorted({site for *_, site, _, _ in run})
        ours = [(rtype, rid) for rtype, rid, *_, filed in run if filed]
        if ours:  # read under the batch's sites, locked in one sorted go (PostgreSQL)
            tx.prefetch(ours, sites=sites)
        kept: list[Pending] = []  # what is written: all but the gateway's own edits read back
        for item in run:
            tagged = self._tagged(tx, item, counts) if item[6] else item
            if tagged is None:  # only its upstream version is news (recorded below)
                counts["own_edit_seen"] += 1
            else:
                kept.append(tagged)
        if kept:
            tx.put_many(
                [(rtype, rid, body) for rtype, rid, body, *_ in kept if body is not None],
                checked=True,
                sites=sites,  # PostgreSQL: held as it reads
            )
        store.record_imports_in_tx(
            [
                (rtype, rid, version, site, patient)
                for rtype, rid, _, version, site, patient, _ in run
            ],
            self.now,
        )
        for rtype, rid, _, version, _, _, filed in run:
            if filed:
                store.refile_version_in_tx(rtype, rid, version)
        counts["written"] += len(kept)


def offer_page(
    writer: ImportWriter, page: Iterable[dict[str, Any]], site_of: dict[str, str], newest: list[Any]
) -> set[str]:
    ids = set()
    for resource in page:
        stamp = last_updated(resource)
        if stamp is not None and (newest[0] is None or stamp > newest[0]):
            newest[0] = stamp
        pid = patient_of(resource)
        if pid is None:
            writer.quarantine(resource, "missing_patient_reference")
            continue
        rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
        if pid not in site_of:
            here = writer.held_id(rtype, rid)
            if rtype != PATIENT and here in writer.held(rtype):  # moved to another patient,
                # of no linked site (a Patient leaving is a departure: ``load``)
                writer.remove(rtype, here)
                writer.counts["moved_away"] += 1
            continue
        ids.add(writer.offer(resource, site_of[pid], pid) or writer.held_id(rtype, rid))
    return ids
