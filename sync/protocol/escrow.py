"""Escrow seal: a device's vault key (DEK) sealed to the gateway's X25519 public key.

Used by the device (``seal``, when it writes the escrow slot of its vault header) and by the
gateway (``unseal``, when an authenticated clinician is added to a device or resets a forgotten
password). It lives in ``sync/`` so both sides share it without the vault or Qt.

Invariants:
- Only the holder of the recipient's X25519 private key can recover the secret.
- The blob is bound to its associated data (``escrow_aad(device_id)``): a blob copied from one
  device's header to another's does not unseal for the other device.
- Every failure to unseal (wrong key, edited byte, wrong AAD, truncated or malformed blob, a
  low-order ephemeral point) raises the same ``EscrowError`` with reason ``escrow_unseal_failed``:
  no oracle about which part was wrong.

Format (version 1): ``0x01 || ephemeral X25519 public (32) || nonce (12) || AES-256-GCM(ct+tag)``,
key = HKDF-SHA256(shared, salt = ephemeral_public || recipient_public,
info = b"gatehouse-escrow-v1"); the GCM associated data is ``version byte || aad``.
"""

from __future__ import annotations

import json
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sync.protocol.errors import ProtocolError

FORMAT_VERSION = b"\x01"
_PUBLIC_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_INFO = b"gatehouse-escrow-v1"
MAX_SECRET_BYTES = 4096  # a DEK is 32 bytes; anything large is not ours to seal


class EscrowError(ProtocolError):
    """The escrow blob could not be sealed or unsealed. ``reason`` is a stable code."""

    def __init__(self, reason: str = "escrow_unseal_failed") -> None:
        super().__init__(reason)


def escrow_aad(device_id: str) -> bytes:
    """The associated data both sides use for a device's escrow slot."""
    return json.dumps(
        {"purpose": "gatehouse-escrow-dek", "device_id": device_id},
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _derive(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_public + recipient_public,
        info=_INFO,
    ).derive(shared)


def seal(secret: bytes, recipient_public: X25519PublicKey | bytes, aad: bytes) -> bytes:
    """Seal ``secret`` for the holder of ``recipient_public``'s private key, bound to ``aad``."""
    if not 0 < len(secret) <= MAX_SECRET_BYTES:
        raise EscrowError("escrow_seal_failed")
    try:
        recipient = (
            X25519PublicKey.from_public_bytes(recipient_public)
            if isinstance(recipient_public, bytes)
            else recipient_public
        )
        ephemeral = X25519PrivateKey.generate()
        shared = ephemeral.exchange(recipient)
    except ValueError as exc:
        raise EscrowError("escrow_seal_failed") from exc
    ephemeral_public = _raw_public(ephemeral.public_key())
    key = _derive(shared, ephemeral_public, _raw_public(recipient))
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, bytes(secret), FORMAT_VERSION + aad)
    return FORMAT_VERSION + ephemeral_public + nonce + sealed


def unseal(blob: bytes, recipient_private: X25519PrivateKey, aad: bytes) -> bytes:
    """Open a blob made by ``seal``; any failure raises ``EscrowError`` (one reason, no oracle)."""
    header = len(FORMAT_VERSION) + _PUBLIC_BYTES + _NONCE_BYTES
    if (
        not isinstance(blob, bytes)
        or len(blob) < header + _TAG_BYTES + 1
        or len(blob) > header + _TAG_BYTES + MAX_SECRET_BYTES
        or blob[:1] != FORMAT_VERSION
    ):
        raise EscrowError()
    ephemeral_public = blob[1 : 1 + _PUBLIC_BYTES]
    nonce = blob[1 + _PUBLIC_BYTES : header]
    try:
        shared = recipient_private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        key = _derive(shared, ephemeral_public, _raw_public(recipient_private.public_key()))
        return AESGCM(key).decrypt(nonce, blob[header:], FORMAT_VERSION + aad)
    except (InvalidTag, ValueError) as exc:
        raise EscrowError() from exc
