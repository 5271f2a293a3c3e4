"""Shared builders for the policy tests: real Ed25519 keys, real envelopes, a fixed clock."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policy.jws import sign
from policy.model import build_payload, format_timestamp
from policy.verify import TrustConfig

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
SITE = "hmp-brixton"
DEVICE = "dev-0001"
GATEWAY_HOST = "gateway.example.org"
PINS = [
    base64.b64encode(hashlib.sha256(b"primary spki").digest()).decode(),
    base64.b64encode(hashlib.sha256(b"backup spki").digest()).decode(),
]

KEY_A = Ed25519PrivateKey.generate()
KEY_B = Ed25519PrivateKey.generate()
KEY_C = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()


def trust(*keys: Ed25519PrivateKey, threshold: int = 1) -> TrustConfig:
    return TrustConfig.from_keys([k.public_key() for k in keys], threshold)


def network_settings() -> dict[str, Any]:
    return {
        "network.gateway_url": f"https://{GATEWAY_HOST}:8443",
        "network.allowed_hosts": [GATEWAY_HOST, "time.example.org"],
        "network.spki_pins": list(PINS),
    }


def payload_doc(
    *,
    version: int = 1,
    site: str = SITE,
    devices: list[str] | None = None,
    not_before: datetime = NOW - timedelta(hours=1),
    expires_at: datetime = NOW + timedelta(days=30),
    issued_at: datetime | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """A valid payload document; keyword settings use ``__`` for ``.`` in names."""
    merged = network_settings()
    merged.update({k.replace("__", "."): v for k, v in settings.items()})
    return {
        "type": "gatehouse-policy",
        "version": version,
        "issued_at": format_timestamp(issued_at or not_before),
        "not_before": format_timestamp(not_before),
        "expires_at": format_timestamp(expires_at),
        "site": site,
        "devices": devices,
        "settings": merged,
    }


def encode(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def signed(doc: object, *keys: Ed25519PrivateKey) -> bytes:
    return sign(encode(doc), list(keys or (KEY_A,)))


def envelope_around(
    around: datetime,
    *,
    site: str,
    settings: Mapping[str, Any],
    key: Ed25519PrivateKey,
    version: int = 1,
    devices: tuple[str, ...] | None = None,
) -> bytes:
    """A policy envelope signed by ``key``, issued a day before ``around`` and valid from then
    until 90 days after it."""
    payload = build_payload(
        version=version,
        site=site,
        issued_at=around - timedelta(days=1),
        not_before=around - timedelta(days=1),
        expires_at=around + timedelta(days=90),
        settings=settings,
        devices=devices,
    )
    return sign(json.dumps(payload).encode(), [key])
