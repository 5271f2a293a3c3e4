"""The admin's view of this laptop and acts on it, behind ``Session`` (AU-5, WP-1).

Guarantees:
- Only an admin session gets past the role check; a refused call is audited ``denied`` and
  raises ``NotAllowed`` (``Session._require_role``), before anything is read or changed.
- ``device_users`` reads the key slots' (user, role) pairs and audits the read
  (``users_read``) in the same vault transaction: nothing is returned unaudited.
- ``add_user`` gives only auditors and admins a slot offline; clinicians are refused (their
  first sign-in is online and the gateway decides their role and site).
- ``wipe_device`` needs the device id typed exactly and the password again; it is audited, then
  the session is locked, then the keys and files are destroyed (cryptographic erase first).
- ``device_facts`` shows no clinical content: device id, site, certificate expiry, keyring,
  storage used, users, counts, and the records server's capabilities (what it offers and what
  is missing, in words). A missing or unreadable certificate is a state, not an error.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from client.core import accounts
from client.core.access import ADMIN, AUDITOR, NotAllowed
from client.core.device import TLS_CERT
from client.core.errors import UserFacingError
from client.core.kdf import calibrate
from client.core.server_profile import ServerSummary, describe_server_profile, load_server_profile
from policy import decisions

if TYPE_CHECKING:
    from client.core.session import Session, SessionStatus


def wipe_device(session: Session, password: str, confirmation: str) -> None:
    """Cryptographically erase this laptop now (audited before the keys are destroyed)."""
    session._require_role((ADMIN,), "wipe this laptop", "wipe")
    if confirmation.strip() != session.device.profile.device_id:
        raise UserFacingError(
            "wipe_not_confirmed", "Type this laptop's device id exactly to confirm the wipe."
        )
    accounts.reauthenticate(session.device, session.user_id, password)
    with session._act() as conn:
        session._append(conn, "wipe", detail={"why": "admin"})
    session.lock()
    session.device.wipe("admin_wipe")


def device_users(session: Session) -> list[tuple[str, str]]:
    """(user id, role) of everyone with a key slot here; the read is audited."""
    session._require_role((ADMIN,), "see this device's users", "users_read")
    with session._act() as conn:
        users = list(session.device.header.users())
        session._append(conn, "users_read", detail={"users": len(users)})
    return users


def add_user(session: Session, user_id: str, role: str, password: str) -> None:
    """Give an auditor or admin a key slot on this device, from this unlocked vault."""
    session._require_role((ADMIN,), "add users to this device", "user_added")
    if role not in (AUDITOR, ADMIN):
        with session._act() as conn:
            session._append(conn, "user_added", "denied", detail={"added_role": role})
        raise NotAllowed("add clinicians offline; their first sign-in is online")
    minimum = decisions.min_password_length(session.policy)
    if len(password) < minimum:
        raise UserFacingError(
            "password_too_short", f"The password must be at least {minimum} characters."
        )
    kdf = session.device.kdf_params or calibrate()
    session.device.header.add_slot(user_id, role, password, session.export_dek(), kdf)
    with session._act() as conn:
        session._append(conn, "user_added", detail={"added_user": user_id, "added_role": role})


@dataclass(frozen=True)
class DeviceFacts:
    device_id: str
    site: str
    keyring_backend: str
    keyring_weak: bool
    users: tuple[tuple[str, str], ...]
    status: SessionStatus
    certificate_state: str  # "valid", "expired", "missing" or "unreadable"
    certificate_expires_at: dt.datetime | None
    storage_bytes: int
    now: dt.datetime
    # The records server as last read from its metadata, in words (issue 13).
    server: ServerSummary


def certificate_expiry(path: Path) -> tuple[str, dt.datetime | None]:
    """("missing"|"unreadable"|"ok", not-after) of the device's PEM certificate."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return "missing", None
    except OSError:
        return "unreadable", None
    try:
        return "ok", x509.load_pem_x509_certificate(pem).not_valid_after_utc
    except ValueError:
        return "unreadable", None


def storage_used(folder: Path) -> int:
    """Total size in bytes of the regular files under ``folder`` (symlinks not followed)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.lstat().st_size
        except OSError:  # a file removed while we walk
            continue
    return total


def device_facts(session: Session) -> DeviceFacts:
    """Everything the admin panel shows (the users through the audited, role-checked read)."""
    device = session.device
    users = tuple(session.device_users())
    now = device.clock()
    state, expires = certificate_expiry(device.data_dir / TLS_CERT)
    if state == "ok" and expires is not None:
        state = "valid" if expires > now else "expired"
    return DeviceFacts(
        device.profile.device_id,
        device.profile.site,
        device.keyring.backend_name,
        device.keyring.is_weak,
        users,
        session.status(),
        state,
        expires,
        storage_used(device.data_dir),
        now,
        describe_server_profile(load_server_profile(device.data_dir)),
    )
