"""The upstream outbox's and the filing stamps' queries (issue 14), part of ``SqlStore``; their
tables, and the invariants they keep, are ``upstream_tables``'s (**Outbox**, **Stamps**).
"""

from __future__ import annotations

import datetime as dt

from sync.gateway.store.base import from_us, to_us
from sync.gateway.store.tables import SqlTables
from sync.gateway.store.upstream_tables import Filed, NotFiled, OutboxItem, OutboxState

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


class OutboxTables(SqlTables):
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

    def outbox(
        self, states: tuple[OutboxState, ...], limit: int = 500, *, after: int = 0
    ) -> list[OutboxItem]:
        """Outbox rows in one of ``states`` with a seq above ``after``, oldest first."""
        marks = ", ".join("?" for _ in states)
        rows = self._rows(
            f"SELECT {_OUTBOX_COLS} FROM upstream_outbox WHERE state IN ({marks})"  # noqa: S608
            " AND seq > ? ORDER BY seq LIMIT ?",
            (*states, after, limit),
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
            # A note of an imported patient is held as imported from now on, at its site and
            # patient (an imported record edited here: its upstream version moved), so the
            # import follows the health record's deletion of it, and its patient's moves. A
            # note of a patient the import does not hold (one a laptop registered) is not:
            # the import never reads it back, and would take it for deleted.
            execute(
                "INSERT INTO upstream_imported"
                " (type, id, upstream_version, site, patient_id, imported_us)"
                " SELECT r.type, r.id, ?, r.site, r.patient_id, ? FROM resources r"
                " JOIN upstream_imported p ON p.type = 'Patient' AND p.id = r.patient_id"
                " WHERE r.type = ? AND r.id = ?"
                " ON CONFLICT (type, id)"
                " DO UPDATE SET upstream_version = excluded.upstream_version",
                (filed.upstream_version, to_us(now), filed.rtype, filed.rid),
            )
            execute(  # any other: an imported record's row, if it has one, follows its version
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

    def outbox_settled_by_clinician(
        self, rtype: str, rid: str, site: str, now: dt.datetime, *, version: int | None = None
    ) -> int:
        """A clinician of ``site`` kept the health record's version in an upstream conflict:
        the resource's ``conflict`` rows (only that of ``version`` when given) become
        ``superseded`` (nothing is filed; never released again). Only a resource of that
        site; returns the rows closed."""
        named = 0 if version is None else version  # versions start at 1: 0 names none
        with self._write() as execute:
            return execute(
                "UPDATE upstream_outbox SET state = 'superseded', done_us = ?,"
                " detail = 'clinician kept the health record version'"
                " WHERE type = ? AND id = ? AND state = 'conflict'"
                " AND (version_id = ? OR ? = 0)"
                " AND EXISTS (SELECT 1 FROM resources r WHERE r.type = ? AND r.id = ?"
                " AND r.site = ?)",
                (to_us(now), rtype, rid, named, named, rtype, rid, site),
            ).rowcount

    def latest_outbox(self, rtype: str, rid: str) -> OutboxItem | None:
        """The last version of this resource queued for the upstream (any state)."""
        row = self._one(
            f"SELECT {_OUTBOX_COLS} FROM upstream_outbox WHERE type = ? AND id = ?"  # noqa: S608
            " ORDER BY seq DESC LIMIT 1",
            (rtype, rid),
        )
        return None if row is None else _item(row)

    def outbox_pending_of(self, rtype: str, rid: str) -> list[OutboxItem]:
        """The versions of this resource queued and not filed yet, oldest first (works inside a
        write transaction: same connection)."""
        rows = self._rows(
            f"SELECT {_OUTBOX_COLS} FROM upstream_outbox WHERE type = ? AND id = ?"  # noqa: S608
            " AND state = 'pending' ORDER BY seq",
            (rtype, rid),
        )
        return [_item(r) for r in rows]

    def outbox_pending(self, rtype: str, rid: str) -> bool:
        """Whether a version of this resource is queued for the upstream (coming)."""
        row = self._one(
            "SELECT 1 FROM upstream_outbox WHERE type = ? AND id = ? AND state = 'pending'",
            (rtype, rid),
        )
        return row is not None

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
