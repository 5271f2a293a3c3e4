"""Self-test of the vault's database engine: SQLCipher 4 encrypts, and FTS5 answers.

Invariants:
- ``sqlcipher`` passes only on positive evidence: the module reports SQLCipher 4.x,
  ``cipher_memory_security`` reads back 1, the file does not start with ``SQLite format 3`` and
  holds no plaintext canary, the row reads back with the key, and a wrong key is refused.
- ``fts5`` passes only when an FTS5 prefix query on a keyed database finds its row.
- Keys are random per run; the databases live in the check's private work directory.
"""

from __future__ import annotations

import contextlib
import importlib
import secrets
from pathlib import Path
from typing import Any, Final

from client.selftest.base import CheckFailed, Context

# The DB-API module that must be SQLCipher. A name (not an import) so a test can point it at
# plain sqlite3 and watch the self-test fail.
SQLCIPHER_MODULE: Final[str] = "sqlcipher3"
SQLCIPHER_MAJOR: Final = "4"
_PLAINTEXT_HEADER: Final = b"SQLite format 3\x00"


def _sqlcipher() -> Any:
    try:
        return importlib.import_module(SQLCIPHER_MODULE)
    except ImportError:
        raise CheckFailed(
            "sqlcipher_missing", f"module {SQLCIPHER_MODULE} cannot be imported"
        ) from None


def _keyed_connection(module: Any, path: Path, key: bytes) -> Any:
    connection = module.connect(str(path), isolation_level=None)
    connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    connection.execute("PRAGMA cipher_memory_security = ON")
    return connection


def check_sqlcipher(ctx: Context) -> None:
    module = _sqlcipher()
    probe = module.connect(":memory:")
    try:
        row = probe.execute("PRAGMA cipher_version").fetchone()
    finally:
        probe.close()
    if row is None:
        raise CheckFailed("sqlcipher_missing", f"{SQLCIPHER_MODULE} is not SQLCipher")
    version = str(row[0])
    if version.split(".")[0] != SQLCIPHER_MAJOR:
        raise CheckFailed("sqlcipher_version", f"SQLCipher {version}, need {SQLCIPHER_MAJOR}.x")
    ctx.note(f"SQLCipher {version}")

    key = secrets.token_bytes(32)
    canary = "gatehouse-canary-" + secrets.token_hex(8)
    path = ctx.workdir / "selftest.db"
    connection = _keyed_connection(module, path, key)
    try:
        memory = connection.execute("PRAGMA cipher_memory_security").fetchone()
        if memory is None or str(memory[0]) != "1":
            raise CheckFailed("sqlcipher_memory_security", "cipher_memory_security is not on")
        connection.execute("CREATE TABLE t (v TEXT)")
        connection.execute("INSERT INTO t VALUES (?)", (canary,))
    finally:
        connection.close()
    raw = path.read_bytes()
    if raw.startswith(_PLAINTEXT_HEADER) or canary.encode() in raw:
        raise CheckFailed("sqlcipher_plaintext", "the database file is not encrypted")
    connection = _keyed_connection(module, path, key)
    try:
        if connection.execute("SELECT v FROM t").fetchone() != (canary,):
            raise CheckFailed("sqlcipher_round_trip", "the row did not read back")
    finally:
        connection.close()
    connection = _keyed_connection(module, path, secrets.token_bytes(32))
    try:
        with contextlib.suppress(module.Error):  # SQLCipher < 4.6 has no log level: it logs
            connection.execute("PRAGMA cipher_log_level = NONE")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except module.DatabaseError:
        pass
    else:
        raise CheckFailed("sqlcipher_wrong_key_opened", "a wrong key opened the database")
    finally:
        connection.close()


def check_fts5(ctx: Context) -> None:
    module = _sqlcipher()
    connection = _keyed_connection(module, ctx.workdir / "fts5.db", secrets.token_bytes(32))
    try:
        try:
            connection.execute("CREATE VIRTUAL TABLE f USING fts5(body)")
        except module.Error:
            raise CheckFailed("fts5_missing", "FTS5 is not compiled in") from None
        connection.execute("INSERT INTO f VALUES ('asthma inhaler review')")
        hits = connection.execute("SELECT count(*) FROM f WHERE f MATCH 'inhal*'").fetchone()
        if hits != (1,):
            raise CheckFailed("fts5_broken", "an FTS5 prefix query found nothing")
    finally:
        connection.close()
