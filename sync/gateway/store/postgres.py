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
- At most ``pool_size`` connections per process, whatever the threadpool's size (the ASGI app
  calls the store from ~40 threads): a statement outside a transaction borrows a connection for
  that statement only, a transaction keeps one until it ends. A connection always returns to
  the pool idle (outside any transaction) or is closed. A dropped connection is replaced; a read
  that met one is retried once. ``close`` closes them all.
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
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import psycopg

from sync.gateway.store import sqlite as sqlite_store
from sync.gateway.store.base import StoreError, WriteTx
from sync.gateway.store.control_tables import CONTROL_SCHEMA

log = logging.getLogger(__name__)

LOCK_TIMEOUT_MS = 30_000  # how long a writer waits for the writer lock (SQLite: busy timeout)
IDLE_IN_TRANSACTION_MS = 60_000  # a stalled writer loses the lock rather than stall every site
CONNECT_TIMEOUT_S = 10
POOL_SIZE = 10  # connections per gateway process; N processes need N·POOL_SIZE ≤ max_connections
POOL_WAIT_S = 30  # how long a request waits for a free connection before "database_busy"
SCHEMA_LOCK_KEY = 0x6761_7465  # pg_advisory_xact_lock key taken while creating the schema
# The planner needs statistics to page the feed by index (an unanalysed table makes every
# history page join all later changes: quadratic in a full pull). Autovacuum analyses within a
# minute or so; after a bulk load that is too late, so the store analyses itself when the change
# feed has doubled since (head seq ≥ ANALYZE_FIRST_AT, then 2·head + ANALYZE_FIRST_AT, …).
ANALYZE_FIRST_AT = 1_000
_ANALYZED_TABLES = ("changes", "resource_history", "resources", "resource_identifiers")
_LOCK_WRITER = "SELECT seq FROM change_counter WHERE id = 1 FOR UPDATE"


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


class _Rows:
    """A finished statement: its rows and rowcount (its connection may already be reused)."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[tuple[Any, ...]]:
        rest, self._next = self._rows[self._next :], len(self._rows)
        return rest


def _finish(cursor: psycopg.Cursor[Any]) -> _Rows:
    rows = cursor.fetchall() if cursor.description is not None else []
    return _Rows(rows, cursor.rowcount)


class _Pool:
    """At most ``size`` open connections to one database, handed out one caller at a time.

    A connection comes back idle (no open transaction) or is closed. Broken connections are
    dropped; after one breaks, the idle ones are dropped too (a server restart kills them all).
    """

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="gatehouse-gateway",
                options=(
                    f"-c lock_timeout={LOCK_TIMEOUT_MS}"
                    f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
                    " -c default_transaction_isolation=read\\ committed"
                ),
            )
        except psycopg.OperationalError as err:
            log.error("cannot connect to PostgreSQL: %s", _redacted(str(err), self._dsn))
            raise StoreError("database_unavailable") from None
        except psycopg.ProgrammingError as err:  # libpq may echo the whole DSN: never re-raise
            log.error("cannot connect to PostgreSQL: %s", _redacted(str(err), self._dsn))
            raise StoreError("bad_database_url") from None

    def get(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError("closed")
        if not self._slots.acquire(timeout=POOL_WAIT_S):
            raise StoreError("database_busy")
        try:
            while True:
                try:
                    conn = self._idle.get_nowait()
                except queue.Empty:
                    return self._connect()
                if not conn.closed:
                    return conn
        except BaseException:
            self._slots.release()
            raise

    def put(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if conn.broken:
                log.warning("dropping a broken PostgreSQL connection")
                self.drop_idle()
                conn.close()
            elif self._closed:
                conn.close()
            elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()  # never hand out a connection inside someone's transaction
            else:
                self._idle.put(conn)
        finally:
            self._slots.release()

    def drop_idle(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def close(self) -> None:
        self._closed = True
        self.drop_idle()


class _Session:
    """One thread's view of the pool, with the ``sqlite3.Connection`` surface that
    ``sqlite_store`` uses. A statement outside a transaction borrows a connection for itself
    (a read that meets a dropped connection is retried once on a fresh one); ``BEGIN`` keeps one
    until ``COMMIT``/``ROLLBACK``. ``BEGIN IMMEDIATE`` is ``BEGIN`` plus the lock on the counter
    row — the cluster-wide writer lock."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._held: psycopg.Connection[Any] | None = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        verb = sql.strip().upper()
        if verb in ("BEGIN", "BEGIN IMMEDIATE"):
            return self._begin(verb == "BEGIN IMMEDIATE")
        if verb in ("COMMIT", "ROLLBACK"):
            return self._end(verb)
        query = to_pg_sql(sql)
        if self._held is not None:
            return _finish(self._held.execute(query, tuple(params)))
        retry = verb.startswith("SELECT")
        while True:
            conn = self._pool.get()
            try:
                return _finish(conn.execute(query, tuple(params)))
            except psycopg.OperationalError:
                if not (retry and conn.broken):
                    raise
                retry = False  # the connection died idle: the read is safe to run again
            finally:
                self._pool.put(conn)

    def _begin(self, immediate: bool) -> _Rows:
        if self._held is not None:
            raise StoreError("nested_transaction")
        conn = self._held = self._borrow_in_transaction()
        if not immediate:
            return _Rows([], -1)
        try:
            return _finish(conn.execute(_LOCK_WRITER))
        except BaseException:
            self._end("ROLLBACK")
            raise

    def _borrow_in_transaction(self, retry: bool = True) -> psycopg.Connection[Any]:
        conn = self._pool.get()
        try:
            conn.execute("BEGIN")
        except BaseException as exc:
            self._pool.put(conn)
            if retry and isinstance(exc, psycopg.OperationalError) and conn.broken:
                return self._borrow_in_transaction(retry=False)  # it died idle: nothing ran
            raise
        return conn

    def _end(self, verb: str) -> _Rows:
        conn, self._held = self._held, None
        if conn is None:
            raise StoreError("no_transaction")
        try:
            if verb == "ROLLBACK" and conn.broken:
                return _Rows([], -1)  # the server already ended the transaction
            return _finish(conn.execute(verb))
        finally:
            self._pool.put(conn)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> _Rows:
        if self._held is None:
            raise StoreError("no_transaction")
        rows = [tuple(row) for row in seq]
        if rows:
            with self._held.cursor() as cursor:
                cursor.executemany(to_pg_sql(sql), rows)
        return _Rows([], len(rows))


class PgStore(sqlite_store.SqliteStore):
    """``store.Store`` on a PostgreSQL database (libpq DSN or ``postgresql://`` URL), with at
    most ``pool_size`` connections open from this process."""

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        pool_size: int = POOL_SIZE,
    ) -> None:
        # Not SqliteStore.__init__: that opens a file. These are the attributes its methods use.
        self._path = "postgresql"  # never the DSN: it may hold a password
        self._clock = clock
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pool = _Pool(dsn, pool_size)
        self._analyze_at = ANALYZE_FIRST_AT
        try:
            self._create_schema()
        except BaseException:
            self.close()
            raise

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("closed")
        session: _Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _Session(self._pool)
        # _Session implements the part of sqlite3.Connection that SqliteStore calls.
        return cast(sqlite3.Connection, session)

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

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        with super().write() as tx:
            yield tx
        self._refresh_statistics()

    def _refresh_statistics(self) -> None:
        """ANALYZE once the change feed has grown past the next threshold (see ANALYZE_*)."""
        head = self.head_seq()
        with self._lock:
            if head < self._analyze_at:
                return
            self._analyze_at = head * 2 + ANALYZE_FIRST_AT
        try:
            self._conn().execute("ANALYZE " + ", ".join(_ANALYZED_TABLES))
        except psycopg.Error as err:  # statistics are an optimisation: never fail a write
            log.warning("ANALYZE failed: %s", type(err).__name__)

    def close(self) -> None:
        self._closed = True
        self._pool.close()
        self._local = threading.local()
