"""A real provisioned device for session tests: real SQLCipher, real header, real policy.

Only what lies outside the product is faked: the wall clock and the boot clock (``FakeClocks``)
and the OS keyring (an in-memory backend, explicitly passed; a real Secret Service test lives
in test_device_keyring.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.core import accounts, records
from client.core.device import Device, FirstUser
from client.core.device_keyring import InMemoryKeyring
from client.core.kdf import FLOOR
from client.core.schema import MIGRATIONS
from client.core.trusted_time import ClockReading
from client.core.vault import Vault, database_path
from policy.schema import defaults
from tests.support.policy import envelope_around

SITE = "hmp-brixton"
OTHER_SITE = "hmp-pentonville"
DEVICE_ID = "dev-test-0001"
T0 = dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC)
CLINICIAN = ("nurse.amira", "correct horse battery staple")
POLICY_KEY = Ed25519PrivateKey.generate()


@dataclass
class FakeClocks:
    """The wall clock and the boot clock, moved by tests (the only fakes: outside the product)."""

    wall: dt.datetime = T0
    boot: float = 1000.0
    boot_id: str = "boot-1"

    def now(self) -> dt.datetime:
        return self.wall

    def reading(self) -> ClockReading:
        return ClockReading(self.wall, self.boot, self.boot_id)

    def advance(self, delta: dt.timedelta) -> None:
        self.wall += delta
        self.boot += delta.total_seconds()


def policy_envelope(version: int = 1, *, around: dt.datetime = T0, **overrides: Any) -> bytes:
    settings = defaults()
    settings.update(
        {
            "network.gateway_url": "https://127.0.0.1:8443/",
            "network.allowed_hosts": ["127.0.0.1"],
            "network.spki_pins": [
                base64.b64encode(hashlib.sha256(b"primary").digest()).decode(),
                base64.b64encode(hashlib.sha256(b"backup").digest()).decode(),
            ],
        }
    )
    settings.update({k.replace("__", "."): v for k, v in overrides.items()})
    return envelope_around(around, site=SITE, settings=settings, key=POLICY_KEY, version=version)


def trust_pem() -> str:
    return (
        POLICY_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass
class ProvisionedDevice:
    data_dir: Path
    clocks: FakeClocks
    keyring: InMemoryKeyring
    device: Device
    users: dict[str, str] = field(default_factory=dict)

    def reopen(self) -> Device:
        self.device = Device.open(
            self.data_dir,
            keyring_backend=self.keyring,
            clock=self.clocks.now,
            clocks=self.clocks.reading,
            kdf_params=FLOOR,
        )
        return self.device


def provision(
    data_dir: Path,
    *,
    role: str = "clinician",
    user: tuple[str, str] = CLINICIAN,
    policy: bytes | None = None,
) -> ProvisionedDevice:
    clocks = FakeClocks()
    keyring = InMemoryKeyring()
    device = Device.provision(
        data_dir,
        device_id=DEVICE_ID,
        site=SITE,
        trust_keys=[trust_pem()],
        trust_threshold=1,
        policy_envelope=policy or policy_envelope(),
        first_user=FirstUser(user[0], role, user[1]),
        keyring_backend=keyring,
        clock=clocks.now,
        clocks=clocks.reading,
        kdf_params=FLOOR,
    )
    return ProvisionedDevice(data_dir, clocks, keyring, device, {user[0]: user[1]})


def load_records(
    device: Device,
    resources: Iterable[Mapping[str, Any]],
    user: tuple[str, str] = CLINICIAN,
) -> None:
    """Put resources into the vault as a complete sync would (the replica does this in
    production): applied, then the in-scope caseload marked complete (UI-5)."""
    unlocked = accounts.login(device, *user)
    vault = Vault.open(database_path(device.data_dir), unlocked.dek, MIGRATIONS)
    scope = unlocked.policy.site_scope or (device.profile.site,)
    try:
        with vault.transaction() as conn:
            records.apply_resources(conn, [dict(r) for r in resources])
            records.mark_caseload_complete(conn, scope, device.clock())
    finally:
        vault.close()
