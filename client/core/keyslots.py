"""Key-slot cryptography: wrapping and unwrapping the vault's DEK for one user (LUKS-like).

Pure functions and values: no file, no lock, no keyring. ``client.core.vault_header`` stores the
slots, counts the attempts and anchors the header; this module only does the cryptography.

Invariants:
- The DEK exists on disk only wrapped. A user slot's key is
  HKDF-SHA256(Argon2id(NFKC(password), salt, params) || device secret,
  info = "gatehouse-keyslot-v1|<device_id>|<user_id>"), so the files without the keyring's device
  secret cannot be brute-forced, and the device secret without the password opens nothing (ST-3).
- Each slot is AES-256-GCM with associated data = canonical JSON of (format, device_id, user_id,
  role, Argon2id params, salt): editing any of them makes unwrapping fail, never weaker (ST-4).
  Params below the floor are refused (``KdfParamsRejected``) before any derivation.
- Every wrap draws a fresh random salt and nonce.
- ``unwrap_slot`` raises one ``UnlockFailed`` for every wrong input (no oracle), and
  ``decoy_derive`` spends the same Argon2id work for a user without a slot.
- ``dek_check`` is one-way: it identifies the DEK (256 random bits) without revealing it.
No password, key or DEK is ever logged or put in an exception.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client.core.errors import UserFacingError
from client.core.kdf import MIN_SALT_BYTES, KdfParams, derive

FORMAT_VERSION: Final = 1  # bound into every slot's AAD, and the header's format
ROLES: Final = ("clinician", "auditor", "admin")
DEK_BYTES: Final = 32
SALT_BYTES: Final = 16
NONCE_BYTES: Final = 12
_USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_INFO_PREFIX = b"gatehouse-keyslot-v1|"


class UnlockFailed(UserFacingError):
    """Wrong user or password (or a slot that does not authenticate): one error, no oracle."""

    def __init__(self) -> None:
        super().__init__("unlock_failed", "The user name or password is not right.")


class KeyslotError(UserFacingError):
    """A slot or header operation that cannot be done (``slot_exists``, ``no_such_slot``, ...)."""

    _MESSAGES: Final = {
        "slot_exists": "This user already has access on this device.",
        "no_such_slot": "This user has no access on this device.",
        "last_slot": "The last way into this device cannot be removed.",
        "wrong_dek": "The key given does not belong to this device.",
        "invalid_user": "That user name or role is not valid.",
        "invalid_password": "That password cannot be used.",
        "header_exists": "This device is already provisioned.",
        "too_many_slots": "This device has too many users.",
        "invalid_event": "That event cannot be stored.",
        "header_changed": "Another Gatehouse window changed this device's settings. Try again.",
    }

    def __init__(self, reason: str) -> None:
        super().__init__(reason, self._MESSAGES.get(reason, "That cannot be done."))


def valid_user_id(user_id: object) -> bool:
    """A user id the slot format accepts (ASCII, so the HKDF info and the AAD can carry it)."""
    return isinstance(user_id, str) and _USER_ID.fullmatch(user_id) is not None


def normalise_password(password: str) -> bytes:
    """Unicode NFKC, UTF-8; no truncation, no composition rules (AU-1). Length: the caller."""
    if not isinstance(password, str) or not password:
        raise ValueError("empty password")
    return unicodedata.normalize("NFKC", password).encode("utf-8")  # strict: no lone surrogates


def b64(data: bytes) -> str:
    """Standard base64 text, as every binary field of the header is stored."""
    return base64.b64encode(data).decode("ascii")


def unb64(value: object, min_len: int = 1, max_len: int = 4096) -> bytes:
    """Strict base64 text to bytes of a bounded length (``ValueError`` otherwise)."""
    if not isinstance(value, str):
        raise ValueError("not base64 text")
    raw = base64.b64decode(value, validate=True)
    if not min_len <= len(raw) <= max_len:
        raise ValueError("wrong length")
    return raw


def canonical_json(value: object) -> bytes:
    """The one serialisation that is MACed and bound as AAD: sorted keys, no spaces, ASCII."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


@dataclass(frozen=True)
class Slot:
    """One user's wrapped copy of the DEK."""

    user_id: str
    role: str
    salt: bytes
    kdf: KdfParams
    nonce: bytes
    wrapped: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "role": self.role,
            "salt": b64(self.salt),
            "kdf": self.kdf.to_json(),
            "nonce": b64(self.nonce),
            "wrapped": b64(self.wrapped),
        }

    @classmethod
    def from_json(cls, data: object) -> Slot:
        if not isinstance(data, dict) or set(data) != {
            "user_id", "role", "salt", "kdf", "nonce", "wrapped"
        }:  # fmt: skip
            raise ValueError("bad slot")
        user_id, role = data["user_id"], data["role"]
        if not valid_user_id(user_id) or role not in ROLES:
            raise ValueError("bad slot identity")
        kdf = data["kdf"]
        if not isinstance(kdf, dict) or set(kdf) != {"m", "t", "p"}:
            raise ValueError("bad kdf")
        # Parsed without the floor check: a below-floor slot is refused at unlock, per slot.
        params = KdfParams(kdf["m"], kdf["t"], kdf["p"])
        if not all(type(v) is int for v in kdf.values()):
            raise ValueError("bad kdf")
        return cls(
            user_id=user_id,
            role=role,
            salt=unb64(data["salt"], MIN_SALT_BYTES, 64),
            kdf=params,
            nonce=unb64(data["nonce"], NONCE_BYTES, NONCE_BYTES),
            wrapped=unb64(data["wrapped"], DEK_BYTES + 16, DEK_BYTES + 16),
        )


def slot_aad(device_id: str, user_id: str, role: str, params: KdfParams, salt: bytes) -> bytes:
    """The associated data that binds a slot's identity, role, KDF params and salt (ST-4)."""
    return canonical_json(
        {
            "format": FORMAT_VERSION,
            "device_id": device_id,
            "user_id": user_id,
            "role": role,
            "kdf": params.to_json(),
            "salt": b64(salt),
        }
    )


def slot_key(
    password: bytes,
    salt: bytes,
    params: KdfParams,
    device_secret: bytes,
    device_id: str,
    user_id: str,
) -> bytes:
    """HKDF-SHA256(Argon2id(password, salt, params) || device_secret, info=...)."""
    stretched = derive(password, salt, params)
    info = _INFO_PREFIX + device_id.encode("ascii") + b"|" + user_id.encode("ascii")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        stretched + device_secret
    )


def wrap_slot(
    dek: bytes,
    *,
    user_id: str,
    role: str,
    password: bytes,
    params: KdfParams,
    device_secret: bytes,
    device_id: str,
) -> Slot:
    """A fresh slot (new random salt and nonce) wrapping ``dek`` for ``user_id``."""
    params.validate()
    salt = secrets.token_bytes(SALT_BYTES)
    nonce = secrets.token_bytes(NONCE_BYTES)
    key = slot_key(password, salt, params, device_secret, device_id, user_id)
    aad = slot_aad(device_id, user_id, role, params, salt)
    wrapped = AESGCM(key).encrypt(nonce, bytes(dek), aad)
    return Slot(user_id, role, salt, params, nonce, wrapped)


def unwrap_slot(slot: Slot, password: bytes, device_secret: bytes, device_id: str) -> bytes:
    """The DEK, or ``UnlockFailed`` for any wrong input (``KdfParamsRejected`` below the floor)."""
    slot.kdf.validate()
    key = slot_key(password, slot.salt, slot.kdf, device_secret, device_id, slot.user_id)
    aad = slot_aad(device_id, slot.user_id, slot.role, slot.kdf, slot.salt)
    try:
        return AESGCM(key).decrypt(slot.nonce, slot.wrapped, aad)
    except InvalidTag:
        raise UnlockFailed() from None


def decoy_derive(password: bytes, params: KdfParams) -> None:
    """The Argon2id work of an unwrap, for a user with no slot: the time is no oracle."""
    derive(password, secrets.token_bytes(SALT_BYTES), params.validate())


def dek_check(dek: bytes, device_id: str) -> bytes:
    """A one-way check value of the DEK (the DEK is 256 random bits: nothing to brute-force)."""
    return hmac.new(bytes(dek), b"gatehouse-dek-check-v1|" + device_id.encode(), "sha256").digest()
