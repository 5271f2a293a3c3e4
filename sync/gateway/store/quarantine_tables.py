"""The upstream import's quarantine (issue 14), part of ``SqlStore``: what the import refused.

Invariants: ``upstream_quarantine`` holds the open rows (``upstream status`` lists them), one
per (type, id), the last reason seen; ``upstream_quarantine_log`` keeps every row, open
(``cleared_us`` NULL) or closed with when and why (``imported``, ``gone``, ``superseded``,
``cleared_by_it``). A record that imports cleanly loses its open row in the import's own
transaction (``UpstreamTables.record_import_in_tx``/``record_imports_in_tx``);
``settle_quarantine_log`` logs those closings after the pass. The tables are created with the
rest of ``UPSTREAM_SCHEMA``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from sync.gateway.store.base import from_us, to_us
from sync.gateway.store.tables import SqlTables

QuarantineCause = Literal["imported", "gone", "superseded", "cleared_by_it"]
KEPT_OPEN_REASONS: tuple[str, ...] = ("missing_patient_reference",)  # never listed by patient


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


class QuarantineTables(SqlTables):
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
