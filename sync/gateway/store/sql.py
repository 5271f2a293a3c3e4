"""``SqlStore``: the one SQL implementation of ``store.Store``, over a backend's connections.

``sqlite.SqliteStore`` (a file) and ``postgres.PgStore`` (a connection pool) are this class
with their ``Dialect`` and ``Connections``; every query lives in the table groups below,
written once (``store.tables``).

Invariants (beyond those of ``store.Store`` and ``store.tables``):
- The schema is created in one transaction opened with ``Dialect.begin_schema``, so stores
  opening one database together create it once; where the dialect can tell that every table,
  index and sequence exists already (``Dialect.missing_relations``), it is not run at all.
- ``write()`` opens ``Dialect.begin_write`` and runs the backend's write path
  (``_write_tx``: ``SqlWriteTx``, or ``store.pg_write.PgWriteTx`` on PostgreSQL), whose
  ``finish`` runs before COMMIT. SQLite's writer lock is held from before the first read until
  COMMIT; PostgreSQL's write path holds a lock per site it touches, taken before it reads that
  site's rows. Either way the seq and ``lastUpdated`` of a site's changes follow commit order.
- Where the dialect asks for it, planner statistics are refreshed (``Dialect.analyze``) after a
  write once the change feed has doubled since the last refresh (first at
  ``Dialect.analyze_first_at``). The refresh runs on the store's statistics thread, one at a
  time, in the order asked: the write that crossed the threshold has committed and returns at
  once (a bulk import's next batch does not wait for it). A store with ONE connection
  (constructed with ``refresh_in_background=False``) refreshes on the writing thread
  instead, after the commit: a refresh holding its only connection would hold up the next
  write. A failed refresh is logged and never fails a write; ``close`` waits for a refresh
  under way and drops those not started.
- The store records the format it is written in (``store_format``, ``STORE_FORMAT``); a store
  of a later format is refused at open (``StoreError("store_too_new")``), so a gateway rolled
  back to an older release never misreads rows it does not know. (Releases from before this
  record cannot tell: ``docs/deploy.md`` says how to go back to one.)
- A store whose construction fails closes its connections before raising.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager

from sync.gateway.store.audit_tables import AUDIT_SCHEMA, AuditTables
from sync.gateway.store.base import DatabaseFailure, StoreError, WriteTx
from sync.gateway.store.command_tables import COMMAND_SCHEMA, CommandTables
from sync.gateway.store.device_tables import DEVICE_SCHEMA, DeviceTables
from sync.gateway.store.outbox_tables import OutboxTables
from sync.gateway.store.quarantine_tables import QuarantineTables
from sync.gateway.store.resource_tables import RESOURCE_SCHEMA, ResourceTables, SqlWriteTx
from sync.gateway.store.tables import Connections, Dialect
from sync.gateway.store.upstream_tables import UPSTREAM_SCHEMA, UpstreamTables
from sync.gateway.store.user_tables import USER_SCHEMA, UserTables

log = logging.getLogger(__name__)

# The format this code writes: 2, a current version's JSON may be held only in ``resources``
# (its history row empty: ``resource_tables.IN_RESOURCES``). A store from before the format was
# recorded reads the same, and is this format from when this code first opens it.
STORE_FORMAT = 2
_FORMAT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS store_format (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
)""",
    f"INSERT INTO store_format (id, version) SELECT 1, {STORE_FORMAT}"  # noqa: S608 (a constant)
    " WHERE NOT EXISTS (SELECT 1 FROM store_format)",
)
SCHEMA: tuple[str, ...] = (
    *_FORMAT_SCHEMA,
    *RESOURCE_SCHEMA,
    *DEVICE_SCHEMA,
    *USER_SCHEMA,
    *COMMAND_SCHEMA,
    *AUDIT_SCHEMA,
    *UPSTREAM_SCHEMA,
)


_CREATED = re.compile(r"CREATE (?:TABLE|INDEX|SEQUENCE) IF NOT EXISTS (\w+)")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SqlStore(
    ResourceTables,
    DeviceTables,
    UserTables,
    CommandTables,
    AuditTables,
    UpstreamTables,
    OutboxTables,
    QuarantineTables,
):
    """``store.Store`` on ``connections`` (they must speak ``dialect``). Thread-safe."""

    def __init__(
        self,
        connections: Connections,
        dialect: Dialect,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        refresh_in_background: bool = True,
    ) -> None:
        self._db = connections
        self._dialect = dialect
        self._clock = clock
        self._analyze_at = dialect.analyze_first_at
        self._analyze_lock = threading.Lock()
        self._refresh_in_background = refresh_in_background  # False: one connection
        self._statistics: ThreadPoolExecutor | None = None  # started at the first refresh
        self._last_refresh: Future[None] | None = None
        self._closing = False
        try:
            self._refuse_later_format()  # before the schema, which would write to it
            statements = (*SCHEMA, *dialect.extra_schema)
            if self._schema_missing(statements):
                with self._transaction(dialect.begin_schema):
                    for statement in statements:
                        self._execute(dialect.ddl(statement))
        except BaseException:
            self.close()
            raise

    def _refuse_later_format(self) -> None:
        """A store written by a later gateway may hold rows this code would misread: refused
        (``store_too_new``), before anything reads or writes it."""
        try:
            row = self._one("SELECT version FROM store_format WHERE id = 1")
        except DatabaseFailure:
            return  # no record yet: a new store, or one from before it (the schema adds it)
        if row is not None and int(row[0]) > STORE_FORMAT:
            log.error("the store's format is %s; this gateway reads %s", row[0], STORE_FORMAT)
            raise StoreError("store_too_new")

    def _schema_missing(self, statements: tuple[str, ...]) -> bool:
        """Whether a table, index or sequence the schema creates does not exist yet (always
        True where the dialect cannot tell)."""
        query = self._dialect.missing_relations
        if query is None:
            return True
        names = [m.group(1) for s in statements if (m := _CREATED.match(s.strip()))]
        row = self._one(query, (names,))
        return row is None or int(row[0]) > 0

    @property
    def bulk_commits_overlap(self) -> bool:
        """Whether a bulk import should commit on a thread of its own (``Dialect``)."""
        return self._dialect.bulk_commits_overlap

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        with self._transaction(self._dialect.begin_write):
            tx = self._write_tx()
            yield tx
            tx.finish()
        self._refresh_statistics(tx.last_seq)

    def _write_tx(self) -> SqlWriteTx:
        """The write path of this backend, inside the transaction ``write`` opened."""
        return SqlWriteTx(self._execute, self._executemany, self._clock)

    def _refresh_statistics(self, last_seq: int | None) -> None:
        """ANALYZE once the change feed has grown past the next threshold (see ``Dialect``), on
        the statistics thread (without ``refresh_in_background``: on this one); ``last_seq``
        is the highest seq the write took (None: ask ``head_seq``; 0: none)."""
        analyze = self._dialect.analyze
        if analyze is None or last_seq == 0:
            return
        try:
            head = self.head_seq() if last_seq is None else last_seq
        except StoreError as err:  # statistics are an optimisation: never fail a write
            log.warning("ANALYZE skipped: %s", err.reason)
            return
        with self._analyze_lock:
            if self._closing or head < self._analyze_at:
                return
            self._analyze_at = head * 2 + self._dialect.analyze_first_at
            if self._refresh_in_background:
                if self._statistics is None:
                    self._statistics = ThreadPoolExecutor(1, thread_name_prefix="store-statistics")
                self._last_refresh = self._statistics.submit(self._analyze, analyze)
                return
        self._analyze(analyze)  # on this thread, outside the lock

    def _analyze(self, statement: str) -> None:
        try:
            self._rows(statement)
        except StoreError as err:
            log.warning("ANALYZE failed: %s", err.reason)
        except Exception as err:  # a background refresh must still say why it failed
            log.warning("ANALYZE failed: %s", type(err).__name__)

    def wait_for_statistics(self) -> None:
        """Return once every statistics refresh asked for so far has run (or, after ``close``,
        was dropped before it started)."""
        with self._analyze_lock:
            last = self._last_refresh
        if last is not None:
            wait([last])  # one thread, in order: the last one done means all are

    def close(self) -> None:
        with self._analyze_lock:
            self._closing = True
            statistics, self._statistics = self._statistics, None
        if statistics is not None:
            statistics.shutdown(wait=True, cancel_futures=True)
        self._db.close()
