"""Device enrolment (NW-4): one-time tokens, CSR checks, certificate issuance, renewal.

Invariants:
- A token is 32 random bytes (base64url); only its SHA-256 is stored, with its site and expiry.
  It is single use: ``Store.enrol_device`` consumes it with a conditional UPDATE in the same
  transaction that registers the device, so a replay — even after the first answer was lost —
  and the loser of two concurrent uses both get ``token_used``.
- The device id (``dev-`` + 12 hex) and the site come from the gateway (the token), never from
  the CSR; the CSR only proves possession of a P-256 or Ed25519 key with no CA powers.
- ``audit_k0`` (32 bytes) is stored with the device: the first key of its audit chain.
- ``wipe_report_key`` (optional, a raw Ed25519 public key in base64) is stored with the device
  in the same transaction: the one key whose wipe reports are accepted for it (WP-3).
- Renewal needs the current, verified certificate: same device id and site, new key allowed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass

from sync.gateway import pki
from sync.gateway.authority import GatewayAuthority
from sync.gateway.errors import ControlError
from sync.gateway.pki import PkiError
from sync.gateway.store.base import DatabaseFailure, Store, StoreError
from sync.protocol.wipe_report import WipeReportRefused, public_key_from_text, public_key_text

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 64
MAX_TTL = dt.timedelta(days=7)
AUDIT_KEY_BYTES = 32


def new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii").rstrip("=")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_device_id() -> str:
    return "dev-" + secrets.token_hex(6)


def create_enrol_token(
    store: Store, site: str, *, now: dt.datetime, ttl: dt.timedelta
) -> tuple[str, dt.datetime]:
    """Store a new token for ``site``; return it (shown once) and its expiry."""
    if not pki.SITE_RE.fullmatch(site):
        raise ControlError(400, "bad_request")
    if not dt.timedelta(0) < ttl <= MAX_TTL:
        raise ControlError(400, "bad_request")
    token = new_token()
    expires_at = now + ttl
    store.add_enrol_token(token_hash(token), site, now=now, expires_at=expires_at)
    return token, expires_at


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    site: str
    certificate_pem: str


def _audit_k0(text: object) -> bytes:
    if not isinstance(text, str) or len(text) > 64:
        raise ControlError(400, "bad_request")
    try:
        k0 = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError(400, "bad_request") from None
    if len(k0) != AUDIT_KEY_BYTES:
        raise ControlError(400, "bad_request")
    return k0


def _wipe_report_key(text: object) -> str | None:
    if text is None:
        return None  # an older laptop: it will not be able to report its own wipes
    try:
        return public_key_text(public_key_from_text(text))
    except WipeReportRefused:
        raise ControlError(400, "bad_request") from None


def enrol(
    store: Store,
    authority: GatewayAuthority,
    *,
    token: object,
    csr_pem: object,
    audit_k0: object,
    now: dt.datetime,
    wipe_report_key: object = None,
) -> Enrolled:
    """Check the token, then the CSR; issue the certificate; consume the token atomically."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise ControlError(403, "token_unknown")
    k0 = _audit_k0(audit_k0)
    report_key = _wipe_report_key(wipe_report_key)
    hashed = token_hash(token)
    record = store.enrol_token(hashed)
    if record is None:
        raise ControlError(403, "token_unknown")
    if record.used_at is not None:
        raise ControlError(403, "token_used")
    if record.expires_at <= now:
        raise ControlError(403, "token_expired")
    try:
        csr = pki.check_device_csr(csr_pem)  # type: ignore[arg-type]
        device_id = new_device_id()
        cert = pki.sign_device_csr(
            authority.ca_key, authority.ca_cert, csr, device_id=device_id, site=record.site, now=now
        )
    except PkiError as err:
        log.info("enrolment refused: %s %s", err.reason, err.detail)
        raise ControlError(400, "csr_invalid") from None
    try:
        site = store.enrol_device(
            hashed,
            now=now,
            device_id=device_id,
            cert_serial=format(cert.serial_number, "x"),
            cert_not_after=cert.not_valid_after_utc,
            audit_k0=k0,
            wipe_report_key=report_key,
        )
    except DatabaseFailure:
        raise  # not a refusal of this request: answered 503 with Retry-After
    except StoreError as err:
        raise ControlError(403 if err.reason.startswith("token_") else 409, err.reason) from None
    log.info("device enrolled")
    return Enrolled(device_id, site, pki.cert_to_pem(cert).decode("ascii"))


def renew(
    store: Store,
    authority: GatewayAuthority,
    identity: pki.DeviceIdentity,
    *,
    csr_pem: object,
    now: dt.datetime,
) -> str:
    """A fresh certificate for the calling (verified, active) device."""
    try:
        csr = pki.check_device_csr(csr_pem)  # type: ignore[arg-type]
        cert = pki.sign_device_csr(
            authority.ca_key,
            authority.ca_cert,
            csr,
            device_id=identity.device_id,
            site=identity.site,
            now=now,
        )
    except PkiError:
        raise ControlError(400, "csr_invalid") from None
    store.renew_device_cert(
        identity.device_id, format(cert.serial_number, "x"), cert.not_valid_after_utc
    )
    return pki.cert_to_pem(cert).decode("ascii")
