"""Self-test of the OS keyring: the backend that holds the device secret is an allowed one.

Invariants:
- Fails when keyrings.alt is importable or when any viable backend comes from outside the
  keyring package (``FORBIDDEN_KEYRING_PREFIXES``), or when the resolved backend is weak.
- No allowed backend at all (a headless build) is a warning, not a failure.
- Nothing is written to the keyring.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Final

from client.selftest.base import SELFTEST_DEVICE, CheckFailed, Context

# keyring backends from outside the keyring package (keyrings.alt and friends) are never used.
FORBIDDEN_KEYRING_PREFIXES: Final = ("keyrings",)


def _module_is_forbidden(module_name: str) -> bool:
    return any(
        module_name == prefix or module_name.startswith(prefix + ".")
        for prefix in FORBIDDEN_KEYRING_PREFIXES
    )


def check_keyring(ctx: Context) -> None:
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec("keyrings.alt") is not None:
            raise CheckFailed("keyring_forbidden_installed", "keyrings.alt is importable")
    from keyring.backend import get_all_keyring

    from client.core.device_keyring import (
        DeviceKeyring,
        KeyringUnavailable,
        backend_class_path,
    )

    viable = [backend_class_path(b) for b in get_all_keyring()]
    forbidden = [path for path in viable if _module_is_forbidden(path)]
    if forbidden:
        raise CheckFailed("keyring_forbidden_backend", f"viable: {', '.join(forbidden)}")
    try:
        device_keyring = DeviceKeyring(SELFTEST_DEVICE)
    except KeyringUnavailable:
        ctx.warn(
            "keyring: no allowed backend is available here (found: "
            f"{', '.join(viable) or 'none'}); provisioning needs the OS keyring "
            "(Secret Service, Windows Credential Locker or macOS Keychain)"
        )
        return
    if device_keyring.is_weak:
        raise CheckFailed("keyring_weak_backend", device_keyring.backend_name)
    ctx.note(f"keyring backend: {device_keyring.backend_name}")
