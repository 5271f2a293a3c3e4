"""Running a whole sync for a signed-in session: the engine, the vault replica and the
device's side of the control steps (issue 5 items 6-7).

Guarantees:
- One pinned transport (one connection) for the whole sync, built from the signed policy and
  the device's enrolment; nothing here opens a connection itself.
- Every local effect of the control plane is audited in the transaction that makes it:
  policy installed / refused (the last good policy stays), audit upload receipts, commands.
- A remote wipe locks the session, then erases the device (keyring secrets and slots first);
  its report is acknowledged to the gateway right after.
- The sync's outcome is audited once at the end (``sync`` with counts), successful or not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.core.provisioning import RECEIPT_KEY, transport_config
from client.core.replica import VaultReplica
from client.core.session import Session
from client.core.trusted_time import anchor
from policy.errors import PolicyReason, PolicyRefused
from sync.audit_fhir import export_bundle
from sync.audit_receipt import Receipt
from sync.control import Command, ControlSteps
from sync.engine import Progress, SyncEngine, SyncResult
from sync.replica import SyncSummary
from sync.transport import Transport

AUDIT_BATCH_LIMIT = 2000


class SessionControl:
    """The device's side of the control steps, acting through a signed-in session."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.device_id = session.device.profile.device_id
        self.wiped = False

    def audit_batch(self, limit: int) -> tuple[dict[str, Any], int, str] | None:
        with self._session.transaction() as conn:
            entries = self._session.audit_log.unsent(conn, min(limit, AUDIT_BATCH_LIMIT))
        if not entries:
            return None
        last = entries[-1]
        return export_bundle(entries), last.seq, last.entry_hash()

    def audit_uploaded(self, receipt: Receipt) -> None:
        with self._session.transaction() as conn:
            self._session.audit_log.mark_uploaded(conn, receipt.last_seq, receipt)

    def offer_policy(self, envelope: bytes) -> str:
        device = self._session.device
        try:
            policy = device.install_policy(envelope)
        except PolicyRefused as refused:
            if refused.reason is PolicyReason.ROLLBACK and envelope == device.policy().envelope:
                return "current"
            self._session.record_event(
                "policy_refused", "failure", detail={"reason": str(refused.reason)}
            )
            return f"refused:{refused.reason}"
        self._session.policy = policy
        self._session.record_event("policy_installed", detail={"version": policy.version})
        return "installed"

    def run_command(self, command: Command) -> dict[str, Any]:
        session = self._session
        if command.kind == "lock":
            session.record_event("remote_lock", detail={"command": command.id})
            session.lock()
            return {"locked": True}
        if command.kind == "revoke_user" and command.user_id:
            removed = command.user_id in {u for u, _ in session.device.header.users()}
            if removed:
                session.device.header.remove_slot(command.user_id)
            session.record_event(
                "user_revoked", detail={"command": command.id, "revoked_user": command.user_id}
            )
            return {"revoked": removed}
        if command.kind == "wipe":
            session.record_event("wipe", detail={"command": command.id, "why": "remote"})
            session.lock()
            report = session.device.wipe("remote_wipe")
            self.wiped = True
            return report.to_json()
        return {"ignored": command.kind}

    def anchor_time(self, server_time: Any) -> None:
        device = self._session.device
        device.save_time_state(anchor(device.time_state(), server_time, device.clocks()))


def _receipt_key(data_dir: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key((data_dir / RECEIPT_KEY).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the gateway receipt key is not Ed25519")
    return key


def run_sync(
    session: Session,
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> SyncResult:
    """A whole sync: push, pull, then time, audit upload, policy and commands."""
    device = session.device
    replica = VaultReplica(
        session.connection,
        session.audit_log,
        user_id=session.user_id,
        role=session.role,
        site_scope=session.site_scope(),
        clock=device.clock,
    )
    control = SessionControl(session)
    steps = ControlSteps(control, _receipt_key(device.data_dir)).steps()
    with Transport(transport_config(device)) as transport:
        engine = SyncEngine(
            transport,
            replica,
            resource_types=session.policy.get_list("data.resource_types"),
            progress=progress,
            cancel=cancel,
            control_steps=steps,
        )
        result = engine.run()
    if not control.wiped and not session.is_locked:
        replica.sync_finished(
            SyncSummary(
                pulled=result.pulled,
                pushed=result.pushed,
                conflicts=result.conflicts,
                quarantined=result.quarantined,
                push_errors=result.push_errors,
                outcome="success" if result.ok else "failure",
                reason=result.error,
            )
        )
    return result
