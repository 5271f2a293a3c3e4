"""The vault header file: key slots, the escrow slot and MACed counters beside the database.

``vault.header`` is a JSON file beside the database: ``{"body": {...}, "mac": hex}``. The slot
cryptography is ``client.core.keyslots``; the counters' schema is ``client.core.header_counters``.

Invariants:
- The whole body (slots, escrow, counters, generation) is HMAC-SHA256'd with a key from the
  keyring: an edited header raises ``HeaderTampered("header_tampered")``.
- Every write bumps ``generation`` and records it in the keyring *after* the atomic file
  replace. A header whose generation is below the keyring's is a restored copy:
  ``HeaderTampered("header_restored")`` (AU-2, PO-4). One above is the crash window between the
  two writes and is accepted (and the keyring repaired); it cannot be forged without the MAC key.
- Every change is a single ``atomic_write`` of the whole header: killed at any instant, the old
  header or the new one is on disk, so a password change leaves the old or the new password
  working, never neither (ST-6).
- A write never undoes another process's write: counters are changed read-modify-write under
  an exclusive lock on ``vault.header.lock``, and a write from a stale copy is refused
  (``KeyslotError("header_changed")``).
- ``unlock`` raises one ``UnlockFailed`` for every wrong-password, unknown-user and tamper case
  (no oracle). The attempt is counted in the header *before* the Argon2id work and uncounted on
  success, so killing the app mid-unlock never erases a guess (AU-2). Lockout times set by the
  accounts layer are enforced here against the ``now`` it passes.
- A full disk leaves every write as ``disk_space.DiskFull`` with the old header intact (the
  atomic replace never happened). ``unlock`` counts the attempt first, so on a full disk it
  raises ``DiskFull`` before any password work: an attempt that cannot be counted is never
  made (CR-3, AU-2).
No password, key or DEK is ever logged or put in an exception.

Length: the header's format, its atomic write and its MACed counters must change together;
slot cryptography already lives in ``keyslots.py``, counters in ``header_counters.py``.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from client.core import disk_space
from client.core.device_keyring import DeviceKeyring
from client.core.errors import UserFacingError
from client.core.header_counters import HeaderCounters, JsonScalar
from client.core.humanize import format_clock
from client.core.kdf import FLOOR, KdfParams
from client.core.keyslots import (
    DEK_BYTES,
    FORMAT_VERSION,
    ROLES,
    KeyslotError,
    Slot,
    UnlockFailed,
    b64,
    canonical_json,
    decoy_derive,
    dek_check,
    normalise_password,
    unb64,
    unwrap_slot,
    valid_user_id,
    wrap_slot,
)
from policy.atomic import atomic_write
from sync.protocol.escrow import escrow_aad, seal

log = logging.getLogger(__name__)

HEADER_NAME: Final = "vault.header"
MAX_HEADER_BYTES: Final = 1024 * 1024  # a header is a few KiB; refuse to parse a huge one
MAX_SLOTS: Final = 64


class HeaderTampered(UserFacingError):
    """The header was edited (``header_tampered``), restored (``header_restored``) or is gone."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            reason,
            "This device's security file was changed outside Gatehouse, so it is locked. "
            "Connect to the network and sign in online; IT may need to re-provision it.",
        )


class LockedOut(UserFacingError):
    """Too many failed attempts: unlocking is refused until ``until``."""

    def __init__(self, until: datetime) -> None:
        super().__init__(
            "locked_out",
            f"Too many wrong passwords. Try again after {format_clock(until)}, or sign in online.",
        )
        self.until = until


class WipePending(UserFacingError):
    """A wipe was started on this device; it must complete, nothing can be unlocked."""

    def __init__(self) -> None:
        super().__init__("wipe_pending", "This device is being wiped. Contact IT.")


def _check_now(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware UTC datetime")


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
            "dek_check": b64(self.dek_check),
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
            unb64(escrow["recipient"], 32, 32)
            unb64(escrow["sealed"], 1, 8192)
        parsed = [Slot.from_json(s) for s in slots]
        if len({s.user_id for s in parsed}) != len(parsed):
            raise ValueError("duplicate slot")
        return cls(
            device_id=data["device_id"],
            generation=generation,
            dek_check=unb64(data["dek_check"], 32, 32),
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
            dek_check=dek_check(dek, keyring.device_id),
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
        with disk_space.mapped(self._path.parent, disk_space.SIGN_IN_BYTES):
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
            dek_check(dek, self.device_id), self._body.dek_check
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
        with disk_space.mapped(self._path.parent, disk_space.SIGN_IN_BYTES):
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
        audit_event: dict[str, JsonScalar] | None = None,
    ) -> None:
        """Give ``user_id`` a slot. ``dek`` comes from an unlocked vault or an escrow unwrap.

        ``replace=True`` re-wraps an existing user's slot (a password reset done online).
        ``audit_event`` is queued as a pending audit event in the SAME atomic header write as
        the slot (AD-1): the act and its record take effect together or not at all.
        """
        if not valid_user_id(user_id) or role not in ROLES:
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
        if audit_event is not None:
            body.counters.add_pending_audit_event(audit_event)
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
        body.escrow = {"recipient": b64(recipient_public), "sealed": b64(sealed)}
        self._write(body)

    def change_password(
        self,
        user_id: str,
        old_password: str,
        new_password: str,
        *,
        now: datetime,
        params: KdfParams | None = None,
        audit_event: dict[str, JsonScalar] | None = None,
    ) -> None:
        """Re-wrap the DEK under a new password (no data is re-encrypted; ST-6).

        The old password is checked through ``unlock`` (throttled and counted like a login).
        ``audit_event`` goes into the header with the new slot, in one atomic write (AD-1).
        """
        dek = self.unlock(user_id, old_password, now=now)
        slot = self._slot(user_id)
        assert slot is not None  # unlock succeeded
        self.add_slot(
            user_id,
            slot.role,
            new_password,
            dek,
            params or slot.kdf,
            replace=True,
            audit_event=audit_event,
        )

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
            "user_id": user_id if valid_user_id(user_id) else "<invalid>",
            "at": now.isoformat(),
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
            decoy_derive(password_bytes, self._body.slots[0].kdf if self._body.slots else FLOOR)
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
