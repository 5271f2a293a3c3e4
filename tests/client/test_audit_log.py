"""AD-1 / AD-2 (local): the device audit log on a real SQLCipher database.

The vault is not used here (another module): each test opens a real SQLCipher file with a raw
key, exactly as the vault does, and sets ``secure_delete`` as the vault must.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.core.audit_log import AUDIT_SCHEMA_SQL, AUDIT_SCHEMA_STATEMENTS, AuditLog, AuditLogError
from sync.protocol.audit.audit_event import bundle_bytes, entries_from_bundle
from sync.protocol.audit.chain import next_key, verify
from sync.protocol.audit.entry import AuditFormatError
from sync.protocol.audit.receipt import sign_receipt, verify_receipt

DEVICE = "laptop-0042"
K0 = bytes(range(100, 132))
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
DB_KEY = "7f" * 32


def open_db(path: Path, *, keyed: bool = True) -> Any:
    conn = sqlcipher3.connect(str(path))
    if keyed:
        conn.execute(f"PRAGMA key = \"x'{DB_KEY}'\"")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    return conn


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    path = tmp_path / "vault.db"
    conn = open_db(path)
    conn.execute("BEGIN")
    AuditLog().initialise(conn, DEVICE, K0)
    conn.commit()
    yield conn, path
    conn.close()


def note_written(log: AuditLog, conn: Any, **extra: Any) -> Any:
    """A clinician's note entry, appended inside the caller's open transaction."""
    return log.append(
        conn,
        ts=T0,
        action="note_written",
        outcome="success",
        user_id="gp.jones",
        role="clinician",
        patient_id="pat-1",
        **extra,
    )


def view(log: AuditLog, conn: Any, n: int, **extra: Any) -> None:
    conn.execute("BEGIN")
    log.append(
        conn,
        ts=T0 + timedelta(seconds=n),
        action="record_view",
        outcome="success",
        user_id="gp.jones",
        role="clinician",
        patient_id=f"pat-{n}",
        purpose="TREAT",
        **extra,
    )
    conn.commit()


def state_row(conn: Any) -> tuple[int, str, bytes]:
    seq, head, key = conn.execute("SELECT seq, head_hash, key FROM audit_state").fetchone()
    return seq, head, bytes(key)


def test_AD2_entries_written_to_sqlcipher_export_and_verify_with_k0(db: tuple[Any, Path]) -> None:
    conn, path = db
    log = AuditLog()
    for n in range(5):
        view(log, conn, n)
    conn.close()
    conn = open_db(path)  # survives a restart
    view(log, conn, 5, detail={"screen": "chart"})
    entries = log.entries(conn)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert log.entries(conn, since_seq=4) == entries[4:]
    exported = entries_from_bundle(json.loads(bundle_bytes(log.export(conn))))
    report = verify(exported, device_id=DEVICE, initial_key=K0)
    assert report.ok and report.entries_checked == 6
    assert log.verify(conn).ok
    status = log.status(conn)
    assert (status.device_id, status.seq, status.unsent) == (DEVICE, 6, 6)
    assert status.head_hash == entries[-1].entry_hash()
    seq, _, key = state_row(conn)
    k = K0
    for _ in range(seq):
        k = next_key(k)
    assert key == k  # the stored key is the evolved one, never k0
    conn.close()


def test_AD1_entry_commits_with_the_act(db: tuple[Any, Path]) -> None:
    conn, _ = db
    log = AuditLog()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO notes (body) VALUES ('consultation')")
    entry = note_written(log, conn, purpose="TREAT")
    assert conn.in_transaction  # append never commits on its own
    conn.commit()
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 1
    assert log.entries(conn) == [entry]


def test_AD1_rollback_removes_the_entry_and_restores_the_key_state(db: tuple[Any, Path]) -> None:
    conn, _ = db
    log = AuditLog()
    view(log, conn, 1)
    before = state_row(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO notes (body) VALUES ('half-saved consultation')")
    note_written(log, conn)
    assert state_row(conn)[0] == 2
    conn.rollback()  # the act failed: the audit entry must go with it
    assert state_row(conn) == before
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 0
    assert [e.seq for e in log.entries(conn)] == [1]
    view(log, conn, 2)  # the chain continues from the restored key without a gap
    assert verify(log.entries(conn), device_id=DEVICE, initial_key=K0).ok


def test_AD1_append_outside_a_transaction_is_refused(db: tuple[Any, Path]) -> None:
    conn, _ = db
    log = AuditLog()
    with pytest.raises(AuditLogError) as caught:
        log.append(conn, ts=T0, action="record_view", outcome="success")
    assert caught.value.reason == "no_transaction"
    assert log.entries(conn) == [] and state_row(conn)[0] == 0


def test_AD1_uncommitted_entry_is_invisible_to_another_connection(db: tuple[Any, Path]) -> None:
    conn, path = db
    log = AuditLog()
    conn.execute("BEGIN")
    log.append(conn, ts=T0, action="search", outcome="success", detail={"results": 2})
    other = open_db(path)
    assert log.entries(other) == []
    conn.commit()
    assert len(log.entries(other)) == 1
    other.close()


def test_invalid_fields_write_nothing(db: tuple[Any, Path]) -> None:
    conn, _ = db
    log = AuditLog()
    conn.execute("BEGIN")
    with pytest.raises(AuditFormatError):
        log.append(
            conn, ts=T0, action="record_view", outcome="success", detail={"note": "x" * 1000}
        )
    conn.commit()
    assert log.entries(conn) == [] and state_row(conn)[0] == 0


def test_initialise_is_once_and_needs_a_32_byte_key(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "v.db")
    log = AuditLog()
    conn.execute("BEGIN")
    with pytest.raises(AuditLogError, match="bad_key"):
        log.initialise(conn, DEVICE, b"short")
    log.initialise(conn, DEVICE, K0)
    with pytest.raises(AuditLogError, match="already_initialised"):
        log.initialise(conn, DEVICE, os.urandom(32))
    conn.commit()
    assert AUDIT_SCHEMA_SQL.count("CREATE TABLE") == 2
    fresh = open_db(tmp_path / "w.db")
    fresh.execute("BEGIN")
    for statement in AUDIT_SCHEMA_STATEMENTS:
        fresh.execute(statement)
    with pytest.raises(AuditLogError, match="not_initialised"):
        log.append(fresh, ts=T0, action="lock", outcome="success")
    fresh.rollback()
    conn.close()
    fresh.close()


def test_upload_bookkeeping_with_a_real_receipt(db: tuple[Any, Path]) -> None:
    conn, _ = db
    log = AuditLog()
    for n in range(6):
        view(log, conn, n)
    batch = log.unsent(conn, 4)
    assert [e.seq for e in batch] == [1, 2, 3, 4]
    gateway = Ed25519PrivateKey.generate()
    receipt = sign_receipt(
        gateway,
        device_id=DEVICE,
        last_seq=4,
        head_hash=batch[-1].entry_hash(),
        issued_at=T0 + timedelta(hours=1),
    )
    verify_receipt(receipt, gateway.public_key())
    conn.execute("BEGIN")
    log.mark_uploaded(conn, 4, receipt)
    conn.commit()
    assert [e.seq for e in log.unsent(conn, 100)] == [5, 6] and log.unsent_count(conn) == 2
    assert log.last_receipt(conn) == receipt
    wrong = sign_receipt(
        gateway, device_id=DEVICE, last_seq=5, head_hash="0" * 64, issued_at=T0 + timedelta(hours=2)
    )
    conn.execute("BEGIN")
    for bad, seq in ((wrong, 5), (receipt, 5)):
        with pytest.raises(AuditLogError, match="receipt_mismatch"):
            log.mark_uploaded(conn, seq, bad)
    conn.rollback()


def test_AD2_local_verify_catches_a_row_edited_or_cut_in_the_database(
    db: tuple[Any, Path],
) -> None:
    conn, _ = db
    log = AuditLog()
    for n in range(6):
        view(log, conn, n)
    gateway = Ed25519PrivateKey.generate()
    head4 = log.entries(conn)[3].entry_hash()
    conn.execute("BEGIN")
    log.mark_uploaded(
        conn, 4, sign_receipt(gateway, device_id=DEVICE, last_seq=4, head_hash=head4, issued_at=T0)
    )
    conn.commit()
    assert log.verify(conn).ok
    row = conn.execute("SELECT canonical FROM audit_entries WHERE seq = 3").fetchone()[0]
    edited = bytes(row).replace(b"pat-2", b"pat-9")
    conn.execute("UPDATE audit_entries SET canonical = ? WHERE seq = 3", (edited,))
    conn.commit()
    report = log.verify(conn)
    assert (report.reason, report.first_bad_seq) == ("edited", 4)
    conn.execute("UPDATE audit_entries SET canonical = ? WHERE seq = 3", (row,))
    conn.execute("DELETE FROM audit_entries WHERE seq >= 3")
    conn.commit()
    report = log.verify(conn)
    assert (report.reason, report.first_bad_seq) == ("truncated", 3)


def test_AD2_old_keys_do_not_remain_in_the_database_file(tmp_path: Path) -> None:
    """Run unkeyed (same SQLite engine) so the raw pages can be scanned for key bytes."""
    path = tmp_path / "plain.db"
    conn = open_db(path, keyed=False)
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    log = AuditLog()
    conn.execute("BEGIN")
    log.initialise(conn, DEVICE, K0)
    conn.commit()
    for n in range(40):
        view(log, conn, n)
    wal = (tmp_path / "plain.db-wal").read_bytes()
    assert K0 in wal  # before the scrub, superseded keys linger in WAL frames
    conn.execute("BEGIN")
    with pytest.raises(AuditLogError, match="in_transaction"):
        log.scrub_wal(conn)
    conn.rollback()
    log.scrub_wal(conn)
    current = state_row(conn)[2]
    raw = path.read_bytes() + (tmp_path / "plain.db-wal").read_bytes()
    assert current in raw  # the scan can see a key when it is there
    k = K0
    for _ in range(40):
        assert k not in raw
        k = next_key(k)
    assert k == current
    conn.close()
