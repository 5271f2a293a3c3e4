"""PostgreSQL backend of the gateway store (the scale path): ``PgStore(dsn)``.

This module is only what PostgreSQL does differently (``DIALECT``), how a thread gets a
connection (``PgConnections`` over a bounded ``_Pool``) and which write path a resource write
runs (``store.pg_write.PgWriteTx``: the same ``put``/``delete``, batched); every other query is
``store.sql.SqlStore``'s, the same SQL the SQLite backend runs.
The whole gateway test suite runs against PostgreSQL (``GATEHOUSE_TEST_STORE=postgres``).

Invariants (beyond those of ``store.Store`` and ``store.sql``), holding across any number of
gateway processes sharing one database:
- **Seq order = commit order within each site**, with no cluster-wide writer lock: a resource
  write transaction (``store.pg_write.PgWriteTx``, inside a plain BEGIN) locks each site it
  touches before reading that site's rows and takes its seqs from the SEQUENCE ``change_seq``
  only after those locks are held, so writers of one site commit in seq order while writers of
  different sites run in parallel (see that module). Transactions run at READ COMMITTED: a
  statement run after a site's lock sees every write to that site committed before it, so
  ``ifNoneExist``/``ifMatch`` checks read inside the transaction are current. ``lastUpdated``
  never goes backwards within a site, whichever process's clock is behind.
- Control-plane writes (``_write``) lock the one ``change_counter`` row
  (``DIALECT.begin_control_write``) until COMMIT: one at a time cluster-wide, so one-time
  tokens and chain heads read inside them are current (no lost updates, no double use).
- At most ``pool_size`` connections per process, whatever the threadpool's size (the ASGI app
  calls the store from ~40 threads): a statement outside a transaction borrows a connection for
  that statement only, a transaction keeps one until it ends. A connection always returns to
  the pool idle (outside any transaction) or is closed. A dropped connection is replaced; a read
  or a BEGIN that met one is retried once. ``close`` closes them all.
- A write transaction may sit idle holding its locks for at most ``IDLE_IN_TRANSACTION_MS``;
  waiting for a lock gives up after ``LOCK_TIMEOUT_MS`` (like SQLite's busy timeout) with
  ``DatabaseFailure("database_busy")``, as does a deadlock PostgreSQL broke, or waiting
  ``POOL_WAIT_S`` for a free connection. A deadlock PostgreSQL broke is also a
  ``DatabaseFailure.conflict``: the laptop's transaction is run again by the gateway
  (``store.conflicts``) before any answer goes back. The schema is created under an advisory
  lock, so gateways may start together, and only when a table, index or sequence is missing, so a
  gateway starting while others write takes no table lock.
- Planner statistics follow bulk loads (``ANALYZE`` each time the change feed doubles), so
  paging stays an index scan, never a join of everything after the cursor.
- The DSN is never logged (it may carry a password), nor echoed in an exception.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from sync.gateway.store.base import DatabaseFailure, StoreError
from sync.gateway.store.pg_write import HEAD_SEQ, PG_WRITE_SCHEMA, PgWriteTx
from sync.gateway.store.resource_tables import FEED_TABLES
from sync.gateway.store.sql import SqlStore, utc_now
from sync.gateway.store.tables import Dialect, set_up
from sync.gateway.store.upstream_tables import IMPORTED_UPSERT

log = logging.getLogger(__name__)

LOCK_TIMEOUT_MS = 30_000  # how long a writer waits for a lock (SQLite: busy timeout)
IDLE_IN_TRANSACTION_MS = 60_000  # a stalled writer loses its locks rather than stall its sites
CONNECT_TIMEOUT_S = 10
POOL_SIZE = 10  # connections per gateway process; N processes need N·POOL_SIZE ≤ max_connections
# How long a request waits for a free connection before "database_busy" (503 + Retry-After):
# short, so an overloaded gateway answers "come back later" instead of holding the request.
POOL_WAIT_S = 5.0
SCHEMA_LOCK_KEY = 0x6761_7465  # pg_advisory_xact_lock key taken while creating the schema
# The planner needs statistics to page the feed by index (an unanalysed table makes every
# history page join all later changes: quadratic in a full pull). Autovacuum analyses within a
# minute or so; after a bulk load that is too late, so the store analyses itself when the change
# feed has doubled since (head seq ≥ ANALYZE_FIRST_AT, then 2·head + ANALYZE_FIRST_AT, …).
ANALYZE_FIRST_AT = 1_000
# An import batch's upstream versions, one statement of arrays (binary: no text to parse).
_UPSERT_IMPORTS = (
    "INSERT INTO upstream_imported"  # noqa: S608 (constants only)
    " (type, id, upstream_version, site, patient_id, imported_us)"
    " SELECT v.type, v.id, v.version, v.site, v.patient, %b FROM unnest(%b::text[],"
    " %b::text[], %b::text[], %b::text[], %b::text[]) AS v(type, id, version, site, patient) "
    + IMPORTED_UPSERT
)
# Control-plane writes (enrolment, users, commands, audit) stay serialised on this row.
_LOCK_CONTROL = "SELECT seq FROM change_counter WHERE id = 1 FOR UPDATE"


@functools.lru_cache(maxsize=1024)
def to_pg_sql(sql: str) -> str:
    """Portable ``?`` parameters to psycopg's ``%s`` (``%`` itself doubled).

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


def is_conflict(err: Exception) -> bool:
    """The server rolled the transaction back to break a deadlock or a serialisation conflict
    (SQLSTATE class 40; psycopg does not make DeadlockDetected a TransactionRollback)."""
    return isinstance(
        err,
        psycopg.errors.TransactionRollback
        | psycopg.errors.DeadlockDetected
        | psycopg.errors.SerializationFailure,
    )


def failure_reason(err: Exception) -> str:
    """``database_busy`` (a lock wait timed out, or the server rolled back a conflicting
    transaction), ``database_unavailable`` (the connection failed), else ``database_error``."""
    if isinstance(err, psycopg.errors.LockNotAvailable) or is_conflict(err):
        return "database_busy"
    if isinstance(err, psycopg.OperationalError):
        return "database_unavailable"
    return "database_error"


DIALECT = Dialect(
    name="postgresql",
    paramstyle=to_pg_sql,
    # Every integer is 64-bit (times are microseconds); binary is BYTEA.
    column_types=(("BLOB", "BYTEA"), ("INTEGER", "BIGINT")),
    connection_setup=(
        f"SET lock_timeout = {LOCK_TIMEOUT_MS}",
        f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}",
        "SET default_transaction_isolation = 'read committed'",
    ),
    begin_schema=("BEGIN", f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})"),
    begin_write=("BEGIN",),  # PgWriteTx locks the sites it touches, nothing store-wide
    driver_error=psycopg.Error,
    failure_reason=failure_reason,
    is_conflict=is_conflict,
    analyze="ANALYZE " + ", ".join(FEED_TABLES),
    analyze_first_at=ANALYZE_FIRST_AT,
    begin_control_write=("BEGIN", _LOCK_CONTROL),
    head_seq=HEAD_SEQ,
    extra_schema=PG_WRITE_SCHEMA,
    missing_relations=("SELECT count(*) FROM unnest(?::text[]) AS n WHERE to_regclass(n) IS NULL"),
    bulk_commits_overlap=True,
)


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

    def __init__(
        self, dsn: str, size: int, setup: Sequence[str], wait_s: float = POOL_WAIT_S
    ) -> None:
        self._dsn = dsn
        self._setup = tuple(setup)
        self._wait_s = wait_s
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="gatehouse-gateway",
            )
        except psycopg.OperationalError as err:
            log.error("cannot connect to PostgreSQL: %s", _redacted(str(err), self._dsn))
            raise DatabaseFailure("database_unavailable") from None
        except psycopg.ProgrammingError as err:  # libpq may echo the whole DSN: never re-raise
            log.error("cannot connect to PostgreSQL: %s", _redacted(str(err), self._dsn))
            raise DatabaseFailure("bad_database_url") from None
        set_up(conn, self._setup)
        return conn

    def get(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError("closed")
        if not self._slots.acquire(timeout=self._wait_s):
            raise DatabaseFailure("database_busy")
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
    """One thread's view of the pool. A statement outside a transaction borrows a connection
    for itself (a read that meets a dropped connection is retried once on a fresh one);
    ``begin`` keeps one until ``end``."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._held: psycopg.Connection[Any] | None = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        if self._held is not None:
            return _finish(self._held.execute(sql, tuple(params)))
        retry = sql.lstrip().upper().startswith("SELECT")
        while True:
            conn = self._pool.get()
            try:
                return _finish(conn.execute(sql, tuple(params)))
            except psycopg.OperationalError:
                if not (retry and conn.broken):
                    raise
                retry = False  # the connection died idle: the read is safe to run again
            finally:
                self._pool.put(conn)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self._held is None:
            raise StoreError("no_transaction")
        if rows:
            with self._held.cursor() as cursor:
                cursor.executemany(sql, [tuple(row) for row in rows])

    def pipeline(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[_Rows]:
        """Run ``statements`` in the open transaction in ONE round trip (libpq pipeline
        mode); their results in order. The first failing statement raises, and the
        transaction is then aborted (it must be rolled back)."""
        conn = self._held
        if conn is None:
            raise StoreError("no_transaction")
        with conn.pipeline():
            cursors = [conn.execute(sql, tuple(params)) for sql, params in statements]
        return [_finish(cursor) for cursor in cursors]

    def copy(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """``COPY … FROM STDIN (FORMAT BINARY)`` of ``rows`` (their columns' ``types``) in the
        open transaction: one round trip. A failure raises, and the transaction is then
        aborted (it must be rolled back)."""
        conn = self._held
        if conn is None:
            raise StoreError("no_transaction")
        with conn.cursor() as cursor, cursor.copy(sql) as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)

    def begin(self, statement: str, retry: bool = True) -> None:
        if self._held is not None:
            raise StoreError("nested_transaction")
        conn = self._pool.get()
        try:
            conn.execute(statement)
        except BaseException as exc:
            self._pool.put(conn)
            if retry and isinstance(exc, psycopg.OperationalError) and conn.broken:
                return self.begin(statement, retry=False)  # it died idle: nothing ran
            raise
        self._held = conn
        return None

    def end(self, commit: bool) -> None:
        conn, self._held = self._held, None
        if conn is None:
            raise StoreError("no_transaction")
        try:
            if not commit and conn.broken:
                return  # the server already ended the transaction
            conn.execute("COMMIT" if commit else "ROLLBACK")
        finally:
            self._pool.put(conn)


class PgConnections:
    """This process's connections to one database: a pool of at most ``size``, and for each
    thread the one its open transaction holds. ``setup`` runs on each new connection."""

    def __init__(
        self, dsn: str, size: int, setup: Sequence[str], wait_s: float = POOL_WAIT_S
    ) -> None:
        self._pool = _Pool(dsn, size, setup, wait_s)
        self._local = threading.local()
        self._closed = False
        # Round trips to the server so far (statements, pipelines, BEGIN and COMMIT), for the
        # benchmarks; approximate under threads.
        self.round_trips = 0

    def _session(self) -> _Session:
        session: _Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _Session(self._pool)
        return session

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        if self._closed:
            raise StoreError("closed")
        self.round_trips += 1
        return self._session().execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.round_trips += 1  # psycopg pipelines the rows
        self._session().executemany(sql, rows)

    def pipeline(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[_Rows]:
        """``statements`` (driver SQL) in the open transaction, in one round trip."""
        self.round_trips += 1
        return self._session().pipeline(statements)

    def copy(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """``rows`` into the open transaction by binary COPY (``sql``), in one round trip."""
        self.round_trips += 1
        self._session().copy(sql, types, rows)

    def begin(self, statement: str) -> None:
        if self._closed:
            raise StoreError("closed")
        self.round_trips += 1
        self._session().begin(statement)

    def end(self, commit: bool) -> None:
        self.round_trips += 1
        self._session().end(commit)  # also after close: the connection must go back

    def close(self) -> None:
        self._closed = True
        self._pool.close()


class PgStore(SqlStore):
    """``store.Store`` on a PostgreSQL database (libpq DSN or ``postgresql://`` URL), with at
    most ``pool_size`` connections open from this process."""

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        pool_size: int = POOL_SIZE,
        pool_wait_s: float = POOL_WAIT_S,
    ) -> None:
        dialect = DIALECT
        self._pg = PgConnections(dsn, pool_size, dialect.connection_setup, pool_wait_s)
        # A refresh must not take the only connection: with one, it runs on the writing thread.
        super().__init__(self._pg, dialect, clock=clock, refresh_in_background=pool_size > 1)

    def _write_tx(self) -> PgWriteTx:
        return PgWriteTx(self._pg, self._execute, self._clock)

    def _upsert_imports(self, rows: Sequence[tuple[str, str, str, str, str]], at_us: int) -> None:
        """One statement of arrays (an import's batch: one round trip, not one per row); one
        row per key, the last (a key twice in one upsert is an error here)."""
        last = list({(row[0], row[1]): row for row in rows}.values())
        columns = [list(column) for column in zip(*last, strict=True)]
        self._pg.execute(_UPSERT_IMPORTS, (at_us, *columns))

    @property
    def round_trips(self) -> int:
        """Round trips to PostgreSQL from this store so far (for the benchmarks)."""
        return self._pg.round_trips
