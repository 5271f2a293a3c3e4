"""The device's secrets in the OS keyring: device secret, header MAC key, anti-restore anchors.

Invariants:
- Secrets are stored only in an allowlisted, real OS keyring backend (Windows Credential Locker,
  macOS Keychain, Secret Service, KWallet), matched by exact class path. The ``fail`` and
  ``null`` backends, the chainer, anything from ``keyrings.alt`` and unknown backends are refused
  with ``EnvironmentFault("keyring_unavailable")`` (ST-5) ...
- ... unless the caller (from the policy) passes ``allow_file_fallback=True``: then a 0600 file
  in the data folder, written atomically, holds them and ``backend_name`` says
  ``"file fallback (weak)"`` so the UI can show it.
- ``InMemoryKeyring`` (tests) is never picked automatically: it is used only when passed.
- A missing device secret or MAC key raises ``KeyringSecretMissing``; it is never silently
  regenerated (that would hide a wipe or a copied disk).
- The policy high-water anchor only moves up.
- ``destroy_all`` removes every entry of this device (wipe, WP-1) and is idempotent.
Secret values never appear in exceptions or logs.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
from pathlib import Path
from typing import Protocol

from keyring.backend import KeyringBackend, get_all_keyring
from keyring.compat import properties
from keyring.errors import KeyringError, PasswordDeleteError

from client.core.errors import EnvironmentFault
from policy.atomic import atomic_write

log = logging.getLogger(__name__)

SERVICE = "gatehouse"
FALLBACK_FILE_NAME = "keyring.fallback"
FALLBACK_BACKEND_NAME = "file fallback (weak)"
SECRET_BYTES = 32
_MAX_FALLBACK_BYTES = 64 * 1024
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# Exact class paths of the backends we trust, with the name the UI shows.
ALLOWED_BACKENDS: dict[str, str] = {
    "keyring.backends.Windows.WinVaultKeyring": "Windows Credential Locker",
    "keyring.backends.macOS.Keyring": "macOS Keychain",
    "keyring.backends.SecretService.Keyring": "Secret Service",
    "keyring.backends.libsecret.Keyring": "Secret Service (libsecret)",
    "keyring.backends.kwallet.DBusKeyring": "KWallet",
    "keyring.backends.kwallet.DBusKeyringKWallet4": "KWallet 4",
    "keyring.backends.kwallet.DBusKeyringKWallet5": "KWallet 5",
    "keyring.backends.kwallet.DBusKeyringKWallet6": "KWallet 6",
}

DEVICE_SECRET = "device_secret"  # noqa: S105 (an entry name, not a secret)
HEADER_MAC_KEY = "header_mac_key"
HEADER_GENERATION = "header_generation"
POLICY_MAC_KEY = "policy_mac_key"
POLICY_HIGH_WATER = "policy_high_water"
_ENTRIES = (DEVICE_SECRET, HEADER_MAC_KEY, HEADER_GENERATION, POLICY_MAC_KEY, POLICY_HIGH_WATER)


class KeyringUnavailable(EnvironmentFault):
    """No acceptable keyring backend, or the backend failed (locked, daemon gone)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "keyring_unavailable",
            f"No secure system keyring is available to Gatehouse ({detail}). Gatehouse keeps "
            "this device's key in the operating system's keyring: Windows Credential Locker, "
            "macOS Keychain, or a Secret Service (GNOME Keyring) or KWallet on Linux. IT must "
            "install and unlock one for this user, or explicitly allow the weaker file fallback "
            "in the device policy. Nothing has been lost.",
        )


class KeyringSecretMissing(EnvironmentFault):
    """A device secret this vault needs is not in the keyring (wiped, or another machine)."""

    def __init__(self) -> None:
        super().__init__(
            "keyring_secret_missing",
            "This device's key is missing from the system keyring, so its records cannot be "
            "opened here. Records already sent are safe on the gateway. IT must re-provision "
            "this device.",
        )


class InMemoryKeyring(KeyringBackend):
    """A keyring backend in process memory, for tests. Never chosen unless passed explicitly."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.entries: dict[tuple[str, str], str] = {}

    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("InMemoryKeyring is for tests and must be passed explicitly")

    def __str__(self) -> str:
        return "InMemoryKeyring (tests only)"

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.entries.pop((service, username), None) is None:
            raise PasswordDeleteError("no such entry")


class _Store(Protocol):
    def get(self, name: str) -> str | None: ...
    def set(self, name: str, value: str) -> None: ...
    def delete(self, name: str) -> None: ...


def backend_class_path(backend: object) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


class _BackendStore:
    """Entries ``<device_id>/<name>`` under service ``gatehouse`` in a keyring backend."""

    def __init__(self, backend: KeyringBackend, device_id: str) -> None:
        self._backend = backend
        self._prefix = f"{device_id}/"

    def get(self, name: str) -> str | None:
        try:
            return self._backend.get_password(SERVICE, self._prefix + name)
        except (KeyringError, OSError, RuntimeError) as exc:
            raise KeyringUnavailable(f"reading failed: {type(exc).__name__}") from None

    def set(self, name: str, value: str) -> None:
        try:
            self._backend.set_password(SERVICE, self._prefix + name, value)
        except (KeyringError, OSError, RuntimeError) as exc:
            raise KeyringUnavailable(f"writing failed: {type(exc).__name__}") from None

    def delete(self, name: str) -> None:
        try:
            self._backend.delete_password(SERVICE, self._prefix + name)
        except PasswordDeleteError:
            pass
        except (KeyringError, OSError, RuntimeError) as exc:
            raise KeyringUnavailable(f"deleting failed: {type(exc).__name__}") from None
        if self.get(name) is not None:
            raise KeyringUnavailable("an entry could not be deleted")


class _FileStore:
    """The weak fallback: a JSON map in a 0600 file, replaced atomically on every change."""

    def __init__(self, path: Path, device_id: str) -> None:
        self._path = path
        self._prefix = f"{device_id}/"

    def _load(self) -> dict[str, str]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeyringUnavailable(f"fallback file unreadable: {type(exc).__name__}") from None
        try:
            data = json.loads(raw) if len(raw) <= _MAX_FALLBACK_BYTES else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise KeyringUnavailable("fallback file damaged")
        return data

    def _save(self, data: dict[str, str]) -> None:
        if not data:
            self._path.unlink(missing_ok=True)
            return
        atomic_write(self._path, json.dumps(data, sort_keys=True).encode("ascii"))

    def get(self, name: str) -> str | None:
        return self._load().get(self._prefix + name)

    def set(self, name: str, value: str) -> None:
        data = self._load()
        data[self._prefix + name] = value
        self._save(data)

    def delete(self, name: str) -> None:
        data = self._load()
        if data.pop(self._prefix + name, None) is not None or not data:
            self._save(data)


def _priority(backend: KeyringBackend) -> float:
    try:
        return float(type(backend).priority)
    except Exception:  # a backend that cannot say is not viable here
        return float("-inf")


def _resolve_backend(backend: KeyringBackend | None) -> tuple[KeyringBackend | None, str]:
    """The backend to use and its display name, or ``(None, why)`` if none is acceptable."""
    if backend is not None:
        path = backend_class_path(backend)
        if isinstance(backend, InMemoryKeyring):
            return backend, "in-memory (tests only)"
        if path in ALLOWED_BACKENDS:
            return backend, ALLOWED_BACKENDS[path]
        return None, f"backend {path} is not allowed"
    candidates = sorted(get_all_keyring(), key=_priority, reverse=True)
    for candidate in candidates:
        path = backend_class_path(candidate)
        if path in ALLOWED_BACKENDS:
            return candidate, ALLOWED_BACKENDS[path]
    found = ", ".join(backend_class_path(c) for c in candidates) or "none"
    return None, f"found only: {found}"


class DeviceKeyring:
    """This device's entries in the OS keyring (or the explicit, weak file fallback)."""

    def __init__(
        self,
        device_id: str,
        backend: KeyringBackend | None = None,
        allow_file_fallback: bool = False,
        *,
        fallback_dir: Path | None = None,
    ) -> None:
        if not _DEVICE_ID.fullmatch(device_id):
            raise ValueError("device_id must be 1-128 of [A-Za-z0-9._:-]")
        self.device_id = device_id
        chosen, name_or_reason = _resolve_backend(backend)
        self._store: _Store
        if chosen is not None:
            self._store = _BackendStore(chosen, device_id)
            self.backend_name = name_or_reason
            self.is_weak = False
        elif allow_file_fallback:
            if fallback_dir is None:
                raise ValueError("the file fallback needs fallback_dir (the data folder)")
            self._store = _FileStore(Path(fallback_dir) / FALLBACK_FILE_NAME, device_id)
            self.backend_name = FALLBACK_BACKEND_NAME
            self.is_weak = True
            log.warning("keyring: using the weak file fallback (%s)", name_or_reason)
        else:
            raise KeyringUnavailable(name_or_reason)

    # -- device secrets ---------------------------------------------------------------------

    def provision(self) -> None:
        """Create the device secret, header MAC key and policy MAC key (fresh device only)."""
        if any(self._store.get(name) is not None for name in _ENTRIES):
            raise EnvironmentFault(
                "keyring_already_provisioned",
                "This device already has keys in the system keyring. Wipe it before "
                "provisioning it again.",
            )
        for name in (DEVICE_SECRET, HEADER_MAC_KEY, POLICY_MAC_KEY):
            self._store.set(name, base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode())

    def has_device_secret(self) -> bool:
        return self._store.get(DEVICE_SECRET) is not None

    def _secret(self, name: str) -> bytes:
        value = self._store.get(name)
        if value is None:
            raise KeyringSecretMissing()
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raise KeyringSecretMissing() from None
        if len(raw) != SECRET_BYTES:
            raise KeyringSecretMissing()
        return raw

    def device_secret(self) -> bytes:
        return self._secret(DEVICE_SECRET)

    def header_mac_key(self) -> bytes:
        return self._secret(HEADER_MAC_KEY)

    def policy_mac_key(self) -> bytes:
        return self._secret(POLICY_MAC_KEY)

    # -- counters (not secret, but only trustworthy because they live outside the disk) ------

    def _read_int(self, name: str) -> int | None:
        value = self._store.get(name)
        if value is None:
            return None
        if not value.isdigit() or len(value) > 20:
            raise KeyringUnavailable(f"entry {name} is damaged")
        return int(value)

    def header_generation(self) -> int | None:
        return self._read_int(HEADER_GENERATION)

    def set_header_generation(self, generation: int) -> None:
        if generation < 0:
            raise ValueError("generation must be >= 0")
        self._store.set(HEADER_GENERATION, str(generation))

    def policy_high_water(self) -> int | None:
        return self._read_int(POLICY_HIGH_WATER)

    def set_policy_high_water(self, version: int) -> None:
        current = self.policy_high_water()
        if version < 0 or (current is not None and version < current):
            raise ValueError("the policy high-water version only moves up")
        self._store.set(POLICY_HIGH_WATER, str(version))

    def policy_anchor(self) -> KeyringVersionAnchor:
        return KeyringVersionAnchor(self)

    def destroy_all(self) -> list[str]:
        """Delete every entry of this device (cryptographic erase); returns what was present."""
        destroyed = []
        for name in _ENTRIES:
            if self._store.get(name) is not None:
                destroyed.append(name)
            self._store.delete(name)
        return destroyed


class KeyringVersionAnchor:
    """The policy store's anti-rollback anchor (fits ``policy``'s ``VersionAnchor`` protocol)."""

    def __init__(self, keyring: DeviceKeyring) -> None:
        self._keyring = keyring

    def read(self) -> int | None:
        return self._keyring.policy_high_water()

    def write(self, version: int) -> None:
        self._keyring.set_policy_high_water(version)
