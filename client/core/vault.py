"""The encrypted vault: one SQLCipher 4 database per device, keyed with the raw 256-bit DEK.

Invariants:
- The database is only ever keyed with ``PRAGMA key = "x'<64 hex>'"`` built from exactly 32
  validated bytes (never a passphrase, never caller text), so SQLCipher does no KDF of its own and
  the file starts with its random salt, not ``SQLite format 3`` (ST-2).
- The key pragma is the first statement; ``cipher_memory_security`` is switched on next and must
  read back 1, else the vault refuses to open. Then WAL, ``synchronous=FULL``,
  ``temp_store=MEMORY`` (no plaintext temp files), ``secure_delete=ON``, ``foreign_keys=ON``.
- The database file is created 0600 before SQLite touches it (its -wal/-shm inherit the mode).
- The schema version is ``user_version``; ``migrations[v]`` takes the schema from v to v+1, each
  in its own transaction together with the ``user_version`` bump: a crash leaves a whole step
  or none. A database newer than the code is refused.
- After ``close()`` (lock) the connection is closed, our copy of the key is zeroised and every
  data call raises ``VaultLocked`` (AU-3). Python cannot scrub the immutable strings SQLite's
  driver saw; the window is the ``open`` call only.
- A full disk, while opening or in any transaction, leaves as ``disk_space.DiskFull`` (never as
  a SQLite error, never mistaken for a wrong key), after the transaction was rolled back (CR-3).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import sqlcipher3

from client.core import disk_space
from client.core.errors import EnvironmentFault, VaultLocked

log = logging.getLogger(__name__)

DATABASE_NAME: Final = "vault.db"
DATABASE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")
KEY_BYTES: Final = 32


class VaultOpenFailed(EnvironmentFault):
    """The database would not open with the unwrapped key, or is not safe to use."""

    _MESSAGES: Final = {
        "vault_key_rejected": "The records database does not match this device's key.",
        "vault_memory_security": "The database engine cannot protect keys in memory.",
        "vault_too_new": "The records database was written by a newer Gatehouse.",
        "vault_migration_failed": "The records database could not be upgraded.",
        "vault_io": "The records database could not be opened (disk or permission problem).",
    }

    def __init__(self, reason: str) -> None:
        super().__init__(
            reason,
            self._MESSAGES.get(reason, "The records database could not be opened.")
            + " Nothing has been changed. Contact IT.",
        )


def database_path(data_dir: Path) -> Path:
    return Path(data_dir) / DATABASE_NAME


@contextlib.contextmanager
def transaction(conn: Any) -> Iterator[Any]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` around the block, or ``ROLLBACK`` if it raises.

    The one way the client opens a transaction on a connection (``isolation_level=None``):
    - IMMEDIATE takes the write lock up front, so a write never fails half-way on a lock.
    - Any exception, ``BaseException`` included (a ``KeyboardInterrupt``, a cancelled worker),
      rolls back and is re-raised: the block's writes land all together or not at all.
    - A COMMIT that fails (disk full, I/O error) rolls back what is left and re-raises, so the
      connection is never left inside a half-finished transaction.
    - Nothing else commits or rolls back inside the block (the records, outbox and audit
      functions require the caller's transaction and never end it).
    - A full disk (at BEGIN, a statement or COMMIT) rolls back and leaves as ``DiskFull``.
    Schema migrations are the one exception: ``executescript`` commits any open transaction
    before it runs, so each migration script carries its own ``BEGIN IMMEDIATE`` … ``COMMIT``.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlcipher3.Error as error:
        _raise_if_disk_full(conn, error)
        raise
    try:
        yield conn
    except BaseException as error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        _raise_if_disk_full(conn, error)
        raise
    try:
        conn.execute("COMMIT")
    except BaseException as error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        _raise_if_disk_full(conn, error)
        raise


def _raise_if_disk_full(conn: Any, error: BaseException) -> None:
    """Raise ``DiskFull`` in place of ``error`` when it is a full disk (figures for the
    database's folder); return otherwise."""
    if not isinstance(error, OSError | sqlcipher3.Error):
        return
    full = disk_space.as_disk_full(error, _folder_of(conn), disk_space.SAVE_BYTES)
    if full is not None:
        raise full from None


def _folder_of(conn: Any) -> Path:
    """The folder of the connection's main database file (the current one if unknown)."""
    try:
        for _seq, name, file in conn.execute("PRAGMA database_list").fetchall():
            if name == "main" and file:
                return Path(file).parent
    except sqlcipher3.Error:
        pass
    return Path(".")


def _key_pragma(key: bytearray) -> str:
    if len(key) != KEY_BYTES:
        raise ValueError("the vault key must be exactly 32 bytes")
    return f"PRAGMA key = \"x'{key.hex()}'\""


def _create_private(path: Path) -> None:
    """Create an empty 0600 file for SQLite to initialise, so no permissive window exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class Vault:
    """An open (unlocked) vault; ``close()`` locks it for good (open a new one to unlock)."""

    def __init__(self, path: Path, connection: Any, key: bytearray) -> None:
        self._path = path
        self._connection: Any = connection
        self._key: bytearray | None = key

    @classmethod
    def open(cls, path: Path, dek: bytes | bytearray, migrations: Sequence[str] = ()) -> Vault:
        """Open (or create) the database at ``path`` with ``dek`` and migrate it."""
        key = bytearray(dek)
        if len(key) != KEY_BYTES:
            key[:] = b"\x00" * len(key)
            raise ValueError("the vault key must be exactly 32 bytes")
        path = Path(path)
        try:
            _create_private(path)
            connection = sqlcipher3.connect(str(path), isolation_level=None)
        except (OSError, sqlcipher3.Error) as error:
            key[:] = b"\x00" * len(key)
            full = disk_space.as_disk_full(error, path.parent, disk_space.SIGN_IN_BYTES)
            if full is not None:
                raise full from None
            raise VaultOpenFailed("vault_io") from None
        vault = cls(path, connection, key)
        try:
            with disk_space.mapped(path.parent, disk_space.SIGN_IN_BYTES):
                vault._configure()
                vault._migrate(migrations)
        except BaseException:
            vault.close()
            raise
        return vault

    def _configure(self) -> None:
        assert self._key is not None
        conn = self._connection
        conn.execute(_key_pragma(self._key))
        conn.execute("PRAGMA cipher_memory_security = ON")
        row = conn.execute("PRAGMA cipher_memory_security").fetchone()
        if row is None or str(row[0]) != "1":
            raise VaultOpenFailed("vault_memory_security")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError as error:
            # The first read maps the -shm file: on a full disk that fails as an I/O error,
            # which is not a wrong key.
            full = disk_space.as_disk_full(error, self._path.parent, disk_space.SIGN_IN_BYTES)
            if full is not None:
                raise full from None
            raise VaultOpenFailed("vault_key_rejected") from None
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise VaultOpenFailed("vault_io")
        for pragma in (
            "PRAGMA synchronous = FULL",
            "PRAGMA temp_store = MEMORY",
            "PRAGMA secure_delete = ON",
            "PRAGMA foreign_keys = ON",
        ):
            conn.execute(pragma)

    def _migrate(self, migrations: Sequence[str]) -> None:
        conn = self._connection
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(migrations):
            raise VaultOpenFailed("vault_too_new")
        for step in range(version, len(migrations)):
            script = f"BEGIN IMMEDIATE;\n{migrations[step]};\nPRAGMA user_version = {step + 1};\n"
            try:
                conn.executescript(script + "COMMIT;")
            except sqlcipher3.Error as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                log.error("vault: migration to schema %d failed", step + 1)
                full = disk_space.as_disk_full(error, self._path.parent, disk_space.SAVE_BYTES)
                if full is not None:
                    raise full from None
                raise VaultOpenFailed("vault_migration_failed") from None

    # -- use ----------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def connection(self) -> Any:
        """The live SQLCipher connection; ``VaultLocked`` once the vault is closed."""
        if self._connection is None:
            raise VaultLocked()
        return self._connection

    @property
    def user_version(self) -> int:
        return int(self.connection.execute("PRAGMA user_version").fetchone()[0])

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """One write transaction on the vault's connection (see ``transaction``)."""
        return transaction(self.connection)

    def export_dek(self) -> bytes:
        """The DEK, only to wrap a new key slot for another user; ``VaultLocked`` when locked."""
        if self._connection is None or self._key is None:
            raise VaultLocked()
        return bytes(self._key)

    def close(self) -> None:
        """Lock: close the connection and zeroise our copy of the key. Idempotent."""
        connection, self._connection = self._connection, None
        key, self._key = self._key, None
        if key is not None:
            key[:] = b"\x00" * len(key)
        if connection is not None:
            try:
                connection.close()
            except sqlcipher3.Error:
                log.warning("vault: error while closing the database")

    lock = close

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
