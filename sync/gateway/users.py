"""Gateway users: Argon2id passwords, online login with escrow unwrap, bearer tokens.

Invariants:
- Passwords are stored only as Argon2id PHC strings, at or above the OWASP floor
  (m = 64 MiB, t = 3, p = 4, the same floor as the device's key slots); ``add_user`` refuses a
  hasher below it.
- Login gives ONE refusal (``login_failed``) for an unknown user and a wrong password, and an
  unknown user costs the same Argon2id work as a known one. Failures are counted per (user id,
  device) and per device, never per user alone (``login_throttle``: growing delays, and an alert
  for a spread guessing pattern); a throttled attempt is refused — right password included —
  with ``login_throttled`` and the seconds to wait, and its password is not checked.
- Only after the password verified: ``user_revoked``, ``wrong_site`` (the user's site must be
  the device's, which comes from its certificate), then the escrow blob is unsealed with the
  gateway key and the *calling* device's AAD: a blob of another device is ``escrow_mismatch``.
- A bearer token is 32 random bytes, stored as SHA-256, bound to the device id and certificate
  serial that obtained it, and lives ``TOKEN_TTL`` (15 minutes) at most.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from sync.gateway.authority import GatewayAuthority
from sync.gateway.errors import ControlError
from sync.gateway.login_throttle import LoginPolicy, gate, watch_spread
from sync.gateway.pki import DeviceIdentity
from sync.gateway.store.base import ROLES, Role, SessionRecord, Store, UserRecord
from sync.protocol.escrow import EscrowError, escrow_aad, unseal

log = logging.getLogger(__name__)

FLOOR_MEMORY_KIB = 65536
FLOOR_ITERATIONS = 3
FLOOR_PARALLELISM = 4
TOKEN_TTL = dt.timedelta(minutes=15)
USER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
MAX_PASSWORD_CHARS = 1024
MAX_ESCROW_CHARS = 8192


def default_hasher() -> PasswordHasher:
    return PasswordHasher(
        time_cost=FLOOR_ITERATIONS,
        memory_cost=FLOOR_MEMORY_KIB,
        parallelism=FLOOR_PARALLELISM,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


def meets_floor(hasher: PasswordHasher) -> bool:
    return (
        hasher.type is Type.ID
        and hasher.memory_cost >= FLOOR_MEMORY_KIB
        and hasher.time_cost >= FLOOR_ITERATIONS
        and hasher.parallelism >= FLOOR_PARALLELISM
    )


def add_user(
    store: Store,
    *,
    user_id: str,
    role: str,
    site: str,
    password: str,
    now: dt.datetime,
    hasher: PasswordHasher | None = None,
    allow_weak_hasher: bool = False,
) -> UserRecord:
    hasher = hasher or default_hasher()
    if not meets_floor(hasher) and not allow_weak_hasher:
        raise ValueError("the password hasher is below the Argon2id floor")
    if not USER_ID_RE.match(user_id):
        raise ControlError(400, "bad_user_id")
    if role not in ROLES:
        raise ControlError(400, "bad_role")
    if not password or len(password) > MAX_PASSWORD_CHARS:
        raise ControlError(400, "bad_password")
    record = UserRecord(user_id, site, role, hasher.hash(password), "active", now)
    store.add_user(record)
    return record


@dataclass(frozen=True)
class LoginResult:
    user_id: str
    role: Role
    site: str
    token: str
    expires_at: dt.datetime
    dek: bytes

    def __repr__(self) -> str:
        return f"LoginResult({self.user_id!r}, role={self.role!r}, secrets=<hidden>)"


_DUMMY_HASHES: dict[tuple[int, int, int], str] = {}


def _dummy_hash(hasher: PasswordHasher) -> str:
    key = (hasher.memory_cost, hasher.time_cost, hasher.parallelism)
    if key not in _DUMMY_HASHES:
        _DUMMY_HASHES[key] = hasher.hash(secrets.token_urlsafe(16))
    return _DUMMY_HASHES[key]


def _password_ok(hasher: PasswordHasher, stored: str | None, password: str) -> bool:
    try:
        return hasher.verify(stored or _dummy_hash(hasher), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _escrow_blob(text: object) -> bytes:
    if not isinstance(text, str) or not 0 < len(text) <= MAX_ESCROW_CHARS:
        raise ControlError(400, "bad_request")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError(400, "bad_request") from None


def login(
    store: Store,
    authority: GatewayAuthority,
    policy: LoginPolicy,
    identity: DeviceIdentity,
    body: dict[str, Any],
    *,
    now: dt.datetime,
) -> LoginResult:
    user_id, password = body.get("user_id"), body.get("password")
    if not isinstance(user_id, str) or not USER_ID_RE.match(user_id):
        raise ControlError(401, "login_failed")
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD_CHARS:
        raise ControlError(401, "login_failed")
    blob = _escrow_blob(body.get("escrow"))
    # Count the attempt BEFORE the slow password check (forgotten on success), so parallel
    # guesses cannot all slip past the throttle while each is still being hashed.
    allowed = gate(store, policy, user_id, identity.device_id, now)
    if allowed is not None:
        retry = max(1, int((allowed - now).total_seconds()) + 1)
        log.info("login throttled")
        raise ControlError(429, "login_throttled", retry_after=retry)
    user = store.user(user_id)
    if not _password_ok(policy.hasher, user.password_hash if user else None, password):
        log.info("login failed")
        watch_spread(store, policy, user_id, identity, now, known_user=user is not None)
        raise ControlError(401, "login_failed")
    assert user is not None
    store.forget_login_failures(user_id, identity.device_id)
    if user.status != "active":
        raise ControlError(403, "user_revoked")
    if user.site != identity.site:
        raise ControlError(403, "wrong_site")
    try:
        dek = unseal(blob, authority.escrow_key, escrow_aad(identity.device_id))
    except EscrowError:
        log.info("escrow blob refused")
        raise ControlError(403, "escrow_mismatch") from None
    token = secrets.token_urlsafe(32)
    expires_at = now + TOKEN_TTL
    store.add_session(
        SessionRecord(
            token_hash=bearer_hash(token),
            user_id=user.user_id,
            role=user.role,
            site=user.site,
            device_id=identity.device_id,
            cert_serial=format(identity.serial, "x"),
            expires_at=expires_at,
        )
    )
    return LoginResult(user.user_id, user.role, user.site, token, expires_at, dek)


def bearer_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def authenticate_bearer(
    store: Store, header: str | None, identity: DeviceIdentity, *, now: dt.datetime
) -> SessionRecord:
    """The session of ``Authorization: Bearer <token>`` for THIS device certificate, or 401."""
    if header is None:
        raise ControlError(401, "bearer_required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not 0 < len(token) <= 128:
        raise ControlError(401, "bearer_invalid")
    session = store.session(bearer_hash(token.strip()))
    if (
        session is None
        or session.expires_at <= now
        or session.device_id != identity.device_id
        or session.cert_serial != format(identity.serial, "x")
    ):
        raise ControlError(401, "bearer_invalid")
    user = store.user(session.user_id)
    if user is None or user.status != "active":
        raise ControlError(401, "bearer_invalid")
    return session
