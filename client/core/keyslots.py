"""The vault header: per-user key slots, the escrow slot and MACed counters (LUKS-like).

``vault.header`` is a JSON file beside the database: ``{"body": {...}, "mac": hex}``.

Invariants:
- The DEK exists on disk only wrapped. A user slot's key is
  HKDF-SHA256(Argon2id(NFKC(password), salt, params) || device secret,
  info = "gatehouse-keyslot-v1|<device_id>|<user_id>"), so the files without the keyring's device
  secret cannot be brute-forced, and the device secret without the password opens nothing (ST-3).
- Each slot is AES-256-GCM with associated data = canonical JSON of (format, device_id, user_id,
  role, Argon2id params, salt): editing any of them makes unlock fail, never weaker (ST-4);
  params below the floor are refused before any derivation.
- The whole body (slots, escrow, counters, generation) is HMAC-SHA256'd with a key from the
  keyring: an edited header raises ``HeaderTampered("header_tampered")``.
- Every write bumps ``generation`` and records it in the keyring *after* the atomic file
  replace. A header whose generation is below the keyring's is a restored copy:
  ``HeaderTampered("header_restored")`` (AU-2, PO-4). One above is the crash window between the
  two writes and is accepted (and the keyring repaired); it cannot be forged without the MAC key.
- Every change is a single ``atomic_write`` of the whole header: killed at any instant, the old
  header or the new one is on disk, so a password change leaves the old or the new password
  working, never neither (ST-6).
- ``unlock`` raises one ``UnlockFailed`` for every wrong-password, unknown-user and tamper case
  (no oracle). The attempt is counted in the header *before* the Argon2id work and uncounted on
  success, so killing the app mid-unlock never erases a guess (AU-2). Lockout times set by the
  accounts layer are enforced here against the ``now`` it passes.
No password, key or DEK is ever logged or put in an exception.
"""

from __future__ import annotations

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: single-process access is assumed there
    fcntl = None  # type: ignore[assignment]

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client.core.device_keyring import DeviceKeyring
from client.core.errors import UserFacingError
from client.core.kdf import FLOOR, MIN_SALT_BYTES, KdfParams, derive
from policy.atomic import atomic_write
from sync.protocol.escrow import escrow_aad, seal

log = logging.getLogger(__name__)

HEADER_NAME: Final = "vault.header"
FORMAT_VERSION: Final = 1
ROLES: Final = ("clinician", "auditor", "admin")
DEK_BYTES: Final = 32
SALT_BYTES: Final = 16
NONCE_BYTES: Final = 12
MAX_HEADER_BYTES: Final = 1024 * 1024  # a header is a few KiB; refuse to parse a huge one
MAX_SLOTS: Final = 64
MAX_PENDING_EVENTS: Final = 200  # beyond this, events are counted in pending_audit_dropped
_USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_INFO_PREFIX = b"gatehouse-keyslot-v1|"

JsonScalar = str | int | float | bool | None


class HeaderTampered(UserFacingError):
    """The header was edited (``header_tampered``), restored (``header_restored``) or is gone."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            reason,
            "This device's security file was changed outside Gatehouse, so it is locked. "
            "Connect to the network and sign in online; IT may need to re-provision it.",
        )


class UnlockFailed(UserFacingError):
    """Wrong user or password (or a slot that does not authenticate): one error, no oracle."""

    def __init__(self) -> None:
        super().__init__("unlock_failed", "The user name or password is not right.")


class LockedOut(UserFacingError):
    """Too many failed attempts: unlocking is refused until ``until``."""

    def __init__(self, until: datetime) -> None:
        super().__init__(
            "locked_out",
            f"Too many wrong passwords. Try again after {until:%H:%M} UTC, or sign in online.",
        )
        self.until = until


class WipePending(UserFacingError):
    """A wipe was started on this device; it must complete, nothing can be unlocked."""

    def __init__(self) -> None:
        super().__init__("wipe_pending", "This device is being wiped. Contact IT.")


class KeyslotError(UserFacingError):
    """A slot operation that cannot be done (``slot_exists``, ``no_such_slot``, ...)."""

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


def normalise_password(password: str) -> bytes:
    """Unicode NFKC, UTF-8; no truncation, no composition rules (AU-1). Length: the caller."""
    if not isinstance(password, str) or not password:
        raise ValueError("empty password")
    return unicodedata.normalize("NFKC", password).encode("utf-8")  # strict: no lone surrogates


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, min_len: int = 1, max_len: int = 4096) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not base64 text")
    raw = base64.b64decode(value, validate=True)
    if not min_len <= len(raw) <= max_len:
        raise ValueError("wrong length")
    return raw


def canonical_json(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a time")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None or parsed.utcoffset() != timedelta(0):
        raise ValueError("time not in UTC")
    return parsed


def _check_now(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware UTC datetime")


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
            "salt": _b64(self.salt),
            "kdf": self.kdf.to_json(),
            "nonce": _b64(self.nonce),
            "wrapped": _b64(self.wrapped),
        }

    @classmethod
    def from_json(cls, data: object) -> Slot:
        if not isinstance(data, dict) or set(data) != {
            "user_id", "role", "salt", "kdf", "nonce", "wrapped"
        }:  # fmt: skip
            raise ValueError("bad slot")
        user_id, role = data["user_id"], data["role"]
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id) or role not in ROLES:
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
            salt=_unb64(data["salt"], MIN_SALT_BYTES, 64),
            kdf=params,
            nonce=_unb64(data["nonce"], NONCE_BYTES, NONCE_BYTES),
            wrapped=_unb64(data["wrapped"], DEK_BYTES + 16, DEK_BYTES + 16),
        )


@dataclass
class HeaderCounters:
    """Security state that must survive restarts and resist editing (all MACed)."""

    failed_attempts: dict[str, int] = field(default_factory=dict)
    device_failed_attempts: int = 0
    locked_until: dict[str, datetime] = field(default_factory=dict)
    device_locked_until: datetime | None = None
    policy_high_water: int | None = None
    # client.core.trusted_time.TimeState.to_json(): wall high-water, offline elapsed, boot clock
    time_state: dict[str, JsonScalar] = field(default_factory=dict)
    wipe_pending: bool = False
    pending_audit_events: list[dict[str, JsonScalar]] = field(default_factory=list)
    pending_audit_dropped: int = 0

    def add_pending_audit_event(self, event: dict[str, JsonScalar]) -> None:
        """Queue a non-secret event (e.g. login_failed) for the audit chain's next unlock."""
        if not all(
            isinstance(k, str) and (v is None or isinstance(v, str | int | float | bool))
            for k, v in event.items()
        ):
            raise KeyslotError("invalid_event")
        if len(self.pending_audit_events) >= MAX_PENDING_EVENTS:
            self.pending_audit_dropped += 1
        else:
            self.pending_audit_events.append(dict(event))

    def to_json(self) -> dict[str, Any]:
        def opt_time(value: datetime | None) -> str | None:
            return None if value is None else _iso(value)

        return {
            "failed_attempts": dict(self.failed_attempts),
            "device_failed_attempts": self.device_failed_attempts,
            "locked_until": {k: _iso(v) for k, v in self.locked_until.items()},
            "device_locked_until": opt_time(self.device_locked_until),
            "policy_high_water": self.policy_high_water,
            "time_state": dict(self.time_state),
            "wipe_pending": self.wipe_pending,
            "pending_audit_events": [dict(e) for e in self.pending_audit_events],
            "pending_audit_dropped": self.pending_audit_dropped,
        }

    @classmethod
    def from_json(cls, data: object) -> HeaderCounters:
        if not isinstance(data, dict) or set(data) != set(cls().to_json()):
            raise ValueError("bad counters")

        def count(value: object) -> int:
            if type(value) is not int or value < 0:
                raise ValueError("bad count")
            return value

        def opt_time(value: object) -> datetime | None:
            return None if value is None else _parse_time(value)

        failed, locked, events = (
            data["failed_attempts"],
            data["locked_until"],
            data["pending_audit_events"],
        )
        if not isinstance(failed, dict) or not isinstance(locked, dict):
            raise ValueError("bad maps")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise ValueError("bad events")
        high_water = data["policy_high_water"]
        time_state = data["time_state"]
        if not isinstance(time_state, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str | int | float | bool))
            for k, v in time_state.items()
        ):
            raise ValueError("bad time state")
        if not isinstance(data["wipe_pending"], bool):
            raise ValueError("bad flag")
        counters = cls(
            failed_attempts={str(k): count(v) for k, v in failed.items()},
            device_failed_attempts=count(data["device_failed_attempts"]),
            locked_until={str(k): _parse_time(v) for k, v in locked.items()},
            device_locked_until=opt_time(data["device_locked_until"]),
            policy_high_water=None if high_water is None else count(high_water),
            time_state=dict(time_state),
            wipe_pending=data["wipe_pending"],
            pending_audit_dropped=count(data["pending_audit_dropped"]),
        )
        for event in events:
            counters.add_pending_audit_event(event)
        return counters


# -- slot cryptography (pure functions) --------------------------------------------------------


def slot_aad(device_id: str, user_id: str, role: str, params: KdfParams, salt: bytes) -> bytes:
    """The associated data that binds a slot's identity, role, KDF params and salt (ST-4)."""
    return canonical_json(
        {
            "format": FORMAT_VERSION,
            "device_id": device_id,
            "user_id": user_id,
            "role": role,
            "kdf": params.to_json(),
            "salt": _b64(salt),
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


def _dek_check(dek: bytes, device_id: str) -> bytes:
    """A one-way check value of the DEK (the DEK is 256 random bits: nothing to brute-force)."""
    return hmac.new(bytes(dek), b"gatehouse-dek-check-v1|" + device_id.encode(), "sha256").digest()


# -- the header file ---------------------------------------------------------------------------


@dataclass
class _Body:
    device_id: str
    generation: int
    dek_check: bytes
    slots: list[Slot]
    escrow: dict[str, str] | None
    counters: HeaderCounters

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "device_id": self.device_id,
            "generation": self.generation,
            "dek_check": _b64(self.dek_check),
            "slots": [s.to_json() for s in self.slots],
            "escrow": None if self.escrow is None else dict(self.escrow),
            "counters": self.counters.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> _Body:
        keys = {"format", "device_id", "generation", "dek_check", "slots", "escrow", "counters"}
        if not isinstance(data, dict) or set(data) != keys or data["format"] != FORMAT_VERSION:
            raise ValueError("bad header body")
        generation, slots, escrow = data["generation"], data["slots"], data["escrow"]
        if type(generation) is not int or generation < 1 or not isinstance(data["device_id"], str):
            raise ValueError("bad generation")
        if not isinstance(slots, list) or len(slots) > MAX_SLOTS:
            raise ValueError("bad slots")
        if escrow is not None:
            if not isinstance(escrow, dict) or set(escrow) != {"recipient", "sealed"}:
                raise ValueError("bad escrow")
            _unb64(escrow["recipient"], 32, 32)
            _unb64(escrow["sealed"], 1, 8192)
        parsed = [Slot.from_json(s) for s in slots]
        if len({s.user_id for s in parsed}) != len(parsed):
            raise ValueError("duplicate slot")
        return cls(
            device_id=data["device_id"],
            generation=generation,
            dek_check=_unb64(data["dek_check"], 32, 32),
            slots=parsed,
            escrow=escrow,
            counters=HeaderCounters.from_json(data["counters"]),
        )


def _mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()


class VaultHeader:
    """A verified, loaded vault header and the keyring that anchors it."""

    def __init__(self, path: Path, keyring: DeviceKeyring, body: _Body) -> None:
        self._path = path
        self._keyring = keyring
        self._body = body

    # -- create / load -------------------------------------------------------------------------

    @staticmethod
    def path_in(data_dir: Path) -> Path:
        return Path(data_dir) / HEADER_NAME

    @classmethod
    def create(cls, data_dir: Path, keyring: DeviceKeyring, dek: bytes) -> VaultHeader:
        """A new header (no slots yet) for ``dek``; the keyring must already be provisioned."""
        path = cls.path_in(data_dir)
        if path.exists():
            raise KeyslotError("header_exists")
        if len(dek) != DEK_BYTES:
            raise ValueError("the DEK must be 32 bytes")
        keyring.device_secret()  # fail early if the keyring was not provisioned
        body = _Body(
            device_id=keyring.device_id,
            generation=0,
            dek_check=_dek_check(dek, keyring.device_id),
            slots=[],
            escrow=None,
            counters=HeaderCounters(),
        )
        header = cls(path, keyring, body)
        header._write(copy.deepcopy(body))
        return header

    @classmethod
    def load(cls, data_dir: Path, keyring: DeviceKeyring) -> VaultHeader:
        """Read and verify the header: MAC, schema, device id and anti-restore generation."""
        path = cls.path_in(data_dir)
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_HEADER_BYTES + 1)
        except FileNotFoundError:
            raise HeaderTampered("header_missing") from None
        mac_key = keyring.header_mac_key()
        try:
            outer = json.loads(raw) if len(raw) <= MAX_HEADER_BYTES else None
        except (ValueError, RecursionError):
            outer = None
        if (
            not isinstance(outer, dict)
            or set(outer) != {"body", "mac"}
            or not isinstance(outer["mac"], str)
            or not isinstance(outer["body"], dict)
        ):
            raise HeaderTampered("header_tampered")
        try:
            expected = _mac(mac_key, outer["body"])
        except (ValueError, TypeError):
            raise HeaderTampered("header_tampered") from None
        if not hmac.compare_digest(expected, outer["mac"]):
            raise HeaderTampered("header_tampered")
        try:
            body = _Body.from_json(outer["body"])
        except (ValueError, TypeError, KeyError, KeyslotError):
            raise HeaderTampered("header_tampered") from None
        if body.device_id != keyring.device_id:
            raise HeaderTampered("header_tampered")
        anchored = keyring.header_generation()
        if anchored is None:  # only a kill between the very first write and its anchor
            anchored = 0
        if body.generation < anchored:
            raise HeaderTampered("header_restored")
        if body.generation > anchored + 1:
            raise HeaderTampered("header_tampered")
        if body.generation == anchored + 1:  # killed between the file and the keyring write
            keyring.set_header_generation(body.generation)
        return cls(path, keyring, body)

    def _write(self, body: _Body) -> None:
        """Persist ``body`` as the next generation: atomic file replace, then keyring anchor.

        Refuses (``header_changed``) when the file is no longer the generation this object
        read: another process wrote it, and writing now would silently undo that write."""
        on_disk = self._disk_generation()
        if on_disk is not None and on_disk != self._body.generation:
            raise KeyslotError("header_changed")
        body.generation = self._body.generation + 1
        document = body.to_json()
        data = canonical_json(
            {"body": document, "mac": _mac(self._keyring.header_mac_key(), document)}
        )
        atomic_write(self._path, data)
        self._body = body
        self._keyring.set_header_generation(body.generation)

    # -- reading ------------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self._body.device_id

    @property
    def generation(self) -> int:
        return self._body.generation

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(self._body.slots)

    def users(self) -> list[tuple[str, str]]:
        """(user_id, role) of every slot."""
        return [(s.user_id, s.role) for s in self._body.slots]

    def role_of(self, user_id: str) -> str | None:
        slot = self._slot(user_id)
        return None if slot is None else slot.role

    @property
    def counters(self) -> HeaderCounters:
        """A copy: change counters with ``update_counters``."""
        return copy.deepcopy(self._body.counters)

    def escrow_blob(self) -> bytes | None:
        """The DEK sealed to the gateway (sent to it for an online add-user or reset)."""
        escrow = self._body.escrow
        return None if escrow is None else base64.b64decode(escrow["sealed"])

    def _slot(self, user_id: str) -> Slot | None:
        return next((s for s in self._body.slots if s.user_id == user_id), None)

    def check_dek(self, dek: bytes) -> None:
        """Raise ``KeyslotError("wrong_dek")`` unless ``dek`` is this vault's key."""
        if len(dek) != DEK_BYTES or not hmac.compare_digest(
            _dek_check(dek, self.device_id), self._body.dek_check
        ):
            raise KeyslotError("wrong_dek")

    # -- changing -----------------------------------------------------------------------------

    def update_counters(self, mutate: Callable[[HeaderCounters], None]) -> None:
        """Apply ``mutate`` to the counters AS THEY ARE ON DISK and write the header.

        Under an exclusive lock: re-read the header (another window or the device CLI may have
        written since we loaded it), mutate, write. Two processes therefore never undo each
        other's failed-attempt counts or pending audit events."""
        with self._exclusive():
            self._refresh()
            body = copy.deepcopy(self._body)
            mutate(body.counters)
            HeaderCounters.from_json(json.loads(canonical_json(body.counters.to_json())))
            self._write(body)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """An advisory lock on ``vault.header.lock`` for read-modify-write (POSIX flock)."""
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _refresh(self) -> None:
        """Reload when the file moved on since we read it (verified exactly like ``load``)."""
        if self._disk_generation() != self._body.generation:
            self._body = type(self).load(self._path.parent, self._keyring)._body

    def _disk_generation(self) -> int | None:
        try:
            outer = json.loads(self._path.read_bytes()[: MAX_HEADER_BYTES + 1])
            generation = outer["body"]["generation"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return generation if type(generation) is int else None

    def acknowledge_pending_audit_events(self, count: int) -> None:
        """Drop the first ``count`` pending events once the audit chain holds them."""

        def drop(counters: HeaderCounters) -> None:
            del counters.pending_audit_events[:count]
            counters.pending_audit_dropped = 0

        self.update_counters(drop)

    def add_slot(
        self,
        user_id: str,
        role: str,
        password: str,
        dek: bytes,
        params: KdfParams,
        *,
        replace: bool = False,
    ) -> None:
        """Give ``user_id`` a slot. ``dek`` comes from an unlocked vault or an escrow unwrap.

        ``replace=True`` re-wraps an existing user's slot (a password reset done online).
        """
        if not _USER_ID.fullmatch(user_id) or role not in ROLES:
            raise KeyslotError("invalid_user")
        self.check_dek(dek)
        params.validate()
        existing = self._slot(user_id)
        if existing is not None and not replace:
            raise KeyslotError("slot_exists")
        if existing is None and replace:
            raise KeyslotError("no_such_slot")
        if existing is None and len(self._body.slots) >= MAX_SLOTS:
            raise KeyslotError("too_many_slots")
        try:
            password_bytes = normalise_password(password)
        except ValueError:
            raise KeyslotError("invalid_password") from None
        slot = wrap_slot(
            dek,
            user_id=user_id,
            role=role,
            password=password_bytes,
            params=params,
            device_secret=self._keyring.device_secret(),
            device_id=self.device_id,
        )
        body = copy.deepcopy(self._body)
        body.slots = [slot if s.user_id == user_id else s for s in body.slots]
        if existing is None:
            body.slots.append(slot)
        body.counters.failed_attempts.pop(user_id, None)
        body.counters.locked_until.pop(user_id, None)
        self._write(body)

    def remove_slot(self, user_id: str) -> None:
        if self._slot(user_id) is None:
            raise KeyslotError("no_such_slot")
        if len(self._body.slots) == 1 and self._body.escrow is None:
            raise KeyslotError("last_slot")
        body = copy.deepcopy(self._body)
        body.slots = [s for s in body.slots if s.user_id != user_id]
        body.counters.failed_attempts.pop(user_id, None)
        body.counters.locked_until.pop(user_id, None)
        self._write(body)

    def set_escrow(self, dek: bytes, recipient_public: bytes) -> None:
        """Seal ``dek`` to the gateway's X25519 public key, bound to this device's id."""
        self.check_dek(dek)
        sealed = seal(bytes(dek), recipient_public, escrow_aad(self.device_id))
        body = copy.deepcopy(self._body)
        body.escrow = {"recipient": _b64(recipient_public), "sealed": _b64(sealed)}
        self._write(body)

    def change_password(
        self,
        user_id: str,
        old_password: str,
        new_password: str,
        *,
        now: datetime,
        params: KdfParams | None = None,
    ) -> None:
        """Re-wrap the DEK under a new password (no data is re-encrypted; ST-6).

        The old password is checked through ``unlock`` (throttled and counted like a login).
        """
        dek = self.unlock(user_id, old_password, now=now)
        slot = self._slot(user_id)
        assert slot is not None  # unlock succeeded
        self.add_slot(user_id, slot.role, new_password, dek, params or slot.kdf, replace=True)

    def destroy_slots(self) -> None:
        """Wipe step: rewrite the header with no slot and no escrow, wipe pending (WP-1)."""
        body = copy.deepcopy(self._body)
        body.slots = []
        body.escrow = None
        body.counters.wipe_pending = True
        self._write(body)

    # -- unlocking ----------------------------------------------------------------------------

    def unlock(self, user_id: str, password: str, *, now: datetime) -> bytes:
        """The DEK for ``user_id`` + ``password``, or ``UnlockFailed`` (or ``LockedOut``)."""
        _check_now(now)
        counters = self._body.counters
        if counters.wipe_pending:
            raise WipePending()
        until = max(
            (t for t in (counters.locked_until.get(user_id), counters.device_locked_until) if t),
            default=None,
        )
        if until is not None and until > now:
            raise LockedOut(until)
        slot = self._slot(user_id)
        event: dict[str, JsonScalar] = {
            "event": "login_failed",
            "user_id": user_id if _USER_ID.fullmatch(user_id) else "<invalid>",
            "at": _iso(now),
        }

        def count_attempt(c: HeaderCounters) -> None:
            if slot is not None:
                c.failed_attempts[user_id] = c.failed_attempts.get(user_id, 0) + 1
            c.device_failed_attempts += 1
            c.add_pending_audit_event(event)

        self.update_counters(count_attempt)  # before the work: a kill cannot erase a guess
        try:
            password_bytes = normalise_password(password)
        except ValueError:
            raise UnlockFailed() from None
        device_secret = self._keyring.device_secret()
        if slot is None:
            decoy = self._body.slots[0].kdf if self._body.slots else FLOOR
            derive(password_bytes, secrets.token_bytes(SALT_BYTES), decoy.validate())
            raise UnlockFailed()
        dek = unwrap_slot(slot, password_bytes, device_secret, self.device_id)

        def uncount(c: HeaderCounters) -> None:
            c.failed_attempts.pop(user_id, None)
            c.device_failed_attempts = 0
            for index in range(len(c.pending_audit_events) - 1, -1, -1):
                if c.pending_audit_events[index] == event:
                    del c.pending_audit_events[index]
                    break

        self.update_counters(uncount)
        return dek
