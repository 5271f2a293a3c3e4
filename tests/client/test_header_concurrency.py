"""M2: two processes (a window and the device CLI) never undo each other's header writes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from client.core.kdf import FLOOR
from client.core.keyslots import KeyslotError, UnlockFailed
from client.core.vault_header import VaultHeader
from tests.support.keyslots import make_device

NOW = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)


def test_counts_from_another_process_are_never_undone(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    window = VaultHeader.load(device.data_dir, device.keyring)  # loaded long ago
    cli = VaultHeader.load(device.data_dir, device.keyring)
    for _ in range(4):
        with pytest.raises(UnlockFailed):
            cli.unlock("alice", "wrong password!!", now=NOW)
    with pytest.raises(UnlockFailed):
        window.unlock("alice", "wrong password!!", now=NOW)  # writes through the old object
    counters = VaultHeader.load(device.data_dir, device.keyring).counters
    assert counters.failed_attempts["alice"] == 5
    assert len(counters.pending_audit_events) == 5


def test_a_stale_slot_change_is_refused_not_silently_applied(tmp_path: Path) -> None:
    device = make_device(tmp_path)
    stale = VaultHeader.load(device.data_dir, device.keyring)
    device.header.update_counters(lambda c: setattr(c, "device_failed_attempts", 3))
    with pytest.raises(KeyslotError) as caught:
        stale.add_slot("bob", "auditor", "a long enough password", device.dek, FLOOR)
    assert caught.value.reason == "header_changed"
    assert VaultHeader.load(device.data_dir, device.keyring).counters.device_failed_attempts == 3
