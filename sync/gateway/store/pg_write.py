"""PostgreSQL's resource write path: ``PgWriteTx``, serialised per site, batched per transaction.

``put`` and ``delete`` are ``resource_tables.SqlWriteTx``'s (one definition of what a write
means); this class changes how they reach PostgreSQL. There is no store-wide writer lock.

Invariants:
- **Site locks.** A transaction holds the ``site_clocks`` row of every site it reads a resource
  of, or writes to (``SELECT … FOR UPDATE``, taken in site order within one statement, kept
  until COMMIT or ROLLBACK). A resource is read (again) after its site is held: a resource row
  or a patient's site read here is current and stays so until COMMIT, so ``ifMatch``, version
  numbers, ``ifNoneExist`` within a site and transfers see every earlier commit of that site.
  Writers of one site run one at a time; writers of different sites run in parallel. A
  laptop's transaction takes every site it knows it will touch (its own, and the sites of the
  patients its resources name: ``prefetch(keys, sites=…)``) in one sorted statement before
  anything else, so two such transactions never wait on each other in opposite orders. A
  site found only later (a patient moved meanwhile) is locked then: two transactions taking
  two sites in opposite orders deadlock, PostgreSQL aborts one, which leaves the store as
  ``DatabaseFailure("database_busy", conflict=True)``, and the API runs it again
  (``store.conflicts``).
- **Per-site commit order.** Seqs come from the SEQUENCE ``change_seq`` only when the
  transaction's writes are flushed, after every site lock they belong to is held. A writer
  that commits earlier at site S released S's lock before a later writer of S could take
  seqs, so within a site a later commit always has larger seqs: a reader paging
  ``seq > cursor`` of one site never skips a change that commits later. Seqs of different
  sites interleave in any order (no reader reads across sites; every feed, search and cursor
  names one site). Seqs may have gaps (a transaction rolled back after its flush).
- **lastUpdated per site never goes backwards.** The transaction's time is
  ``max(clock, last_us + 1)`` over every site it holds, raised when it takes a further site
  (so a multi-site load may use more than one time, each site's non-decreasing in seq order);
  each site's ``last_us`` is raised to the latest time the transaction wrote there.
- **Batched.** Writes are buffered and flushed as one pipeline of ``unnest`` statements (one
  round trip) before COMMIT, and before any read that must see them (``find_by_identifier``,
  ``site_stays``, a transfer's dependents). A flush of ``COPY_AT`` changes or more (an
  import's batch) appends its change and history rows, and the rows of resources that had
  none, by binary COPY first (a round trip each). Reads of what the transaction wrote, or
  already read under its site lock, come from memory. ``prefetch`` reads many resources (and
  the patients they name, and the patients' open stays) under their site locks in one go.
- **A key read as absent is inserted, never upserted.** A resource with no row when this
  transaction read it (``_absent``) gets a plain INSERT (COPY), and no identifier rows are
  dropped for it. Its site lock cannot cover a row that does not exist, so another site's
  transaction may create the same key meanwhile: the flush then fails on the key and the
  transaction writes nothing (as before, when its version-1 history row failed on its key).
- ``put``/``delete`` return seq 0: the seq is assigned at the flush.
- **Bulk loads lock first.** ``put_many`` (an import's or a seed's batch, which names the sites
  it writes at) locks those sites with its first read, in one round trip, and reads once when
  every row it reads is held at them (an import's usual batch). A row held at another site
  (a patient moving between sites) has its site locked after them, maybe out of order: two
  such transactions may deadlock, and PostgreSQL's rollback of one is a conflict run again
  (``store.conflicts``: the import's writer runs each batch that way). Laptops' transactions
  take every site in one sorted statement, as above.

Length: one class, whose buffers, its reads under site locks and its one flush (with the SQL
each of them sends) must be read together to see that a flush writes what was buffered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sync.gateway.store.base import ChangeOp, SiteStay, StoredResource, from_us, to_us
from sync.gateway.store.loader import prefetch_keys
from sync.gateway.store.resource_tables import SqlWriteTx, row_to_resource, stored_form
from sync.gateway.store.serialised import Serialised
from sync.gateway.store.tables import Execute, Rows
from sync.protocol.fhir import vocabulary as vocab

# Created after the portable schema (``Dialect.extra_schema``), under the schema lock. The
# sequence continues above any seq a store made before it had handed out.
PG_WRITE_SCHEMA: tuple[str, ...] = (
    "CREATE SEQUENCE IF NOT EXISTS change_seq",
    """SELECT setval('change_seq', m) FROM (SELECT GREATEST(COALESCE(MAX(seq), 0),
    (SELECT seq FROM change_counter WHERE id = 1)) AS m FROM changes) AS x
    WHERE m > 0 AND m > (SELECT CASE WHEN is_called THEN last_value ELSE 0 END
    FROM change_seq)""",
    """CREATE TABLE IF NOT EXISTS site_clocks (
    site TEXT PRIMARY KEY,
    last_us BIGINT NOT NULL
)""",
)
HEAD_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM changes"

_COLS = "type, id, version_id, last_updated_us, site, patient_id, deleted, seq, body"
_SITE = 4  # the column of _COLS
_READ = (
    f"SELECT {_COLS} FROM resources WHERE (type, id) IN"  # noqa: S608
    " (SELECT * FROM unnest(%b::text[], %b::text[]))"
)
_BY_IDENTIFIERS = (
    "SELECT v.type, v.system, v.value, "  # noqa: S608
    + ", ".join(f"r.{column}" for column in _COLS.split(", "))
    + " FROM unnest(%b::text[], %b::text[], %b::text[]) AS v(type, system, value)"
    " JOIN resource_identifiers i ON i.type = v.type AND i.value = v.value"
    " AND i.system = v.system JOIN resources r ON r.type = i.type AND r.id = i.id"
    " WHERE r.deleted = 0"
)
_OPEN_STAYS = (
    "SELECT patient_id, site, from_us FROM patient_sites"
    " WHERE patient_id = ANY(%b::text[]) AND until_us IS NULL"
)
# A site's row exists before it is locked; a new one starts at the old store-wide clock.
_ADD_SITES = (
    "INSERT INTO site_clocks (site, last_us) SELECT s,"
    " (SELECT last_us FROM change_counter WHERE id = 1) FROM unnest(%b::text[]) AS s"
    " ON CONFLICT (site) DO NOTHING"
)
_LOCK_SITES = (
    "SELECT site, last_us FROM site_clocks WHERE site = ANY(%b::text[]) ORDER BY site FOR UPDATE"
)


def _locking(sites: list[str]) -> list[Statement]:
    """The statements that hold ``sites`` (sorted) until the transaction ends."""
    return [(_ADD_SITES, (sites,)), (_LOCK_SITES, (sites,))]


_TAKE_SEQS = "SELECT nextval('change_seq') FROM generate_series(1, %s)"
_DEPENDENTS = (
    "SELECT type, id, version_id, last_updated_us FROM resources"
    " WHERE patient_id = %s AND deleted = 0 AND site = %s ORDER BY type, id"
)
_INSERT_CHANGES = (
    "INSERT INTO changes (seq, site, type, id, version_id, op, last_updated_us)"
    " SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::bigint[],"
    " %b::text[], %b::bigint[])"
)
_INSERT_HISTORY = (
    "INSERT INTO resource_history (type, id, version_id, last_updated_us, site, deleted, body)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[],"
    " %b::bigint[], %b::bytea[])"
)
_MOVE = (
    "UPDATE resources AS r SET site = v.site, seq = v.seq"
    " FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[]) AS v(type, id, site, seq)"
    " WHERE r.type = v.type AND r.id = v.id"
)
# A deletion keeps the row's name_text (as the portable UPDATE does): the one a version
# written earlier in the same flush gave it, else the table's.
_UPSERT = (
    "INSERT INTO resources (type, id, version_id, last_updated_us, site, patient_id, deleted,"
    " seq, name_text, body) SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[],"
    " %b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[],"
    " %b::bytea[]) ON CONFLICT (type, id) DO UPDATE SET version_id = excluded.version_id,"
    " last_updated_us = excluded.last_updated_us, site = excluded.site,"
    " patient_id = excluded.patient_id, deleted = excluded.deleted, seq = excluded.seq,"
    " name_text = CASE WHEN excluded.deleted = 1"
    " THEN COALESCE(excluded.name_text, resources.name_text) ELSE excluded.name_text END,"
    " body = excluded.body"
)
# A flush of at least COPY_AT changes appends its change, history and new resources rows by
# binary COPY (one round trip each; no array to build and unpack), a smaller one with the
# statements above, pipelined with the rest.
COPY_AT = 64
_COPY_CHANGES = (
    "COPY changes (seq, site, type, id, version_id, op, last_updated_us) FROM STDIN"
    " (FORMAT BINARY)",
    ("int8", "text", "text", "text", "int8", "text", "int8"),
)
_COPY_HISTORY = (
    "COPY resource_history (type, id, version_id, last_updated_us, site, deleted, body)"
    " FROM STDIN (FORMAT BINARY)",
    ("text", "text", "int8", "int8", "text", "int8", "bytea"),
)
_COPY_RESOURCES = (
    "COPY resources (type, id, version_id, last_updated_us, site, patient_id, deleted, seq,"
    " name_text, body) FROM STDIN (FORMAT BINARY)",
    ("text", "text", "int8", "int8", "text", "text", "int8", "int8", "text", "bytea"),
)
_DROP_IDENTIFIERS = (
    "DELETE FROM resource_identifiers AS i USING unnest(%b::text[], %b::text[]) AS v(type, id)"
    " WHERE i.type = v.type AND i.id = v.id"
)
_ADD_IDENTIFIERS = (
    "INSERT INTO resource_identifiers (type, id, system, value)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[])"
)
_RESITE_STAYS = (
    "UPDATE patient_sites AS p SET site = v.site FROM unnest(%b::text[], %b::text[])"
    " AS v(patient_id, site) WHERE p.patient_id = v.patient_id AND p.until_us IS NULL"
)
_CLOSE_STAYS = (
    "UPDATE patient_sites AS p SET until_us = v.until_us FROM unnest(%b::text[], %b::bigint[])"
    " AS v(patient_id, until_us) WHERE p.patient_id = v.patient_id AND p.until_us IS NULL"
)
_OPEN_NEW_STAYS = (
    "INSERT INTO patient_sites (patient_id, site, from_us, until_us)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[])"
)
_SET_CLOCKS = (
    "UPDATE site_clocks AS c SET last_us = GREATEST(c.last_us, v.last_us)"
    " FROM unnest(%b::text[], %b::bigint[]) AS v(site, last_us) WHERE c.site = v.site"
)

Statement = tuple[str, Sequence[Any]]


class PgTransaction(Protocol):
    """What ``PgWriteTx`` needs of the open transaction's connection (driver SQL)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...
    def pipeline(self, statements: Sequence[Statement]) -> Sequence[Rows]: ...
    def copy(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


@dataclass
class _Stay:
    """A patient's open stay as this transaction sees it; ``row`` is the buffered INSERT when
    the transaction opened it."""

    site: str
    from_us: int
    row: list[Any] | None = None


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows to ``width`` column lists (the arrays ``unnest`` takes)."""
    return [[row[i] for row in rows] for i in range(width)]


class PgWriteTx(SqlWriteTx):
    """A ``WriteTx`` on PostgreSQL inside a plain BEGIN (see the module's invariants)."""

    def __init__(
        self,
        db: PgTransaction,
        portable: Execute,
        clock: Callable[[], dt.datetime],
    ) -> None:
        super().__init__(portable, _no_executemany, clock)
        self._db = db
        self._locked: set[str] = set()
        self._floor_us = 0  # max(last_us + 1) over the held sites
        self._known: dict[tuple[str, str], StoredResource | None] = {}
        self._stays: dict[str, _Stay | None] = {}
        # buffered writes, in the order they were made
        self._changes: list[list[Any]] = []  # site, type, id, version_id, op, lu (seq later)
        self._history: list[tuple[Any, ...]] = []  # resource_history rows
        self._moves: list[tuple[str, str, str, int]] = []  # type, id, site, change index
        # the resources row to write: the version, its change, its time, its name_text
        self._rows: dict[tuple[str, str], tuple[StoredResource, int, int, str | None]] = {}
        self._identifiers: dict[tuple[str, str], list[tuple[str, str]]] = {}
        # keys of ``_rows`` with no row in the table (nothing to replace, no identifier to drop)
        self._absent: set[tuple[str, str]] = set()
        self._stay_resites: dict[str, str] = {}
        self._stay_closes: dict[str, int] = {}
        self._stay_opens: list[list[Any]] = []
        self._clocks: dict[str, int] = {}

    # -- site locks and time
    def _lock_sites(self, sites: set[str], then: Sequence[Statement] = ()) -> list[Rows] | None:
        """Hold every site of ``sites``, then run ``then`` in the same round trip and return
        its results; None (``then`` not run) when every site was held already."""
        new = sorted(sites - self._locked)
        if not new:
            return None
        results = list(self._db.pipeline([*_locking(new), *then]))
        self._took(new, results[1])
        return results[2:]

    def _took(self, sites: list[str], locked: Rows) -> None:
        """``sites`` are held now; ``locked``: their ``_LOCK_SITES`` rows."""
        for _site, last_us in locked.fetchall():
            self._floor_us = max(self._floor_us, int(last_us) + 1)
        self._locked.update(sites)
        if self._now_us is not None:
            self._now_us = max(self._now_us, self._floor_us)

    def _lock_site(self, site: str) -> None:
        if site not in self._locked:  # held already: the usual case, once per record written
            self._lock_sites({site})

    def _tx_time_us(self) -> int:
        if self._now_us is None:
            self._now_us = max(to_us(self._clock()), self._floor_us)
        return self._now_us

    def put_many(
        self,
        items: Sequence[tuple[str, str, dict[str, Any] | Serialised]],
        *,
        checked: bool = False,
        sites: Sequence[str] = (),
    ) -> list[StoredResource]:
        """``SqlWriteTx.put_many`` (the same rows as ``put`` of each in turn), the resources and
        the patients they name read first, under the locks of ``sites`` taken in the same
        round trip (a batch of a load: one read, not two, when everything it names is held at
        ``sites``: the module's "Bulk loads lock first"); a plain run is buffered by
        ``_write_run`` and every write goes in the one flush anyway."""
        self._read(prefetch_keys(items), also=set(sites), lock_first=True)
        return super().put_many(items, checked=checked)

    def _patient_sites(self, patients: Sequence[str]) -> dict[str, str]:
        """The sites of the live Patients of ``patients`` (read under their site locks)."""
        self._read([(vocab.PATIENT, patient) for patient in patients])
        sites: dict[str, str] = {}
        for patient in patients:
            found = self._known[(vocab.PATIENT, patient)]
            if found is not None and not found.deleted:
                sites[patient] = found.site
        return sites

    def _currents(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredResource]:
        self._read(keys)
        return {key: found for key in keys if (found := self._known[key]) is not None}

    def _write_run(
        self,
        checked: list[tuple[str, str, dict[str, Any] | Serialised, str | None, str]],
        existing: dict[tuple[str, str], StoredResource],
    ) -> list[StoredResource]:
        """``put`` of each of ``checked`` (type, id, resource, its patient (None: a Patient),
        its site; no move, no key twice: ``_put_run``), buffered the way ``put`` buffers it,
        without reading again what ``_put_run`` has just read."""
        stored: list[StoredResource] = []
        stamped: tuple[int, dt.datetime, str] | None = None  # the time last written (µs, …)
        for rtype, rid, resource, patient, site in checked:
            self._lock_site(site)  # a new Patient's own site, in ``put``'s order
            lu_us = self._tx_time_us()  # raised by that lock, if it is new, as in ``put``
            if stamped is None or lu_us != stamped[0]:
                moment = from_us(lu_us)
                stamped = (lu_us, moment, moment.isoformat(timespec="microseconds"))
            _, last_updated, stamp = stamped
            old = existing.get((rtype, rid))
            version_id = old.version_id + 1 if old is not None else 1
            body, name, identifiers = stored_form(resource, rid, version_id, stamp)
            if patient is None:
                self._record_stay(rid, site, lu_us)
            change = self._record_change(site, rtype, rid, version_id, "put", lu_us)
            version = StoredResource(
                rtype, rid, version_id, last_updated, site, patient, False, 0, body
            )
            self._store_version(version, change, name, list(identifiers), old)
            stored.append(version)
        return stored

    # -- reads under the site locks
    def prefetch(self, keys: Sequence[tuple[str, str]], *, sites: Sequence[str] = ()) -> None:
        self._read(keys, also=set(sites))

    def _read(
        self,
        keys: Sequence[tuple[str, str]],
        also: set[str] | None = None,
        *,
        lock_first: bool = False,
    ) -> None:
        """Read the resources of ``keys`` this transaction does not know yet, holding their
        sites and the sites ``also``, with the open stays of the Patients among them.

        The first read holds no new lock; every site it names that is not held yet (with
        ``also``) is then locked in ONE sorted statement, pipelined with the same read again
        (one round trip), until a read names no site not held. So a transaction that knows its
        sites up front takes them all at once, in one order, whatever order it names them in.
        ``lock_first``: the sites ``also`` are locked first, with the first read in the same
        round trip (a bulk load, see the module's invariants); a site that read names beyond
        them is then locked as above.
        """
        wanted = sorted({key for key in keys if key not in self._known})
        if not wanted:
            self._lock_sites(set(also or ()))
            return
        patients = [rid for rtype, rid in wanted if rtype == vocab.PATIENT]
        reads: list[Statement] = [(_READ, ([t for t, _ in wanted], [i for _, i in wanted]))]
        if patients:
            reads.append((_OPEN_STAYS, (patients,)))
        pending = set(also or ())
        first = self._lock_sites(pending, then=reads) if lock_first else None
        if first is not None:
            results, pending = first, set()
        else:
            results = list(self._db.pipeline(reads))
        while True:
            rows = results[0].fetchall()
            reread = self._lock_sites({row[_SITE] for row in rows} | pending, then=reads)
            pending = set()
            if reread is None:
                break
            results = reread
        found = {(r.rtype, r.rid): r for r in map(row_to_resource, rows)}  # the read under lock
        for rtype, rid, site, _ in self._moves:  # moved with its patient, not flushed yet
            if (moved := found.get((rtype, rid))) is not None:
                found[(rtype, rid)] = replace(moved, site=site)
        for key in wanted:
            self._known[key] = found.get(key)
        if patients:
            self._stays.update(dict.fromkeys(patients))
            for patient_id, site, start in results[1].fetchall():
                self._stays[patient_id] = _Stay(site, int(start))

    def current(self, rtype: str, rid: str) -> StoredResource | None:
        self._read([(rtype, rid)])
        return self._known[(rtype, rid)]

    def patient_site(self, patient_id: str) -> str | None:
        found = self.current(vocab.PATIENT, patient_id)
        return None if found is None or found.deleted else found.site

    def find_by_identifier(
        self, rtype: str, site: str | None, system: str, value: str
    ) -> list[StoredResource]:
        if site is not None:
            self._lock_site(site)  # a create checked here is serialised with its twin
        self.flush()
        return super().find_by_identifier(rtype, site, system, value)

    def find_by_identifiers(
        self, site: str, wanted: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], list[StoredResource]]:
        self._lock_site(site)
        self.flush()
        keys = list(dict.fromkeys(wanted))
        found: dict[tuple[str, str, str], list[StoredResource]] = {key: [] for key in keys}
        rows = self._db.execute(_BY_IDENTIFIERS, _columns(keys, 3)).fetchall()
        for row in rows:
            found[(row[0], row[1], row[2])].append(row_to_resource(row[3:]))
        return found

    def site_stays(self, patient_id: str) -> list[SiteStay]:
        self.flush()
        return super().site_stays(patient_id)

    # -- buffered writes
    def _record_change(
        self, site: str, rtype: str, rid: str, version_id: int, op: ChangeOp, lu_us: int
    ) -> int:
        self._changes.append([site, rtype, rid, version_id, op, lu_us])
        self._clocks[site] = max(self._clocks.get(site, 0), lu_us)
        return len(self._changes) - 1

    def _seq_of(self, change: int) -> int:
        return 0  # assigned at the flush

    def _store_version(
        self,
        stored: StoredResource,
        change: int,
        name: str | None,
        identifiers: list[tuple[str, str]],
        replaced: StoredResource | None,
    ) -> None:
        """Here every history row holds its version's JSON in full (``replaced`` unused)."""
        key = (stored.rtype, stored.rid)
        lu_us = to_us(stored.last_updated)
        self._history.append(
            (stored.rtype, stored.rid, stored.version_id, lu_us, stored.site, 0, stored.body)
        )
        self._rows[key] = (stored, change, lu_us, name)
        self._identifiers[key] = identifiers
        self._known[key] = stored
        if replaced is None:
            self._absent.add(key)

    def _store_deletion(
        self, stored: StoredResource, change: int, replaced: StoredResource | None
    ) -> None:
        key = (stored.rtype, stored.rid)
        lu_us = to_us(stored.last_updated)
        self._history.append(
            (stored.rtype, stored.rid, stored.version_id, lu_us, stored.site, 1, b"")
        )
        buffered = self._rows.get(key)  # a version of this flush: the row has its name
        self._rows[key] = (stored, change, lu_us, None if buffered is None else buffered[3])
        self._identifiers[key] = []
        self._known[key] = stored
        if replaced is None:
            self._absent.add(key)

    def _open_stay(self, patient_id: str) -> _Stay | None:
        if patient_id not in self._stays:
            row = self._db.execute(
                "SELECT site, from_us FROM patient_sites"
                " WHERE patient_id = %s AND until_us IS NULL",
                (patient_id,),
            ).fetchone()
            self._stays[patient_id] = None if row is None else _Stay(row[0], int(row[1]))
        return self._stays[patient_id]

    def _record_stay(self, patient_id: str, site: str | None, lu_us: int) -> None:
        """``SqlWriteTx._record_stay``, buffered (the same cases in the same order)."""
        stay = self._open_stay(patient_id)
        if stay is not None and stay.site == site:
            return
        if stay is not None and site is not None and stay.from_us == lu_us:
            stay.site = site  # moved twice in one transaction
            if stay.row is not None:
                stay.row[1] = site
            else:
                self._stay_resites[patient_id] = site
            return
        if stay is not None:
            if stay.row is not None:
                stay.row[3] = lu_us
            else:
                self._stay_closes[patient_id] = lu_us
            self._stays[patient_id] = None
        if site is not None:
            row: list[Any] = [patient_id, site, lu_us, None]
            self._stay_opens.append(row)
            self._stays[patient_id] = _Stay(site, lu_us, row)

    def _move_dependents(self, patient_id: str, old_site: str, new_site: str) -> None:
        self.flush()  # the dependents this transaction wrote are in the table
        rows = self._db.execute(_DEPENDENTS, (patient_id, old_site)).fetchall()
        for rtype, rid, version_id, lu_us in rows:
            self._record_change(old_site, rtype, rid, version_id, "leave", lu_us)
            change = self._record_change(new_site, rtype, rid, version_id, "put", lu_us)
            self._moves.append((rtype, rid, new_site, change))
            known = self._known.get((rtype, rid))
            if known is not None:
                self._known[(rtype, rid)] = replace(known, site=new_site)

    # -- the flush
    def finish(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Send every buffered write: one round trip for the seqs, one for the writes (and, at
        ``COPY_AT`` changes or more, one for each table appended to by COPY)."""
        if not self._changes:
            return
        rows = self._db.execute(_TAKE_SEQS, (len(self._changes),)).fetchall()
        seqs = sorted(int(seq) for (seq,) in rows)
        self.last_seq = max(seqs[-1], self.last_seq or 0)
        upserts: list[tuple[Any, ...]] = []
        inserts: list[tuple[Any, ...]] = []
        for version, change, lu_us, name in self._rows.values():
            row = (
                version.rtype,
                version.rid,
                version.version_id,
                lu_us,
                version.site,
                version.patient_id,
                int(version.deleted),
                seqs[change],
                name,
                version.body,
            )
            new = (version.rtype, version.rid) in self._absent
            (inserts if new else upserts).append(row)
        statements: list[Statement] = []
        if len(self._changes) >= COPY_AT:
            # Rows new to their tables (a key that had no row has none: ``_absent``).
            changes = [(seq, *change) for seq, change in zip(seqs, self._changes, strict=True)]
            self._db.copy(*_COPY_CHANGES, changes)
            self._db.copy(*_COPY_HISTORY, self._history)
            if inserts:
                self._db.copy(*_COPY_RESOURCES, inserts)
        else:
            statements += [
                (_INSERT_CHANGES, (seqs, *_columns(self._changes, 6))),
                (_INSERT_HISTORY, _columns(self._history, 7)),
            ]
            upserts += inserts
        if self._moves:
            moved = [(t, i, site, seqs[change]) for t, i, site, change in self._moves]
            statements.append((_MOVE, _columns(moved, 4)))
        if upserts:
            statements.append((_UPSERT, _columns(upserts, 10)))
        if self._identifiers:
            owners = [key for key in self._identifiers if key not in self._absent]
            if owners:
                statements.append((_DROP_IDENTIFIERS, _columns(owners, 2)))
            added = [
                (t, i, system, value)
                for (t, i), pairs in self._identifiers.items()
                for system, value in pairs
            ]
            if added:
                statements.append((_ADD_IDENTIFIERS, _columns(added, 4)))
        if self._stay_resites:
            statements.append((_RESITE_STAYS, _columns(list(self._stay_resites.items()), 2)))
        if self._stay_closes:
            statements.append((_CLOSE_STAYS, _columns(list(self._stay_closes.items()), 2)))
        if self._stay_opens:
            statements.append((_OPEN_NEW_STAYS, _columns(self._stay_opens, 4)))
        statements.append((_SET_CLOCKS, _columns(list(self._clocks.items()), 2)))
        self._db.pipeline(statements)
        for stay in self._stays.values():
            if stay is not None:
                stay.row = None  # now a row of the table
        self._changes.clear()
        self._history.clear()
        self._moves.clear()
        self._rows.clear()
        self._identifiers.clear()
        self._absent.clear()
        self._stay_resites.clear()
        self._stay_closes.clear()
        self._stay_opens.clear()
        self._clocks.clear()


def _no_executemany(_sql: str, _rows: Sequence[Sequence[Any]]) -> None:
    raise AssertionError("PgWriteTx batches its own statements")
