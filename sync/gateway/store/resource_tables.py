"""The FHIR resource tables of ``SqlStore``: current versions, history, identifiers, the change
feed and its counter; the ``WriteTx`` that writes them; the reads.

Invariants (``store.Store``): every write adds a history row and a change row whose seq comes
from ``change_counter``, bumped inside the writer-locked transaction (seq order = commit
order); ``lastUpdated`` comes from the same row and never goes backwards; a transfer writes a
``leave`` for the old site and a ``put`` for the new one for the patient and every resource of
theirs, in the same transaction; a Patient write that gives the patient a new site closes
their open stay in ``patient_sites`` and opens one at the new site, at the same instant, in the
same transaction (a delete closes it), so ``site_stays`` is the patient's site history.
``patient_sites`` is filled from ``resource_history`` once, when a store made before it existed
is opened (the first version at each site opens a stay; the next version elsewhere, or a
delete, closes it). ``put_many`` writes exactly the rows ``put`` would, with fewer statements.

A version's JSON is stored once. Here (``SqlWriteTx``) the history row of the current live
version holds an empty body (``IN_RESOURCES``): its JSON is ``resources.body``. The write that
replaces that version (a put, a run's put, a delete) first copies the JSON into its history
row, in the same transaction. The reads (``vread``, the feed) take ``resources.body`` for an
empty body on a live history row; a deletion's history row is empty and deleted, and was never
read for a body. A store written before this (every history body in full) reads the same, and
its full rows are never touched. PostgreSQL (``PgWriteTx``) still writes every history body in
full, which the same reads serve.

Over 500 lines on purpose: ``put`` and its batched twin ``put_many`` must be read side by side
(tests/gateway/test_store_put_many.py holds them to the same rows), and the reads share their
column lists and row mapping.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from sync.gateway.store import resources as res
from sync.gateway.store.base import (
    BreakGlassUse,
    Change,
    ChangeOp,
    HistoryQuery,
    SearchQuery,
    SiteStay,
    StoredResource,
    StoreError,
    from_us,
    to_us,
)
from sync.gateway.store.serialised import Serialised
from sync.gateway.store.tables import Execute, SqlTables
from sync.protocol.fhir import vocabulary as vocab

RESOURCE_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS change_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    last_us BIGINT NOT NULL
)""",
    """INSERT INTO change_counter (id, seq, last_us)
    SELECT 1, 0, 0 WHERE NOT EXISTS (SELECT 1 FROM change_counter)""",
    """CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    last_updated_us BIGINT NOT NULL,
    site TEXT NOT NULL,
    patient_id TEXT,
    deleted INTEGER NOT NULL,
    seq BIGINT NOT NULL,
    name_text TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (type, id)
)""",
    "CREATE INDEX IF NOT EXISTS resources_scan ON resources (type, site, seq)",
    "CREATE INDEX IF NOT EXISTS resources_patient ON resources (patient_id)",
    """CREATE TABLE IF NOT EXISTS resource_history (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    last_updated_us BIGINT NOT NULL,
    site TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (type, id, version_id)
)""",
    """CREATE TABLE IF NOT EXISTS resource_identifiers (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    system TEXT NOT NULL,
    value TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS identifiers_lookup ON resource_identifiers (type, value, system)",
    "CREATE INDEX IF NOT EXISTS identifiers_owner ON resource_identifiers (type, id)",
    """CREATE TABLE IF NOT EXISTS changes (
    seq BIGINT PRIMARY KEY,
    site TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    op TEXT NOT NULL,
    last_updated_us BIGINT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS changes_feed ON changes (site, seq)",
    """CREATE TABLE IF NOT EXISTS patient_sites (
    patient_id TEXT NOT NULL,
    site TEXT NOT NULL,
    from_us BIGINT NOT NULL,
    until_us BIGINT
)""",
    "CREATE INDEX IF NOT EXISTS patient_sites_patient ON patient_sites (patient_id, from_us)",
    # A store made before patient_sites existed: its Patients' stays from their history, once.
    """INSERT INTO patient_sites (patient_id, site, from_us, until_us)
    SELECT h.id, h.site, h.last_updated_us,
        (SELECT MIN(n.last_updated_us) FROM resource_history n
            WHERE n.type = 'Patient' AND n.id = h.id AND n.version_id > h.version_id
            AND (n.site <> h.site OR n.deleted = 1))
    FROM resource_history h
    WHERE h.type = 'Patient' AND h.deleted = 0
    AND NOT EXISTS (SELECT 1 FROM resource_history p WHERE p.type = 'Patient'
        AND p.id = h.id AND p.version_id = h.version_id - 1 AND p.site = h.site
        AND p.deleted = 0)
    AND NOT EXISTS (SELECT 1 FROM patient_sites)""",
)
# The tables the planner must have statistics for to page the feed by index.
FEED_TABLES = ("changes", "resource_history", "resources", "resource_identifiers")

_IDENTIFIER_VALUE = (
    "AND EXISTS (SELECT 1 FROM resource_identifiers i"
    " WHERE i.type = r.type AND i.id = r.id AND i.value = ?)"
)
_IDENTIFIER_SYSTEM_VALUE = _IDENTIFIER_VALUE[:-1] + " AND i.system = ?)"
_RES_COLS = "type, id, version_id, last_updated_us, site, patient_id, deleted, seq, body"
_RES_COLS_R = ", ".join(f"r.{column}" for column in _RES_COLS.split(", "))
_CURRENT = f"SELECT {_RES_COLS} FROM resources WHERE type = ? AND id = ?"  # noqa: S608
_HEAD = "SELECT seq FROM change_counter WHERE id = 1"
_IN_CHUNK = 400  # keys per IN list (SQLite allows 32,766 bound values)
# The history body of the current live version: its JSON is the one in ``resources``.
IN_RESOURCES = b""
# A history row's JSON in ``vread`` (which joins ``resources`` anyway). The feed asks
# ``resources`` only for such a row, by subquery: PostgreSQL's history rows are all full.
_HISTORY_BODY = "CASE WHEN h.deleted = 0 AND length(h.body) = 0 THEN r.body ELSE h.body END"
# The resources rows of one (type, site) a run wrote: every seq past the head before it is the
# run's (its transaction holds the writer lock), in seq order (``resources_scan``).
_FROM_RUN = " FROM resources WHERE type = ? AND site = ? AND seq > ? ORDER BY seq"
_KEEP_REPLACED = (
    "UPDATE resource_history SET body = ? WHERE type = ? AND id = ? AND version_id = ?"
    " AND deleted = 0 AND length(body) = 0"
)


def stored_form(
    resource: dict[str, Any] | Serialised, rid: str, version_id: int, stamp: str
) -> tuple[bytes, str | None, Sequence[tuple[str, str]]]:
    """(stored JSON, name words, identifiers) of a checked resource written as ``rid``, version
    ``version_id`` at ``stamp``: its ``id``, ``meta.versionId`` and ``meta.lastUpdated`` set,
    everything else as it is."""
    if isinstance(resource, Serialised):
        return resource.body(rid, version_id, stamp), None, resource.identifiers
    body = dict(resource)
    body["id"] = rid
    body["meta"] = {**(body.get("meta") or {}), "versionId": str(version_id), "lastUpdated": stamp}
    return orjson.dumps(body), res.name_text(resource), res.identifiers(resource)


def row_to_resource(row: Sequence[Any]) -> StoredResource:
    return StoredResource(
        rtype=row[0],
        rid=row[1],
        version_id=row[2],
        last_updated=from_us(row[3]),
        site=row[4],
        patient_id=row[5],
        deleted=bool(row[6]),
        seq=row[7],
        body=bytes(row[8]),
    )


def _grant_expiry(canonical: str) -> dt.datetime | None:
    """``detail.expires_at`` of a break-glass audit entry (None when absent or unreadable)."""
    try:
        detail = orjson.loads(canonical).get("detail") or {}
        moment = dt.datetime.fromisoformat(str(detail["expires_at"]))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqlWriteTx:
    """A ``WriteTx`` inside a transaction opened with ``Dialect.begin_write`` that holds the
    store-wide writer lock (SQLite): every statement runs when it is called, seqs come from
    ``change_counter``. ``put`` and ``delete`` are written once here over a few hooks
    (``_lock_site``, ``_record_change``, ``_record_stay``, ``_store_version``,
    ``_store_deletion``, ``_move_dependents``, ``finish``); ``store.pg_write.PgWriteTx``
    overrides them to serialise per site and batch its statements."""

    def __init__(
        self,
        execute: Execute,
        executemany: Callable[[str, Sequence[Sequence[Any]]], None],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._execute = execute
        self._executemany = executemany
        self._clock = clock
        self._now_us: int | None = None
        # The highest seq this transaction wrote, once known (None: ask ``head_seq``).
        self.last_seq: int | None = None

    # -- hooks a backend's write path may override
    def prefetch(self, keys: Sequence[tuple[str, str]], *, sites: Sequence[str] = ()) -> None:
        """A hint: the transaction is about to read or write these (type, id). Here every
        read is one statement anyway, and the one writer lock is held already: nothing to do."""

    def finish(self) -> None:
        """Called once before COMMIT: nothing is pending here."""

    def flush(self) -> None:
        """Nothing is buffered here: every write is already a statement of the transaction."""

    def _lock_site(self, site: str) -> None:
        """Hold ``site`` for the rest of the transaction: the writer lock already does."""

    def _seq_of(self, change: int) -> int:
        """The seq of a recorded change, as ``put``/``delete`` return it."""
        return change

    # -- sequence and time, under the writer lock
    def _tx_time_us(self) -> int:
        if self._now_us is None:
            (last_us,) = self._execute("SELECT last_us FROM change_counter WHERE id = 1").fetchone()
            self._now_us = max(to_us(self._clock()), last_us + 1)
            self._execute("UPDATE change_counter SET last_us = ? WHERE id = 1", (self._now_us,))
        return self._now_us

    def _record_change(
        self, site: str, rtype: str, rid: str, version_id: int, op: ChangeOp, lu_us: int
    ) -> int:
        self._execute("UPDATE change_counter SET seq = seq + 1 WHERE id = 1")
        (seq,) = self._execute(_HEAD).fetchone()
        self._execute(
            "INSERT INTO changes (seq, site, type, id, version_id, op, last_updated_us)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, site, rtype, rid, version_id, op, lu_us),
        )
        return int(seq)

    # -- reads inside the transaction
    def current(self, rtype: str, rid: str) -> StoredResource | None:
        row = self._execute(_CURRENT, (rtype, rid)).fetchone()
        return row_to_resource(row) if row else None

    def find_by_identifier(
        self, rtype: str, site: str | None, system: str, value: str
    ) -> list[StoredResource]:
        # Driven from the identifier index (type, value, system), not a scan of the site: an
        # exactly-once create looks this up for every pushed resource.
        sql = (
            f"SELECT {_RES_COLS_R} FROM resource_identifiers i"  # noqa: S608
            " JOIN resources r ON r.type = i.type AND r.id = i.id"
            " WHERE i.type = ? AND i.value = ? AND i.system = ? AND r.deleted = 0"
        )
        args: tuple[str, ...] = (rtype, value, system)
        if site is not None:
            sql += " AND r.site = ?"
            args += (site,)
        rows = self._execute(sql, args).fetchall()
        return [row_to_resource(r) for r in rows]

    def find_by_identifiers(
        self, site: str, wanted: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], list[StoredResource]]:
        # Under the writer lock every lookup sees every earlier commit: one query each.
        return {key: self.find_by_identifier(key[0], None, key[1], key[2]) for key in wanted}

    def patient_site(self, patient_id: str) -> str | None:
        row = self._execute(
            "SELECT site FROM resources WHERE type = 'Patient' AND id = ? AND deleted = 0",
            (patient_id,),
        ).fetchone()
        return str(row[0]) if row else None

    def site_stays(self, patient_id: str) -> list[SiteStay]:
        rows = self._execute(
            "SELECT site, from_us, until_us FROM patient_sites WHERE patient_id = ?"
            " ORDER BY from_us",
            (patient_id,),
        ).fetchall()
        return [
            SiteStay(str(site), from_us(start), None if end is None else from_us(end))
            for site, start, end in rows
        ]

    def break_glass_uses(self, device_id: str, patient_id: str) -> list[BreakGlassUse]:
        rows = self._execute(
            "SELECT user_id, ts_us, canonical FROM audit_entries WHERE patient_id = ?"
            " AND device_id = ? AND action = 'break_glass' AND outcome = 'success'"
            " ORDER BY ts_us",
            (patient_id, device_id),
        ).fetchall()
        return [BreakGlassUse(user, from_us(ts), _grant_expiry(text)) for user, ts, text in rows]

    # -- writes
    def _record_stay(self, patient_id: str, site: str | None, lu_us: int) -> None:
        """Close the patient's open stay at ``lu_us`` and open one at ``site`` (None: deleted)."""
        row = self._execute(
            "SELECT site, from_us FROM patient_sites WHERE patient_id = ? AND until_us IS NULL",
            (patient_id,),
        ).fetchone()
        if row is not None and row[0] == site:
            return
        if row is not None and site is not None and row[1] == lu_us:
            # Moved twice in one transaction: the stay that began at this instant never was.
            self._execute(
                "UPDATE patient_sites SET site = ? WHERE patient_id = ? AND until_us IS NULL",
                (site, patient_id),
            )
            return
        if row is not None:
            self._execute(
                "UPDATE patient_sites SET until_us = ? WHERE patient_id = ? AND until_us IS NULL",
                (lu_us, patient_id),
            )
        if site is not None:
            self._execute(
                "INSERT INTO patient_sites (patient_id, site, from_us, until_us)"
                " VALUES (?, ?, ?, NULL)",
                (patient_id, site, lu_us),
            )

    def put(self, rtype: str, rid: str, resource: dict[str, Any] | Serialised) -> StoredResource:
        if isinstance(resource, Serialised):  # checked when it was serialised
            if resource.rtype != rtype:
                raise res.ResourceError("wrong_resource_type")
        else:
            resource = res.check_resource(resource, rtype)
        if not vocab.ID_RE.fullmatch(rid):
            raise StoreError("bad_id")
        if rtype == vocab.ORGANIZATION:
            if not vocab.SITE_CODE_RE.fullmatch(rid):
                raise StoreError("bad_site")
            site, patient_id = rid, None
        elif rtype == vocab.PATIENT and not isinstance(resource, Serialised):
            site, patient_id = res.site_of_patient(resource), None
        else:
            patient_id = (
                resource.patient
                if isinstance(resource, Serialised)
                else res.patient_id_of(resource)
            )
            found = self.patient_site(patient_id)
            if found is None:
                raise StoreError("unknown_patient")
            site = found
        existing = self.current(rtype, rid)
        self._lock_site(site)
        lu_us = self._tx_time_us()
        version_id = existing.version_id + 1 if existing else 1
        stamp = from_us(lu_us).isoformat(timespec="microseconds")
        body, name, identifiers = stored_form(resource, rid, version_id, stamp)
        moved = existing is not None and not existing.deleted and existing.site != site
        if rtype == vocab.PATIENT:
            self._record_stay(rid, site, lu_us)
        if moved and existing is not None:
            self._record_change(existing.site, rtype, rid, existing.version_id, "leave", lu_us)
            if rtype == vocab.PATIENT:
                self._move_dependents(rid, existing.site, site)
        change = self._record_change(site, rtype, rid, version_id, "put", lu_us)
        stored = StoredResource(
            rtype,
            rid,
            version_id,
            from_us(lu_us),
            site,
            patient_id,
            False,
            self._seq_of(change),
            body,
        )
        self._store_version(stored, change, name, list(identifiers), existing)
        return stored

    def put_many(
        self,
        items: Sequence[tuple[str, str, dict[str, Any] | Serialised]],
        *,
        checked: bool = False,
        sites: Sequence[str] = (),
    ) -> list[StoredResource]:
        """``put`` of each (type, id, resource) in turn, with the same result and the same
        errors. A run of Patients and clinical resources, none named twice, none moving site
        and every clinical one's patient stored before the run, is written with one statement
        per table (an import's page); anything else goes through ``put`` one by one.
        ``checked``: the caller has just passed each of these very dicts through
        ``resources.check_resource`` for its type (the run does not check them again); a
        ``Serialised`` resource was checked when it was serialised."""
        stored: list[StoredResource] = []
        run: list[tuple[str, str, dict[str, Any] | Serialised]] = []
        for item in items:
            if item[0] == vocab.PATIENT or item[0] in vocab.CLINICAL_TYPES:
                run.append(item)
                continue
            stored += self._put_run(run, checked=checked)
            run = []
            stored.append(self.put(*item))
        stored += self._put_run(run, checked=checked)
        return stored

    def _put_run(
        self, run: list[tuple[str, str, dict[str, Any] | Serialised]], *, checked: bool
    ) -> list[StoredResource]:
        # (type, id, resource, its patient (None: a Patient), a Patient's own site)
        ready: list[tuple[str, str, dict[str, Any] | Serialised, str | None, str | None]] = []
        for rtype, rid, resource in run:
            if isinstance(resource, Serialised):
                if resource.rtype != rtype:
                    raise res.ResourceError("wrong_resource_type")
            elif not checked:
                resource = res.check_resource(resource, rtype)
            if not vocab.ID_RE.fullmatch(rid):
                raise StoreError("bad_id")
            if isinstance(resource, Serialised):
                ready.append((rtype, rid, resource, resource.patient, None))
            elif rtype == vocab.PATIENT:
                ready.append((rtype, rid, resource, None, res.site_of_patient(resource)))
            else:
                ready.append((rtype, rid, resource, res.patient_id_of(resource), None))
        sites = self._patient_sites(sorted({p for *_, p, _ in ready if p is not None}))
        existing = self._currents(sorted({(rtype, rid) for rtype, rid, *_ in ready}))
        plain = len({(rtype, rid) for rtype, rid, *_ in ready}) == len(ready)
        targets: list[tuple[str, str, dict[str, Any] | Serialised, str | None, str]] = []
        for rtype, rid, resource, patient, own_site in ready:
            old = existing.get((rtype, rid))
            site = own_site if patient is None else sites.get(patient)
            if site is None or (old is not None and not old.deleted and old.site != site):
                plain = False  # unknown patient (put raises) or a move: one by one
            targets.append((rtype, rid, resource, patient, site or ""))
        if not plain:
            return [self.put(rtype, rid, resource) for rtype, rid, resource, *_ in ready]
        return self._write_run(targets, existing)

    def _patient_sites(self, patients: Sequence[str]) -> dict[str, str]:
        sites: dict[str, str] = {}
        for start in range(0, len(patients), _IN_CHUNK):
            chunk = patients[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._execute(
                "SELECT id, site FROM resources WHERE type = 'Patient' AND deleted = 0"  # noqa: S608
                f" AND id IN ({marks})",
                tuple(chunk),
            ).fetchall()
            sites.update((str(pid), str(site)) for pid, site in rows)
        return sites

    def _currents(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredResource]:
        found: dict[tuple[str, str], StoredResource] = {}
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        for rtype, ids in sorted(by_type.items()):
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = self._execute(
                    f"SELECT {_RES_COLS} FROM resources WHERE type = ?"  # noqa: S608
                    f" AND id IN ({marks})",
                    (rtype, *chunk),
                ).fetchall()
                for row in rows:
                    current = row_to_resource(row)
                    found[(current.rtype, current.rid)] = current
        return found

    def _write_run(
        self,
        checked: list[tuple[str, str, dict[str, Any] | Serialised, str | None, str]],
        existing: dict[tuple[str, str], StoredResource],
    ) -> list[StoredResource]:
        """Write ``checked`` (type, id, resource, its patient (None: a Patient), its site; no
        move, no key twice) in one statement per table: the same rows ``put`` writes, seqs
        consecutive in the given order; a Patient new here (or deleted) opens a stay at its
        site, as ``_record_stay`` does. The run's change and history rows are copied from
        its ``resources`` rows inside SQLite (``_FROM_RUN``: the run's seqs are exactly those
        of its (type, site) past the head before it), not bound row by row from Python."""
        if not checked:
            return []
        lu_us = self._tx_time_us()
        last_updated = from_us(lu_us)
        stamp = last_updated.isoformat(timespec="microseconds")
        self._execute("UPDATE change_counter SET seq = seq + ? WHERE id = 1", (len(checked),))
        (head,) = self._execute(_HEAD).fetchone()
        seq = int(head) - len(checked)
        stored: list[StoredResource] = []
        rows, stale, identifiers, stays = [], [], [], []
        groups: set[tuple[str, str]] = set()
        before = seq
        replaced: list[tuple[bytes, str, str, int]] = []
        for rtype, rid, resource, patient, site in checked:
            seq += 1
            old = existing.get((rtype, rid))
            version_id = old.version_id + 1 if old is not None else 1
            body, name, found = stored_form(resource, rid, version_id, stamp)
            groups.add((rtype, site))
            rows.append((rtype, rid, version_id, lu_us, site, patient, seq, name, body))
            if patient is None and (old is None or old.deleted):
                stays.append((rid, site, lu_us))
            if old is not None:
                stale.append((rtype, rid))
                if not old.deleted:
                    replaced.append((old.body, rtype, rid, old.version_id))
            identifiers += [(rtype, rid, system, value) for system, value in found]
            stored.append(
                StoredResource(
                    rtype, rid, version_id, last_updated, site, patient, False, seq, body
                )
            )
        if replaced:
            self._executemany(_KEEP_REPLACED, replaced)
        self._executemany(
            "INSERT INTO resources (type, id, version_id, last_updated_us, site, patient_id,"
            " deleted, seq, name_text, body) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)"
            " ON CONFLICT (type, id) DO UPDATE SET version_id = excluded.version_id,"
            " last_updated_us = excluded.last_updated_us, site = excluded.site,"
            " patient_id = excluded.patient_id, deleted = 0, seq = excluded.seq,"
            " name_text = excluded.name_text, body = excluded.body",
            rows,
        )
        for rtype, site in sorted(groups):
            self._execute(
                "INSERT INTO changes (seq, site, type, id, version_id, op, last_updated_us)"
                " SELECT seq, site, type, id, version_id, 'put', last_updated_us" + _FROM_RUN,
                (rtype, site, before),
            )
            self._execute(
                "INSERT INTO resource_history (type, id, version_id, last_updated_us, site,"
                " deleted, body) SELECT type, id, version_id, last_updated_us, site, 0, ?"
                + _FROM_RUN,
                (IN_RESOURCES, rtype, site, before),
            )
        if stays:
            self._executemany(
                "INSERT INTO patient_sites (patient_id, site, from_us, until_us)"
                " VALUES (?, ?, ?, NULL)",
                stays,
            )
        if stale:
            self._executemany("DELETE FROM resource_identifiers WHERE type = ? AND id = ?", stale)
        if identifiers:
            self._executemany(
                "INSERT INTO resource_identifiers (type, id, system, value) VALUES (?, ?, ?, ?)",
                identifiers,
            )
        return stored

    def _store_version(
        self,
        stored: StoredResource,
        change: int,
        name: str | None,
        identifiers: list[tuple[str, str]],
        replaced: StoredResource | None,
    ) -> None:
        """Write a new live version (``change``: its recorded change) and its identifiers;
        ``replaced``: the current version it replaces (None: none), whose JSON moves to its
        history row."""
        rtype, rid, version_id = stored.rtype, stored.rid, stored.version_id
        lu_us, site, body = to_us(stored.last_updated), stored.site, stored.body
        self._keep_replaced(replaced)
        self._execute(
            "INSERT INTO resource_history (type, id, version_id, last_updated_us, site, deleted,"
            " body) VALUES (?, ?, ?, ?, ?, 0, ?)",
            (rtype, rid, version_id, lu_us, site, IN_RESOURCES),
        )
        values = (version_id, lu_us, site, stored.patient_id, change, name, body, rtype, rid)
        updated = self._execute(
            "UPDATE resources SET version_id = ?, last_updated_us = ?, site = ?, patient_id = ?,"
            " deleted = 0, seq = ?, name_text = ?, body = ? WHERE type = ? AND id = ?",
            values,
        ).rowcount
        if not updated:
            self._execute(
                "INSERT INTO resources (version_id, last_updated_us, site, patient_id, deleted,"
                " seq, name_text, body, type, id) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                values,
            )
        self._execute("DELETE FROM resource_identifiers WHERE type = ? AND id = ?", (rtype, rid))
        self._executemany(
            "INSERT INTO resource_identifiers (type, id, system, value) VALUES (?, ?, ?, ?)",
            [(rtype, rid, system, value) for system, value in identifiers],
        )

    def _move_dependents(self, patient_id: str, old_site: str, new_site: str) -> None:
        rows = self._execute(
            "SELECT type, id, version_id, last_updated_us FROM resources"
            " WHERE patient_id = ? AND deleted = 0 AND site = ? ORDER BY type, id",
            (patient_id, old_site),
        ).fetchall()
        for rtype, rid, version_id, lu_us in rows:
            self._record_change(old_site, rtype, rid, version_id, "leave", lu_us)
            seq = self._record_change(new_site, rtype, rid, version_id, "put", lu_us)
            self._execute(
                "UPDATE resources SET site = ?, seq = ? WHERE type = ? AND id = ?",
                (new_site, seq, rtype, rid),
            )

    def delete(self, rtype: str, rid: str) -> StoredResource:
        existing = self.current(rtype, rid)
        if existing is None or existing.deleted:
            raise StoreError("not_found")
        lu_us = self._tx_time_us()
        version_id = existing.version_id + 1
        change = self._record_change(existing.site, rtype, rid, version_id, "delete", lu_us)
        stored = StoredResource(
            rtype,
            rid,
            version_id,
            from_us(lu_us),
            existing.site,
            existing.patient_id,
            True,
            self._seq_of(change),
            b"",
        )
        self._store_deletion(stored, change, existing)
        if rtype == vocab.PATIENT:
            self._record_stay(rid, None, lu_us)
        return stored

    def _keep_replaced(self, replaced: StoredResource | None) -> None:
        """Copy the JSON of ``replaced`` (the current version, about to be replaced) into its
        history row, where that row holds ``IN_RESOURCES``."""
        if replaced is not None and not replaced.deleted:
            self._execute(
                _KEEP_REPLACED, (replaced.body, replaced.rtype, replaced.rid, replaced.version_id)
            )

    def _store_deletion(
        self, stored: StoredResource, change: int, replaced: StoredResource | None
    ) -> None:
        """Write a deletion version (``change``: its recorded change) of ``replaced``; drop
        the identifiers."""
        rtype, rid, version_id = stored.rtype, stored.rid, stored.version_id
        lu_us = to_us(stored.last_updated)
        self._keep_replaced(replaced)
        self._execute(
            "INSERT INTO resource_history (type, id, version_id, last_updated_us, site, deleted,"
            " body) VALUES (?, ?, ?, ?, ?, 1, ?)",
            (rtype, rid, version_id, lu_us, stored.site, b""),
        )
        self._execute(
            "UPDATE resources SET version_id = ?, last_updated_us = ?, deleted = 1, seq = ?,"
            " body = ? WHERE type = ? AND id = ?",
            (version_id, lu_us, change, b"", rtype, rid),
        )
        self._execute("DELETE FROM resource_identifiers WHERE type = ? AND id = ?", (rtype, rid))


class ResourceTables(SqlTables):
    """The reads of ``store.Store`` (writes go through ``SqlWriteTx``)."""

    def read(self, rtype: str, rid: str) -> StoredResource | None:
        row = self._one(_CURRENT, (rtype, rid))
        return row_to_resource(row) if row else None

    def vread(self, rtype: str, rid: str, version_id: int) -> StoredResource | None:
        row = self._one(
            "SELECT h.type, h.id, h.version_id, h.last_updated_us, r.site, r.patient_id,"  # noqa: S608
            f" h.deleted, r.seq, {_HISTORY_BODY} FROM resource_history h JOIN resources r"
            " ON r.type = h.type AND r.id = h.id"
            " WHERE h.type = ? AND h.id = ? AND h.version_id = ?",
            (rtype, rid, version_id),
        )
        return row_to_resource(row) if row else None

    def search(self, query: SearchQuery) -> list[StoredResource]:
        sql = [
            f"SELECT {_RES_COLS} FROM resources r WHERE r.type = ? AND r.site = ?"  # noqa: S608
            " AND r.deleted = 0 AND r.seq > ?"
        ]
        args: list[Any] = [query.rtype, query.site, query.after_seq]
        ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        for prefix, us in query.last_updated:
            sql.append(f"AND r.last_updated_us {ops[prefix]} ?")
            args.append(us)
        if query.patient_id is not None:
            sql.append("AND r.patient_id = ?")
            args.append(query.patient_id)
        if query.identifier is not None:
            system, value = query.identifier
            if system is None:
                sql.append(_IDENTIFIER_VALUE)
                args.append(value)
            else:
                sql.append(_IDENTIFIER_SYSTEM_VALUE)
                args.extend((value, system))
        if query.name is not None:
            for word in query.name.split():
                sql.append("AND r.name_text LIKE ? ESCAPE '\\'")
                args.append("% " + _like_escape(word) + "%")
        sql.append("ORDER BY r.seq LIMIT ?")
        args.append(query.count)
        return [row_to_resource(r) for r in self._rows(" ".join(sql), args)]

    def history(self, query: HistoryQuery) -> list[Change]:
        sql = [
            "SELECT c.seq, c.type, c.id, c.version_id, c.op, c.last_updated_us,"
            " CASE WHEN h.deleted = 0 AND length(h.body) = 0 THEN (SELECT r.body FROM resources r"
            " WHERE r.type = c.type AND r.id = c.id) ELSE h.body END"
            " FROM changes c LEFT JOIN resource_history h ON c.op = 'put'"
            " AND h.type = c.type AND h.id = c.id AND h.version_id = c.version_id"
            " WHERE c.site = ? AND c.seq > ?"
        ]
        args: list[Any] = [query.site, query.after_seq]
        if query.rtype is not None:
            sql.append("AND c.type = ?")
            args.append(query.rtype)
        if query.since_us is not None:
            sql.append("AND c.last_updated_us >= ?")
            args.append(query.since_us)
        sql.append("ORDER BY c.seq LIMIT ?")
        args.append(query.count)
        return [
            Change(
                seq=row[0],
                rtype=row[1],
                rid=row[2],
                version_id=row[3],
                op=row[4],
                last_updated=from_us(row[5]),
                body=bytes(row[6]) if row[6] is not None else None,
            )
            for row in self._rows(" ".join(sql), args)
        ]

    def head_seq(self) -> int:
        """The highest committed change seq (``Dialect.head_seq``)."""
        row = self._one(self._dialect.head_seq)
        assert row is not None  # the schema inserts the one counter row
        return int(row[0])
