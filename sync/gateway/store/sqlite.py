"""SQLite backend of the gateway store (the embedded default): ``SqliteStore(path)``.

This module is only what SQLite does differently (``sqlite_dialect``) and how a thread gets
its connection (``SqliteConnections``); every query is ``store.sql.SqlStore``'s.

Invariants (beyond those of ``store.Store`` and ``store.sql``):
- WAL journal, ``synchronous=FULL``: a write acknowledged to a device survives a power loss.
- Writers take ``BEGIN IMMEDIATE``, so exactly one write transaction runs at a time; the change
  counter is bumped inside it, hence seq order = commit order. Readers never block writers.
  Waiting for a writer gives up after ``BUSY_TIMEOUT_MS``: ``DatabaseFailure("database_busy")``.
- One connection per thread (``threading.local``); ``close`` closes them all.
- The control-plane tables live in the same file and use the same ``BEGIN IMMEDIATE`` write
  transactions.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sync.gateway.store.base import StoreError
from sync.gateway.store.sql import SqlStore, utc_now
from sync.gateway.store.tables import Dialect, set_up

BUSY_TIMEOUT_MS = 30_000
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_PERM,
    }
)


def failure_reason(err: Exception) -> str:
    """``database_busy`` (the busy timeout ran out), ``database_unavailable`` (the file cannot
    be opened, read or written), else ``database_error``."""
    code = getattr(err, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF  # extended codes keep the primary's bits
    if primary in _BUSY:
        return "database_busy"
    if primary in _UNAVAILABLE:
        return "database_unavailable"
    return "database_error"


def sqlite_dialect(busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Dialect:
    return Dialect(
        name="sqlite",
        paramstyle=str,  # sqlite3 takes the portable ``?`` as it is
        column_types=(),  # the portable DDL is SQLite's own
        connection_setup=(
            f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = FULL",
            "PRAGMA foreign_keys = ON",
        ),
        begin_schema=("BEGIN IMMEDIATE",),
        begin_write=("BEGIN IMMEDIATE",),  # the database's one RESERVED lock is the writer lock
        driver_error=sqlite3.Error,
        failure_reason=failure_reason,
    )


DIALECT = sqlite_dialect()


class SqliteConnections:
    """One ``sqlite3`` connection per thread on one file, in autocommit mode (transactions are
    the explicit ``begin``/``end``); ``setup`` runs on each new connection."""

    def __init__(self, path: str, setup: Sequence[str]) -> None:
        self._path = path
        self._setup = tuple(setup)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError("closed")
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            set_up(conn, self._setup)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn().execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn().executemany(sql, rows)

    def begin(self, statement: str) -> None:
        self._conn().execute(statement)

    def end(self, commit: bool) -> None:
        conn = self._conn()
        try:
            conn.execute("COMMIT" if commit else "ROLLBACK")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT may leave it open: never keep it so
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class SqliteStore(SqlStore):
    """``store.Store`` on one SQLite file."""

    def __init__(self, path: str | Path, *, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self._path = str(path)  # the file (tests/sync/test_engine.py edits rows behind the store)
        dialect = DIALECT
        super().__init__(
            SqliteConnections(self._path, dialect.connection_setup), dialect, clock=clock
        )
