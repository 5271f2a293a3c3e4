"""A device's key material without a vault: keyring, header and slots (real Argon2id at the
floor)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from client.core.device_keyring import DeviceKeyring, InMemoryKeyring
from client.core.kdf import FLOOR
from client.core.vault_header import VaultHeader

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DEVICE = "dev-0001"
PASSWORD = "correct horse battery staple"


@dataclass
class Device:
    data_dir: Path
    backend: InMemoryKeyring
    keyring: DeviceKeyring
    header: VaultHeader
    dek: bytes

    def reload(self) -> VaultHeader:
        return VaultHeader.load(self.data_dir, self.keyring)


def make_device(
    data_dir: Path, users: tuple[tuple[str, str], ...] = (("alice", "clinician"),)
) -> Device:
    backend = InMemoryKeyring()
    keyring = DeviceKeyring(DEVICE, backend=backend)
    keyring.provision()
    dek = secrets.token_bytes(32)
    header = VaultHeader.create(data_dir, keyring, dek)
    for user_id, role in users:
        header.add_slot(user_id, role, PASSWORD, dek, FLOOR)
    return Device(data_dir, backend, keyring, header, dek)
