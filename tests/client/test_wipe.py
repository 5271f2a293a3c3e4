"""Cryptographic erase: slots and keyring secret first, then files; resumable (WP-1, WP-2)."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from client.core import wipe as wipe_module
from client.core.device_keyring import DeviceKeyring, InMemoryKeyring, KeyringSecretMissing
from client.core.errors import GatehouseError
from client.core.kdf import FLOOR
from client.core.keyslots import Slot, UnlockFailed, normalise_password, unwrap_slot
from client.core.vault import Vault, database_path
from client.core.vault_header import VaultHeader, WipePending
from client.core.wipe import STEPS, resume_wipe_if_pending, wipe, wipe_pending

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
DEVICE = "dev-0001"
PASSWORD = "correct horse battery staple"
CANARY = "CANARY-wipe-Ottoline-5521"


class SimulatedCrash(BaseException):
    """Stands for the process dying (power cut, kill -9) between two wipe steps."""


def provision(data_dir: Path, backend: InMemoryKeyring) -> bytes:
    keyring = DeviceKeyring(DEVICE, backend=backend)
    keyring.provision()
    dek = secrets.token_bytes(32)
    header = VaultHeader.create(data_dir, keyring, dek)
    header.add_slot("alice", "clinician", PASSWORD, dek, FLOOR)
    public = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    header.set_escrow(dek, public)
    vault = Vault.open(database_path(data_dir), dek, ("CREATE TABLE note (body TEXT)",))
    with vault.transaction() as conn:
        conn.execute("INSERT INTO note VALUES (?)", (CANARY,))
    vault.close()
    return dek


@pytest.fixture
def backend() -> InMemoryKeyring:
    return InMemoryKeyring()


@pytest.fixture
def data_dir(tmp_path: Path, backend: InMemoryKeyring) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    provision(folder, backend)
    return folder


def keyring_for(backend: InMemoryKeyring) -> Callable[[str], DeviceKeyring]:
    return lambda device_id: DeviceKeyring(device_id, backend=backend)


def assert_copy_is_dead(copy_dir: Path, backend: InMemoryKeyring) -> None:
    """WP-1: the copy, the right password and everything left in the keyring open nothing."""
    keyring = DeviceKeyring(DEVICE, backend=backend)
    with pytest.raises(KeyringSecretMissing):
        VaultHeader.load(copy_dir, keyring)
    body = json.loads((copy_dir / "vault.header").read_bytes())["body"]
    slots = [Slot.from_json(s) for s in body["slots"]]
    assert slots, "the copy was taken with its slots"
    leftovers = [v.encode() for v in backend.entries.values()] + [b"\x00" * 32]
    for slot in slots:
        for candidate in leftovers:
            with pytest.raises(UnlockFailed):
                unwrap_slot(slot, normalise_password(PASSWORD), candidate[:32], DEVICE)


def test_WP1_a_copy_taken_before_the_wipe_no_longer_opens(
    data_dir: Path, backend: InMemoryKeyring, tmp_path: Path
) -> None:
    copy_dir = tmp_path / "stolen-copy"
    shutil.copytree(data_dir, copy_dir)
    report = wipe(data_dir, DeviceKeyring(DEVICE, backend=backend), now=NOW, reason="remote_wipe")
    assert list(data_dir.iterdir()) == []
    assert backend.entries == {}
    assert_copy_is_dead(copy_dir, backend)
    assert report.device_id == DEVICE and report.reason == "remote_wipe"
    assert report.keyring_destroyed and not report.resumed
    for item in (
        "key_slots:1",
        "escrow_slot",
        "keyring:device_secret",
        "keyring:header_mac_key",
        "file:vault.db",
        "file:vault.header",
    ):
        assert item in report.destroyed
    assert report.destroyed.index("key_slots:1") < report.destroyed.index("keyring:device_secret")
    assert report.destroyed.index("keyring:device_secret") < report.destroyed.index("file:vault.db")
    json.dumps(report.to_json())  # plain, signable JSON


def test_WP1_slots_are_gone_from_the_header_before_the_keyring_is_touched(
    data_dir: Path, backend: InMemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def check_then_destroy(self: DeviceKeyring) -> list[str]:
        header = VaultHeader.load(data_dir, self)
        seen["slots"], seen["escrow"] = header.slots, header.escrow_blob()
        seen["pending"] = header.counters.wipe_pending
        return real(self)

    real = DeviceKeyring.destroy_all
    monkeypatch.setattr(DeviceKeyring, "destroy_all", check_then_destroy)
    wipe(data_dir, DeviceKeyring(DEVICE, backend=backend), now=NOW)
    assert seen == {"slots": (), "escrow": None, "pending": True}


@pytest.mark.parametrize("crash_after", STEPS)
def test_WP2_a_wipe_interrupted_after_any_step_completes_on_next_start(
    crash_after: str,
    data_dir: Path,
    backend: InMemoryKeyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy_dir = tmp_path / "stolen-copy"
    shutil.copytree(data_dir, copy_dir)
    real_step = getattr(wipe_module, f"_step_{crash_after}")

    def step_then_crash(state: object) -> None:
        real_step(state)
        raise SimulatedCrash(crash_after)

    monkeypatch.setattr(wipe_module, f"_step_{crash_after}", step_then_crash)
    (data_dir / "device.json").write_text("{}")  # a file of another layer, named by the caller
    with pytest.raises(SimulatedCrash):
        wipe(
            data_dir,
            DeviceKeyring(DEVICE, backend=backend),
            now=NOW,
            extra_names=("device.json",),
        )
    monkeypatch.undo()

    if crash_after != "clear_marker":
        assert wipe_pending(data_dir)
        with pytest.raises(GatehouseError) as refused:  # nothing unlocks mid-wipe
            VaultHeader.load(data_dir, DeviceKeyring(DEVICE, backend=backend)).unlock(
                "alice", PASSWORD, now=LATER
            )
        assert isinstance(refused.value, WipePending | KeyringSecretMissing) or (
            refused.value.reason in {"header_tampered", "header_missing"}
        )
    report = resume_wipe_if_pending(data_dir, keyring_for(backend), now=LATER)
    if crash_after == "clear_marker":
        assert report is None  # it had finished; nothing pending
    else:
        assert report is not None and report.resumed
        assert report.device_id == DEVICE and report.started_at == NOW
        assert report.completed_at == LATER
    assert list(data_dir.iterdir()) == []
    assert backend.entries == {}
    assert not wipe_pending(data_dir)
    assert_copy_is_dead(copy_dir, backend)


def test_WP2_a_crash_inside_the_header_scrub_still_completes(
    data_dir: Path, backend: InMemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    def scrub_then_crash(self: VaultHeader) -> None:
        raise SimulatedCrash("after the in-place scrub, before the rewrite")

    monkeypatch.setattr(VaultHeader, "destroy_slots", scrub_then_crash)
    with pytest.raises(SimulatedCrash):
        wipe(data_dir, DeviceKeyring(DEVICE, backend=backend), now=NOW)
    monkeypatch.undo()
    with pytest.raises(GatehouseError):  # the header is now noise
        VaultHeader.load(data_dir, DeviceKeyring(DEVICE, backend=backend))
    report = resume_wipe_if_pending(data_dir, keyring_for(backend), now=LATER)
    assert report is not None and report.keyring_destroyed
    assert list(data_dir.iterdir()) == [] and backend.entries == {}


def test_extra_names_must_be_plain_names_inside_the_data_folder(
    data_dir: Path, backend: InMemoryKeyring
) -> None:
    for bad in ("../outside", "/etc/passwd", "sub/file", ".."):
        with pytest.raises(ValueError):
            wipe(data_dir, DeviceKeyring(DEVICE, backend=backend), now=NOW, extra_names=(bad,))
    assert not wipe_pending(data_dir)


def test_wipe_is_idempotent_and_works_on_a_tampered_header(
    data_dir: Path, backend: InMemoryKeyring
) -> None:
    (data_dir / "vault.header").write_bytes(b"{garbage")
    first = wipe(data_dir, DeviceKeyring(DEVICE, backend=backend), now=NOW)
    assert "key_slots:unverified_header" in first.destroyed and first.keyring_destroyed
    second = wipe(data_dir, DeviceKeyring(DEVICE, backend=backend), now=LATER)
    assert second.destroyed == () and list(data_dir.iterdir()) == []
    assert resume_wipe_if_pending(data_dir, keyring_for(backend), now=LATER) is None


def test_resume_deletes_the_files_even_when_the_keyring_is_unreachable(
    data_dir: Path, backend: InMemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(state: object) -> None:
        raise SimulatedCrash("before the slots")

    monkeypatch.setattr(wipe_module, "_step_destroy_slots", crash)
    with pytest.raises(SimulatedCrash):
        wipe(data_dir, DeviceKeyring(DEVICE, backend=backend), now=NOW)
    monkeypatch.undo()

    def unreachable(device_id: str) -> DeviceKeyring:
        return DeviceKeyring(device_id)  # no allowlisted backend in this process: refused

    monkeypatch.setattr("client.core.device_keyring.get_all_keyring", list)
    report = resume_wipe_if_pending(data_dir, unreachable, now=LATER)
    assert report is not None and not report.keyring_destroyed
    assert list(data_dir.iterdir()) == []
    assert CANARY not in json.dumps(report.to_json())
