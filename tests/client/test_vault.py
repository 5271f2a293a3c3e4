"""The SQLCipher vault: raw-key open, hardening pragmas, migrations, lock (ST-2, AU-3)."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest
import sqlcipher3

from client.core.errors import VaultLocked
from client.core.vault import Vault, VaultOpenFailed, database_path

MIGRATIONS = (
    "CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    "CREATE TABLE tag (id INTEGER PRIMARY KEY, note_id INTEGER NOT NULL REFERENCES note(id));"
    "CREATE INDEX tag_note ON tag(note_id)",
)
CANARY = "CANARY-Zebedee-Quixote-7731"


@pytest.fixture
def dek() -> bytes:
    return secrets.token_bytes(32)


def _write_canary(vault: Vault, rows: int = 200) -> None:
    with vault.transaction() as conn:
        conn.executemany(
            "INSERT INTO note (body) VALUES (?)", [(f"{CANARY} row {i}",) for i in range(rows)]
        )


def test_ST2_file_starts_with_random_salt_not_sqlite_header(tmp_path: Path, dek: bytes) -> None:
    path = database_path(tmp_path)
    with Vault.open(path, dek, MIGRATIONS) as vault:
        _write_canary(vault)
    other = tmp_path / "other.db"
    with Vault.open(other, dek, MIGRATIONS) as vault:
        _write_canary(vault)
    first, second = path.read_bytes()[:16], other.read_bytes()[:16]
    assert not path.read_bytes().startswith(b"SQLite format 3")
    assert first != second  # a per-file random salt, even for the same key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_ST2_cipher_memory_security_is_on_and_pragmas_applied(tmp_path: Path, dek: bytes) -> None:
    with Vault.open(database_path(tmp_path), dek, MIGRATIONS) as vault:
        conn = vault.connection
        assert str(conn.execute("PRAGMA cipher_memory_security").fetchone()[0]) == "1"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with pytest.raises(sqlcipher3.IntegrityError):
            conn.execute("INSERT INTO tag (note_id) VALUES (999)")


def test_ST2_wrong_key_does_not_open(tmp_path: Path, dek: bytes) -> None:
    path = database_path(tmp_path)
    with Vault.open(path, dek, MIGRATIONS) as vault:
        _write_canary(vault, 5)
    with pytest.raises(VaultOpenFailed) as caught:
        Vault.open(path, secrets.token_bytes(32), MIGRATIONS)
    assert caught.value.reason == "vault_key_rejected"
    plain = sqlcipher3.connect(str(path))  # no key at all
    with pytest.raises(sqlcipher3.DatabaseError):
        plain.execute("SELECT count(*) FROM sqlite_master").fetchone()
    plain.close()
    with Vault.open(path, dek, MIGRATIONS) as vault:  # the right key still works
        assert vault.connection.execute("SELECT count(*) FROM note").fetchone()[0] == 5


def test_ST2_only_a_32_byte_raw_key_is_accepted(tmp_path: Path) -> None:
    for bad in (b"", b"x" * 31, b"x" * 33, b"correct horse battery staple"):
        with pytest.raises(ValueError):
            Vault.open(database_path(tmp_path), bad, MIGRATIONS)
    assert not database_path(tmp_path).exists()


def test_ST2_no_plaintext_in_any_file_including_wal_and_shm(tmp_path: Path, dek: bytes) -> None:
    vault = Vault.open(database_path(tmp_path), dek, MIGRATIONS)
    _write_canary(vault, 500)
    with vault.transaction() as conn:  # secure_delete + an update: old pages rewritten
        conn.execute("UPDATE note SET body = ? WHERE id < 10", (CANARY + " edited",))
    wal = tmp_path / "vault.db-wal"
    assert wal.exists() and wal.stat().st_size > 0  # scanned while the WAL holds the pages
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"vault.db", "vault.db-wal", "vault.db-shm"}
    for file in files:
        raw = file.read_bytes()
        assert CANARY.encode() not in raw, file.name
        assert CANARY.encode("utf-16-le") not in raw, file.name
    vault.close()
    for file in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert CANARY.encode() not in file.read_bytes(), file.name


def test_migrations_are_stepwise_and_versioned(tmp_path: Path, dek: bytes) -> None:
    path = database_path(tmp_path)
    with Vault.open(path, dek, MIGRATIONS[:1]) as vault:
        assert vault.user_version == 1
        _write_canary(vault, 3)
    with Vault.open(path, dek, MIGRATIONS) as vault:
        assert vault.user_version == 2
        tables = {r[0] for r in vault.connection.execute("SELECT name FROM sqlite_master")}
        assert {"note", "tag", "tag_note"} <= tables
        assert vault.connection.execute("SELECT count(*) FROM note").fetchone()[0] == 3


def test_a_failing_migration_leaves_the_previous_version_whole(tmp_path: Path, dek: bytes) -> None:
    path = database_path(tmp_path)
    Vault.open(path, dek, MIGRATIONS[:1]).close()
    broken = (*MIGRATIONS[:1], "CREATE TABLE half (x); INSERT INTO nowhere VALUES (1)")
    with pytest.raises(VaultOpenFailed) as caught:
        Vault.open(path, dek, broken)
    assert caught.value.reason == "vault_migration_failed"
    with Vault.open(path, dek, MIGRATIONS[:1]) as vault:
        assert vault.user_version == 1
        names = {r[0] for r in vault.connection.execute("SELECT name FROM sqlite_master")}
        assert "half" not in names


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path, dek: bytes) -> None:
    path = database_path(tmp_path)
    Vault.open(path, dek, MIGRATIONS).close()
    with pytest.raises(VaultOpenFailed) as caught:
        Vault.open(path, dek, MIGRATIONS[:1])
    assert caught.value.reason == "vault_too_new"


def test_transaction_rolls_back_on_error(tmp_path: Path, dek: bytes) -> None:
    with Vault.open(database_path(tmp_path), dek, MIGRATIONS) as vault:
        with pytest.raises(RuntimeError), vault.transaction() as conn:
            conn.execute("INSERT INTO note (body) VALUES ('x')")
            raise RuntimeError("boom")
        assert vault.connection.execute("SELECT count(*) FROM note").fetchone()[0] == 0
        assert not vault.connection.in_transaction


def test_transaction_rolls_back_on_an_interrupt_too(tmp_path: Path, dek: bytes) -> None:
    with Vault.open(database_path(tmp_path), dek, MIGRATIONS) as vault:
        with pytest.raises(KeyboardInterrupt), vault.transaction() as conn:
            conn.execute("INSERT INTO note (body) VALUES ('x')")
            raise KeyboardInterrupt
        assert vault.connection.execute("SELECT count(*) FROM note").fetchone()[0] == 0
        assert not vault.connection.in_transaction


def test_a_refused_commit_rolls_back_and_leaves_no_open_transaction(
    tmp_path: Path, dek: bytes
) -> None:
    with Vault.open(database_path(tmp_path), dek, MIGRATIONS) as vault:
        with pytest.raises(sqlcipher3.IntegrityError), vault.transaction() as conn:
            conn.execute("PRAGMA defer_foreign_keys = ON")  # the violation surfaces at COMMIT
            conn.execute("INSERT INTO note (body) VALUES ('kept only with its tag')")
            conn.execute("INSERT INTO tag (note_id) VALUES (999)")
        assert not vault.connection.in_transaction
        assert vault.connection.execute("SELECT count(*) FROM note").fetchone()[0] == 0
        _write_canary(vault, rows=1)  # the next transaction starts normally
        assert vault.connection.execute("SELECT count(*) FROM note").fetchone()[0] == 1


def test_AU3_lock_drops_the_key_and_data_calls_fail(tmp_path: Path, dek: bytes) -> None:
    vault = Vault.open(database_path(tmp_path), dek, MIGRATIONS)
    conn = vault.connection
    assert vault.export_dek() == dek
    key_buffer = vault._key
    assert key_buffer is not None
    vault.lock()
    assert not vault.is_open
    assert bytes(key_buffer) == b"\x00" * 32  # our copy is zeroised
    with pytest.raises(VaultLocked):
        _ = vault.connection
    with pytest.raises(VaultLocked), vault.transaction():
        pass
    with pytest.raises(VaultLocked):
        vault.export_dek()
    with pytest.raises(sqlcipher3.ProgrammingError):  # the old handle is closed too
        conn.execute("SELECT 1")
    vault.close()  # idempotent
