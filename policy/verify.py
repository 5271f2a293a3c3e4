"""Verify a signed policy envelope: the single entry point for installing a policy.

Invariants (SECURITY PO-1, PO-2):

* Order is fixed: size → envelope structure → signatures over the exact bytes received with a
  k-of-n threshold of distinct trusted keys → only then the payload JSON and its schema → time
  window → rollback → site → device. Nothing from an unverified payload is ever parsed.
* Every failure is ``PolicyRefused(reason, detail)``; any byte string gives either a
  :class:`~policy.model.Policy` or ``PolicyRefused``, never another exception.
* ``now`` is always an argument (timezone-aware); the verifier never reads a clock.
* Expiry: installing an expired policy is refused (``expired``); a policy already installed
  that expires later keeps its restrictions and puts the device in restricted mode — see
  :func:`policy_mode` (re-exported from :mod:`policy.decisions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from policy.decisions import PolicyMode, policy_mode
from policy.errors import PolicyReason, PolicyRefused
from policy.jws import kid_for, verify_signatures
from policy.model import Policy, parse_payload

__all__ = [
    "PolicyMode",
    "PolicyReason",
    "PolicyRefused",
    "TrustConfig",
    "policy_mode",
    "verify_installed",
    "verify_policy",
]


@dataclass(frozen=True)
class TrustConfig:
    """Trusted policy-signing keys by kid, and how many distinct ones must sign (k of n).

    Each kid must be the key's thumbprint (:func:`policy.jws.kid_for`), so one key cannot be
    counted twice under two names; ``1 <= threshold <= len(keys)``.
    """

    keys: Mapping[str, Ed25519PublicKey]
    threshold: int = 1

    def __post_init__(self) -> None:
        keys = dict(self.keys)
        for kid, key in keys.items():
            if not isinstance(key, Ed25519PublicKey):
                raise TypeError("trusted keys must be Ed25519 public keys")
            if kid != kid_for(key):
                raise ValueError("a trusted kid does not match its key's thumbprint")
        if not 1 <= self.threshold <= len(keys):
            raise ValueError("threshold must be between 1 and the number of trusted keys")
        object.__setattr__(self, "keys", MappingProxyType(keys))

    @classmethod
    def from_keys(cls, keys: Iterable[Ed25519PublicKey], threshold: int = 1) -> TrustConfig:
        """Trust ``keys`` (kids computed); duplicates collapse to one key."""
        return cls({kid_for(k): k for k in keys}, threshold)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def verify_installed(
    envelope: bytes, trust: TrustConfig, *, site: str | None, device_id: str | None
) -> Policy:
    """Signatures, schema, site and device — but neither time window nor rollback.

    For re-verifying a policy that was already installed (the store uses it): an installed
    policy that has since expired stays in force in restricted mode.
    """
    verified = verify_signatures(envelope, trust.keys, trust.threshold)
    policy = parse_payload(verified.payload, envelope=envelope, signer_kids=verified.kids)
    _check_scope(policy, site=site, device_id=device_id)
    return policy


def _check_scope(policy: Policy, *, site: str | None, device_id: str | None) -> None:
    if site is not None and policy.site != site:
        raise PolicyRefused(
            PolicyReason.WRONG_SITE, f"policy is for site {policy.site}, this device is {site!a}"
        )
    if not policy.applies_to_device(device_id):
        raise PolicyRefused(PolicyReason.WRONG_DEVICE, "policy does not list this device")


def verify_policy(
    envelope: bytes,
    trust: TrustConfig,
    *,
    now: datetime,
    installed_version: int | None,
    site: str | None,
    device_id: str | None,
) -> Policy:
    """Verify ``envelope`` for installation at ``now``; return the policy or raise.

    ``installed_version`` is the high-water version (``None`` before the first install);
    ``site``/``device_id`` are this device's (``None`` skips the site check before enrolment;
    a policy that lists devices needs a ``device_id`` in its list).
    """
    _require_aware(now)
    verified = verify_signatures(envelope, trust.keys, trust.threshold)
    policy = parse_payload(verified.payload, envelope=envelope, signer_kids=verified.kids)
    if now < policy.not_before:
        raise PolicyRefused(PolicyReason.NOT_YET_VALID, f"valid from {policy.not_before:%FT%TZ}")
    if now >= policy.expires_at:
        raise PolicyRefused(PolicyReason.EXPIRED, f"expired at {policy.expires_at:%FT%TZ}")
    if installed_version is not None and policy.version <= installed_version:
        raise PolicyRefused(
            PolicyReason.ROLLBACK,
            f"version {policy.version} is not newer than installed version {installed_version}",
        )
    _check_scope(policy, site=site, device_id=device_id)
    return policy
