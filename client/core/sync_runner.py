"""Running a whole sync for a signed-in session: the engine, the vault replica and the
device's side of the control steps (docs/sync.md, docs/control-plane.md).

Guarantees:
- One pinned transport (one connection) for the whole sync, built from the signed policy and
  the device's enrolment; a second one, equally pinned, only when the policy names a FHIR
  data plane on another origin (``network.fhir_base_url``); nothing here opens a connection
  itself.
- Every local effect of the control plane is audited in the transaction that makes it:
  policy installed / refused (the last good policy stays), audit upload receipts, commands.
- A remote wipe closes the sync's connection and erases the device (keyring secrets and slots
  first); its report is acknowledged to the gateway right after, and the caller locks the
  session (``result.control["lock_requested"]``). The signed wipe report naming the command is
  made before anything is destroyed and survives the wipe (``client.core.wipe_report``): it is
  sent at the end of this sync, and if the process dies first, at the next start, so the
  gateway's command never stays "pending" for good (WP-2).
- The sync's outcome is audited once at the end (``sync`` with counts), successful or not.
- A full disk (CR-3): a sync does not start with less than ``disk_space.SYNC_BYTES`` free, and a
  disk that fills during it stops it with ``DiskFull``. What was committed stays (every page
  with its cursor, every outbox change with its audit entry); what was not is rolled back and
  redone by the next sync: a note the gateway filed before the disk filled is matched by its
  client identifier (exactly once), an audit batch it stored is re-sent and recognised.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.core import disk_space, policy_audit
from client.core.audit_log import AuditLog
from client.core.device import RECEIPT_KEY
from client.core.keyslots import KeyslotError
from client.core.provisioning import data_transport_config, transport_config
from client.core.replica import VaultReplica
from client.core.schema import MIGRATIONS
from client.core.server_profile import save_server_profile
from client.core.session import Session
from client.core.trusted_time import anchor
from client.core.vault import Vault, database_path
from client.core.wipe_report import send_pending_report
from policy import decisions
from policy.errors import PolicyReason, PolicyRefused
from sync.device.control import Command, ControlSteps
from sync.device.engine import FATAL_REASONS, Progress, SyncEngine, SyncError, SyncResult
from sync.device.transport import Transport, TransportError
from sync.protocol.audit.audit_event import export_bundle
from sync.protocol.audit.receipt import Receipt

AUDIT_BATCH_LIMIT = 2000

log = logging.getLogger(__name__)


class SyncContext:
    """The sync worker's own view of the device: its OWN vault connection (opened with the
    session's key on the worker thread, closed when the sync ends), so the session's
    connection is never touched from another thread; every local effect is audited on it."""

    def __init__(self, session: Session) -> None:
        self.device = session.device
        self.device_id = session.device.profile.device_id
        self.user_id = session.user_id
        self.role = session.role
        self.policy = session.policy
        self.audit = AuditLog()
        self.vault = Vault.open(
            database_path(self.device.data_dir), session.export_dek(), MIGRATIONS
        )
        self.wiped = False
        self.lock_requested = False

    def connection(self) -> Any:
        return self.vault.connection

    def record_event(self, action: str, outcome: str = "success", **fields: Any) -> None:
        with self.vault.transaction() as conn:
            self.audit.append(
                conn,
                ts=self.device.clock(),
                action=action,
                outcome=outcome,
                user_id=self.user_id,
                role=self.role,
                **fields,
            )

    def close(self) -> None:
        """Scrub the WAL and close; always closes (on a full disk the scrub waits for the
        next lock or sync with room)."""
        if not self.vault.is_open:
            return
        try:
            with disk_space.mapped(self.device.data_dir, disk_space.SYNC_BYTES):
                self.audit.scrub_wal(self.vault.connection)
        except disk_space.DiskFull:
            log.warning("sync: WAL not scrubbed, the disk is full")
        finally:
            self.vault.close()

    # -- sync.device.control.DeviceControl ---------------------------------------------------

    def audit_batch(self, limit: int) -> tuple[dict[str, Any], int, str] | None:
        with self.vault.transaction() as conn:
            entries = self.audit.unsent(conn, min(limit, AUDIT_BATCH_LIMIT))
        if not entries:
            return None
        last = entries[-1]
        return export_bundle(entries), last.seq, last.entry_hash()

    def audit_uploaded(self, receipt: Receipt) -> None:
        with self.vault.transaction() as conn:
            self.audit.mark_uploaded(conn, receipt.last_seq, receipt)

    def offer_policy(self, envelope: bytes) -> str:
        try:
            policy = self.device.install_policy(envelope)
        except PolicyRefused as refused:
            if refused.reason is PolicyReason.ROLLBACK and envelope == self.policy.envelope:
                with self.vault.transaction() as conn:  # AD-1: an entry a kill lost comes back
                    policy_audit.record_installed_policy(
                        conn,
                        self.audit,
                        version=self.policy.version,
                        ts=self.device.clock(),
                        user_id=self.user_id,
                        role=self.role,
                    )
                return "current"
            self.record_event("policy_refused", "failure", detail={"reason": str(refused.reason)})
            return f"refused:{refused.reason}"
        self.policy = policy
        self.record_event("policy_installed", detail={"version": policy.version})
        return "installed"

    def run_command(self, command: Command) -> dict[str, Any]:
        if command.kind == "lock":
            self.record_event("remote_lock", detail={"command": command.id})
            self.lock_requested = True
            return {"locked": True}
        if command.kind == "revoke_user" and command.user_id:
            removed = command.user_id in {u for u, _ in self.device.header.users()}
            error = None
            if removed:
                try:
                    self.device.header.remove_slot(command.user_id)
                except KeyslotError as refused:  # e.g. the last way in, with no escrow
                    removed, error = False, refused.reason
            self.record_event(
                "user_revoked",
                "success" if error is None else "failure",
                detail={"command": command.id, "revoked_user": command.user_id},
            )
            if command.user_id == self.user_id:
                self.lock_requested = True  # the signed-in user no longer has access
            return {"revoked": removed} if error is None else {"revoked": False, "error": error}
        if command.kind == "wipe":
            self.record_event("wipe", detail={"command": command.id, "why": "remote"})
            self.close()
            self.lock_requested = True
            report = self.device.wipe("remote_wipe", command_id=command.id)
            self.wiped = True
            return report.to_json()
        return {"ignored": command.kind}

    def anchor_time(self, server_time: Any) -> None:
        device = self.device
        device.save_time_state(anchor(device.time_state(), server_time, device.clocks()))


def _receipt_key(data_dir: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key((data_dir / RECEIPT_KEY).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the gateway receipt key is not Ed25519")
    return key


def _upload_last_entries(control: ControlSteps, transport: Transport, result: SyncResult) -> None:
    """The sync's own audit entry goes up in the same sync, so the backlog reads zero after a
    good sync (the readiness check relies on it). Best effort: the next sync retries."""
    if result.failed_phases.get("audit") or result.error in FATAL_REASONS:
        return
    try:
        control.audit(transport, result)
    except (SyncError, TransportError) as error:
        result.failed_phases["audit_final"] = error.reason


def run_sync(
    session: Session,
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> SyncResult:
    """A whole sync: push, pull, then time, audit upload, policy and commands.

    Safe to call from a worker thread: it opens its own vault connection. When it returns, the
    caller refreshes ``session.policy`` (done here) and must lock the session if
    ``result.control["lock_requested"]`` is true (a remote lock or wipe).
    """
    data_dir = session.device.data_dir
    disk_space.require(data_dir, disk_space.SYNC_BYTES, session.device.free_space)
    with disk_space.mapped(data_dir, disk_space.SYNC_BYTES):
        return _run_sync(session, progress, cancel)


def _run_sync(
    session: Session,
    progress: Callable[[Progress], None] | None,
    cancel: threading.Event | None,
) -> SyncResult:
    context = SyncContext(session)
    try:
        replica = VaultReplica(
            context.connection,
            context.audit,
            user_id=context.user_id,
            role=context.role,
            site_scope=session.site_scope(),
            clock=context.device.clock,
        )
        control = ControlSteps(context, _receipt_key(context.device.data_dir))
        data_config = data_transport_config(context.device)
        with (
            Transport(transport_config(context.device)) as transport,
            Transport(data_config) if data_config else contextlib.nullcontext(transport) as data,
        ):
            engine = SyncEngine(
                transport,
                replica,
                resource_types=context.policy.get_list("data.resource_types"),
                progress=progress,
                cancel=cancel,
                control_before=control.before(),
                control_after=control.after(),
                fhir_base=decisions.fhir_base_url(context.policy),
                data_transport=data,
                reconcile_every=dt.timedelta(hours=context.policy.get_int("data.reconcile_hours")),
            )
            result = engine.run()
            if not context.wiped:
                if result.server is not None:
                    save_server_profile(
                        context.device.data_dir, result.server, context.device.clock()
                    )
                replica.sync_finished(result.summary())
                _upload_last_entries(control, transport, result)
    finally:
        context.close()
    if context.wiped:  # the receipt went over mutual TLS; the report covers a lost receipt
        result.control["wipe_report"] = send_pending_report(context.device.data_dir)
    result.control["lock_requested"] = context.lock_requested
    if not context.wiped:
        session.refresh_access()  # a fresh time anchor or policy may reopen records
    return result
