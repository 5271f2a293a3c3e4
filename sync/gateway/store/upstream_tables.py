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
- Portable SQL only (``store.tables``); nothing here holds record content except the
  quarantine's reason code and JSON path.
"""

from __future__ import annotations

import datetime as dt
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
    """CREATE TABLE IF NOT EXISTS upstream_quarantine (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    reason TEXT NOT NULL,
    path TEXT NOT NULL,
    seen_us INTEGER NOT NULL,
    PRIMARY KEY (type, id)
)""",
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


@dataclass(frozen=True)
class QuarantinedImport:
    rtype: str
    rid: str
    reason: str
    path: str
    seen_at: dt.datetime


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

    # -- quarantine
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

    def upstream_quarantine(self) -> list[QuarantinedImport]:
        rows = self._rows(
            "SELECT type, id, reason, path, seen_us FROM upstream_quarantine ORDER BY type, id"
        )
        return [
            QuarantinedImport(str(t), str(i), str(r), str(p), from_us(int(u)))
            for t, i, r, p, u in rows
        ]
