"""Admitting a request's device cheaply: certificates verified once, device states cached briefly.

Invariants:
- A certificate is verified in full (signature by the device CA, validity at ``now``,
  clientAuth usage: ``pki.verify_device_certificate``) the first time it is seen; a certificate
  that passed is remembered by its PEM text (at most ``MAX_CERTIFICATES``, least recently used
  out first) and on later requests only its validity window is checked against ``now``, so an
  expired certificate is refused on the first request after it expires. A certificate that
  failed is never remembered.
- A device's state (site, status, current certificate serial: ``Store.device_admission``, one
  query) is read again when it is older than ``STATE_TTL_S`` seconds (monotonic clock), or when
  this process's store has changed any device since it was read (``Store.device_changes``).
  So a revocation, a wipe or a renewal made in this process (a wipe receipt, a wipe report,
  ``/device/renew``, an admin command run in-process) takes effect on the very next request,
  and one made by another process (``gatehouse-gateway device revoke``, another ``--workers``
  process) on the first request after at most ``STATE_TTL_S`` — also on a connection kept
  alive across it. At most ``MAX_DEVICES`` states.
- What a state allows is decided on every request (``refusal``), never cached: a revoked device
  still reaches ``/device/commands`` only.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cryptography import x509

from sync.gateway.pki import DeviceIdentity, PkiError, verify_device_certificate
from sync.gateway.store.base import DeviceAdmission, Store

STATE_TTL_S = 2.0  # the longest another process's revocation goes unseen here
MAX_CERTIFICATES = 20_000  # a national fleet is ~2,000 laptops, each renewing now and then
MAX_DEVICES = 20_000
REVOKED_MAY_REACH = "/device/commands"  # a revoked laptop may still fetch and acknowledge a wipe


@dataclass(frozen=True)
class _Verified:
    identity: DeviceIdentity
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class DeviceState:
    """A device's state as read at ``read_at`` (``admission`` None: no such device)."""

    admission: DeviceAdmission | None
    read_at: float  # monotonic
    changes: int  # the store's ``device_changes()`` just before it was read


K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A bounded mapping, least recently used out first; thread-safe."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)


class Admission:
    """The certificate and device-state caches of one gateway process."""

    def __init__(
        self,
        store: Store,
        ca_cert: x509.Certificate,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ca_cert = ca_cert
        self._monotonic = monotonic
        self._certificates: _Lru[str, _Verified] = _Lru(MAX_CERTIFICATES)
        self._states: _Lru[str, DeviceState] = _Lru(MAX_DEVICES)

    def identity(self, pem: str, now: dt.datetime) -> DeviceIdentity:
        """The verified identity of the certificate ``pem``; raises ``PkiError``."""
        known = self._certificates.get(pem)
        if known is not None:
            if not known.not_before <= now <= known.not_after:
                raise PkiError("certificate_expired")
            return known.identity
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        identity = verify_device_certificate(cert, self._ca_cert, now=now)
        self._certificates.put(
            pem, _Verified(identity, cert.not_valid_before_utc, cert.not_valid_after_utc)
        )
        return identity

    def cached_state(self, device_id: str) -> DeviceState | None:
        """The device's remembered state while it may still be used, else None (then
        ``read_state``)."""
        state = self._states.get(device_id)
        if state is None or state.changes != self._store.device_changes():
            return None
        if self._monotonic() - state.read_at >= STATE_TTL_S:
            return None
        return state

    def read_state(self, device_id: str) -> DeviceState:
        """Read the device's state from the store (one query) and remember it. Blocking."""
        changes = self._store.device_changes()  # before the read: a change after it expires it
        read_at = self._monotonic()
        state = DeviceState(self._store.device_admission(device_id), read_at, changes)
        self._states.put(device_id, state)
        return state


def refusal(admission: DeviceAdmission | None, identity: DeviceIdentity, path: str) -> str | None:
    """Why this device may not make this request (a reason code), or None."""
    if admission is None:
        return "unknown_device"
    if admission.status == "revoked" and path.startswith(REVOKED_MAY_REACH):
        return None  # a revoked laptop may still fetch and acknowledge a pending wipe
    if admission.status != "active":
        return f"device_{admission.status}"
    if admission.site != identity.site:
        return "device_site_mismatch"
    # After a renewal only the newest certificate counts: a stolen older key cannot keep
    # working (or renew itself) until it expires.
    if admission.cert_serial is not None and admission.cert_serial != format(identity.serial, "x"):
        return "certificate_superseded"
    return None
