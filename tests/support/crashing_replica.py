"""The product's replica made to die mid-write (the process 'dies' inside a transaction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from client.core.audit_log import AuditLog
from client.core.replica import VaultReplica
from client.core.vault import Vault
from sync.device.replica import ApplyStats, Page, SentItem
from tests.support.sync import replica_settings


class Crash(Exception):
    """The process 'died': the vault's connection was dropped inside a transaction."""


class CrashingReplica(VaultReplica):
    """The product's replica, made to die at its ``crash_at``-th write call: a transaction is
    opened, damage is written, and the connection is closed before COMMIT."""

    def __init__(self, vault: Vault, site: str, crash_at: int) -> None:
        super().__init__(lambda: vault.connection, AuditLog(), **replica_settings(site))
        self._vault = vault
        self._crash_at = crash_at
        self._calls = 0

    def _maybe_crash(self) -> None:
        self._calls += 1
        if self._calls == self._crash_at:
            conn = self._vault.connection
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM sync_cursors")
            conn.execute("UPDATE outbox SET state = 'sent'")
            conn.execute("DELETE FROM resources")
            self._vault.close()
            raise Crash()

    def apply_page(self, page: Page) -> ApplyStats:
        self._maybe_crash()
        return super().apply_page(page)

    def mark_sent(self, seq: int, server_id: str, server_version: str) -> None:
        self._maybe_crash()
        super().mark_sent(seq, server_id, server_version)

    def mark_sent_batch(self, sent: Sequence[SentItem]) -> Mapping[int, str]:
        self._maybe_crash()
        return super().mark_sent_batch(sent)
