"""The upstream's tables (issue 14): which upstream Group or Organization each site is linked
to, which upstream version of each resource the gateway holds, the import's high-water marks,
and the resources the import quarantined (their methods: ``quarantine_tables``); the outbox's
and the stamps' methods are in ``outbox_tables``.

Invariants:
- The ``upstream_*`` tables are written inside the store's write transaction of the resources
  they describe (call the ``*_in_tx`` methods inside ``with store.write():``, on the same
  thread): an imported version and its record commit together or not at all, so a kill -9
  mid-import never leaves the gateway believing it holds a version it does not.
- ``upstream_imported`` maps (type, id) to the upstream's ``versionId``: an unchanged upstream
  version is never written again, so a poll that finds nothing new adds nothing to the feed.
- **Outbox** (queries in ``outbox_tables``). Every version a laptop writes (create, edit,
  delete) is queued in ``upstream_outbox`` by ``queue_upstream_in_tx`` inside the very
  transaction that accepts it, keyed by its change ``seq`` (commit order): accepted and
  queued commit together, and an
  exactly-once retry of the push (``ifNoneExist`` matched, nothing written) queues nothing.
  A row leaves ``pending`` only for ``filed``, ``held`` (the upstream refused: its reason is
  kept) or ``conflict`` (an upstream 412); it is never deleted, so nothing is silently dropped.
  Only the latest version of a resource can wait for IT: once a later version of the same
  resource is closed (filed, held or conflict), every earlier ``held`` or ``conflict`` row of it
  becomes ``superseded`` (a laptop version is the whole resource, so the later one carries the
  clinician's intent, e.g. a conflict resolved in the chart). A superseded row is never released:
  an old version can never be filed over a newer one.
  ``upstream_filed`` maps a gateway resource to its upstream id and version.
- **Stamps** (queries in ``outbox_tables``). ``upstream_stamps`` lists the versions the
  gateway wrote only to tag a note's filing state (``sync.protocol.fhir.filing``): same
  content as the version before. A laptop's ``ifMatch`` on a version followed only by stamps
  is not a conflict (``only_stamps_after``).
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


IMPORTED_UPSERT = (
    "ON CONFLICT (type, id) DO UPDATE SET upstream_version = excluded.upstream_version,"
    " site = excluded.site, patient_id = excluded.patient_id,"
    " imported_us = excluded.imported_us"
)


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
        self._upsert_imports(rows, to_us(now))
        if self._execute("SELECT 1 FROM upstream_quarantine LIMIT 1").fetchone() is not None:
            self._executemany(
                "DELETE FROM upstream_quarantine WHERE type = ? AND id = ?",
                [(rtype, rid) for rtype, rid, *_ in rows],
            )

    def _upsert_imports(self, rows: Sequence[tuple[str, str, str, str, str]], at_us: int) -> None:
        """Each (type, id, upstream version, site, patient) as imported at ``at_us``, in order
        (a later row of the same key wins). PostgreSQL sends them as one statement."""
        self._executemany(
            "INSERT INTO upstream_imported"  # noqa: S608 (constants only)
            " (type, id, upstream_version, site, patient_id, imported_us)"
            " VALUES (?, ?, ?, ?, ?, ?) " + IMPORTED_UPSERT,
            [(*row, at_us) for row in rows],
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
        settle it: a success of a device of the resource's own site, about the same patient;
        ``made_after``: at or after the row became a conflict (by the laptop's clock). The
        caller reads the entry's detail."""
        rows = self._rows(
            "SELECT o.type, o.id, o.version_id, r.site, a.canonical, a.mac,"
            " CASE WHEN a.ts_us >= o.done_us THEN 1 ELSE 0 END FROM upstream_outbox o"
            " JOIN resources r ON r.type = o.type AND r.id = o.id"
            " JOIN audit_entries a ON a.site = r.site AND a.patient_id = r.patient_id"
            " AND a.action = 'conflict_resolved' AND a.outcome = 'success'"
            " WHERE o.state = 'conflict' ORDER BY o.seq, a.device_id, a.seq"
        )
        return [
            ConflictResolution(str(t), str(i), int(v), str(s), str(c), str(m), bool(after))
            for t, i, v, s, c, m, after in rows
        ]


@dataclass(frozen=True)
class TransactionSize:
    size: int  # the largest transaction not refused since ``probed_at``
    probed_at: dt.datetime  # when a pass last started from the largest size allowed


@dataclass(frozen=True)
class ConflictResolution:
    rtype: str
    rid: str
    version_id: int  # the conflict row's version (the refused edit's, here)
    site: str  # the resource's site, which is the device's
    canonical: str  # the stored audit entry (verified when it was stored)
    mac: str
    made_after: bool  # the entry's time is at or after the row became a conflict
