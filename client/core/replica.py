"""The client core's side of the sync replica protocol (``sync.device.replica.Replica``).

Invariants (on top of the protocol's own, docs/records.md §Sync replica):
- Every public method runs in ONE transaction of its own (``BEGIN IMMEDIATE`` … ``COMMIT``,
  ``ROLLBACK`` on any exception) and writes its audit entries in that same transaction (AD-1).
  It refuses to start inside someone else's transaction (``ReplicaError`` ``in_transaction``).
- ``apply_page`` applies, in this order and all-or-nothing: the page's resources (through
  ``records.apply_resources``: validated, deduplicated by version), patients leaving scope,
  the deletions, the quarantine rows (the page's quarantined items and the resources the store
  refused, each with its raw bytes) and finally the stream's cursor.
- A patient leaves scope when their Patient is deleted or a newer version points outside
  ``site_scope``. Without unsent work or open conflicts they are purged (``purge``, ``why`` =
  ``left_scope``); with it they are kept but out of scope: a newer out-of-scope version is
  stored as is, a deleted one has its site cleared (search and retention then treat the
  patient as out of scope), audited once as ``purge_held``; ``sync_finished`` purges them once
  their work is sent. An out-of-scope Patient the device does not hold is never stored.
- Scope holds for every type (NW-6, issue 13): a clinical resource is stored only when its
  patient is an in-scope patient the device holds (``patient_index``, in ``site_scope``),
  whatever the server sends; any other is not stored, only counted (``out_of_scope``) and
  audited in the sync's entry. Patient is pulled first, so a patient's records never arrive
  before the patient. The gateway's own filtering stays; this is defence in depth.
- Retention's ``refreshed_at``: a Patient is stamped when (re)indexed, and the whole in-scope
  caseload once per sync whose pull reached the end of every stream (``sync_finished``), not
  once per page: an unchanged patient is as current as a changed one.
- A deletion never removes a device-made, unsent resource (``versionId == "local"``), nor a
  stored version newer than the deletion's.
- Quarantined bytes stay inside the encrypted vault; each row keeps at most
  ``MAX_QUARANTINE_RAW_BYTES`` of them, and the table at most ``MAX_QUARANTINE_TOTAL_BYTES``
  (past it, new rows keep reason, path, size and hash only). Re-applying a page adds no row.
- A 412 for an update whose current server version equals, field for field, the body the
  device sent is the device's own write whose reply was lost (CR-2 for updates): it is marked
  sent (audited ``sync_sent``), not turned into a conflict with itself.
- A version the gateway tagged ``conflict`` (the health record changed a note while this
  laptop's edit of it was on its way up, issue 14) opens a conflict on that sent edit in the
  page's transaction (``conflicts.record_upstream_conflict``), audited ``sync_conflict``: the
  clinician decides in the existing conflict flow. Re-applying the page opens nothing twice.
- Nothing here logs, and audit details hold codes and counts only, never record content.

Length: one class implementing ``sync.device.replica.Replica``; every method is one step of the
engine's protocol in one transaction, so it stays together.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

import orjson

from client.core import conflicts, outbox, records
from client.core.audit_log import AuditLog
from client.core.errors import VaultLocked
from client.core.outbox import OutboxStateError
from client.core.search import site_of
from client.core.vault import transaction
from sync.device.replica import (
    EXTRA_ATTEMPTS,
    EXTRA_FULL_URL,
    EXTRA_GROUP,
    EXTRA_IF_NONE_EXIST,
    ApplyStats,
    Deletion,
    OutboxItem,
    Page,
    Quarantined,
    Replica,
    ReplicaError,
    SentItem,
    SyncSummary,
)
from sync.protocol.fhir.filing import CONFLICT, filing_tag

MAX_QUARANTINE_RAW_BYTES: Final = 1024 * 1024  # enough to diagnose any item a page can carry
MAX_QUARANTINE_TOTAL_BYTES: Final = 64 * 1024 * 1024  # a hostile server cannot fill the disk
MAX_LABEL_CHARS: Final = 200  # stream, reason, path, type and id as stored in quarantine
LEFT_SCOPE: Final = "left_scope"
_CODE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")


def _code(reason: str, fallback: str) -> str:
    """A stable code as given, or ``fallback``: server text never reaches the vault or audit."""
    return reason if isinstance(reason, str) and _CODE.match(reason) else fallback


def _label(value: str | None) -> str | None:
    return None if value is None else str(value)[:MAX_LABEL_CHARS]


class VaultReplica:
    """``sync.device.replica.Replica`` over the open vault, acting for one signed-in user.

    ``conn_provider`` returns the vault's connection (raising ``VaultLocked`` once locked);
    ``site_scope`` is the device's scope (never empty: an empty scope would purge everyone);
    ``clock`` gives aware UTC now for timestamps and audit entries. Call it only on the thread
    that owns the connection (SQLite connections are bound to the thread that opened them).
    """

    def __init__(
        self,
        conn_provider: Callable[[], Any],
        audit: AuditLog,
        *,
        user_id: str | None,
        role: str | None,
        site_scope: Collection[str],
        clock: Callable[[], datetime],
    ) -> None:
        scope = frozenset(site_scope)
        if not scope:
            raise ValueError("a replica needs the device's site scope")
        self._conn_provider = conn_provider
        self._audit = audit
        self._user_id = user_id
        self._role = role
        self._scope = scope
        self._clock = clock

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        try:
            conn = self._conn_provider()
        except VaultLocked:
            raise ReplicaError("vault_locked") from None
        if conn.in_transaction:
            raise ReplicaError("in_transaction")
        with transaction(conn):
            yield conn

    def _append(
        self,
        conn: Any,
        now: datetime,
        action: str,
        *,
        outcome: str = "success",
        patient_id: str | None = None,
        detail: dict[str, str | int] | None = None,
    ) -> None:
        self._audit.append(
            conn,
            ts=now,
            action=action,
            outcome=outcome,
            user_id=self._user_id,
            role=self._role,
            patient_id=patient_id,
            detail=detail,
        )

    def _in_scope(self, site: str | None) -> bool:
        return site is not None and site in self._scope

    # -- pull ----------------------------------------------------------------------------------

    def read_cursor(self, stream: str) -> str | None:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT cursor FROM sync_cursors WHERE stream = ?", (stream,)
            ).fetchone()
        return None if row is None else str(row[0])

    def apply_page(self, page: Page) -> ApplyStats:
        now = self._clock()
        with self._transaction() as conn:
            stats = self._apply(conn, page, now)
            conn.execute(
                "INSERT INTO sync_cursors (stream, cursor, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (stream) DO UPDATE SET cursor = excluded.cursor,"
                " updated_at = excluded.updated_at",
                (page.stream, page.next_cursor, records.utc_iso(now)),
            )
        return stats

    def held_ids(self, resource_type: str) -> Collection[str]:
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id FROM resources WHERE type = ? AND version_id != ?",
                (resource_type, records.LOCAL_VERSION),
            ).fetchall()
        return frozenset(str(rid) for (rid,) in rows)

    def _apply(self, conn: Any, page: Page, now: datetime) -> ApplyStats:
        in_scope: list[Mapping[str, Any]] = []
        leaving: list[Mapping[str, Any]] = []
        out_of_scope = 0
        patients: dict[str, bool] = {  # patient id → held by the device and in scope
            str(r.get("id")): self._in_scope(site_of(r.get("managingOrganization")))
            for r in page.resources
            if isinstance(r, Mapping) and r.get("resourceType") == "Patient"
        }
        for resource in page.resources:
            if not isinstance(resource, Mapping) or resource.get("resourceType") != "Patient":
                pid = records.patient_of(resource) if isinstance(resource, Mapping) else None
                if pid is not None and not self._patient_held(conn, pid, patients):
                    out_of_scope += 1  # NW-6: never store another site's clinical record
                    continue
                in_scope.append(resource)
            elif not self._in_scope(site_of(resource.get("managingOrganization"))):
                leaving.append(resource)
            else:
                in_scope.append(resource)
        result = records.apply_resources(conn, in_scope, received_at=now)
        applied, ignored = result.applied, result.ignored
        self._upstream_conflicts(conn, in_scope, now)
        quarantine: list[Quarantined] = list(page.quarantined)
        quarantine += [self._rejected(in_scope[r.index], r) for r in result.rejected]
        purged = held = deleted = 0

        for patient in leaving:
            raw_id = patient.get("id")
            pid = raw_id if isinstance(raw_id, str) and records.is_fhir_id(raw_id) else ""
            stored = self._stored_site(conn, "Patient", pid) if pid else None
            if stored is None:
                out_of_scope += 1  # never store a patient the device does not hold
                continue
            outcome = records.apply_resources(conn, [patient], received_at=now)
            if outcome.rejected:
                quarantine += [self._rejected(patient, r) for r in outcome.rejected]
                continue
            if not outcome.applied:
                ignored += 1
                continue
            applied += 1
            fate = self._leave(conn, pid, stored[0], "transferred", now)
            purged, held = purged + (fate == "purged"), held + (fate == "held")

        for deletion in page.deletions:
            fate = self._delete(conn, deletion, now)
            if fate == "older":
                ignored += 1
            deleted += fate in ("deleted", "purged")
            purged, held = purged + (fate == "purged"), held + (fate == "held")

        if quarantine:
            (kept,) = conn.execute(
                "SELECT coalesce(sum(length(raw)), 0) FROM quarantine"
            ).fetchone()
            for item in quarantine:
                kept = self._quarantine(conn, page.stream, item, now, int(kept))
        return ApplyStats(
            applied=applied,
            skipped_older=ignored,
            deleted=deleted,
            quarantined=len(quarantine),
            purged=purged,
            held=held,
            out_of_scope=out_of_scope,
            replaced_local=result.replaced_local,
        )

    def _upstream_conflicts(
        self, conn: Any, resources: Sequence[Mapping[str, Any]], now: datetime
    ) -> None:
        """A version the gateway tagged ``conflict`` (the health record changed it while this
        laptop's edit was on its way up) opens a conflict on that edit, audited like a 412."""
        for resource in resources:
            tag = filing_tag(resource)
            if tag is None or tag.code != CONFLICT or tag.version is None:
                continue
            rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
            current = records.get(conn, rtype, rid)
            if current is None or current.get("meta") != resource.get("meta"):
                continue  # not the version the store holds (an older one, or refused)
            conflict_id = conflicts.record_upstream_conflict(
                conn, rtype, rid, tag.version, resource, now=now
            )
            if conflict_id is None:
                continue
            self._append(
                conn,
                now,
                "sync_conflict",
                patient_id=records.patient_of(resource),
                detail={
                    "resource_type": rtype,
                    "conflict_id": conflict_id,
                    "server_version": "present",
                    "where": "upstream",
                },
            )

    def _patient_held(self, conn: Any, patient_id: str, known: dict[str, bool]) -> bool:
        """Whether the device holds ``patient_id`` as an in-scope patient (cached per page)."""
        if patient_id not in known:
            row = conn.execute(
                "SELECT site FROM patient_index WHERE patient_id = ?", (patient_id,)
            ).fetchone()
            known[patient_id] = row is not None and self._in_scope(row[0])
        return known[patient_id]

    @staticmethod
    def _stored_site(conn: Any, rtype: str, rid: str) -> tuple[str | None] | None:
        """``(site,)`` of a stored resource, or None when the device does not hold it."""
        row = conn.execute(
            "SELECT site FROM resources WHERE type = ? AND id = ?", (rtype, rid)
        ).fetchone()
        return None if row is None else (row[0],)

    def _leave(
        self, conn: Any, patient_id: str, previous_site: str | None, how: str, now: datetime
    ) -> str:
        """A patient on the device left scope: purge them, or keep them for their unsent work."""
        if outbox.has_unsent_work(conn, patient_id):
            if how == "deleted":
                conn.execute(
                    "UPDATE resources SET site = NULL WHERE type = 'Patient' AND id = ?",
                    (patient_id,),
                )
                conn.execute(
                    "UPDATE patient_index SET site = NULL WHERE patient_id = ?", (patient_id,)
                )
            if self._in_scope(previous_site):  # audit the exit once, not on every replay
                self._append(
                    conn,
                    now,
                    "purge_held",
                    patient_id=patient_id,
                    detail={"why": LEFT_SCOPE, "how": how, "kept_for": "unsent_work"},
                )
            return "held"
        self._purge(conn, patient_id, now, how)
        return "purged"

    def _purge(self, conn: Any, patient_id: str, now: datetime, how: str) -> None:
        removed = records.purge_patient(conn, patient_id)
        conn.execute(
            "DELETE FROM quarantine WHERE resource_type = 'Patient' AND resource_id = ?",
            (patient_id,),
        )
        self._append(
            conn,
            now,
            "purge",
            patient_id=patient_id,
            detail={"why": LEFT_SCOPE, "how": how, "resources": removed},
        )

    def _delete(self, conn: Any, deletion: Deletion, now: datetime) -> str:
        row = conn.execute(
            "SELECT version_id, version_num, site FROM resources WHERE type = ? AND id = ?",
            (deletion.resource_type, deletion.resource_id),
        ).fetchone()
        if row is None:
            return "absent"
        version_id, version_num, site = row
        if version_id == records.LOCAL_VERSION:
            return "absent"  # unsent device work is never removed by the server's feed
        deleted_num = deletion.version_id
        if (
            isinstance(deleted_num, str)
            and deleted_num.isascii()
            and deleted_num.isdigit()
            and version_num is not None
            and int(version_num) > int(deleted_num)
        ):
            return "older"
        if deletion.resource_type == "Patient":
            return self._leave(conn, deletion.resource_id, site, "deleted", now)
        records.delete_resource(conn, deletion.resource_type, deletion.resource_id)
        return "deleted"

    @staticmethod
    def _rejected(resource: Any, rejected: records.Rejected) -> Quarantined:
        try:
            raw = orjson.dumps(resource)
        except TypeError:
            raw = b""
        return Quarantined(
            resource_type=None if rejected.resource_type == "?" else rejected.resource_type,
            resource_id=None if rejected.resource_id == "?" else rejected.resource_id,
            reason=rejected.reason,
            path="",
            raw=raw,
        )

    @staticmethod
    def _quarantine(conn: Any, stream: str, item: Quarantined, now: datetime, stored: int) -> int:
        """Insert one row (unless already there); returns the raw bytes now kept in all."""
        raw = bytes(item.raw)
        kept = raw[:MAX_QUARANTINE_RAW_BYTES]
        if stored + len(kept) > MAX_QUARANTINE_TOTAL_BYTES:
            kept = b""
        inserted = conn.execute(
            "INSERT OR IGNORE INTO quarantine (stream, resource_type, resource_id, patient_id,"
            " reason, path, raw, raw_sha256, raw_bytes, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _label(stream),
                _label(item.resource_type),
                _label(item.resource_id),
                _patient_of_raw(raw),
                _label(item.reason) or "unknown",
                _label(item.path) or "",
                kept,
                hashlib.sha256(raw).hexdigest(),
                len(raw),
                records.utc_iso(now),
            ),
        ).rowcount
        return stored + (len(kept) if inserted else 0)

    # -- push ----------------------------------------------------------------------------------

    def list_outbox(self, limit: int) -> Sequence[OutboxItem]:
        with self._transaction() as conn:
            entries = outbox.list_outbox(conn, max(1, limit))
        return [
            OutboxItem(
                seq=e.seq,
                operation=e.operation,
                resource_type=e.resource_type,
                local_id=e.local_id,
                client_identifier=e.client_id,
                body=e.body,
                base_version=e.base_version,
                extra={
                    EXTRA_FULL_URL: e.full_url,
                    EXTRA_IF_NONE_EXIST: e.if_none_exist,
                    EXTRA_GROUP: e.group_id,
                    EXTRA_ATTEMPTS: e.attempts,
                },
            )
            for e in entries
        ]

    @staticmethod
    def _entry(conn: Any, seq: int) -> tuple[str, str | None, str]:
        row = conn.execute(
            "SELECT state, patient_id, resource_type FROM outbox WHERE seq = ?", (seq,)
        ).fetchone()
        if row is None:
            raise ReplicaError("unknown_entry")
        return str(row[0]), row[1], str(row[2])

    def mark_sent(self, seq: int, server_id: str, server_version: str) -> None:
        now = self._clock()
        with self._transaction() as conn:
            self._mark_sent(conn, SentItem(seq, server_id, server_version), now)

    def mark_sent_batch(self, sent: Sequence[SentItem]) -> Mapping[int, str]:
        now = self._clock()
        refused: dict[int, str] = {}
        with self._transaction() as conn:
            for item in sent:
                try:
                    self._mark_sent(conn, item, now)
                except ReplicaError as exc:  # raised before the item wrote anything
                    refused[item.seq] = exc.reason
        return refused

    def _mark_sent(self, conn: Any, item: SentItem, now: datetime) -> None:
        """Every refusal (``ReplicaError``) happens before the first write: ``_entry`` only
        reads, and ``outbox.mark_sent`` checks the reply and the state first."""
        state, patient_id, rtype = self._entry(conn, item.seq)
        try:
            outbox.mark_sent(
                conn,
                item.seq,
                item.server_id,
                item.server_version,
                now=now,
                server_last_updated=item.server_last_updated,
            )
        except OutboxStateError as exc:
            raise ReplicaError(exc.reason) from None
        if state == "pending":  # a repeated call for the same server id is a no-op
            self._append(
                conn,
                now,
                "sync_sent",
                patient_id=patient_id,
                detail={"resource_type": rtype, "outbox_seq": item.seq},
            )

    def record_conflict(self, seq: int, server_resource: Mapping[str, Any] | None) -> None:
        now = self._clock()
        with self._transaction() as conn:
            _state, patient_id, rtype = self._entry(conn, seq)
            own = _own_lost_update(conn, seq, server_resource)
            if own is not None:  # our update's reply was lost: the server holds exactly it
                self._mark_sent(conn, own, now)
                return
            try:
                conflict_id = conflicts.record_conflict(conn, seq, server_resource, now=now)
            except OutboxStateError as exc:
                raise ReplicaError(exc.reason) from None
            self._append(
                conn,
                now,
                "sync_conflict",
                patient_id=patient_id,
                detail={
                    "resource_type": rtype,
                    "outbox_seq": seq,
                    "conflict_id": conflict_id,
                    "server_version": "present" if server_resource is not None else "absent",
                },
            )

    def record_push_error(self, seq: int, reason: str) -> None:
        with self._transaction() as conn:
            state, _patient_id, _rtype = self._entry(conn, seq)
            if state != "pending":
                raise ReplicaError("not_pending")
            outbox.record_push_error(conn, seq, _code(reason, "push_refused"))

    # -- end of sync ---------------------------------------------------------------------------

    def sync_finished(self, summary: SyncSummary) -> None:
        now = self._clock()
        with self._transaction() as conn:
            purged = 0
            for pid, site in conn.execute(
                "SELECT patient_id, site FROM patient_index ORDER BY patient_id"
            ).fetchall():
                if self._in_scope(site) or outbox.has_unsent_work(conn, pid):
                    continue
                self._purge(conn, pid, now, "after_send")
                purged += 1
            confirmed = summary.caseload_confirmed
            refreshed = records.refresh_caseload(conn, self._scope, now) if confirmed else 0
            if summary.outcome == "success":  # every stream pulled to its end (UI-5)
                records.mark_caseload_complete(conn, self._scope, now)
            detail: dict[str, str | int] = {
                "pulled": summary.pulled,
                "pushed": summary.pushed,
                "conflicts": summary.conflicts,
                "quarantined": summary.quarantined,
                "out_of_scope": summary.out_of_scope,
                "push_errors": summary.push_errors,
                "purged": purged,
                "refreshed": refreshed,
                "result": _code(summary.outcome, "failure"),
            }
            if summary.reason is not None:
                detail["reason"] = _code(summary.reason, "unclassified")
            self._append(
                conn,
                now,
                "sync",
                outcome="success" if summary.outcome == "success" else "failure",
                detail=detail,
            )


def _patient_of_raw(raw: bytes) -> str | None:
    """Whose record a quarantined item belongs to, when its bytes say (UI-5); else None."""
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(item, dict) and isinstance(item.get("resource"), dict):
        item = item["resource"]  # a Bundle entry
    if not isinstance(item, dict):
        return None
    try:
        pid = records.patient_of(item)
    except (TypeError, ValueError):
        return None
    return pid if pid is not None and records.is_fhir_id(pid) else None


def _own_lost_update(
    conn: Any, seq: int, server_resource: Mapping[str, Any] | None
) -> SentItem | None:
    """A 412 for an update whose current server version IS the body we sent (the reply to an
    earlier attempt was lost after the server committed it): that is our own write, sent."""
    if server_resource is None:
        return None
    row = conn.execute(
        "SELECT operation, state, local_id, body FROM outbox WHERE seq = ?", (seq,)
    ).fetchone()
    if row is None or row[0] != "update" or row[1] != "pending":
        return None
    meta = server_resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    server_id = server_resource.get("id")
    theirs = {k: v for k, v in server_resource.items() if k != "meta"}
    mine = {k: v for k, v in orjson.loads(row[3]).items() if k != "meta"}  # labels aside
    if server_id != row[2] or not records.is_fhir_id(version) or theirs != mine:
        return None
    return SentItem(seq, str(server_id), str(version))


def _structural_check(replica: VaultReplica) -> Replica:
    """mypy proves here that ``VaultReplica`` satisfies the protocol structurally."""
    return replica
