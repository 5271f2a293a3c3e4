"""Sites, devices and their enrolment (one-time tokens, certificates, last contact).

Invariants (``store.ControlStore``):
- An enrolment token is stored only as its SHA-256 and consumed by one conditional UPDATE inside
  the enrolling transaction: ``used_us IS NULL AND expires_us > now``. Whatever the
  interleaving, one use wins; the token, the device row and the device's audit-chain genesis
  commit together or not at all.
- ``set_device`` and every other write run in a writer-locked transaction (``SqlTables._write``),
  but for ``touch_device``: one UPDATE that only moves ``last_seen_us`` forward, reading nothing.
- Every write to a device's status, site or certificate moves ``device_changes()`` (one counter
  per process) once it has committed (or failed), so a cache of device states in this process
  that compares it before a hit never serves a state this process has changed.
- A device's wipe-report key is stored in the enrolling transaction; a wipe report moves the
  device to ``wiped`` and keeps the first report only (WP-3); nothing here moves a device out
  of ``wiped``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sync.gateway.store.base import (
    DeviceAdmission,
    DeviceRecord,
    DeviceStatus,
    EnrolledDevice,
    EnrolTokenRecord,
    SiteRecord,
    StoreError,
    WipeReportOutcome,
    WipeReportRecord,
    from_us,
    to_us,
)
from sync.gateway.store.tables import SqlTables, opt_time
from sync.protocol.audit.chain import genesis_hash

DEVICE_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    status TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS sites (
    site TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_us BIGINT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS enrol_tokens (
    token_hash TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL,
    used_us BIGINT,
    device_id TEXT
)""",
    """CREATE TABLE IF NOT EXISTS device_enrolments (
    device_id TEXT PRIMARY KEY,
    enrolled_us BIGINT NOT NULL,
    cert_serial TEXT NOT NULL,
    cert_not_after_us BIGINT NOT NULL,
    last_seen_us BIGINT
)""",
    """CREATE TABLE IF NOT EXISTS wipe_reports (
    device_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    report_id TEXT,
    cause TEXT,
    wiped_us BIGINT,
    received_us BIGINT,
    command_id TEXT,
    statement TEXT
)""",
)


class DeviceTables(SqlTables):
    # -- sites ---------------------------------------------------------------------------------
    def add_site(self, site: str, name: str, now: dt.datetime) -> bool:
        with self._write() as execute:
            if execute("SELECT 1 FROM sites WHERE site = ?", (site,)).fetchone():
                return False
            execute(
                "INSERT INTO sites (site, name, created_us) VALUES (?, ?, ?)",
                (site, name, to_us(now)),
            )
        return True

    def sites(self) -> list[SiteRecord]:
        rows = self._rows("SELECT site, name, created_us FROM sites ORDER BY site")
        return [SiteRecord(r[0], r[1], from_us(int(r[2]))) for r in rows]

    # -- devices -------------------------------------------------------------------------------
    def device(self, device_id: str) -> DeviceRecord | None:
        row = self._one(
            "SELECT device_id, site, status FROM devices WHERE device_id = ?", (device_id,)
        )
        return DeviceRecord(row[0], row[1], row[2]) if row else None

    def device_admission(self, device_id: str) -> DeviceAdmission | None:
        row = self._one(
            "SELECT d.site, d.status, e.cert_serial FROM devices d"
            " LEFT JOIN device_enrolments e ON e.device_id = d.device_id"
            " WHERE d.device_id = ?",
            (device_id,),
        )
        if row is None:
            return None
        return DeviceAdmission(row[0], row[1], None if row[2] is None else str(row[2]))

    def set_device(self, device_id: str, site: str, status: DeviceStatus) -> None:
        with self._changing_devices(), self._write() as execute:
            if not execute(
                "UPDATE devices SET site = ?, status = ? WHERE device_id = ?",
                (site, status, device_id),
            ).rowcount:
                execute(
                    "INSERT INTO devices (device_id, site, status) VALUES (?, ?, ?)",
                    (device_id, site, status),
                )

    # -- enrolment -----------------------------------------------------------------------------
    def add_enrol_token(
        self, token_hash: str, site: str, *, now: dt.datetime, expires_at: dt.datetime
    ) -> None:
        with self._write() as execute:
            execute(
                "INSERT INTO enrol_tokens (token_hash, site, created_us, expires_us)"
                " VALUES (?, ?, ?, ?)",
                (token_hash, site, to_us(now), to_us(expires_at)),
            )

    def enrol_token(self, token_hash: str) -> EnrolTokenRecord | None:
        row = self._one(
            "SELECT token_hash, site, created_us, expires_us, used_us, device_id"
            " FROM enrol_tokens WHERE token_hash = ?",
            (token_hash,),
        )
        if row is None:
            return None
        return EnrolTokenRecord(
            row[0], row[1], from_us(int(row[2])), from_us(int(row[3])), opt_time(row[4]), row[5]
        )

    def enrol_device(
        self,
        token_hash: str,
        *,
        now: dt.datetime,
        device_id: str,
        cert_serial: str,
        cert_not_after: dt.datetime,
        audit_k0: bytes,
        wipe_report_key: str | None = None,
    ) -> str:
        now_us = to_us(now)
        with self._changing_devices(), self._write() as execute:
            row = execute(
                "SELECT site, expires_us, used_us FROM enrol_tokens WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None:
                raise StoreError("token_unknown")
            site, expires_us, used_us = str(row[0]), int(row[1]), row[2]
            if used_us is not None:
                raise StoreError("token_used")
            if expires_us <= now_us:
                raise StoreError("token_expired")
            won = execute(
                "UPDATE enrol_tokens SET used_us = ?, device_id = ? WHERE token_hash = ?"
                " AND used_us IS NULL AND expires_us > ?",
                (now_us, device_id, token_hash, now_us),
            ).rowcount
            if won != 1:
                raise StoreError("token_used")
            if execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone():
                raise StoreError("device_exists")
            execute(
                "INSERT INTO devices (device_id, site, status) VALUES (?, ?, 'active')",
                (device_id, site),
            )
            execute(
                "INSERT INTO device_enrolments (device_id, enrolled_us, cert_serial,"
                " cert_not_after_us, last_seen_us) VALUES (?, ?, ?, ?, ?)",
                (device_id, now_us, cert_serial, to_us(cert_not_after), now_us),
            )
            execute(
                "INSERT INTO audit_chains (device_id, site, k0, seq, head_hash, chain_key,"
                " receipt) VALUES (?, ?, ?, 0, ?, ?, NULL)",
                (device_id, site, audit_k0.hex(), genesis_hash(device_id), audit_k0.hex()),
            )
            if wipe_report_key is not None:
                execute(
                    "INSERT INTO wipe_reports (device_id, public_key) VALUES (?, ?)",
                    (device_id, wipe_report_key),
                )
        return site

    def renew_device_cert(
        self, device_id: str, cert_serial: str, cert_not_after: dt.datetime
    ) -> None:
        with self._changing_devices(), self._write() as execute:
            execute(
                "UPDATE device_enrolments SET cert_serial = ?, cert_not_after_us = ?"
                " WHERE device_id = ?",
                (cert_serial, to_us(cert_not_after), device_id),
            )

    def current_cert_serial(self, device_id: str) -> str | None:
        """The serial of the device's current certificate (None: not enrolled here)."""
        row = self._one(
            "SELECT cert_serial FROM device_enrolments WHERE device_id = ?", (device_id,)
        )
        return str(row[0]) if row else None

    def touch_device(self, device_id: str, now: dt.datetime) -> None:
        now_us = to_us(now)
        with self._dialect.store_errors():
            self._execute(
                "UPDATE device_enrolments SET last_seen_us = ? WHERE device_id = ?"
                " AND (last_seen_us IS NULL OR last_seen_us < ?)",
                (now_us, device_id, now_us),
            )

    def enrolled_devices(self, site: str | None = None) -> list[EnrolledDevice]:
        sql = (
            "SELECT d.device_id, d.site, d.status, e.enrolled_us, e.cert_serial,"
            " e.cert_not_after_us, e.last_seen_us, c.seq, c.head_hash, w.cause, w.wiped_us"
            " FROM devices d"
            " LEFT JOIN device_enrolments e ON e.device_id = d.device_id"
            " LEFT JOIN audit_chains c ON c.device_id = d.device_id"
            " LEFT JOIN wipe_reports w ON w.device_id = d.device_id"
        )
        args: tuple[Any, ...] = ()
        if site is not None:
            sql += " WHERE d.site = ?"
            args = (site,)
        rows = self._rows(sql + " ORDER BY d.site, d.device_id", args)
        return [
            EnrolledDevice(
                device_id=r[0],
                site=r[1],
                status=r[2],
                enrolled_at=opt_time(r[3]),
                cert_serial=r[4],
                cert_not_after=opt_time(r[5]),
                last_seen=opt_time(r[6]),
                audit_seq=int(r[7] or 0),
                audit_head=r[8],
                wipe_cause=r[9],
                wiped_at=opt_time(r[10]),
            )
            for r in rows
        ]

    # -- wipe reports (WP-3) -------------------------------------------------------------------
    def wipe_report_key(self, device_id: str) -> str | None:
        row = self._one("SELECT public_key FROM wipe_reports WHERE device_id = ?", (device_id,))
        return str(row[0]) if row else None

    def record_wipe_report(
        self,
        report: WipeReportRecord,
        *,
        now: dt.datetime,
        command_receipt: str | None,
        alert_sentence: str,
    ) -> WipeReportOutcome:
        now_us = to_us(now)
        with self._changing_devices(), self._write() as execute:
            row = execute(
                "SELECT report_id FROM wipe_reports WHERE device_id = ?", (report.device_id,)
            ).fetchone()
            if row is None:
                raise StoreError("unknown_device")
            if row[0] is not None:
                return "duplicate" if row[0] == report.report_id else "already_reported"
            execute(
                "UPDATE wipe_reports SET report_id = ?, cause = ?, wiped_us = ?, received_us = ?,"
                " command_id = ?, statement = ? WHERE device_id = ? AND report_id IS NULL",
                (
                    report.report_id,
                    report.cause,
                    to_us(report.wiped_at),
                    now_us,
                    report.command_id,
                    report.statement,
                    report.device_id,
                ),
            )
            execute("UPDATE devices SET status = 'wiped' WHERE device_id = ?", (report.device_id,))
            site = execute(
                "SELECT site FROM devices WHERE device_id = ?", (report.device_id,)
            ).fetchone()
            execute(
                "INSERT INTO audit_alerts (alert_id, device_id, site, raised_us, first_bad_seq,"
                " reason, sentence) VALUES (?, ?, ?, ?, NULL, ?, ?)",
                (
                    f"wipe-{report.report_id}",
                    report.device_id,
                    str(site[0]) if site else "",
                    now_us,
                    "device_wiped",
                    alert_sentence,
                ),
            )
            if report.command_id is not None and command_receipt is not None:
                execute(
                    "UPDATE commands SET status = 'done', receipt = ?, completed_us = ?"
                    " WHERE command_id = ? AND device_id = ? AND kind = 'wipe'"
                    " AND status = 'pending'",
                    (command_receipt, now_us, report.command_id, report.device_id),
                )
        return "recorded"
