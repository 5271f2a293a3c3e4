"""The installed-policy store with an anti-rollback high-water version (SECURITY PO-3, PO-4).

Invariants:

* The store file holds the last good envelope, its version (the high-water mark) and an
  HMAC-SHA256 over both with a caller-supplied key (the vault derives it from the keyring).
  It is written only with :func:`policy.atomic.atomic_write` (atomic, 0600).
* The high-water version is also kept in a :class:`VersionAnchor` outside the file (the client
  backs it with the OS keyring). The file is written first, then the anchor, so a crash in
  between leaves a file *ahead* of the anchor, which :meth:`PolicyStore.current` heals forward.
* :meth:`PolicyStore.install` verifies first (rollback against ``max(anchor, file)``) and
  persists nothing on a refusal: the file and the anchor are untouched and the last good policy
  stays in force.
* :meth:`PolicyStore.current` re-verifies the stored envelope (signatures, schema, site,
  device) and its MAC every time; a file restored from an older copy (its version below the
  anchor, or missing while the anchor records an install) is ``store_rollback``; an edited or
  unreadable file is ``store_tampered``. It never refuses for expiry: an installed policy that
  has expired stays in force in restricted mode (:func:`policy.decisions.policy_mode`).
* State lives only in the two stores, so a new ``PolicyStore`` on the same file and anchor
  (an app restart) sees exactly the same high-water version.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from policy.atomic import atomic_write
from policy.errors import PolicyReason, PolicyRefused
from policy.jws import MAX_ENVELOPE_BYTES, b64url_decode, b64url_encode
from policy.model import MAX_VERSION, Policy
from policy.strictjson import StrictJSONError, loads_strict
from policy.verify import TrustConfig, verify_installed, verify_policy

STORE_FORMAT = "gatehouse-policy-store/1"
MIN_MAC_KEY_BYTES = 32
# base64 grows the envelope by 4/3; leave room for the other members.
MAX_STORE_BYTES = MAX_ENVELOPE_BYTES * 2


class VersionAnchor(Protocol):
    """Where the high-water version is kept outside the store file (e.g. the OS keyring)."""

    def read(self) -> int | None: ...

    def write(self, version: int) -> None: ...


class MemoryVersionAnchor:
    """An in-process anchor (tests, tools). Not persistent: never use it on a device."""

    def __init__(self, version: int | None = None) -> None:
        self.version = version

    def read(self) -> int | None:
        return self.version

    def write(self, version: int) -> None:
        self.version = version


@dataclass(frozen=True)
class _Stored:
    high_water: int
    envelope: bytes


def _mac(key: bytes, high_water: int, envelope: bytes) -> bytes:
    message = STORE_FORMAT.encode("ascii") + b"\x00" + high_water.to_bytes(8, "big") + envelope
    return hmac.new(key, message, hashlib.sha256).digest()


def _tampered(detail: str) -> PolicyRefused:
    return PolicyRefused(PolicyReason.STORE_TAMPERED, detail)


class PolicyStore:
    """The device's installed policy: install (verify → persist) and current (re-verify)."""

    def __init__(self, path: Path, mac_key: bytes, anchor: VersionAnchor) -> None:
        if len(mac_key) < MIN_MAC_KEY_BYTES:
            raise ValueError(f"mac_key must be at least {MIN_MAC_KEY_BYTES} bytes")
        self._path = Path(path)
        self._mac_key = bytes(mac_key)
        self._anchor = anchor

    @property
    def path(self) -> Path:
        return self._path

    def _read(self) -> _Stored | None:
        try:
            with self._path.open("rb") as handle:
                raw = handle.read(MAX_STORE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _tampered(f"store file unreadable ({type(exc).__name__})") from None
        if len(raw) > MAX_STORE_BYTES:
            raise _tampered("store file too large")
        try:
            doc = loads_strict(raw)
        except StrictJSONError:
            raise _tampered("store file is not valid JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"format", "high_water", "envelope", "mac"}:
            raise _tampered("store file has the wrong members")
        high_water, envelope_b64, mac_b64 = doc["high_water"], doc["envelope"], doc["mac"]
        if doc["format"] != STORE_FORMAT:
            raise _tampered("store file has an unknown format")
        if isinstance(high_water, bool) or not isinstance(high_water, int):
            raise _tampered("store high-water is not an integer")
        if not 1 <= high_water <= MAX_VERSION:
            raise _tampered("store high-water out of range")
        if not isinstance(envelope_b64, str) or not isinstance(mac_b64, str):
            raise _tampered("store members have the wrong types")
        try:
            envelope = b64url_decode(envelope_b64)
            mac = b64url_decode(mac_b64)
        except ValueError:
            raise _tampered("store members are not base64url") from None
        if not hmac.compare_digest(mac, _mac(self._mac_key, high_water, envelope)):
            raise _tampered("store MAC does not verify")
        return _Stored(high_water, envelope)

    def _write(self, high_water: int, envelope: bytes) -> None:
        doc = {
            "format": STORE_FORMAT,
            "high_water": high_water,
            "envelope": b64url_encode(envelope),
            "mac": b64url_encode(_mac(self._mac_key, high_water, envelope)),
        }
        atomic_write(self._path, json.dumps(doc, sort_keys=True).encode("ascii"))

    def high_water(self) -> int | None:
        """The highest version ever installed (anchor or authentic store file), or None."""
        versions = [v for v in (self._anchor.read(), self._stored_version()) if v is not None]
        return max(versions) if versions else None

    def _stored_version(self) -> int | None:
        try:
            stored = self._read()
        except PolicyRefused:
            return None  # an unauthentic file says nothing; the anchor still holds the line
        return stored.high_water if stored is not None else None

    def install(
        self,
        envelope: bytes,
        trust: TrustConfig,
        *,
        now: datetime,
        site: str | None,
        device_id: str | None,
    ) -> Policy:
        """Verify ``envelope`` as newer than the high-water mark, then persist it.

        On ``PolicyRefused`` nothing is written. An ``OSError`` from the write leaves the old
        file and the anchor as they were.
        """
        policy = verify_policy(
            envelope,
            trust,
            now=now,
            installed_version=self.high_water(),
            site=site,
            device_id=device_id,
        )
        self._write(policy.version, envelope)
        self._anchor.write(policy.version)
        return policy

    def current(
        self,
        trust: TrustConfig,
        *,
        now: datetime,
        site: str | None,
        device_id: str | None,
    ) -> Policy | None:
        """The installed policy, re-verified; ``None`` if none was ever installed.

        ``now`` is only checked to be timezone-aware: expiry does not refuse here — ask
        :func:`policy.decisions.policy_mode` whether the device is in restricted mode.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        anchored = self._anchor.read()
        stored = self._read()
        if stored is None:
            if anchored is None:
                return None
            raise PolicyRefused(
                PolicyReason.STORE_ROLLBACK,
                f"store file missing but version {anchored} was installed",
            )
        if anchored is not None and stored.high_water < anchored:
            raise PolicyRefused(
                PolicyReason.STORE_ROLLBACK,
                f"store holds version {stored.high_water}, version {anchored} was installed",
            )
        policy = verify_installed(stored.envelope, trust, site=site, device_id=device_id)
        if policy.version != stored.high_water:
            raise _tampered("stored envelope version differs from the store high-water")
        if anchored is None or stored.high_water > anchored:
            self._anchor.write(stored.high_water)  # heal a crash between file and anchor
        return policy
