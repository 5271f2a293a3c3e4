"""The gateway's signing material, loaded once from the data folder.

Invariants: the device CA key signs device certificates only; the Ed25519 receipt key signs
audit receipts, device commands, command receipts and time anchors — each under its own type
tag (``sync.gateway.signing``) so no signature can be replayed as another kind; the X25519
escrow key only unseals escrow blobs. Nothing here is ever logged (``__repr__`` hides keys).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from sync.gateway import datadir, pki


@dataclass(frozen=True)
class GatewayAuthority:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    escrow_key: x25519.X25519PrivateKey
    receipt_key: ed25519.Ed25519PrivateKey

    def __repr__(self) -> str:
        return "GatewayAuthority(<keys hidden>)"

    @property
    def ca_pem(self) -> str:
        return pki.cert_to_pem(self.ca_cert).decode("ascii")

    @property
    def escrow_public_b64(self) -> str:
        raw = self.escrow_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")

    @property
    def receipt_public_pem(self) -> str:
        return (
            self.receipt_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    @classmethod
    def generate(
        cls, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
    ) -> GatewayAuthority:
        """Fresh escrow and receipt keys around an existing CA (tests, demos)."""
        return cls(
            ca_key,
            ca_cert,
            x25519.X25519PrivateKey.generate(),
            ed25519.Ed25519PrivateKey.generate(),
        )


def load_authority(data: Path) -> GatewayAuthority:
    """Read the CA, escrow and receipt keys written by ``init``."""
    escrow = serialization.load_pem_private_key(
        (data / datadir.ESCROW_KEY).read_bytes(), password=None
    )
    receipt = serialization.load_pem_private_key(
        (data / datadir.AUDIT_RECEIPT_KEY).read_bytes(), password=None
    )
    if not isinstance(escrow, x25519.X25519PrivateKey) or not isinstance(
        receipt, ed25519.Ed25519PrivateKey
    ):
        raise datadir.DataDirError("bad_key_file")
    return GatewayAuthority(
        ca_key=pki.load_key((data / datadir.CA_KEY).read_bytes()),
        ca_cert=pki.load_cert((data / datadir.CA_CERT).read_bytes()),
        escrow_key=escrow,
        receipt_key=receipt,
    )
