"""The device keyring: backend allowlist, weak file fallback, secrets and anchors (ST-5, PO-4)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from keyring.backend import KeyringBackend
from keyring.backends import SecretService, chainer, fail, null
from keyring.compat import properties
from keyring.errors import KeyringLocked

from client.core import device_keyring
from client.core.device_keyring import (
    FALLBACK_BACKEND_NAME,
    FALLBACK_FILE_NAME,
    DeviceKeyring,
    InMemoryKeyring,
    KeyringSecretMissing,
    KeyringUnavailable,
    KeyringVersionAnchor,
)
from client.core.errors import EnvironmentFault

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "dev-0001"


class _PlaintextLike(KeyringBackend):
    """Stands in for keyrings.alt's PlaintextKeyring (which must never be installed)."""

    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("test double: never viable on its own")

    def get_password(self, service: str, username: str) -> str | None:
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        pass

    def delete_password(self, service: str, username: str) -> None:
        pass


_PlaintextLike.__module__ = "keyrings.alt.file"
_PlaintextLike.__qualname__ = "PlaintextKeyring"


class _Unknown(_PlaintextLike):
    pass


_Unknown.__module__ = "somevendor.keyring"
_Unknown.__qualname__ = "Keyring"


class _LockedKeyring(InMemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringLocked("the collection is locked")


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(fail.Keyring(), id="fail"),
        pytest.param(null.Keyring(), id="null"),
        pytest.param(chainer.ChainerBackend(), id="chainer"),
        pytest.param(_PlaintextLike(), id="keyrings.alt-plaintext"),
        pytest.param(_Unknown(), id="unknown"),
    ],
)
def test_ST5_fail_plaintext_and_unknown_backends_are_refused(
    backend: KeyringBackend, tmp_path: Path
) -> None:
    with pytest.raises(KeyringUnavailable) as caught:
        DeviceKeyring(DEVICE, backend=backend)
    error = caught.value
    assert isinstance(error, EnvironmentFault)
    assert error.reason == "keyring_unavailable"
    assert "IT must" in error.message and "Secret Service" in error.message
    assert list(tmp_path.iterdir()) == []


def test_ST5_automatic_choice_takes_only_an_allowlisted_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The OS offers a plaintext backend with a high priority and the fail backend: refused.
    monkeypatch.setattr(
        device_keyring, "get_all_keyring", lambda: [_PlaintextLike(), fail.Keyring()]
    )
    with pytest.raises(KeyringUnavailable) as caught:
        DeviceKeyring(DEVICE)
    assert "keyrings.alt.file.PlaintextKeyring" in caught.value.message
    # With a real Secret Service among them, that one is chosen (whatever the priorities).
    secret_service = SecretService.Keyring()
    monkeypatch.setattr(
        device_keyring,
        "get_all_keyring",
        lambda: [_PlaintextLike(), InMemoryKeyring(), secret_service],
    )
    chosen = DeviceKeyring(DEVICE)
    assert chosen.backend_name == "Secret Service" and not chosen.is_weak


def test_ST5_in_memory_backend_is_never_picked_automatically() -> None:
    assert InMemoryKeyring.viable is False
    assert not any(isinstance(b, InMemoryKeyring) for b in device_keyring.get_all_keyring())
    explicit = DeviceKeyring(DEVICE, backend=InMemoryKeyring())
    assert explicit.backend_name == "in-memory (tests only)"


def test_ST5_file_fallback_only_when_allowed_and_labelled_weak(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DeviceKeyring(DEVICE, backend=fail.Keyring(), allow_file_fallback=True)
    keyring = DeviceKeyring(
        DEVICE, backend=fail.Keyring(), allow_file_fallback=True, fallback_dir=tmp_path
    )
    assert keyring.backend_name == FALLBACK_BACKEND_NAME == "file fallback (weak)"
    assert keyring.is_weak
    keyring.provision()
    path = tmp_path / FALLBACK_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_bytes())) == {
        f"{DEVICE}/device_secret",
        f"{DEVICE}/header_mac_key",
        f"{DEVICE}/policy_mac_key",
    }
    again = DeviceKeyring(
        DEVICE, allow_file_fallback=True, fallback_dir=tmp_path, backend=fail.Keyring()
    )
    assert again.device_secret() == keyring.device_secret()
    assert sorted(keyring.destroy_all()) == ["device_secret", "header_mac_key", "policy_mac_key"]
    assert not path.exists()
    with pytest.raises(KeyringSecretMissing):
        again.device_secret()


def test_damaged_fallback_file_is_an_environment_fault(tmp_path: Path) -> None:
    (tmp_path / FALLBACK_FILE_NAME).write_text("[not a map]")
    keyring = DeviceKeyring(
        DEVICE, backend=fail.Keyring(), allow_file_fallback=True, fallback_dir=tmp_path
    )
    with pytest.raises(KeyringUnavailable):
        keyring.device_secret()


def test_device_secrets_are_random_per_device_and_never_regenerated() -> None:
    backend = InMemoryKeyring()
    first, second = DeviceKeyring("dev-a", backend=backend), DeviceKeyring("dev-b", backend=backend)
    first.provision()
    second.provision()
    assert len(first.device_secret()) == 32
    assert first.device_secret() != second.device_secret()
    assert first.device_secret() != first.header_mac_key() != first.policy_mac_key()
    with pytest.raises(EnvironmentFault) as caught:
        first.provision()
    assert caught.value.reason == "keyring_already_provisioned"
    first.destroy_all()
    assert not first.has_device_secret() and second.has_device_secret()
    with pytest.raises(KeyringSecretMissing):
        first.device_secret()
    assert first.destroy_all() == []  # idempotent
    assert all(key[1].startswith("dev-b/") for key in backend.entries)


def test_a_locked_keyring_is_an_environment_fault_not_a_crash() -> None:
    keyring = DeviceKeyring(DEVICE, backend=_LockedKeyring())
    with pytest.raises(KeyringUnavailable) as caught:
        keyring.device_secret()
    assert caught.value.reason == "keyring_unavailable"


def test_PO4_policy_anchor_only_moves_up_and_survives_restarts() -> None:
    backend = InMemoryKeyring()
    anchor: KeyringVersionAnchor = DeviceKeyring(DEVICE, backend=backend).policy_anchor()
    assert anchor.read() is None
    anchor.write(3)
    anchor.write(3)
    anchor.write(5)
    with pytest.raises(ValueError):
        anchor.write(4)
    assert DeviceKeyring(DEVICE, backend=backend).policy_anchor().read() == 5
    keyring = DeviceKeyring(DEVICE, backend=backend)
    assert keyring.header_generation() is None
    keyring.set_header_generation(12)
    assert DeviceKeyring(DEVICE, backend=backend).header_generation() == 12
    backend.entries[("gatehouse", f"{DEVICE}/policy_high_water")] = "-1"
    with pytest.raises(KeyringUnavailable):
        anchor.read()


def test_device_ids_are_validated() -> None:
    for bad in ("", "a/b", "a|b", "x" * 200, "dev 1"):
        with pytest.raises(ValueError):
            DeviceKeyring(bad, backend=InMemoryKeyring())


_CHILD = """
import secrets
from datetime import UTC, datetime
from pathlib import Path

from client.core.device_keyring import ALLOWED_BACKENDS, DeviceKeyring, backend_class_path
from client.core.kdf import FLOOR
from client.core.vault_header import VaultHeader

keyring = DeviceKeyring("dev-ss-1")  # no backend given: the allowlist picks the real one
assert backend_class_path(keyring._store._backend) == "keyring.backends.SecretService.Keyring"
assert keyring.backend_name == ALLOWED_BACKENDS["keyring.backends.SecretService.Keyring"]
keyring.provision()
secret = keyring.device_secret()
assert DeviceKeyring("dev-ss-1").device_secret() == secret  # read back through D-Bus
data = Path({data!r})
dek = secrets.token_bytes(32)
header = VaultHeader.create(data, keyring, dek)
header.add_slot("alice", "clinician", "correct horse battery staple", dek, FLOOR)
now = datetime.now(UTC)
again = VaultHeader.load(data, DeviceKeyring("dev-ss-1"))
assert again.unlock("alice", "correct horse battery staple", now=now) == dek
assert sorted(keyring.destroy_all()) == [
    "device_secret", "header_generation", "header_mac_key", "policy_mac_key"
]
assert not DeviceKeyring("dev-ss-1").has_device_secret()
print("SECRET-SERVICE-OK", keyring.backend_name)
"""


@pytest.mark.secret_service
def test_ST5_real_secret_service_in_dbus_run_session(tmp_path: Path) -> None:
    for tool in ("dbus-run-session", "gnome-keyring-daemon"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install dbus gnome-keyring)")
    child = tmp_path / "child.py"
    data = tmp_path / "data"
    data.mkdir()
    child.write_text(textwrap.dedent(_CHILD.format(data=str(data))))
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    script = (
        "echo -n test | gnome-keyring-daemon --unlock --components=secrets >/dev/null; "
        f'exec "{sys.executable}" "{child}"'
    )
    result = subprocess.run(
        ["dbus-run-session", "--", "bash", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SECRET-SERVICE-OK Secret Service" in result.stdout
