"""The gateway's copy of each device's audit chain: chain state, entries, alerts; searches.

Invariants (``store.ControlStore``):
- ``audit_append`` moves a chain only from the state the caller verified against
  (compare-and-set on seq and head), with the entries in the same transaction; of two
  concurrent uploads for one device, at most one extends the chain from a given state.
- The audit keys (k0 and the current chain key) are stored (as hex): the gateway is the
  verifier that shares them. They never appear in a ``repr``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from sync.gateway.store.base import (
    AuditAlert,
    AuditChainRecord,
    AuditQuery,
    AuditRow,
    ControlStore,
    from_us,
    to_us,
)
from sync.gateway.store.tables import SqlTables

AUDIT_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS audit_chains (
    device_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    k0 TEXT NOT NULL,
    seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    chain_key TEXT NOT NULL,
    receipt TEXT
)""",
    """CREATE TABLE IF NOT EXISTS audit_entries (
    device_id TEXT NOT NULL,
    site TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts_us BIGINT NOT NULL,
    user_id TEXT,
    role TEXT,
    action TEXT NOT NULL,
    fhir_action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    patient_id TEXT,
    purpose TEXT,
    entry_hash TEXT NOT NULL,
    canonical TEXT NOT NULL,
    mac TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
)""",
    "CREATE INDEX IF NOT EXISTS audit_entries_time ON audit_entries (site, ts_us)",
    "CREATE INDEX IF NOT EXISTS audit_entries_patient ON audit_entries (patient_id)",
    "CREATE INDEX IF NOT EXISTS audit_entries_user ON audit_entries (user_id)",
    """CREATE TABLE IF NOT EXISTS audit_alerts (
    alert_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    site TEXT NOT NULL,
    raised_us BIGINT NOT NULL,
    first_bad_seq BIGINT,
    reason TEXT NOT NULL,
    sentence TEXT NOT NULL
)""",
)
_AUDIT_COLS = (
    "device_id, site, seq, ts_us, user_id, role, action, fhir_action, outcome, patient_id,"
    " purpose, entry_hash, canonical, mac"
)
_CHAIN_COLS = (
    "c.device_id, c.site, c.k0, c.seq, c.head_hash, c.chain_key, c.receipt,"
    " (SELECT COUNT(*) FROM audit_alerts a WHERE a.device_id = c.device_id)"
)


def _chain(row: Sequence[Any]) -> AuditChainRecord:
    return AuditChainRecord(
        device_id=row[0],
        site=row[1],
        k0=bytes.fromhex(row[2]),
        seq=int(row[3]),
        head_hash=row[4],
        key=bytes.fromhex(row[5]),
        receipt=row[6],
        alerts=int(row[7]),
    )


def _audit_row(row: Sequence[Any]) -> AuditRow:
    return AuditRow(
        device_id=row[0],
        site=row[1],
        seq=int(row[2]),
        ts=from_us(int(row[3])),
        user_id=row[4],
        role=row[5],
        action=row[6],
        fhir_action=row[7],
        outcome=row[8],
        patient_id=row[9],
        purpose=row[10],
        entry_hash=row[11],
        canonical=row[12],
        mac=row[13],
    )


class AuditTables(SqlTables):
    def audit_chain(self, device_id: str) -> AuditChainRecord | None:
        row = self._one(
            f"SELECT {_CHAIN_COLS} FROM audit_chains c WHERE c.device_id = ?",  # noqa: S608
            (device_id,),
        )
        return _chain(row) if row else None

    def audit_chains(self, site: str | None = None) -> list[AuditChainRecord]:
        sql = f"SELECT {_CHAIN_COLS} FROM audit_chains c"  # noqa: S608
        args: tuple[Any, ...] = ()
        if site is not None:
            sql += " WHERE c.site = ?"
            args = (site,)
        return [_chain(r) for r in self._rows(sql + " ORDER BY c.device_id", args)]

    def audit_entry_hash(self, device_id: str, seq: int) -> str | None:
        row = self._one(
            "SELECT entry_hash FROM audit_entries WHERE device_id = ? AND seq = ?",
            (device_id, seq),
        )
        return str(row[0]) if row else None

    def audit_append(
        self,
        device_id: str,
        *,
        expect_seq: int,
        expect_head: str,
        new_seq: int,
        new_head: str,
        new_key: bytes,
        receipt: str,
        rows: Sequence[AuditRow],
    ) -> bool:
        with self._write() as execute:
            moved = execute(
                "UPDATE audit_chains SET seq = ?, head_hash = ?, chain_key = ?, receipt = ?"
                " WHERE device_id = ? AND seq = ? AND head_hash = ?",
                (new_seq, new_head, new_key.hex(), receipt, device_id, expect_seq, expect_head),
            ).rowcount
            if moved != 1:
                return False
            for r in rows:
                execute(
                    f"INSERT INTO audit_entries ({_AUDIT_COLS})"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.device_id,
                        r.site,
                        r.seq,
                        to_us(r.ts),
                        r.user_id,
                        r.role,
                        r.action,
                        r.fhir_action,
                        r.outcome,
                        r.patient_id,
                        r.purpose,
                        r.entry_hash,
                        r.canonical,
                        r.mac,
                    ),
                )
        return True

    def add_audit_alert(self, alert: AuditAlert) -> None:
        with self._write() as execute:
            execute(
                "INSERT INTO audit_alerts (alert_id, device_id, site, raised_us, first_bad_seq,"
                " reason, sentence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    alert.alert_id,
                    alert.device_id,
                    alert.site,
                    to_us(alert.raised_at),
                    alert.first_bad_seq,
                    alert.reason,
                    alert.sentence,
                ),
            )

    def add_audit_alert_once(self, alert: AuditAlert) -> bool:
        with self._write() as execute:
            if execute(
                "SELECT 1 FROM audit_alerts WHERE alert_id = ?", (alert.alert_id,)
            ).fetchone():
                return False
            execute(
                "INSERT INTO audit_alerts (alert_id, device_id, site, raised_us, first_bad_seq,"
                " reason, sentence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    alert.alert_id,
                    alert.device_id,
                    alert.site,
                    to_us(alert.raised_at),
                    alert.first_bad_seq,
                    alert.reason,
                    alert.sentence,
                ),
            )
        return True

    def audit_alerts(self, device_id: str | None = None) -> list[AuditAlert]:
        sql = (
            "SELECT alert_id, device_id, site, raised_us, first_bad_seq, reason, sentence"
            " FROM audit_alerts"
        )
        args: tuple[Any, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id = ?"
            args = (device_id,)
        rows = self._rows(sql + " ORDER BY raised_us, alert_id", args)
        return [
            AuditAlert(
                r[0],
                r[1],
                r[2],
                from_us(int(r[3])),
                None if r[4] is None else int(r[4]),
                r[5],
                r[6],
            )
            for r in rows
        ]

    def search_audit(self, query: AuditQuery) -> list[AuditRow]:
        where: list[str] = []
        args: list[Any] = []
        equal = (
            ("site", query.site),
            ("patient_id", query.patient_id),
            ("user_id", query.user_id),
            ("device_id", query.device_id),
            ("action", query.action),
            ("fhir_action", query.fhir_action),
            ("purpose", query.purpose),
        )
        for column, value in equal:
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.since is not None:
            where.append("ts_us >= ?")
            args.append(to_us(query.since))
        if query.until is not None:
            where.append("ts_us <= ?")
            args.append(to_us(query.until))
        if query.break_glass:
            where.append("(purpose = 'BTG' OR action = 'break_glass')")
        sql = f"SELECT {_AUDIT_COLS} FROM audit_entries"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts_us, device_id, seq LIMIT ? OFFSET ?"
        args.extend((query.count, query.offset))
        return [_audit_row(r) for r in self._rows(sql, args)]


def iter_audit(store: ControlStore, query: AuditQuery, page: int = 500) -> Iterator[AuditRow]:
    """Every row matching ``query`` (ignoring its count/offset), page by page."""
    offset = 0
    while True:
        rows = store.search_audit(replace(query, count=page, offset=offset))
        yield from rows
        if len(rows) < page:
            return
        offset += page
