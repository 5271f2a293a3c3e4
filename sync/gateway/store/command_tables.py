"""Signed policies as published, and the commands queued for devices (wipe, lock, revoke_user).

Invariants (``store.ControlStore``): a (site, version) is published once; a command is
completed once (only while ``pending``), and a done wipe marks the device ``wiped`` in the
transaction that stores its receipt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson

from sync.gateway.store.base import (
    CommandRecord,
    CommandStatus,
    PolicyRecord,
    StoreError,
    from_us,
    to_us,
)
from sync.gateway.store.tables import SqlTables, opt_time

COMMAND_SCHEMA: tuple[str, ...] = (
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
)
_COMMAND_COLS = "command_id, device_id, kind, user_id, issued_us, status, receipt, completed_us"


def _command(row: Sequence[Any]) -> CommandRecord:
    return CommandRecord(
        command_id=row[0],
        device_id=row[1],
        kind=row[2],
        user_id=row[3],
        issued_at=from_us(int(row[4])),
        status=row[5],
        receipt=row[6],
        completed_at=opt_time(row[7]),
    )


class CommandTables(SqlTables):
    # -- policies ------------------------------------------------------------------------------
    def add_policy(self, policy: PolicyRecord) -> None:
        devices = None if policy.devices is None else orjson.dumps(list(policy.devices)).decode()
        with self._write() as execute:
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
        rows = self._rows(
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
        with self._write() as execute:
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
        rows = self._rows(
            f"SELECT {_COMMAND_COLS} FROM commands WHERE device_id = ?"  # noqa: S608
            " AND status = 'pending' ORDER BY issued_us, command_id",
            (device_id,),
        )
        return [_command(r) for r in rows]

    def complete_command(
        self, command_id: str, status: CommandStatus, receipt: str, now: dt.datetime
    ) -> bool:
        with self._changing_devices(), self._write() as execute:  # a wipe's receipt: wiped
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
