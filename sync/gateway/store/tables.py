"""What the SQL store stands on: a small connection interface, the SQL dialect, shared helpers.

Invariants:
- Every query in the store is written ONCE, in portable SQL: ``?`` parameters, ``CREATE … IF
  NOT EXISTS``, integers (µs since the epoch) for time, no RETURNING, and no upsert syntax (a
  row is UPDATEd, then INSERTed when no row matched — race-free because every such write holds
  a writer lock). A backend differs only in what its ``Dialect`` names and in its
  ``Connections`` (how a thread gets a connection). The one exception is PostgreSQL's resource
  write path (``store.pg_write``): the same ``put``/``delete`` logic, its statements batched
  per transaction in PostgreSQL's own SQL (``unnest`` arrays, ``ON CONFLICT``).
- A control-plane write transaction (``_write``) starts with ``Dialect.begin_control_write``:
  it takes the control-plane writer lock before its first read and keeps it until COMMIT or
  ROLLBACK, so what it reads is current. A resource write transaction starts with
  ``Dialect.begin_write``: on SQLite that is the same one writer lock (every change counted in
  ``change_counter`` in commit order); on PostgreSQL the write path locks each site it touches
  (``store.pg_write``), so within a site seq order is commit order.
- A database failure (``Dialect.driver_error``) leaves the store as a ``DatabaseFailure`` whose
  reason ``Dialect.failure_reason`` names (``database_busy``, ``database_unavailable``,
  ``database_error``) at the store's boundary: the end of a store method or of a ``write()``
  block. Inside a ``WriteTx`` it stays the driver's own, so the API never mistakes an outage for
  a refusal of the resource it was writing.
- Any exception inside a transaction rolls it back; nothing of it is committed.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sync.gateway.store.base import DatabaseFailure, from_us


class Rows(Protocol):
    """A finished statement (a ``sqlite3.Cursor`` is one)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> Any: ...


class Execute(Protocol):
    """Run one portable statement (inside the open transaction, if the thread has one)."""

    def __call__(self, sql: str, params: Sequence[Any] = ..., /) -> Rows: ...


class Connections(Protocol):
    """A backend's connections, as the calling thread sees them; SQL in the driver's style.

    ``begin`` opens this thread's transaction; until ``end`` every ``execute`` of the thread
    runs inside it. Outside a transaction, ``execute`` runs one statement on its own.
    """

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def begin(self, statement: str) -> None: ...
    def end(self, commit: bool) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Dialect:
    """Everything the SQLite and PostgreSQL stores do differently, each by name."""

    name: str
    # Portable SQL (``?`` parameters) to the driver's parameter style.
    paramstyle: Callable[[str], str]
    # DDL type names replaced in the portable schema, e.g. ("BLOB", "BYTEA").
    column_types: tuple[tuple[str, str], ...]
    # Run on every new connection (pragmas, session settings).
    connection_setup: tuple[str, ...]
    # Open the transaction that creates the schema, under a lock of its own (the counter row
    # may not exist yet), so processes starting together create it once.
    begin_schema: tuple[str, ...]
    # Open a resource write transaction. SQLite: this also takes the store-wide writer lock
    # before any read. PostgreSQL: a plain BEGIN; its write path (``store.pg_write``) takes
    # one lock per site it touches instead.
    begin_write: tuple[str, ...]
    # The driver's base exception, and the StoreError reason for one of them.
    driver_error: type[Exception]
    failure_reason: Callable[[Exception], str]
    # Refresh planner statistics after bulk loads: the statement (None: never), and the head
    # seq of the first refresh (then each time the change feed has doubled).
    analyze: str | None = None
    analyze_first_at: int = 0
    # Whether a driver error is the database breaking a deadlock or a serialisation conflict
    # (``DatabaseFailure.conflict``: the transaction may simply be run again).
    is_conflict: Callable[[Exception], bool] = lambda _err: False
    # Open a control-plane write transaction (sites, devices, users, commands, audit) and take
    # the control-plane writer lock before any read (empty: the same as ``begin_write``).
    begin_control_write: tuple[str, ...] = ()
    # The highest committed change seq.
    head_seq: str = "SELECT seq FROM change_counter WHERE id = 1"
    # Statements run after the portable schema, in the same transaction.
    extra_schema: tuple[str, ...] = ()
    # How many of the relations named by the one array parameter do not exist (None: never
    # ask). When none is missing the schema is not run at all: ``CREATE INDEX IF NOT EXISTS``
    # takes a SHARE lock on its table before it finds the index, so a store opening while
    # others write would wait on (and deadlock with) those writers.
    missing_relations: str | None = None
    # Whether a bulk import commits each batch on a thread of its own while it reads the next
    # (``upstream.writer``). Not for in-process SQLite: its driver hands Python's lock back
    # and forth once a row, and the two threads' waits for it cost more than the overlap
    # gains (104k resources, the pass less its export job, three paired runs: 17.9, 12.7 and
    # 13.8 s with the thread, 17.1, 12.0 and 10.1 s without). PostgreSQL keeps it: the
    # database works in its own process and the thread mostly waits on its socket (there,
    # 23-28 s with, 25-26 s without: no difference measurable on a 2-core machine that
    # also runs the server).
    bulk_commits_overlap: bool = False

    def sql(self, portable: str) -> str:
        return self.paramstyle(portable)

    def ddl(self, portable: str) -> str:
        for name, replacement in self.column_types:
            portable = re.sub(rf"\b{name}\b", replacement, portable)
        return portable

    @contextmanager
    def store_errors(self) -> Iterator[None]:
        """Driver errors raised in the block leave it as ``DatabaseFailure(failure_reason)``."""
        try:
            yield
        except self.driver_error as err:
            raise DatabaseFailure(self.failure_reason(err), conflict=self.is_conflict(err)) from err


class DriverConnection(Protocol):
    def execute(self, sql: str, /) -> Any: ...
    def close(self) -> None: ...


def set_up(conn: DriverConnection, statements: Sequence[str]) -> None:
    """Run ``Dialect.connection_setup`` on a new connection; close it if that fails."""
    try:
        for statement in statements:
            conn.execute(statement)
    except BaseException:
        conn.close()
        raise


def opt_time(us: int | None) -> dt.datetime | None:
    return None if us is None else from_us(int(us))


class _Counter:
    """A process-wide counter that only moves forward."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def move(self) -> None:
        with self._lock:
            self.value += 1


# Writes to devices by ANY store object of this process (the gateway's, an admin command run
# in the same process) move it: every device-state cache of the process sees them.
_device_changes = _Counter()


class SqlTables:
    """The ground every table group of ``SqlStore`` shares: portable SQL on ``_db``."""

    _db: Connections
    _dialect: Dialect

    def device_changes(self) -> int:
        return _device_changes.value

    @contextmanager
    def _changing_devices(self) -> Iterator[None]:
        """Around a write to a device's status, site or certificate: ``device_changes`` moves
        once the transaction has ended, whatever its outcome."""
        try:
            yield
        finally:
            _device_changes.move()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self._db.execute(self._dialect.sql(sql), params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(self._dialect.sql(sql), rows)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of one query outside any transaction."""
        with self._dialect.store_errors():
            rows: list[tuple[Any, ...]] = self._execute(sql, params).fetchall()
        return rows

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    @contextmanager
    def _transaction(self, begin: Sequence[str]) -> Iterator[None]:
        """One transaction opened by ``begin`` (a ``Dialect`` sequence): committed when the
        block ends, rolled back when it raises."""
        first, *rest = begin
        with self._dialect.store_errors():
            self._db.begin(self._dialect.sql(first))
            try:
                for statement in rest:
                    self._execute(statement)
                yield
            except BaseException:
                self._db.end(commit=False)
                raise
            self._db.end(commit=True)

    @contextmanager
    def _write(self) -> Iterator[Execute]:
        """A write transaction holding the control-plane writer lock (SQLite: the one writer
        lock; PostgreSQL: the ``change_counter`` row), for a control-plane method."""
        with self._transaction(self._dialect.begin_control_write or self._dialect.begin_write):
            yield self._execute
