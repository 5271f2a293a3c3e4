"""The session facade: the single API the UI and the device CLI call once a user has signed in.

Guarantees:
- Every act that reads or writes records appends its audit entry in the SAME transaction,
  before any data is returned (AD-1): if the audit append fails, the caller gets nothing.
- Roles are enforced here (AU-5): only a clinician reads or writes clinical content; an auditor
  sees audit metadata only; an admin manages users and the device. A refused act is audited
  with outcome ``denied``.
- A patient outside the device's site scope opens only through break-glass: a reason code and
  text plus the password again, time-limited by the policy, audited with purpose BTG (AU-4).
- ``lock()`` audits, scrubs the audit chain's old keys from the WAL, closes the database and
  drops the key; afterwards every call raises ``VaultLocked`` (AU-3).
- Patients that left the site scope or passed retention are purged at sign-in once they have no
  unsent work, each purge audited with the reason (DESIGN.md §Policy data.retention_days).
- A full disk (CR-3): saving a note and changing a password are refused before any work when
  less than ``disk_space.SAVE_BYTES`` is free, and any full disk later in an act leaves as
  ``DiskFull`` with the act rolled back. Reading goes on (its audit entries use the disk
  reserve released at sign-in); retention waits for the next sign-in; ``lock`` always locks.
- It stays the one facade: the admin's acts (``device_admin``), print/export (``disclosure``)
  and locked-time events (``pending_audit``) are delegated with the same role check, vault
  transaction and audit append; roles and refusals live in ``access`` and are re-exported here.

Length: this is the facade every screen and the device CLI call (one method per act, each a few
lines delegating to a module behind it); splitting it would split the one API, so it stays one
module of thin methods.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from client.core import (
    accounts,
    audit_search,
    conflict_words,
    consultation,
    device_admin,
    disclosure,
    disk_space,
    drafts,
    outbox,
    pending_audit,
    policy_audit,
    records,
    search,
)
from client.core import conflicts as conflict_store
from client.core.access import ADMIN as ADMIN
from client.core.access import AUDITOR as AUDITOR
from client.core.access import BREAK_GLASS_REASONS as BREAK_GLASS_REASONS
from client.core.access import CLINICIAN as CLINICIAN
from client.core.access import MIN_BREAK_GLASS_TEXT as MIN_BREAK_GLASS_TEXT
from client.core.access import BreakGlassGrant as BreakGlassGrant
from client.core.access import BreakGlassRefused as BreakGlassRefused
from client.core.access import BreakGlassRequired as BreakGlassRequired
from client.core.access import NotAllowed as NotAllowed
from client.core.access import RecordsClosed as RecordsClosed
from client.core.access import require_reason
from client.core.accounts import LoginRefused, Unlocked
from client.core.audit_log import AuditLog
from client.core.audit_reauth import ReauthMemory
from client.core.chart import Chart, open_chart
from client.core.device import Device
from client.core.errors import GatehouseError, UserFacingError, VaultLocked
from client.core.push_refusals import Refusal, refused_notes
from client.core.schema import MIGRATIONS
from client.core.search import PatientSummary
from client.core.vault import Vault, database_path
from policy import decisions
from policy.decisions import PolicyMode
from sync.protocol.audit.entry import AuditEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionStatus:
    user_id: str
    role: str
    site: str
    policy_version: int
    policy_expires_at: dt.datetime
    policy_mode: str
    offline: decisions.OfflineState
    unsent_items: int
    conflicts: int
    audit_unsent: int
    break_glass: tuple[BreakGlassGrant, ...]
    # Notes the gateway refused, by patient and reason (client.core.push_refusals).
    refused: tuple[Refusal, ...] = ()
    # Consultations this clinician started and kept as drafts: typed, not in the record (CR-4).
    drafts: int = 0


class Session:
    """An unlocked vault for one signed-in user. Obtain it with ``Session.login``."""

    def __init__(self, device: Device, unlocked: Unlocked) -> None:
        self.device = device
        self.user_id = unlocked.user_id
        self.role = unlocked.role
        self.policy = unlocked.policy
        self.offline = unlocked.offline
        self.blocked = unlocked.blocked  # records closed until a sync (sync-only session)
        self._audit = AuditLog()
        self._grants: dict[str, BreakGlassGrant] = {}
        # The auditor's password, proved within the last few minutes (memory only; lock forgets)
        self.reauth = ReauthMemory()
        self._vault: Vault | None = Vault.open(
            database_path(device.data_dir), unlocked.dek, MIGRATIONS
        )
        try:
            self._record_login()
        except BaseException:  # e.g. a full disk: never leave an open vault nobody holds
            vault, self._vault = self._vault, None
            vault.close()
            raise
        if self.role == CLINICIAN:
            try:
                self.apply_retention()
            except disk_space.DiskFull:  # purges wait for the next sign-in with room
                log.warning("retention postponed: the disk is full")

    @classmethod
    def login(
        cls, device: Device, user_id: str, password: str, *, for_sync: bool = False
    ) -> Session:
        """Sign in offline; ``for_sync`` also admits a sync-only session when records are
        closed until a sync (clock set back, offline too long)."""
        return cls(device, accounts.login(device, user_id, password, for_sync=for_sync))

    def refresh_access(self) -> None:
        """After a sync: re-read trusted time and the policy; reopen records if now allowed."""
        self.policy = self.device.policy()
        offline, blocked = accounts.check_time(self.device, self.policy)
        self.offline, self.blocked = offline, blocked

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def _conn(self) -> Any:
        self._stop_if_wiped()
        if self._vault is None:
            raise VaultLocked()
        return self._vault.connection

    def _stop_if_wiped(self) -> None:
        """After a wipe (failed logins, remote command) nothing more is served from the
        still-open handle: close it now, on the session's own thread."""
        if self.device.wiped and self._vault is not None:
            vault, self._vault = self._vault, None
            self._grants.clear()
            self.reauth.forget()
            vault.close()

    @property
    def is_locked(self) -> bool:
        return self._vault is None or not self._vault.is_open

    @contextmanager
    def _act(self) -> Iterator[Any]:
        self._stop_if_wiped()
        if self._vault is None:
            raise VaultLocked()
        with self._vault.transaction() as conn:
            yield conn

    def _now(self) -> dt.datetime:
        return self.device.clock()

    def _require_disk(self, needed: int) -> None:
        """``DiskFull`` before any work unless the data folder has ``needed`` bytes free."""
        disk_space.require(self.device.data_dir, needed, self.device.free_space)

    # -- for the sync runner (same process, same rules) -------------------------------------------

    def connection(self) -> Any:
        """The open vault connection (``VaultLocked`` once locked): the replica's provider."""
        return self._conn

    def export_dek(self) -> bytes:
        """The vault key, for the sync worker's own connection (same process, same user)."""
        if self._vault is None:
            raise VaultLocked()
        return self._vault.export_dek()

    @property
    def audit_log(self) -> AuditLog:
        return self._audit

    def transaction(self) -> Any:
        """A vault transaction for the sync runner's local effects (audit in the same one)."""
        return self._act()

    def site_scope(self) -> tuple[str, ...]:
        return self._site_scope()

    def record_event(self, action: str, outcome: str = "success", **fields: Any) -> None:
        """Audit a device event (policy installed/refused, remote command) in its own act."""
        with self._act() as conn:
            self._append(conn, action, outcome, **fields)

    def _append(self, conn: Any, action: str, outcome: str = "success", **fields: Any) -> None:
        self._audit.append(
            conn,
            ts=fields.pop("ts", None) or self._now(),
            action=action,
            outcome=outcome,
            user_id=fields.pop("user_id", self.user_id),
            role=fields.pop("role", self.role),
            **fields,
        )

    def _reauthenticate(self, password: str, action: str, **fields: Any) -> None:
        """The password again; a wrong one is audited as ``action`` / ``failure`` (unless it
        wiped the device: nothing left to audit into) and ``LoginRefused`` goes on."""
        try:
            accounts.reauthenticate(self.device, self.user_id, password)
        except LoginRefused:
            if not self.device.wiped:
                with self._act() as conn:
                    self._append(conn, action, "failure", **fields)
            raise

    def _require_role(self, allowed: Sequence[str], what: str, action: str) -> None:
        if self.role not in allowed:
            with self._act() as conn:
                self._append(conn, action, "denied", detail={"what": what})
            raise NotAllowed(what)
        if CLINICIAN in allowed:
            self._require_records_open(action)

    def _require_records_open(self, action: str) -> None:
        """Clinical acts need trusted time and a policy in force (sync-only / restricted)."""
        why = self.blocked
        if why is None and decisions.policy_mode(self.policy, self._now()) is PolicyMode.RESTRICTED:
            why = "policy_expired"
        if why is None:
            return
        with self._act() as conn:
            self._append(conn, action, "denied", detail={"why": why})
        raise RecordsClosed(why)

    def _site_scope(self) -> tuple[str, ...]:
        return self.policy.site_scope or (self.device.profile.site,)

    def _record_login(self) -> None:
        """Events kept in the header while locked enter the chain, the installed policy's
        ``policy_installed`` entry if a kill lost it (AD-1), then ``login_ok``."""

        def login(conn: Any) -> None:
            policy_audit.record_installed_policy(
                conn,
                self._audit,
                version=self.policy.version,
                ts=self._now(),
                user_id=self.user_id,
                role=self.role,
            )
            self._append(conn, "login_ok", detail={"offline": str(self.offline.kind)})

        self._import_pending(login)

    def _import_pending(self, then: Callable[[Any], None] | None = None) -> None:
        """Move the header's pending audit events into the chain (each exactly once, by its
        id), run ``then`` in the same transaction, then drop them from the header."""
        header = self.device.header
        pending = list(header.counters.pending_audit_events)
        with self._act() as conn:
            pending_audit.import_events(conn, self._audit, pending, self._now)
            if then is not None:
                then(conn)
        if pending:
            header.acknowledge_pending_audit_events(len(pending))

    # -- lock ----------------------------------------------------------------------------------

    def lock(self) -> None:
        """Audit, scrub, close the database and drop the key. Idempotent."""
        vault, self._vault = self._vault, None
        self._grants.clear()
        self.reauth.forget()
        if vault is None or not vault.is_open:
            return
        if self.device.wiped:  # the files are gone: nothing to audit into, just close
            vault.close()
            return
        # The session's running time counts (TM-3); the lock itself must happen regardless,
        # and the next sign-in observes the clocks anyway.
        with contextlib.suppress(GatehouseError):
            accounts.note_time(self.device, self.policy)
        try:
            with vault.transaction() as conn:
                self._audit.append(
                    conn,
                    ts=self._now(),
                    action="lock",
                    outcome="success",
                    user_id=self.user_id,
                    role=self.role,
                )
            with disk_space.mapped(self.device.data_dir):
                self._audit.scrub_wal(vault.connection)
        except disk_space.DiskFull:
            # Locking must never fail: the lock entry (rolled back whole) is lost, the chain
            # stays valid, and the WAL is scrubbed at the next lock with room.
            log.warning("lock not audited: the disk is full")
        finally:
            vault.close()

    # -- clinical acts -------------------------------------------------------------------------

    def search(self, query: str, *, limit: int = 50) -> list[PatientSummary]:
        """Patients matching ``query`` (name, NHS number, prison number, date of birth)."""
        self._require_role((CLINICIAN,), "search patient records", "search")
        with self._act() as conn:
            hits = search.search_patients(conn, query, limit=limit, site_scope=self._site_scope())
            self._append(conn, "search", detail={"results": len(hits), "chars": len(query)})
        return hits

    def caseload(self, limit: int = 200) -> list[PatientSummary]:
        """The site's patients on this device, by name (before any search); audited."""
        self._require_role((CLINICIAN,), "list patients", "caseload")
        with self._act() as conn:
            listed = search.caseload(conn, limit=limit, site_scope=self._site_scope())
            self._append(conn, "caseload", detail={"results": len(listed)})
        return listed

    def never_synced(self) -> bool:
        """True while this laptop holds no patient and has never received a page from the
        gateway: the caseload then says "No records yet — sync first", not an empty list."""
        with self._act() as conn:
            patients = conn.execute("SELECT 1 FROM patient_index LIMIT 1").fetchone()
            pulled = conn.execute("SELECT 1 FROM sync_cursors LIMIT 1").fetchone()
        return patients is None and pulled is None

    def in_scope(self, patient_id: str) -> bool:
        """Whether the patient is on this site's caseload (clinicians only)."""
        self._require_role((CLINICIAN,), "check patients' sites", "scope_check")
        return self._in_scope(patient_id)

    def _in_scope(self, patient_id: str) -> bool:
        """From the search index, which the replica keeps current (a deleted patient held for
        unsent work has no site there, so they need break-glass like any other)."""
        with self._act() as conn:
            row = conn.execute(
                "SELECT site FROM patient_index WHERE patient_id = ?", (patient_id,)
            ).fetchone()
        return row is not None and row[0] in self._site_scope()

    def active_grant(self, patient_id: str) -> BreakGlassGrant | None:
        grant = self._grants.get(patient_id)
        if grant is not None and grant.expires_at <= self._now():
            del self._grants[patient_id]
            return None
        return grant

    def _purpose(self, patient_id: str) -> str:
        """TREAT inside the scope, BTG under a live grant; else break-glass is required."""
        if self._in_scope(patient_id):
            return "TREAT"
        if self.active_grant(patient_id) is not None:
            return "BTG"
        raise BreakGlassRequired(patient_id)

    def open_chart(self, patient_id: str) -> Chart:
        """The patient's chart; the view is audited before it is returned (AD-1)."""
        self._require_role((CLINICIAN,), "open patient records", "record_view")
        purpose = self._purpose(patient_id)
        with self._act() as conn:
            chart = open_chart(
                conn, patient_id, today=self._now().date(), site_scope=self._site_scope()
            )
            self._append(conn, "record_view", patient_id=patient_id, purpose=purpose)
        return chart

    def break_glass(
        self, patient_id: str, reason_code: str, reason_text: str, password: str
    ) -> BreakGlassGrant:
        """Re-authenticate and grant time-limited access to a patient outside the scope."""
        self._require_role((CLINICIAN,), "use break-glass access", "break_glass")
        if reason_code not in BREAK_GLASS_REASONS:
            raise BreakGlassRefused("break_glass_reason", "Choose a reason for the access.")
        require_reason(reason_text, "break_glass_reason", "Describe")
        self._reauthenticate(
            password,
            "break_glass",
            patient_id=patient_id,
            purpose="BTG",
            detail={"reason_code": reason_code, "why": "reauthentication_failed"},
        )
        now = self._now()
        grant = BreakGlassGrant(
            patient_id, reason_code, now, decisions.break_glass_expires_at(self.policy, now)
        )
        with self._act() as conn:
            self._append(
                conn,
                "break_glass",
                patient_id=patient_id,
                purpose="BTG",
                reason_text=reason_text.strip()[:500],
                detail={"reason_code": reason_code, "expires_at": grant.expires_at.isoformat()},
            )
        self._grants[patient_id] = grant
        return grant

    def write_consultation(
        self,
        patient_id: str,
        *,
        vitals: Sequence[consultation.Vital],
        note_text: str,
        plan_text: str,
    ) -> consultation.ConsultationResult:
        """Save a consultation offline with its outbox entries and audit entry, atomically."""
        self._require_role((CLINICIAN,), "write consultations", "note_written")
        self._require_disk(disk_space.SAVE_BYTES)
        purpose = self._purpose(patient_id)
        with self._act() as conn:
            result = consultation.write_consultation(
                conn,
                patient_id=patient_id,
                author_user_id=self.user_id,
                site=self.device.profile.site,
                vitals=vitals,
                note_text=note_text,
                plan_text=plan_text,
                now=self._now(),
            )
            drafts.discard_draft(conn, self.user_id, patient_id)  # saved: the draft is done
            self._append(conn, "note_written", patient_id=patient_id, purpose=purpose)
        return result

    # -- drafts (client.core.drafts, CR-4) -------------------------------------------------------

    def save_draft(self, patient_id: str, fields: drafts.DraftFields) -> bool:
        """Keep what the clinician has typed for ``patient_id`` (autosave, lock, sign-out).

        Not audited: a draft is the clinician's own unsaved typing, never shown to anyone else
        and never sent. Saved even while records are closed (the typing must not be lost)."""
        if self.role != CLINICIAN:
            raise NotAllowed("keep consultation drafts")
        with self._act() as conn:
            return drafts.save_draft(conn, self.user_id, patient_id, fields, self._now())

    def draft(self, patient_id: str) -> drafts.Draft | None:
        """This clinician's kept draft for ``patient_id``, if any."""
        if self.role != CLINICIAN:
            return None
        return drafts.load_draft(self._conn, self.user_id, patient_id)

    def discard_draft(self, patient_id: str) -> bool:
        """The clinician chose to throw their draft away (after being asked); audited."""
        with self._act() as conn:
            removed = drafts.discard_draft(conn, self.user_id, patient_id)
            if removed:
                self._append(conn, "draft_discarded", patient_id=patient_id)
        return removed

    def patients_with_drafts(self) -> list[str]:
        """Patients this clinician has a kept draft for, newest first."""
        if self.role != CLINICIAN:
            return []
        return drafts.patients_with_drafts(self._conn, self.user_id)

    # -- print, export, copy (client.core.disclosure) --------------------------------------------

    def record_disclosure(self, kind: str, patient_id: str | None, *, allowed: bool) -> None:
        """Audit a copy / print / export attempt (UI-2), allowed or blocked."""
        disclosure.record(self, kind, patient_id, allowed=allowed)

    def authorise_disclosure(
        self, kind: str, patient_id: str | None, reason_text: str, password: str
    ) -> None:
        """Print or export (AU-4): the password again and a reason, audited either way."""
        disclosure.authorise(self, kind, patient_id, reason_text, password)

    # -- the device (client.core.device_admin) ---------------------------------------------------

    def wipe_device(self, password: str, confirmation: str) -> None:
        """Admin: cryptographically erase this laptop now (WP-1). Needs the password again and
        the device id typed as confirmation; audited before the keys are destroyed (the entry
        reaches the gateway only if it was uploaded — the wipe report says when it happened)."""
        device_admin.wipe_device(self, password, confirmation)

    def device_users(self) -> list[tuple[str, str]]:
        """(user id, role) of everyone with a key slot here (admin only; the read is audited)."""
        return device_admin.device_users(self)

    def add_user(self, user_id: str, role: str, password: str) -> None:
        """Give an auditor or admin a key slot on this device (admin only, from this unlocked
        vault). Clinicians are never added offline: their first sign-in is online and the
        gateway decides their role and site (``provisioning.add_user_online``)."""
        device_admin.add_user(self, user_id, role, password)

    # -- conflicts -------------------------------------------------------------------------------

    def conflicts(self) -> list[conflict_store.Conflict]:
        """Open conflicts (both versions) for the clinician to resolve; audited as a view."""
        self._require_role((CLINICIAN,), "see sync conflicts", "conflicts_view")
        with self._act() as conn:
            found = conflict_store.list_conflicts(conn)
            self._append(conn, "conflicts_view", detail={"count": len(found)})
        return found

    def conflict_views(self) -> list[conflict_words.ConflictView]:
        """Open conflicts in clinical words, each with its patient's banner; audited as a view
        (``conflicts_view``, in the same transaction, before anything is returned)."""
        self._require_role((CLINICIAN,), "see sync conflicts", "conflicts_view")
        with self._act() as conn:
            found = conflict_store.list_conflicts(conn)
            views = conflict_words.describe_conflicts(conn, found, self._now().date())
            self._append(conn, "conflicts_view", detail={"count": len(found)})
        return views

    def resolve_conflict(self, conflict_id: int, keep: str) -> int | None:
        """Keep "mine" (queued again on the server's newest version) or "theirs"; audited with
        whose words were discarded (``discarded``: ``laptop`` or ``gateway``) and the record
        (``resource``: type/id, an identifier, no content), from which the gateway closes an
        upstream conflict the clinician settled by keeping the health record's version. For an
        upstream conflict (the edit the gateway had accepted, then the health record refused)
        "theirs" also names that edit's gateway version (``refused_version``): the gateway
        closes that conflict and no other, whatever this laptop's clock says."""
        self._require_role((CLINICIAN,), "resolve sync conflicts", "conflict_resolved")
        with self._act() as conn:
            row = conn.execute(
                "SELECT c.patient_id, c.resource_type, c.local_id, o.server_version, o.sent_at"
                " FROM conflicts c LEFT JOIN outbox o ON o.seq = c.outbox_seq WHERE c.id = ?",
                (conflict_id,),
            ).fetchone()
            queued = conflict_store.resolve_conflict(conn, conflict_id, keep, now=self._now())
            detail = {"keep": keep, "discarded": "laptop" if keep == "theirs" else "gateway"}
            if row is not None:  # the gateway closes its upstream conflict on "theirs"
                detail["resource"] = f"{row[1]}/{row[2]}"
                if keep == "theirs" and row[3] is not None and row[4] is not None:
                    detail["refused_version"] = str(row[3])
            self._append(
                conn,
                "conflict_resolved",
                patient_id=row[0] if row else None,
                detail=detail,
            )
        return queued

    def outbox_status(self) -> tuple[int, int]:
        """(unsent items, open conflicts)."""
        with self._act() as conn:
            return outbox.unsent_count(conn), len(conflict_store.list_conflicts(conn))

    # -- accounts ------------------------------------------------------------------------------

    def change_password(self, old_password: str, new_password: str) -> None:
        """Re-wrap this user's key slot (ST-6); the data is not re-encrypted."""
        minimum = decisions.min_password_length(self.policy)
        if len(new_password) < minimum:
            raise UserFacingError(
                "password_too_short", f"The new password must be at least {minimum} characters."
            )
        self._require_disk(disk_space.SAVE_BYTES)
        self._reauthenticate(old_password, "password_changed")
        now = self._now()
        # AD-1: the new slot and its audit event are one atomic header write; the event enters
        # the chain now, or at the next sign-in if the app is killed before that.
        event: dict[str, str | int | float | bool | None] = {
            "event": "password_changed",
            "eid": uuid.uuid4().hex,
            "at": now.isoformat(),
            "user_id": self.user_id,
            "role": self.role,
        }
        self.device.header.change_password(
            self.user_id, old_password, new_password, now=now, audit_event=event
        )
        self._import_pending()

    # -- audit ---------------------------------------------------------------------------------

    def audit_entries(self, since_seq: int = 0) -> list[AuditEntry]:
        """Audit metadata (no clinical content) for auditors and admins."""
        self._require_role((AUDITOR, ADMIN), "read the audit log", "audit_read")
        with self._act() as conn:
            entries = self._audit.entries(conn, since_seq)
            self._append(conn, "audit_read", detail={"entries": len(entries)})
        return entries

    def audit_search(
        self, patient_text: str, since: dt.date | None, until: dt.date | None
    ) -> audit_search.AuditSearchResult:
        """Entries about a patient (name, NHS number, date of birth, id; blank = anyone) between
        two UK local days; audited as one ``audit_query`` (``client.core.audit_search``)."""
        return audit_search.search_local(self, patient_text, since, until)

    def export_audit(self) -> dict[str, Any]:
        """The whole local chain as a FHIR AuditEvent Bundle (for gatehouse-audit verify)."""
        self._require_role((AUDITOR, ADMIN), "export the audit log", "export")
        with self._act() as conn:
            self._append(conn, "export", detail={"what": "audit_log"})
            return self._audit.export(conn)

    # -- retention -----------------------------------------------------------------------------

    def apply_retention(self) -> int:
        """Purge patients out of scope or past retention whose work is all sent; audit each."""
        now = self._now()
        retention = self.policy.get_int("data.retention_days")
        purged = 0
        with self._act() as conn:
            candidates = records.patients_past_retention(conn, now, retention, self._site_scope())
            for candidate in candidates:
                if candidate.has_unsent_work:
                    continue  # its notes must reach the gateway first; purged after a sync
                records.purge_patient(conn, candidate.patient_id)
                self._append(
                    conn,
                    "purge",
                    patient_id=candidate.patient_id,
                    detail={"why": candidate.reason},
                )
                purged += 1
        return purged

    # -- status --------------------------------------------------------------------------------

    def status(self) -> SessionStatus:
        with self._act() as conn:
            unsent = outbox.unsent_count(conn)
            conflicts = len(conflict_store.list_conflicts(conn))
            audit_unsent = self._audit.unsent_count(conn)
            refused = refused_notes(conn, self.device.profile.site)
            kept = len(drafts.patients_with_drafts(conn, self.user_id))
        now = self._now()
        return SessionStatus(
            user_id=self.user_id,
            role=self.role,
            site=self.device.profile.site,
            policy_version=self.policy.version,
            policy_expires_at=self.policy.expires_at,
            policy_mode=str(decisions.policy_mode(self.policy, now)),
            offline=self.offline,
            unsent_items=unsent,
            conflicts=conflicts,
            audit_unsent=audit_unsent,
            break_glass=tuple(g for g in self._grants.values() if g.expires_at > now),
            refused=refused,
            drafts=kept if self.role == CLINICIAN else 0,
        )
