"""Signed device policies on the gateway: stored and served, never signed or trusted here.

Invariants:
- The gateway does not hold a policy-signing key. ``publish`` checks that the envelope is a
  well-formed JWS (``policy.jws.parse_envelope``) whose payload parses as a policy
  (``policy.model.parse_payload``); when trust keys are given (``DIR/policy-trust/*.pem``) at
  least one of them must have signed it (``verify_signatures``), so a typo or a foreign file
  is refused before any device downloads it. Devices verify every policy themselves (PO-1).
- (site, version) is unique: a version is published once.
- ``latest_for_device`` is the highest version for the device's site that names every device
  (``devices`` null) or this device; site- or device-scoped, never another site's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from policy.errors import PolicyRefused
from policy.jws import kid_for, parse_envelope, verify_signatures
from policy.model import Policy, parse_payload
from sync.gateway.errors import GatewayError
from sync.gateway.store.base import PolicyRecord, Store, StoreError

TRUST_DIR = "policy-trust"


class PolicyPublishError(GatewayError):
    """A policy envelope was not published; ``reason`` is the policy refusal's code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.detail = detail


def load_trust_keys(data: Path) -> list[Ed25519PublicKey]:
    keys: list[Ed25519PublicKey] = []
    folder = data / TRUST_DIR
    if not folder.is_dir():
        return keys
    for path in sorted(folder.glob("*.pem")):
        key = serialization.load_pem_public_key(path.read_bytes())
        if isinstance(key, Ed25519PublicKey):
            keys.append(key)
    return keys


def read_policy(envelope: bytes, trust_keys: Sequence[Ed25519PublicKey] = ()) -> Policy:
    """The policy an envelope carries (signatures checked only against ``trust_keys``)."""
    try:
        if trust_keys:
            payload = verify_signatures(envelope, {kid_for(k): k for k in trust_keys}, 1).payload
        else:
            payload = parse_envelope(envelope).unverified_payload()
        return parse_payload(payload, envelope=envelope)
    except PolicyRefused as err:
        raise PolicyPublishError(str(err.reason), err.detail) from None
    except ValueError:
        raise PolicyPublishError("malformed") from None


def publish(
    store: Store,
    envelope: bytes,
    *,
    now: dt.datetime,
    trust_keys: Sequence[Ed25519PublicKey] = (),
) -> Policy:
    policy = read_policy(envelope, trust_keys)
    try:
        text = envelope.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyPublishError("malformed") from None
    record = PolicyRecord(policy.site, policy.version, policy.devices, text, now)
    try:
        store.add_policy(record)
    except StoreError as err:
        raise PolicyPublishError(err.reason) from None
    return policy


def latest_for_device(store: Store, site: str, device_id: str) -> str | None:
    for record in store.policies(site):
        if record.devices is None or device_id in record.devices:
            return record.envelope
    return None
