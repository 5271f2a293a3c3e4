"""Users (gateway accounts for online login), their failed sign-ins, and their sessions.

Invariants (``store.ControlStore``): passwords are stored only as Argon2id PHC strings and
session tokens only as their SHA-256; a session names the device certificate it is bound to.
Failed sign-ins are kept per (user id, device id) in ``login_failures_by_device`` (the older
per-user ``login_failures`` table is no longer written: counting per user let anyone with an
enrolled laptop lock a user out everywhere, issue 15). ``login_gate`` decides and counts an
attempt in ONE write transaction that first locks the device's ``login_gates`` row, so the
parallel attempts of a device are counted one after another and cannot all pass a gate that
only the first few may pass (with or without a store-wide writer lock).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from sync.gateway.store.base import (
    LoginSpread,
    SessionRecord,
    StoreError,
    UserRecord,
    UserStatus,
    from_us,
    to_us,
)
from sync.gateway.store.tables import SqlTables

USER_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    created_us BIGINT NOT NULL
)""",
    # Each row is one sign-in attempt counted before its password check: a failure, or an
    # attempt still being checked (a success deletes the rows of its user on its device).
    """CREATE TABLE IF NOT EXISTS login_failures_by_device (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    at_us BIGINT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS login_failures_device"
    " ON login_failures_by_device (device_id, at_us)",
    "CREATE INDEX IF NOT EXISTS login_failures_user ON login_failures_by_device (user_id, at_us)",
    # One row per device that ever tried to sign in: ``login_gate`` updates it first, so the
    # row lock serialises the sign-in attempts of one device even without a store-wide
    # writer lock (every throttle decision is about one device).
    """CREATE TABLE IF NOT EXISTS login_gates (
    device_id TEXT PRIMARY KEY,
    last_us BIGINT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    site TEXT NOT NULL,
    device_id TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    expires_us BIGINT NOT NULL
)""",
)


class UserTables(SqlTables):
    def add_user(self, user: UserRecord) -> None:
        with self._write() as execute:
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
        with self._write() as execute:
            changed = execute(
                "UPDATE users SET status = ? WHERE user_id = ?", (status, user_id)
            ).rowcount
        return bool(changed)

    def login_gate(
        self,
        user_id: str,
        device_id: str,
        now: dt.datetime,
        *,
        since: dt.datetime,
        decide: Callable[[Sequence[dt.datetime], Sequence[dt.datetime]], dt.datetime | None],
    ) -> dt.datetime | None:
        with self._write() as execute:
            # Serialise this device's attempts: its gate row is locked until COMMIT. (Two
            # first-ever attempts racing to insert it: one fails, uncounted and unchecked.)
            locked = execute(
                "UPDATE login_gates SET last_us = ? WHERE device_id = ?", (to_us(now), device_id)
            ).rowcount
            if not locked:
                execute(
                    "INSERT INTO login_gates (device_id, last_us) VALUES (?, ?)",
                    (device_id, to_us(now)),
                )
            # What is older than the memory is forgotten (this device's rows only: cheap).
            execute(
                "DELETE FROM login_failures_by_device WHERE device_id = ? AND at_us < ?",
                (device_id, to_us(since)),
            )
            rows = execute(
                "SELECT user_id, at_us FROM login_failures_by_device"
                " WHERE device_id = ? AND at_us >= ? ORDER BY at_us",
                (device_id, to_us(since)),
            ).fetchall()
            on_device = [from_us(int(r[1])) for r in rows]
            for_pair = [from_us(int(r[1])) for r in rows if r[0] == user_id]
            blocked_until = decide(for_pair, on_device)
            if blocked_until is None:
                execute(
                    "INSERT INTO login_failures_by_device (user_id, device_id, at_us)"
                    " VALUES (?, ?, ?)",
                    (user_id, device_id, to_us(now)),
                )
        return blocked_until

    def forget_login_failures(self, user_id: str, device_id: str) -> None:
        with self._write() as execute:
            execute(
                "DELETE FROM login_failures_by_device WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            )

    def login_spread(self, user_id: str, device_id: str, since: dt.datetime) -> LoginSpread:
        devices = self._one(
            "SELECT COUNT(DISTINCT device_id) FROM login_failures_by_device"
            " WHERE user_id = ? AND at_us >= ?",
            (user_id, to_us(since)),
        )
        users = self._one(
            "SELECT COUNT(DISTINCT user_id) FROM login_failures_by_device"
            " WHERE device_id = ? AND at_us >= ?",
            (device_id, to_us(since)),
        )
        return LoginSpread(
            devices_for_user=int(devices[0]) if devices else 0,
            users_on_device=int(users[0]) if users else 0,
        )

    def add_session(self, session: SessionRecord) -> None:
        with self._write() as execute:
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
