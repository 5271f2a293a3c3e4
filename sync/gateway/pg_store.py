"""PostgreSQL backend of the gateway store (the scale path): ``PgStore(dsn)``.

Invariants (beyond those of ``store.Store``), holding across any number of gateway processes
sharing one database:
- **Seq order = commit order.** Every write transaction starts by locking the one
  ``change_counter`` row (``SELECT … FOR UPDATE``) and holds that lock until COMMIT. So exactly
  one write transaction runs at a time in the whole cluster — the PostgreSQL equivalent of
  SQLite's ``BEGIN IMMEDIATE`` — and a writer that receives a larger seq always commits later.
  Transactions run at READ COMMITTED: every statement after the lock sees every write committed
  before it, so ``ifNoneExist``/``ifMatch`` checks, one-time tokens and chain heads read inside
  the transaction are current (no lost updates, no double use). A PostgreSQL SEQUENCE is never
  used for seq: its values are handed out at ``nextval``, not at commit.
- ``lastUpdated`` comes from the same locked row and never goes backwards, whichever process's
  clock is behind.
- The SQL is the SQLite backend's own (``sqlite_store``, ``sql_control``): this module supplies
  a connection that speaks PostgreSQL under the small ``sqlite3.Connection`` surface that SQL
  uses (``execute``, ``executemany``, ``BEGIN IMMEDIATE``/``COMMIT``/``ROLLBACK``) and the
  schema translated to PostgreSQL types, so both backends keep one definition of every query.
  The whole gateway test suite runs against PostgreSQL (``GATEHOUSE_TEST_STORE=postgres``).
- One connection per thread (the ASGI app calls the store from its threadpool, ~40 threads per
  process); a connection found broken is replaced on next use; ``close`` closes them all.
- A write transaction may hold the cluster-wide writer lock for at most
  ``IDLE_IN_TRANSACTION_MS``; waiting for it gives up after ``LOCK_TIMEOUT_MS`` (like SQLite's
  busy timeout). The schema is created under an advisory lock, so gateways may start together.
- Planner statistics follow bulk loads (``ANALYZE`` each time the change feed doubles), so
  paging stays an index scan, never a join of everything after the cursor.
- The DSN is never logged (it may carry a password), nor echoed in an exception.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import psycopg

from sync.gateway import sqlite_store
from sync.gateway.sql_control import CONTROL_SCHEMA
from sync.gateway.store import StoreError, WriteTx

log = logging.getLogger(__name__)

LOCK_TIMEOUT_MS = 30_000  # how long a writer waits for the writer lock (SQLite: busy timeout)
IDLE_IN_TRANSACTION_MS = 60_000  # a stalled writer loses the lock rather than stall every site
CONNECT_TIMEOUT_S = 10
SCHEMA_LOCK_KEY = 0x6761_7465  # pg_advisory_xact_lock key taken while creating the schema
# The planner needs statistics to page the feed by index (an unanalysed table makes every
# history page join all later changes: quadratic in a full pull). Autovacuum analyses within a
# minute or so; after a bulk load that is too late, so the store analyses itself when the change
# feed has doubled since (head seq ≥ ANALYZE_FIRST_AT, then 2·head + ANALYZE_FIRST_AT, …).
ANALYZE_FIRST_AT = 1_000
_ANALYZED_TABLES = ("changes", "resource_history", "resources", "resource_identifiers")
_LOCK_WRITER = "SELECT seq FROM change_counter WHERE id = 1 FOR UPDATE"
_PASSTHROUGH = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})


@functools.lru_cache(maxsize=1024)
def to_pg_sql(sql: str) -> str:
    """SQLite-style ``?`` parameters to psycopg's ``%s`` (``%`` itself doubled).

    ``?`` inside a single-quoted literal is left alone. Raises ``StoreError`` on SQLite-only
    statements (``PRAGMA``), so a backend mismatch is loud rather than silently wrong.
    """
    if sql.lstrip().upper().startswith("PRAGMA"):
        raise StoreError("sqlite_only_statement")
    out: list[str] = []
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
            out.append(char)
        elif char == "%":
            out.append("%%")
        elif char == "?" and not quoted:
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


def pg_schema(sqlite_schema: str) -> list[str]:
    """The SQLite DDL as PostgreSQL statements: BLOB → BYTEA, INTEGER → BIGINT.

    Every integer is 64-bit (times are microseconds); the rest of the DDL is the portable subset
    both engines accept (``CREATE … IF NOT EXISTS``, ``INSERT … SELECT … WHERE NOT EXISTS``).
    """
    ddl = re.sub(r"\bBLOB\b", "BYTEA", sqlite_schema)
    ddl = re.sub(r"\bINTEGER\b", "BIGINT", ddl)
    return [stmt.strip() for stmt in ddl.split(";") if stmt.strip()]


def _redacted(message: str, dsn: str) -> str:
    """libpq's error text without the DSN or its password (a malformed DSN is echoed)."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return "malformed connection string"
    text = message.replace(dsn, "<dsn>")
    if password:
        text = text.replace(str(password), "<password>")
    return text.strip()[:300]


class _PgConnection:
    """One psycopg connection behind the ``sqlite3.Connection`` surface ``sqlite_store`` uses.

    Autocommit: outside an explicit transaction each statement commits on its own (as with
    ``isolation_level=None`` in sqlite3). ``BEGIN IMMEDIATE`` becomes ``BEGIN`` plus the lock
    on the counter row — the cluster-wide writer lock.
    """

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="gatehouse-gateway",
            options=(
                f"-c lock_timeout={LOCK_TIMEOUT_MS}"
                f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
                " -c default_transaction_isolation=read\\ committed"
            ),
        )

    @property
    def broken(self) -> bool:
        return self._conn.closed or self._conn.broken

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        verb = sql.strip().upper()
        if verb == "BEGIN IMMEDIATE":
            self._conn.execute("BEGIN")
            return self._conn.execute(_LOCK_WRITER)
        if verb in _PASSTHROUGH:
            if verb == "ROLLBACK" and self.broken:
                return self._conn.cursor()  # the server already ended the transaction
            return self._conn.execute(verb)
        return self._conn.execute(to_pg_sql(sql), tuple(params))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self._conn.cursor()
        rows = [tuple(row) for row in seq]
        if rows:
            cursor.executemany(to_pg_sql(sql), rows)
        return cursor

    def close(self) -> None:
        self._conn.close()


class PgStore(sqlite_store.SqliteStore):
    """``store.Store`` on a PostgreSQL database (libpq DSN or ``postgresql://`` URL)."""

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        # Not SqliteStore.__init__: that opens a file. These are the attributes its methods use.
        self._path = "postgresql"  # never the DSN: it may hold a password
        self._dsn = dsn
        self._clock = clock
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._analyze_at = ANALYZE_FIRST_AT
        self._create_schema()

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        with super().write() as tx:
            yield tx
        self._refresh_statistics()

    def _refresh_statistics(self) -> None:
        """ANALYZE once the change feed has grown past the next threshold (see ANALYZE_*)."""
        head = self.head_seq()
        if head < self._analyze_at:
            return
        self._analyze_at = head * 2 + ANALYZE_FIRST_AT
        try:
            self._conn().execute("ANALYZE " + ", ".join(_ANALYZED_TABLES))
        except psycopg.Error as err:  # statistics are an optimisation: never fail a write
            log.warning("ANALYZE failed: %s", type(err).__name__)

    def _connect(self) -> _PgConnection:
        try:
            return _PgConnection(self._dsn)
        except psycopg.OperationalError as err:
            log.error("cannot connect to PostgreSQL: %s", _redacted(str(err), self._dsn))
            raise StoreError("database_unavailable") from None
        except psycopg.ProgrammingError as err:  # libpq may echo the whole DSN: never re-raise
            log.error("cannot connect to PostgreSQL: %s", _redacted(str(err), self._dsn))
            raise StoreError("bad_database_url") from None

    def _create_schema(self) -> None:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
            for statement in pg_schema(";\n".join((sqlite_store.SCHEMA, *CONTROL_SCHEMA))):
                conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _conn(self) -> sqlite3.Connection:
        conn: _PgConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.broken:
            log.warning("replacing a broken PostgreSQL connection")
            with self._lock:
                self._all = [c for c in self._all if c is not cast(sqlite3.Connection, conn)]
            conn = None
        if conn is None:
            if self._closed:
                raise StoreError("closed")
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(cast(sqlite3.Connection, conn))
        # _PgConnection implements the part of sqlite3.Connection that SqliteStore calls.
        return cast(sqlite3.Connection, conn)
