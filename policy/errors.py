"""The one exception every policy check raises, and its stable reason codes.

Invariant: every refusal anywhere in ``policy/`` (envelope, signatures, payload schema, time
window, rollback, scope, installed-policy store) is a :class:`PolicyRefused` carrying one
:class:`PolicyReason`. Callers audit ``reason.value`` (stable, machine-readable) and may show
``detail`` (short, human-readable, never secret: no key material, no MAC values).
"""

from __future__ import annotations

from enum import StrEnum


class PolicyReason(StrEnum):
    """Stable reason codes: the audit log and the UI key off these values."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    BELOW_THRESHOLD = "below_threshold"
    SCHEMA = "schema"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    ROLLBACK = "rollback"
    WRONG_SITE = "wrong_site"
    WRONG_DEVICE = "wrong_device"
    STORE_ROLLBACK = "store_rollback"
    STORE_TAMPERED = "store_tampered"


REASON_MEANINGS: dict[PolicyReason, str] = {
    PolicyReason.TOO_LARGE: "the envelope is larger than the size limit; nothing else was read",
    PolicyReason.MALFORMED: "the envelope is not a well-formed JWS JSON general serialisation "
    "(bad JSON, bad base64url, unknown or missing members, unsupported header)",
    PolicyReason.BAD_SIGNATURE: "a signature by a trusted key does not verify over the bytes "
    "received, or a signature uses an algorithm other than EdDSA",
    PolicyReason.UNKNOWN_KEY: "no signature is by a trusted key",
    PolicyReason.BELOW_THRESHOLD: "fewer distinct trusted keys signed than the threshold needs",
    PolicyReason.SCHEMA: "the signed payload is not a valid policy: unknown, missing, mistyped "
    "or out-of-range field",
    PolicyReason.NOT_YET_VALID: "the current time is before the policy's not_before",
    PolicyReason.EXPIRED: "the current time is at or after the policy's expires_at",
    PolicyReason.ROLLBACK: "the policy's version is not greater than the installed high-water "
    "version",
    PolicyReason.WRONG_SITE: "the policy is issued for another site",
    PolicyReason.WRONG_DEVICE: "the policy lists devices and this device is not one of them",
    PolicyReason.STORE_ROLLBACK: "the installed-policy store is older than the anchored "
    "high-water version, or missing while the anchor records an install",
    PolicyReason.STORE_TAMPERED: "the installed-policy store file is unreadable or its MAC "
    "does not verify",
}


class PolicyRefused(Exception):
    """A policy (or the installed-policy store) was refused; nothing was persisted."""

    def __init__(self, reason: PolicyReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
