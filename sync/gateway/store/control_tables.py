"""The control-plane tables in portable SQL, shared by the SQLite and PostgreSQL backends.

Invariants (``store.ControlStore``):
- Portable SQL only: ``?`` placeholders, no upsert, no RETURNING, integers (µs since the epoch)
  for time, TEXT for binary values (hex), so a backend supplies only ``_control_write`` (one
  write transaction) and ``_control_read`` (a read) — PostgreSQL rewrites ``?`` to ``%s``.
- An enrolment token is consumed by one conditional UPDATE inside the enrolling transaction:
  ``used_us IS NULL AND expires_us > now``. Whatever the interleaving, one use wins; the token,
  the device row and the device's audit-chain genesis commit together or not at all.
- ``audit_append`` moves a chain only from the state the caller verified against
  (compare-and-set on seq and head), with the entries in the same transaction.
- A wipe receipt marks the device ``wiped`` in the transaction that stores the receipt.
- Secrets are never stored in the clear: tokens as SHA-256, passwords as Argon2id. The audit
  keys (k0 and the current chain key) are stored: the gateway is the verifier that shares them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

import orjson

from sync.gateway.store.base import (
    AuditAlert,
    AuditChainRecord,
    AuditQuery,
    AuditRow,
    CommandRecord,
    CommandStatus,
    ControlStore,
    EnrolledDevice,
    EnrolTokenRecord,
    PolicyRecord,
    SessionRecord,
    SiteRecord,
    StoreError,
    UserRecord,
    UserStatus,
    from_us,
    to_us,
)
from sync.protocol.audit.chain import genesis_hash

CONTROL_SCHEMA: tuple[str, ...] = (
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
    """CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    created_us BIGINT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS login_failures (
    user_id TEXT NOT NULL,
    at_us BIGINT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS login_failures_user ON login_failures (user_id, at_us)",
    """CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    site TEXT NOT NULL,
    device_id TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    expires_us BIGINT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS policies (
    site TEXT NOT NULL,
    version BIGINT NOT NULL,
    devices TEXT,
    envelope TEXT NOT NULL,
    published_us BIGINT NOT NULL,
    PRIMARY KEY (site, version)
)""",
    """CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_id TEXT,
    issued_us BIGINT NOT NULL,
    status TEXT NOT NULL,
    receipt TEXT,
    completed_us BIGINT
)""",
    "CREATE INDEX IF NOT EXISTS commands_device ON commands (device_id, status)",
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


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> Any: ...


class Execute(Protocol):
    def __call__(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


def _opt_time(us: int | None) -> dt.datetime | None:
    return None if us is None else from_us(int(us))


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


def _command(row: Sequence[Any]) -> CommandRecord:
    return CommandRecord(
        command_id=row[0],
        device_id=row[1],
        kind=row[2],
        user_id=row[3],
        issued_at=from_us(int(row[4])),
        status=row[5],
        receipt=row[6],
        completed_at=_opt_time(row[7]),
    )


_COMMAND_COLS = "command_id, device_id, kind, user_id, issued_us, status, receipt, completed_us"


class SqlControlTables:
    """``store.ControlStore`` over two primitives the backend supplies."""

    def _control_write(self) -> AbstractContextManager[Execute]:
        raise NotImplementedError

    def _control_read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._control_read(sql, args)
        return rows[0] if rows else None

    # -- sites ---------------------------------------------------------------------------------
    def add_site(self, site: str, name: str, now: dt.datetime) -> bool:
        with self._control_write() as execute:
            if execute("SELECT 1 FROM sites WHERE site = ?", (site,)).fetchone():
                return False
            execute(
                "INSERT INTO sites (site, name, created_us) VALUES (?, ?, ?)",
                (site, name, to_us(now)),
            )
        return True

    def sites(self) -> list[SiteRecord]:
        rows = self._control_read("SELECT site, name, created_us FROM sites ORDER BY site")
        return [SiteRecord(r[0], r[1], from_us(int(r[2]))) for r in rows]

    # -- enrolment -----------------------------------------------------------------------------
    def add_enrol_token(
        self, token_hash: str, site: str, *, now: dt.datetime, expires_at: dt.datetime
    ) -> None:
        with self._control_write() as execute:
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
            row[0], row[1], from_us(int(row[2])), from_us(int(row[3])), _opt_time(row[4]), row[5]
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
    ) -> str:
        now_us = to_us(now)
        with self._control_write() as execute:
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
        return site

    def renew_device_cert(
        self, device_id: str, cert_serial: str, cert_not_after: dt.datetime
    ) -> None:
        with self._control_write() as execute:
            execute(
                "UPDATE device_enrolments SET cert_serial = ?, cert_not_after_us = ?"
                " WHERE device_id = ?",
                (cert_serial, to_us(cert_not_after), device_id),
            )

    def current_cert_serial(self, device_id: str) -> str | None:
        """The serial of the device's current certificate (None: not enrolled here)."""
        rows = self._control_read(
            "SELECT cert_serial FROM device_enrolments WHERE device_id = ?", (device_id,)
        )
        return str(rows[0][0]) if rows else None

    def touch_device(self, device_id: str, now: dt.datetime) -> None:
        with self._control_write() as execute:
            execute(
                "UPDATE device_enrolments SET last_seen_us = ? WHERE device_id = ?",
                (to_us(now), device_id),
            )

    def enrolled_devices(self, site: str | None = None) -> list[EnrolledDevice]:
        sql = (
            "SELECT d.device_id, d.site, d.status, e.enrolled_us, e.cert_serial,"
            " e.cert_not_after_us, e.last_seen_us, c.seq, c.head_hash FROM devices d"
            " LEFT JOIN device_enrolments e ON e.device_id = d.device_id"
            " LEFT JOIN audit_chains c ON c.device_id = d.device_id"
        )
        args: tuple[Any, ...] = ()
        if site is not None:
            sql += " WHERE d.site = ?"
            args = (site,)
        rows = self._control_read(sql + " ORDER BY d.site, d.device_id", args)
        return [
            EnrolledDevice(
                device_id=r[0],
                site=r[1],
                status=r[2],
                enrolled_at=_opt_time(r[3]),
                cert_serial=r[4],
                cert_not_after=_opt_time(r[5]),
                last_seen=_opt_time(r[6]),
                audit_seq=int(r[7] or 0),
                audit_head=r[8],
            )
            for r in rows
        ]

    # -- users and sessions --------------------------------------------------------------------
    def add_user(self, user: UserRecord) -> None:
        with self._control_write() as execute:
            if execute("SELECT 1 FROM users WHERE user_id = ?", (user.user_id,)).fetchone():
                raise StoreError("user_exists")
            execute(
                "INSERT INTO users (user_id, site, role, password_hash, status, created_us)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    user.user_id,
                    user.site,
                    user.role,
                    user.password_hash,
                    user.status,
                    to_us(user.created_at),
                ),
            )

    def user(self, user_id: str) -> UserRecord | None:
        row = self._one(
            "SELECT user_id, site, role, password_hash, status, created_us FROM users"
            " WHERE user_id = ?",
            (user_id,),
        )
        if row is None:
            return None
        return UserRecord(row[0], row[1], row[2], row[3], row[4], from_us(int(row[5])))

    def set_user_status(self, user_id: str, status: UserStatus) -> bool:
        with self._control_write() as execute:
            changed = execute(
                "UPDATE users SET status = ? WHERE user_id = ?", (status, user_id)
            ).rowcount
        return bool(changed)

    def record_login_failure(self, user_id: str, now: dt.datetime) -> None:
        with self._control_write() as execute:
            execute(
                "INSERT INTO login_failures (user_id, at_us) VALUES (?, ?)", (user_id, to_us(now))
            )

    def login_failures_since(self, user_id: str, since: dt.datetime) -> list[dt.datetime]:
        rows = self._control_read(
            "SELECT at_us FROM login_failures WHERE user_id = ? AND at_us >= ? ORDER BY at_us",
            (user_id, to_us(since)),
        )
        return [from_us(int(r[0])) for r in rows]

    def clear_login_failures(self, user_id: str) -> None:
        with self._control_write() as execute:
            execute("DELETE FROM login_failures WHERE user_id = ?", (user_id,))

    def add_session(self, session: SessionRecord) -> None:
        with self._control_write() as execute:
            execute(
                "INSERT INTO sessions (token_hash, user_id, role, site, device_id, cert_serial,"
                " expires_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session.token_hash,
                    session.user_id,
                    session.role,
                    session.site,
                    session.device_id,
                    session.cert_serial,
                    to_us(session.expires_at),
                ),
            )

    def session(self, token_hash: str) -> SessionRecord | None:
        row = self._one(
            "SELECT token_hash, user_id, role, site, device_id, cert_serial, expires_us"
            " FROM sessions WHERE token_hash = ?",
            (token_hash,),
        )
        if row is None:
            return None
        return SessionRecord(row[0], row[1], row[2], row[3], row[4], row[5], from_us(int(row[6])))

    # -- policies ------------------------------------------------------------------------------
    def add_policy(self, policy: PolicyRecord) -> None:
        devices = None if policy.devices is None else orjson.dumps(list(policy.devices)).decode()
        with self._control_write() as execute:
            if execute(
                "SELECT 1 FROM policies WHERE site = ? AND version = ?",
                (policy.site, policy.version),
            ).fetchone():
                raise StoreError("policy_version_exists")
            execute(
                "INSERT INTO policies (site, version, devices, envelope, published_us)"
                " VALUES (?, ?, ?, ?, ?)",
                (policy.site, policy.version, devices, policy.envelope, to_us(policy.published_at)),
            )

    def policies(self, site: str) -> list[PolicyRecord]:
        rows = self._control_read(
            "SELECT site, version, devices, envelope, published_us FROM policies WHERE site = ?"
            " ORDER BY version DESC",
            (site,),
        )
        return [
            PolicyRecord(
                site=r[0],
                version=int(r[1]),
                devices=None if r[2] is None else tuple(orjson.loads(r[2])),
                envelope=r[3],
                published_at=from_us(int(r[4])),
            )
            for r in rows
        ]

    # -- commands ------------------------------------------------------------------------------
    def add_command(self, command: CommandRecord) -> None:
        with self._control_write() as execute:
            execute(
                f"INSERT INTO commands ({_COMMAND_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",  # noqa: S608
                (
                    command.command_id,
                    command.device_id,
                    command.kind,
                    command.user_id,
                    to_us(command.issued_at),
                    command.status,
                ),
            )

    def command(self, command_id: str) -> CommandRecord | None:
        row = self._one(
            f"SELECT {_COMMAND_COLS} FROM commands WHERE command_id = ?",  # noqa: S608
            (command_id,),
        )
        return _command(row) if row else None

    def pending_commands(self, device_id: str) -> list[CommandRecord]:
        rows = self._control_read(
            f"SELECT {_COMMAND_COLS} FROM commands WHERE device_id = ?"  # noqa: S608
            " AND status = 'pending' ORDER BY issued_us, command_id",
            (device_id,),
        )
        return [_command(r) for r in rows]

    def complete_command(
        self, command_id: str, status: CommandStatus, receipt: str, now: dt.datetime
    ) -> bool:
        with self._control_write() as execute:
            row = execute(
                "SELECT device_id, kind FROM commands WHERE command_id = ? AND status = 'pending'",
                (command_id,),
            ).fetchone()
            if row is None:
                return False
            done = execute(
                "UPDATE commands SET status = ?, receipt = ?, completed_us = ?"
                " WHERE command_id = ? AND status = 'pending'",
                (status, receipt, to_us(now), command_id),
            ).rowcount
            if done != 1:
                return False
            if row[1] == "wipe" and status == "done":
                execute("UPDATE devices SET status = 'wiped' WHERE device_id = ?", (row[0],))
        return True

    # -- audit ---------------------------------------------------------------------------------
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
        return [_chain(r) for r in self._control_read(sql + " ORDER BY c.device_id", args)]

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
        with self._control_write() as execute:
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
        with self._control_write() as execute:
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

    def audit_alerts(self, device_id: str | None = None) -> list[AuditAlert]:
        sql = (
            "SELECT alert_id, device_id, site, raised_us, first_bad_seq, reason, sentence"
            " FROM audit_alerts"
        )
        args: tuple[Any, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id = ?"
            args = (device_id,)
        rows = self._control_read(sql + " ORDER BY raised_us, alert_id", args)
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
        return [_audit_row(r) for r in self._control_read(sql, args)]


def iter_audit(store: ControlStore, query: AuditQuery, page: int = 500) -> Iterator[AuditRow]:
    """Every row matching ``query`` (ignoring its count/offset), page by page."""
    offset = 0
    while True:
        rows = store.search_audit(replace(query, count=page, offset=offset))
        yield from rows
        if len(rows) < page:
            return
        offset += page


__all__ = ["CONTROL_SCHEMA", "SqlControlTables", "iter_audit"]
