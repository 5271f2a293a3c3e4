"""The upstream's tables (issue 14): which upstream Group or Organization each site is linked
to, which upstream version of each resource the gateway holds, the import's high-water marks,
and the resources the import quarantined.

Invariants:
- The ``upstream_*`` tables are written inside the store's write transaction of the resources
  they describe (call the ``*_in_tx`` methods inside ``with store.write():``, on the same
  thread): an imported version and its record commit together or not at all, so a kill -9
  mid-import never leaves the gateway believing it holds a version it does not.
- ``upstream_imported`` maps (type, id) to the upstream's ``versionId``: an unchanged upstream
  version is never written again, so a poll that finds nothing new adds nothing to the feed.
- **Outbox.** Every version a laptop writes (create, edit, delete) is queued in
  ``upstream_outbox`` by ``queue_upstream_in_tx`` inside the very transaction that accepts it,
  keyed by its change ``seq`` (commit order): accepted and queued commit together, and an
  exactly-once retry of the push (``ifNoneExist`` matched, nothing written) queues nothing.
  A row leaves ``pending`` only for ``filed``, ``held`` (the upstream refused: its reason is
  kept) or ``conflict`` (an upstream 412); it is never deleted, so nothing is silently dropped.
  Only the latest version of a resource can wait for IT: once a later version of the same
  resource is closed (filed, held or conflict), every earlier ``held`` or ``conflict`` row of it
  becomes ``superseded`` (a laptop version is the whole resource, so the later one carries the
  clinician's intent, e.g. a conflict resolved in the chart). A superseded row is never released:
  an old version can never be filed over a newer one.
  ``upstream_filed`` maps a gateway resource to its upstream id and version.
- **Stamps.** ``upstream_stamps`` lists the versions the gateway wrote only to tag a note's
  filing state (``sync.protocol.fhir.filing``): same content as the version before. A laptop's
  ``ifMatch`` on a version followed only by stamps is not a conflict (``only_stamps_after``).
- **One worker.** A pass runs only under the ``upstream_lease`` (one row), claimed by a
  conditional UPDATE inside the writer lock: held by one holder at a time across every gateway
  process sharing the database, renewed by its holder, taken over only once expired (a
  crashed holder loses it after its time-to-live; what it left pending is simply filed by the
  next holder).
- ``upstream_pass_state`` (one row) is what the last pass found, whichever process ran it, so
  ``upstream status`` on any host of a cluster shows the same (``upstream.state``).
- ``upstream_transaction_size`` (a row per upstream base URL) is the transaction size the
  filing worker learnt that upstream accepts, and when it last probed upward
  (``upstream.filing``): every process of a cluster starts its pass from the same size.
- Portable SQL only (``store.tables``); nothing here holds record content except the
  quarantine's reason code and JSON path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sync.gateway.store.base import StoreError, from_us, to_us
from sync.gateway.store.tables import SqlTables

LinkKind = Literal["group", "organization"]
LINK_KINDS: tuple[LinkKind, ...] = ("group", "organization")

UPSTREAM_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS upstream_site_links (
    site TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    linked_us INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS upstream_imported (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    upstream_version TEXT NOT NULL,
    site TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    imported_us INTEGER NOT NULL,
    PRIMARY KEY (type, id)
)""",
    "CREATE INDEX IF NOT EXISTS upstream_imported_patient ON upstream_imported (patient_id)",
    """CREATE TABLE IF NOT EXISTS upstream_marks (
    stream TEXT PRIMARY KEY,
    mark TEXT NOT NULL,
    updated_us INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS upstream_outbox (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    op TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_us INTEGER NOT NULL,
    reason TEXT,
    detail TEXT,
    queued_us INTEGER NOT NULL,
    done_us INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS upstream_outbox_state ON upstream_outbox (state, seq)",
    "CREATE INDEX IF NOT EXISTS upstream_outbox_resource ON upstream_outbox (type, id, seq)",
    """CREATE TABLE IF NOT EXISTS upstream_filed (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    upstream_id TEXT NOT NULL,
    upstream_version TEXT NOT NULL,
    PRIMARY KEY (type, id)
)""",
    "CREATE INDEX IF NOT EXISTS upstream_filed_upstream ON upstream_filed (type, upstream_id)",
    """CREATE TABLE IF NOT EXISTS upstream_stamps (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    PRIMARY KEY (type, id, version_id)
)""",
    """CREATE TABLE IF NOT EXISTS upstream_lease (
    id INTEGER PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_us INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS upstream_pass_state (
    id INTEGER PRIMARY KEY,
    document TEXT NOT NULL,
    updated_us INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS upstream_quarantine (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    reason TEXT NOT NULL,
    path TEXT NOT NULL,
    seen_us INTEGER NOT NULL,
    PRIMARY KEY (type, id)
)""",
    """CREATE TABLE IF NOT EXISTS upstream_transaction_size (
    base TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    probed_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS upstream_quarantine_log (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    reason TEXT NOT NULL,
    path TEXT NOT NULL,
    seen_us INTEGER NOT NULL,
    cleared_us INTEGER,
    cause TEXT
)""",
    "CREATE INDEX IF NOT EXISTS upstream_quarantine_log_row"
    " ON upstream_quarantine_log (type, id, cleared_us)",
)

QuarantineCause = Literal["imported", "gone", "superseded", "cleared_by_it"]
KEPT_OPEN_REASONS: tuple[str, ...] = ("missing_patient_reference",)  # never listed by patient


@dataclass(frozen=True)
class SiteLink:
    site: str
    kind: LinkKind
    ref: str  # the upstream Group or Organization id
    linked_at: dt.datetime


@dataclass(frozen=True)
class Imported:
    rtype: str
    rid: str
    upstream_version: str
    site: str
    patient_id: str  # its own id for a Patient


OutboxState = Literal["pending", "filed", "held", "conflict", "superseded"]


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    rtype: str
    rid: str
    version_id: int
    op: str  # put | delete
    state: OutboxState
    attempts: int
    next_at: dt.datetime
    reason: str | None
    detail: str | None


@dataclass(frozen=True)
class NotFiled:
    item: OutboxItem
    patient_id: str | None
    since: dt.datetime | None  # when the row was closed held or conflict


@dataclass(frozen=True)
class Filed:
    rtype: str
    rid: str
    upstream_id: str
    upstream_version: str


_OUTBOX_COLS = "seq, type, id, version_id, op, state, attempts, next_us, reason, detail"


def _item(row: tuple[object, ...]) -> OutboxItem:
    seq, t, i, v, op, state, attempts, next_us, reason, detail = row
    return OutboxItem(
        int(str(seq)),
        str(t),
        str(i),
        int(str(v)),
        str(op),
        state,  # type: ignore[arg-type]
        int(str(attempts)),
        from_us(int(str(next_us))),
        None if reason is None else str(reason),
        None if detail is None else str(detail),
    )


@dataclass(frozen=True)
class QuarantinedImport:
    rtype: str
    rid: str
    reason: str
    path: str
    seen_at: dt.datetime


@dataclass(frozen=True)
class ClosedQuarantine:
    """A quarantine row no longer open: when it was last seen, when and why it closed."""

    rtype: str
    rid: str
    reason: str
    path: str
    seen_at: dt.datetime
    cleared_at: dt.datetime
    cause: str


class UpstreamTables(SqlTables):
    # -- site links (control plane: their own write transaction)
    def link_site(self, site: str, kind: LinkKind, ref: str, now: dt.datetime) -> None:
        if kind not in LINK_KINDS:
            raise StoreError("bad_link")
        with self._write() as execute:
            if execute("SELECT 1 FROM sites WHERE site = ?", (site,)).fetchone() is None:
                raise StoreError("unknown_site")
            values = (kind, ref, to_us(now), site)
            if (
                execute(
                    "UPDATE upstream_site_links SET kind = ?, ref = ?, linked_us = ?"
                    " WHERE site = ?",
                    values,
                ).rowcount
                == 0
            ):
                execute(
                    "INSERT INTO upstream_site_links (kind, ref, linked_us, site)"
                    " VALUES (?, ?, ?, ?)",
                    values,
                )

    def site_links(self) -> list[SiteLink]:
        rows = self._rows(
            "SELECT site, kind, ref, linked_us FROM upstream_site_links ORDER BY site"
        )
        return [SiteLink(str(s), k, str(r), from_us(int(u))) for s, k, r, u in rows]

    # -- imported versions (inside the resources' write transaction)
    def imported(self, rtype: str) -> dict[str, Imported]:
        """Every resource of ``rtype`` the gateway holds from upstream, by id."""
        rows = self._rows(
            "SELECT id, upstream_version, site, patient_id FROM upstream_imported WHERE type = ?",
            (rtype,),
        )
        return {str(i): Imported(rtype, str(i), str(v), str(s), str(p)) for i, v, s, p in rows}

    def imported_one(self, rtype: str, rid: str) -> Imported | None:
        row = self._one(
            "SELECT upstream_version, site, patient_id FROM upstream_imported"
            " WHERE type = ? AND id = ?",
            (rtype, rid),
        )
        return None if row is None else Imported(rtype, rid, str(row[0]), str(row[1]), str(row[2]))

    def imported_of_patient(self, patient_id: str) -> list[Imported]:
        rows = self._rows(
            "SELECT type, id, upstream_version, site FROM upstream_imported"
            " WHERE patient_id = ? ORDER BY type, id",
            (patient_id,),
        )
        return [Imported(str(t), str(i), str(v), str(s), patient_id) for t, i, v, s in rows]

    def record_import_in_tx(
        self,
        rtype: str,
        rid: str,
        upstream_version: str,
        site: str,
        patient_id: str,
        now: dt.datetime,
    ) -> None:
        values = (upstream_version, site, patient_id, to_us(now), rtype, rid)
        updated = self._execute(
            "UPDATE upstream_imported SET upstream_version = ?, site = ?, patient_id = ?,"
            " imported_us = ? WHERE type = ? AND id = ?",
            values,
        ).rowcount
        if updated == 0:
            self._execute(
                "INSERT INTO upstream_imported"
                " (upstream_version, site, patient_id, imported_us, type, id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
        self._execute("DELETE FROM upstream_quarantine WHERE type = ? AND id = ?", (rtype, rid))

    def record_imports_in_tx(
        self, rows: Sequence[tuple[str, str, str, str, str]], now: dt.datetime
    ) -> None:
        """``record_import_in_tx`` of each (type, id, upstream version, site, patient) but
        ``refile_version_in_tx`` (the writer knows which it filed): one statement whatever the
        count, two when anything is quarantined (an import's batch)."""
        if not rows:
            return
        imported_us = to_us(now)
        self._executemany(
            "INSERT INTO upstream_imported"
            " (type, id, upstream_version, site, patient_id, imported_us)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (type, id) DO UPDATE SET"
            " upstream_version = excluded.upstream_version, site = excluded.site,"
            " patient_id = excluded.patient_id, imported_us = excluded.imported_us",
            [(*row, imported_us) for row in rows],
        )
        if self._execute("SELECT 1 FROM upstream_quarantine LIMIT 1").fetchone() is not None:
            self._executemany(
                "DELETE FROM upstream_quarantine WHERE type = ? AND id = ?",
                [(rtype, rid) for rtype, rid, *_ in rows],
            )

    def refile_version_in_tx(self, rtype: str, rid: str, upstream_version: str) -> None:
        """The upstream changed a record filed from here: the version the next edit must name."""
        self._execute(
            "UPDATE upstream_filed SET upstream_version = ? WHERE type = ? AND id = ?",
            (upstream_version, rtype, rid),
        )

    def forget_import_in_tx(self, rtype: str, rid: str) -> None:
        self._execute("DELETE FROM upstream_imported WHERE type = ? AND id = ?", (rtype, rid))

    # -- high-water marks
    def upstream_mark(self, stream: str) -> str | None:
        row = self._one("SELECT mark FROM upstream_marks WHERE stream = ?", (stream,))
        return None if row is None else str(row[0])

    def set_mark_in_tx(self, stream: str, mark: str, now: dt.datetime) -> None:
        values = (mark, to_us(now), stream)
        if (
            self._execute(
                "UPDATE upstream_marks SET mark = ?, updated_us = ? WHERE stream = ?", values
            ).rowcount
            == 0
        ):
            self._execute(
                "INSERT INTO upstream_marks (mark, updated_us, stream) VALUES (?, ?, ?)", values
            )

    # -- quarantine: ``upstream_quarantine`` holds the open rows (``upstream status``);
    # ``upstream_quarantine_log`` every row, open (``cleared_us`` NULL) or closed with its cause.
    def quarantine_in_tx(
        self, rtype: str, rid: str, reason: str, path: str, now: dt.datetime
    ) -> None:
        values = (reason, path, to_us(now), rtype, rid)
        if (
            self._execute(
                "UPDATE upstream_quarantine SET reason = ?, path = ?, seen_us = ?"
                " WHERE type = ? AND id = ?",
                values,
            ).rowcount
            == 0
        ):
            self._execute(
                "INSERT INTO upstream_quarantine (reason, path, seen_us, type, id)"
                " VALUES (?, ?, ?, ?, ?)",
                values,
            )
        if (
            self._execute(
                "UPDATE upstream_quarantine_log SET reason = ?, path = ?, seen_us = ?"
                " WHERE type = ? AND id = ? AND cleared_us IS NULL",
                values,
            ).rowcount
            == 0
        ):
            self._execute(
                "INSERT INTO upstream_quarantine_log (reason, path, seen_us, type, id)"
                " VALUES (?, ?, ?, ?, ?)",
                values,
            )

    def _close_quarantine_in_tx(
        self, rows: list[tuple[object, ...]], cause: QuarantineCause, now: dt.datetime
    ) -> int:
        """Close open rows ``(type, id, reason, path, seen_us)``: logged closed, then removed."""
        for rtype, rid, reason, path, seen_us in rows:
            closing = (reason, path, seen_us, to_us(now), cause, rtype, rid)
            if (
                self._execute(
                    "UPDATE upstream_quarantine_log SET reason = ?, path = ?, seen_us = ?,"
                    " cleared_us = ?, cause = ? WHERE type = ? AND id = ? AND cleared_us IS NULL",
                    closing,
                ).rowcount
                == 0
            ):
                self._execute(
                    "INSERT INTO upstream_quarantine_log"
                    " (reason, path, seen_us, cleared_us, cause, type, id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    closing,
                )
            self._execute("DELETE FROM upstream_quarantine WHERE type = ? AND id = ?", (rtype, rid))
        return len(rows)

    def close_unseen_quarantine(self, reconciled_at: dt.datetime) -> int:
        """After a completed reconciliation at ``reconciled_at`` (which renewed every row it met
        again): close the rows it did not meet, ``superseded`` for an export's unreadable line,
        else ``gone`` (deleted upstream or out of every linked site). A reason in
        ``KEPT_OPEN_REASONS`` stays open: the reconciliation cannot meet such a record."""
        keep = ", ".join("?" for _ in KEPT_OPEN_REASONS)
        with self._write():
            rows = self._execute(
                "SELECT type, id, reason, path, seen_us FROM upstream_quarantine"  # noqa: S608
                f" WHERE seen_us < ? AND reason NOT IN ({keep}) ORDER BY type, id",
                (to_us(reconciled_at), *KEPT_OPEN_REASONS),
            ).fetchall()
            lines = [r for r in rows if str(r[1]).startswith("ndjson-line-")]
            others = [r for r in rows if not str(r[1]).startswith("ndjson-line-")]
            return self._close_quarantine_in_tx(
                lines, "superseded", reconciled_at
            ) + self._close_quarantine_in_tx(others, "gone", reconciled_at)

    def clear_quarantine(self, now: dt.datetime, rtype: str | None = None, rid: str = "") -> int:
        """IT's ``upstream quarantine clear``: every open row (no ``rtype``), or one."""
        with self._write():
            if rtype is None:
                rows = self._execute(
                    "SELECT type, id, reason, path, seen_us FROM upstream_quarantine"
                ).fetchall()
            else:
                rows = self._execute(
                    "SELECT type, id, reason, path, seen_us FROM upstream_quarantine"
                    " WHERE type = ? AND id = ?",
                    (rtype, rid),
                ).fetchall()
            return self._close_quarantine_in_tx(list(rows), "cleared_by_it", now)

    def settle_quarantine_log(self, now: dt.datetime) -> int:
        """Log rows still open whose quarantine row is gone: their record was imported cleanly
        since (``record_import_in_tx`` removes the row in the import's own transaction)."""
        with self._write() as execute:
            return execute(
                "UPDATE upstream_quarantine_log SET cleared_us = ?, cause = 'imported'"
                " WHERE cleared_us IS NULL AND NOT EXISTS (SELECT 1 FROM upstream_quarantine q"
                " WHERE q.type = upstream_quarantine_log.type"
                " AND q.id = upstream_quarantine_log.id)",
                (to_us(now),),
            ).rowcount

    def closed_quarantine(self, limit: int = 100) -> list[ClosedQuarantine]:
        """Closed quarantine rows, the most recently closed first."""
        rows = self._rows(
            "SELECT type, id, reason, path, seen_us, cleared_us, cause"
            " FROM upstream_quarantine_log WHERE cleared_us IS NOT NULL"
            " ORDER BY cleared_us DESC, type, id LIMIT ?",
            (limit,),
        )
        return [
            ClosedQuarantine(
                str(t), str(i), str(r), str(p), from_us(int(s)), from_us(int(c)), str(k)
            )
            for t, i, r, p, s, c, k in rows
        ]

    def upstream_quarantine(self) -> list[QuarantinedImport]:
        rows = self._rows(
            "SELECT type, id, reason, path, seen_us FROM upstream_quarantine ORDER BY type, id"
        )
        return [
            QuarantinedImport(str(t), str(i), str(r), str(p), from_us(int(u)))
            for t, i, r, p, u in rows
        ]

    # -- the outbox (notes out)
    def queue_upstream_in_tx(
        self, rtype: str, rid: str, version_id: int, op: str, now: dt.datetime
    ) -> None:
        """Queue one accepted version, inside the transaction that accepted it (after its
        writes were flushed), keyed by the change seq the store gave that version."""
        self._execute(
            "INSERT INTO upstream_outbox (seq, type, id, version_id, op, state, attempts,"
            " next_us, queued_us) SELECT seq, type, id, version_id, ?, 'pending', 0, 0, ?"
            " FROM resources WHERE type = ? AND id = ? AND version_id = ?",
            (op, to_us(now), rtype, rid, version_id),
        )

    def outbox(self, states: tuple[OutboxState, ...], limit: int = 500) -> list[OutboxItem]:
        """Outbox rows in one of ``states``, oldest (lowest seq) first."""
        marks = ", ".join("?" for _ in states)
        rows = self._rows(
            f"SELECT {_OUTBOX_COLS} FROM upstream_outbox WHERE state IN ({marks})"  # noqa: S608
            " ORDER BY seq LIMIT ?",
            (*states, limit),
        )
        return [_item(r) for r in rows]

    def outbox_not_filed_at(self, site: str, limit: int = 500) -> list[NotFiled]:
        """Held and conflicting rows of ``site``'s records, oldest first: what the site's
        auditors and IT must see."""
        cols = ", ".join(f"o.{c.strip()}" for c in _OUTBOX_COLS.split(","))
        rows = self._rows(
            f"SELECT {cols}, r.patient_id, o.done_us FROM upstream_outbox o"  # noqa: S608
            " JOIN resources r ON r.type = o.type AND r.id = o.id"
            " WHERE o.state IN ('held', 'conflict') AND r.site = ? ORDER BY o.seq LIMIT ?",
            (site, limit),
        )
        return [
            NotFiled(
                _item(r[:-2]),
                None if r[-2] is None else str(r[-2]),
                None if r[-1] is None else from_us(int(str(r[-1]))),
            )
            for r in rows
        ]

    def outbox_timings(self) -> list[tuple[str, str, dt.datetime, dt.datetime | None]]:
        """(type, id, queued at, closed at or None) of every outbox row, oldest first
        (benchmarks: the note-to-upstream latency)."""
        rows = self._rows("SELECT type, id, queued_us, done_us FROM upstream_outbox ORDER BY seq")
        return [
            (str(t), str(i), from_us(int(q)), None if d is None else from_us(int(d)))
            for t, i, q, d in rows
        ]

    def outbox_counts(self) -> dict[str, int]:
        rows = self._rows("SELECT state, COUNT(*) FROM upstream_outbox GROUP BY state")
        return {str(s): int(c) for s, c in rows}

    def outbox_done(
        self,
        seq: int,
        state: OutboxState,
        now: dt.datetime,
        *,
        reason: str | None = None,
        detail: str | None = None,
        filed: Filed | None = None,
    ) -> None:
        """Close one row (filed, held, conflict) and record the upstream id/version, in one
        transaction."""
        with self._write():
            self.outbox_done_in_tx(seq, state, now, reason=reason, detail=detail, filed=filed)

    def outbox_done_in_tx(
        self,
        seq: int,
        state: OutboxState,
        now: dt.datetime,
        *,
        reason: str | None = None,
        detail: str | None = None,
        filed: Filed | None = None,
    ) -> None:
        """``outbox_done`` inside the caller's ``store.write()`` (with the filing stamp); the
        earlier held or conflicting rows of the same resource become ``superseded``."""
        execute = self._execute
        execute(
            "UPDATE upstream_outbox SET state = ?, reason = ?, detail = ?, done_us = ?"
            " WHERE seq = ?",
            (state, reason, detail, to_us(now), seq),
        )
        row = execute("SELECT type, id FROM upstream_outbox WHERE seq = ?", (seq,)).fetchone()
        if row is not None:
            execute(
                "UPDATE upstream_outbox SET state = 'superseded', detail = ?, done_us = ?"
                " WHERE type = ? AND id = ? AND seq < ? AND state IN ('held', 'conflict')",
                (f"by seq {seq}", to_us(now), row[0], row[1], seq),
            )
        if filed is not None:
            values = (filed.upstream_id, filed.upstream_version, filed.rtype, filed.rid)
            if (
                execute(
                    "UPDATE upstream_filed SET upstream_id = ?, upstream_version = ?"
                    " WHERE type = ? AND id = ?",
                    values,
                ).rowcount
                == 0
            ):
                execute(
                    "INSERT INTO upstream_filed (upstream_id, upstream_version, type, id)"
                    " VALUES (?, ?, ?, ?)",
                    values,
                )
            execute(  # an imported record edited here: its upstream version moved too
                "UPDATE upstream_imported SET upstream_version = ? WHERE type = ? AND id = ?",
                (filed.upstream_version, filed.rtype, filed.rid),
            )

    # -- filing stamps (versions that only tag a note's filing state)
    def record_stamp_in_tx(self, rtype: str, rid: str, version_id: int) -> None:
        self._execute(
            "INSERT INTO upstream_stamps (type, id, version_id) VALUES (?, ?, ?)",
            (rtype, rid, version_id),
        )

    def only_stamps_after(self, rtype: str, rid: str, base: int, current: int) -> bool:
        """Whether every version after ``base`` up to ``current`` is a filing stamp (works
        inside a write transaction: same connection)."""
        if not 0 < base < current:
            return base == current
        row = self._execute(
            "SELECT COUNT(*) FROM upstream_stamps WHERE type = ? AND id = ?"
            " AND version_id > ? AND version_id <= ?",
            (rtype, rid, base, current),
        ).fetchone()
        return row is not None and int(row[0]) == current - base

    def outbox_retry_later(
        self, seq: int, attempts: int, next_at: dt.datetime, reason: str
    ) -> None:
        with self._write() as execute:
            execute(
                "UPDATE upstream_outbox SET attempts = ?, next_us = ?, reason = ?"
                " WHERE seq = ? AND state = 'pending'",
                (attempts, to_us(next_at), reason, seq),
            )

    def outbox_release(self, seq: int | None = None) -> int:
        """Held rows back to pending after IT acted: one, or all. Never a ``conflict`` row:
        that decision is the clinician's (the laptop's conflict screen; "keep mine" queues a
        later version, "keep theirs" settles it), and IT re-sending the laptop's edit would
        overwrite the health record's change unseen."""
        with self._write() as execute:
            if seq is None:
                return execute(
                    "UPDATE upstream_outbox SET state = 'pending', attempts = 0, next_us = 0"
                    " WHERE state = 'held'"
                ).rowcount
            return execute(
                "UPDATE upstream_outbox SET state = 'pending', attempts = 0, next_us = 0"
                " WHERE seq = ? AND state = 'held'",
                (seq,),
            ).rowcount

    def outbox_settled_by_clinician(self, rtype: str, rid: str, site: str, now: dt.datetime) -> int:
        """A clinician of ``site`` kept the health record's version in an upstream conflict:
        the resource's ``conflict`` rows become ``superseded`` (nothing is filed; never released
        again). Only a resource of that site; returns the rows closed."""
        with self._write() as execute:
            return execute(
                "UPDATE upstream_outbox SET state = 'superseded', done_us = ?,"
                " detail = 'clinician kept the health record version'"
                " WHERE type = ? AND id = ? AND state = 'conflict'"
                " AND EXISTS (SELECT 1 FROM resources r WHERE r.type = ? AND r.id = ?"
                " AND r.site = ?)",
                (to_us(now), rtype, rid, rtype, rid, site),
            ).rowcount

    def latest_outbox(self, rtype: str, rid: str) -> OutboxItem | None:
        """The last version of this resource queued for the upstream (any state)."""
        row = self._one(
            f"SELECT {_OUTBOX_COLS} FROM upstream_outbox WHERE type = ? AND id = ?"  # noqa: S608
            " ORDER BY seq DESC LIMIT 1",
            (rtype, rid),
        )
        return None if row is None else _item(row)

    def outbox_stuck(self, rtype: str, rid: str) -> bool:
        """Whether a version of this resource is held or in conflict (not filed, not coming)."""
        row = self._one(
            "SELECT 1 FROM upstream_outbox WHERE type = ? AND id = ?"
            " AND state IN ('held', 'conflict')",
            (rtype, rid),
        )
        return row is not None

    def filed(self, rtype: str, rid: str) -> Filed | None:
        row = self._one(
            "SELECT upstream_id, upstream_version FROM upstream_filed WHERE type = ? AND id = ?",
            (rtype, rid),
        )
        return None if row is None else Filed(rtype, rid, str(row[0]), str(row[1]))

    def filed_by_upstream(self, rtype: str) -> dict[str, Filed]:
        """Upstream id → the gateway resource filed as it, for one type."""
        rows = self._rows(
            "SELECT id, upstream_id, upstream_version FROM upstream_filed WHERE type = ?",
            (rtype,),
        )
        return {str(u): Filed(rtype, str(i), str(u), str(v)) for i, u, v in rows}

    # -- the worker lease (one upstream worker across processes)
    def claim_upstream_lease(self, holder: str, now: dt.datetime, ttl: dt.timedelta) -> bool:
        """Take or renew the lease for ``holder`` unless another holds it unexpired."""
        now_us, until_us = to_us(now), to_us(now + ttl)
        with self._write() as execute:
            if execute("SELECT 1 FROM upstream_lease WHERE id = 1").fetchone() is None:
                execute(
                    "INSERT INTO upstream_lease (id, holder, expires_us) VALUES (1, ?, ?)",
                    (holder, until_us),
                )
                return True
            claimed = execute(
                "UPDATE upstream_lease SET holder = ?, expires_us = ?"
                " WHERE id = 1 AND (holder = ? OR expires_us < ?)",
                (holder, until_us, holder, now_us),
            ).rowcount
            return claimed == 1

    # -- what the last pass found (``upstream.state``), for every process to read
    def upstream_pass_state(self) -> str | None:
        row = self._one("SELECT document FROM upstream_pass_state WHERE id = 1", ())
        return None if row is None else str(row[0])

    def set_upstream_pass_state(self, document: str, now: dt.datetime) -> None:
        with self._write() as execute:
            if (
                execute(
                    "UPDATE upstream_pass_state SET document = ?, updated_us = ? WHERE id = 1",
                    (document, to_us(now)),
                ).rowcount
                == 0
            ):
                execute(
                    "INSERT INTO upstream_pass_state (id, document, updated_us) VALUES (1, ?, ?)",
                    (document, to_us(now)),
                )

    def release_upstream_lease(self, holder: str) -> None:
        with self._write() as execute:
            execute(
                "UPDATE upstream_lease SET expires_us = 0 WHERE id = 1 AND holder = ?", (holder,)
            )

    # -- the transaction size an upstream accepts (``upstream.filing``), per base URL
    def transaction_size(self, base: str) -> TransactionSize | None:
        row = self._one(
            "SELECT size, probed_us FROM upstream_transaction_size WHERE base = ?", (base,)
        )
        return None if row is None else TransactionSize(int(row[0]), from_us(int(row[1])))

    def remember_transaction_size(self, base: str, size: TransactionSize, now: dt.datetime) -> None:
        if size.size < 1:
            raise StoreError("bad_transaction_size")
        values = (size.size, to_us(size.probed_at), to_us(now), base)
        with self._write() as execute:
            if (
                execute(
                    "UPDATE upstream_transaction_size SET size = ?, probed_us = ?, updated_us = ?"
                    " WHERE base = ?",
                    values,
                ).rowcount
                == 0
            ):
                execute(
                    "INSERT INTO upstream_transaction_size (size, probed_us, updated_us, base)"
                    " VALUES (?, ?, ?, ?)",
                    values,
                )

    # -- conflicts a clinician settled "theirs" that are still open (``upstream.settled``)
    def conflicts_with_resolutions(self) -> list[ConflictResolution]:
        """Each open ``conflict`` row with every stored ``conflict_resolved`` entry that could
        settle it: a success of a device of the resource's own site, about the same patient,
        made at or after the row became a conflict. The caller reads the entry's detail."""
        rows = self._rows(
            "SELECT o.type, o.id, r.site, a.canonical, a.mac FROM upstream_outbox o"
            " JOIN resources r ON r.type = o.type AND r.id = o.id"
            " JOIN audit_entries a ON a.site = r.site AND a.patient_id = r.patient_id"
            " AND a.action = 'conflict_resolved' AND a.outcome = 'success'"
            " AND a.ts_us >= o.done_us"
            " WHERE o.state = 'conflict' ORDER BY o.seq, a.device_id, a.seq"
        )
        return [
            ConflictResolution(str(t), str(i), str(s), str(c), str(m)) for t, i, s, c, m in rows
        ]


@dataclass(frozen=True)
class TransactionSize:
    size: int  # the largest transaction not refused since ``probed_at``
    probed_at: dt.datetime  # when a pass last started from the largest size allowed


@dataclass(frozen=True)
class ConflictResolution:
    rtype: str
    rid: str
    site: str  # the resource's site, which is the device's
    canonical: str  # the stored audit entry (verified when it was stored)
    mac: str
