"""The device's audit log, inside the vault database (AD-1, AD-2).

Invariants:
- ``AuditLog.append`` writes the entry *and* advances the chain state (seq, head hash, MAC key)
  with the caller's connection, inside the caller's open transaction, and never commits or
  rolls back itself. It refuses to run outside a transaction (``AuditLogError``
  ``no_transaction``), so the entry and the act it records commit together or not at all
  (AD-1): a rollback removes the entry and restores the previous key state. A caller recording a
  read does ``BEGIN``, reads, appends, ``COMMIT``, and only then shows the data.
- The state row holds only the *current* key; the previous one is overwritten in place in the
  same transaction. The vault must run with ``PRAGMA secure_delete = ON`` so freed cells are
  zeroed, and must call ``scrub_wal`` on lock: until a TRUNCATE checkpoint, old page images
  (holding superseded keys) live on in the encrypted WAL (proved by the tests).
- Entries are stored as their canonical bytes plus MAC; every read rebuilds and revalidates the
  entry (``sync.protocol.audit.entry.entry_from_canonical``). Indexed copies of action, time, user
  and
  patient exist for auditor queries only; the canonical bytes are the truth.
- ``mark_uploaded`` accepts only a receipt that matches this device and the stored chain (its
  signature must already be checked with ``sync.protocol.audit.receipt.verify_receipt``).
- Nothing here logs; key material never leaves this module except into the database.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sync.protocol.audit.audit_event import export_bundle
from sync.protocol.audit.chain import (
    KEY_BYTES,
    ChainState,
    VerifyReport,
    append,
    genesis_hash,
    verify,
)
from sync.protocol.audit.entry import AuditEntry, AuditFormatError, entry_from_canonical
from sync.protocol.audit.receipt import Receipt, receipt_from_json, receipt_to_json

AUDIT_SCHEMA_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS audit_entries (
        seq INTEGER PRIMARY KEY,
        canonical BLOB NOT NULL,
        entry_hash TEXT NOT NULL,
        mac TEXT NOT NULL,
        ts TEXT NOT NULL,
        action TEXT NOT NULL,
        user_id TEXT,
        patient_id TEXT,
        uploaded INTEGER NOT NULL DEFAULT 0 CHECK (uploaded IN (0, 1))
    )""",
    "CREATE INDEX IF NOT EXISTS audit_entries_patient ON audit_entries (patient_id, ts)",
    "CREATE INDEX IF NOT EXISTS audit_entries_user ON audit_entries (user_id, ts)",
    "CREATE INDEX IF NOT EXISTS audit_entries_action ON audit_entries (action, ts)",
    """CREATE TABLE IF NOT EXISTS audit_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        device_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        head_hash TEXT NOT NULL,
        key BLOB NOT NULL,
        receipt BLOB
    )""",
)
AUDIT_SCHEMA_SQL = ";\n".join(AUDIT_SCHEMA_STATEMENTS) + ";\n"


class Connection(Protocol):
    """What this module needs of a DB-API connection (sqlite3 or sqlcipher3)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


class AuditLogError(Exception):
    """The audit log cannot do what was asked. ``reason`` is a stable code.

    Reasons: ``no_transaction``, ``in_transaction``, ``not_initialised``,
    ``already_initialised``, ``bad_key``, ``state_conflict``, ``receipt_mismatch``, ``corrupt``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """What the device can show about its log without revealing the key."""

    device_id: str
    seq: int
    head_hash: str
    unsent: int
    receipt: Receipt | None


def _require_transaction(conn: Connection) -> None:
    if not conn.in_transaction:
        raise AuditLogError(
            "no_transaction",
            "audit entries are written only inside the transaction of the act they record",
        )


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    canonical, mac = row
    text = canonical.decode("utf-8") if isinstance(canonical, bytes) else canonical
    try:
        return entry_from_canonical(text, mac)
    except AuditFormatError as exc:
        raise AuditLogError("corrupt", f"a stored audit entry is damaged ({exc.message})") from None


class AuditLog:
    """The device-side chain writer and reader; stateless (all state is in the database)."""

    def initialise(self, conn: Connection, device_id: str, initial_key: bytes) -> None:
        """Create the tables if needed and start the chain with ``k_0`` (at enrolment)."""
        _require_transaction(conn)
        if type(initial_key) is not bytes or len(initial_key) != KEY_BYTES:
            raise AuditLogError("bad_key", "the initial audit key must be 32 bytes")
        for statement in AUDIT_SCHEMA_STATEMENTS:
            conn.execute(statement)
        if conn.execute("SELECT 1 FROM audit_state WHERE id = 1").fetchone() is not None:
            raise AuditLogError("already_initialised", "this device's audit chain already exists")
        state = ChainState.genesis(device_id, initial_key)
        conn.execute(
            "INSERT INTO audit_state (id, device_id, seq, head_hash, key) VALUES (1, ?, 0, ?, ?)",
            (device_id, state.head_hash, initial_key),
        )

    def _state(self, conn: Connection) -> tuple[str, ChainState]:
        row = conn.execute("SELECT device_id, seq, head_hash, key FROM audit_state WHERE id = 1")
        found = row.fetchone()
        if found is None:
            raise AuditLogError("not_initialised", "the audit chain has not been initialised")
        device_id, seq, head_hash, key = found
        return device_id, ChainState(seq, head_hash, bytes(key))

    def append(
        self,
        conn: Connection,
        *,
        ts: datetime,
        action: str,
        outcome: str,
        user_id: str | None = None,
        role: str | None = None,
        patient_id: str | None = None,
        purpose: str | None = None,
        reason_text: str | None = None,
        detail: dict[str, str | int] | None = None,
    ) -> AuditEntry:
        """Append one entry in the caller's transaction (never commits; see module doc)."""
        _require_transaction(conn)
        device_id, state = self._state(conn)
        fields = {
            "device_id": device_id,
            "action": action,
            "outcome": outcome,
            "user_id": user_id,
            "role": role,
            "patient_id": patient_id,
            "purpose": purpose,
            "reason_text": reason_text,
            "detail": detail or {},
        }
        entry, new_state = append(state, fields, ts)
        canonical = entry.canonical_bytes()
        conn.execute(
            "INSERT INTO audit_entries (seq, canonical, entry_hash, mac, ts, action, user_id,"
            " patient_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.seq,
                canonical,
                new_state.head_hash,
                entry.mac,
                entry.ts,
                entry.action,
                entry.user_id,
                entry.patient_id,
            ),
        )
        updated = conn.execute(
            "UPDATE audit_state SET seq = ?, head_hash = ?, key = ? WHERE id = 1 AND seq = ?",
            (new_state.seq, new_state.head_hash, new_state.key, state.seq),
        )
        if updated.rowcount != 1:
            raise AuditLogError("state_conflict", "the audit chain moved during this append")
        return entry

    def entries_of_action(self, conn: Connection, action: str) -> list[AuditEntry]:
        """Every entry of one ``action``, in chain order (indexed by action)."""
        rows = conn.execute(
            "SELECT canonical, mac FROM audit_entries WHERE action = ? ORDER BY seq", (action,)
        )
        return [_entry(row) for row in rows.fetchall()]

    def entries(self, conn: Connection, since_seq: int = 0) -> list[AuditEntry]:
        """Every entry after ``since_seq``, in chain order."""
        rows = conn.execute(
            "SELECT canonical, mac FROM audit_entries WHERE seq > ? ORDER BY seq", (since_seq,)
        )
        return [_entry(row) for row in rows.fetchall()]

    def unsent(self, conn: Connection, limit: int) -> list[AuditEntry]:
        """The oldest ``limit`` entries not yet acknowledged by the gateway, in order."""
        rows = conn.execute(
            "SELECT canonical, mac FROM audit_entries WHERE uploaded = 0 ORDER BY seq LIMIT ?",
            (max(0, limit),),
        )
        return [_entry(row) for row in rows.fetchall()]

    def unsent_count(self, conn: Connection) -> int:
        """How many entries wait for upload (the policy may block access above a maximum)."""
        return int(
            conn.execute("SELECT count(*) FROM audit_entries WHERE uploaded = 0").fetchone()[0]
        )

    def mark_uploaded(self, conn: Connection, up_to_seq: int, receipt: Receipt) -> None:
        """Record the gateway's (already verified) receipt and mark entries up to it as sent."""
        _require_transaction(conn)
        device_id, state = self._state(conn)
        if receipt.device_id != device_id or receipt.last_seq != up_to_seq:
            raise AuditLogError("receipt_mismatch", "the receipt is for another device or range")
        if up_to_seq > state.seq or up_to_seq < 0:
            raise AuditLogError("receipt_mismatch", "the receipt covers entries this device lacks")
        expected: str | None
        if up_to_seq == 0:
            expected = genesis_hash(device_id)
        else:
            row = conn.execute(
                "SELECT entry_hash FROM audit_entries WHERE seq = ?", (up_to_seq,)
            ).fetchone()
            expected = row[0] if row is not None else None
        if expected != receipt.head_hash:
            raise AuditLogError("receipt_mismatch", "the receipt's head hash is not this chain's")
        previous = self.last_receipt(conn)
        if previous is not None and previous.last_seq > up_to_seq:
            return  # an older receipt arriving late: keep the newer one
        conn.execute(
            "UPDATE audit_entries SET uploaded = 1 WHERE seq <= ? AND uploaded = 0", (up_to_seq,)
        )
        conn.execute("UPDATE audit_state SET receipt = ? WHERE id = 1", (receipt_to_json(receipt),))

    def last_receipt(self, conn: Connection) -> Receipt | None:
        row = conn.execute("SELECT receipt FROM audit_state WHERE id = 1").fetchone()
        if row is None or row[0] is None:
            return None
        return receipt_from_json(bytes(row[0]))

    def status(self, conn: Connection) -> AuditStatus:
        device_id, state = self._state(conn)
        return AuditStatus(
            device_id, state.seq, state.head_hash, self.unsent_count(conn), self.last_receipt(conn)
        )

    def verify(self, conn: Connection) -> VerifyReport:
        """Check the local chain (hash links, stored hashes, the last receipt; no MAC key)."""
        device_id, state = self._state(conn)
        entries = self.entries(conn)
        report = verify(
            entries, device_id=device_id, initial_key=None, checkpoint=self.last_receipt(conn)
        )
        if not report.ok:
            return report
        if (report.state.seq, report.head_hash) != (state.seq, state.head_hash):
            return VerifyReport(
                False,
                report.entries_checked,
                report.state.seq + 1,
                "truncated",
                "the stored chain ends before the state row's head.",
                False,
                report.state,
            )
        stored = conn.execute("SELECT seq, entry_hash FROM audit_entries ORDER BY seq").fetchall()
        for (seq, entry_hash), entry in zip(stored, entries, strict=False):
            if entry_hash != hashlib.sha256(entry.canonical_bytes()).hexdigest():
                return VerifyReport(
                    False,
                    seq - 1,
                    seq,
                    "edited",
                    f"entry {seq}'s stored hash does not match its content.",
                    False,
                    report.state,
                )
        return report

    def scrub_wal(self, conn: Connection) -> None:
        """Fold the WAL into the database and truncate it, destroying old page images.

        Until a checkpoint, superseded MAC keys survive in (encrypted) WAL frames; the vault
        calls this on lock and after upload, outside any transaction.
        """
        if conn.in_transaction:
            raise AuditLogError("in_transaction", "scrub the WAL only between transactions")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def export(self, conn: Connection) -> dict[str, Any]:
        """The whole chain as a FHIR AuditEvent Bundle (re-verifiable with gatehouse-audit)."""
        return export_bundle(self.entries(conn))
