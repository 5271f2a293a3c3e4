"""The gateway's data folder: what ``init`` creates and ``serve`` reads.

Invariants:
- Every file is written with ``policy.atomic.atomic_write`` (atomic, 0600 before any byte).
- ``init`` never overwrites an existing CA: a second ``init`` on the same folder is refused,
  because replacing the CA would orphan every enrolled device.
- The server's TLS key has a pre-generated backup key beside it; both pins are printed so the
  policy can carry a backup pin (NW-1) before the backup key is ever used.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from policy.atomic import atomic_write
from sync.gateway import pki
from sync.gateway.errors import GatewayError
from sync.gateway.store.sqlite import SqliteStore
from sync.protocol.pins import spki_sha256_b64

CA_CERT = "device-ca.pem"
CA_KEY = "device-ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
SERVER_BACKUP_KEY = "server-backup.key"
ESCROW_KEY = "escrow-x25519.key"
ESCROW_PUB = "escrow-x25519.pub"
AUDIT_RECEIPT_KEY = "audit-receipt-ed25519.key"
AUDIT_RECEIPT_PUB = "audit-receipt-ed25519.pub"
DATABASE = "gateway.sqlite3"


class DataDirError(GatewayError):
    """The data folder cannot be created or read as asked; ``reason`` is a stable code."""


@dataclass(frozen=True)
class InitResult:
    server_pin: str
    backup_pin: str
    ca_pin: str


def _pkcs8(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _spki_pem(key: ed25519.Ed25519PublicKey | x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def init_data_dir(data: Path, *, now: dt.datetime, hostnames: tuple[str, ...] = ()) -> InitResult:
    """Create CA, server certificate and keys, escrow and audit keys, and the database."""
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (data / CA_KEY).exists() or (data / CA_CERT).exists():
        raise DataDirError("already_initialised")
    ca_key, ca_cert = pki.create_ca(now=now)
    server_key, backup_key = pki.generate_key(), pki.generate_key()
    server_cert = pki.issue_server_cert(
        ca_key, ca_cert, server_key.public_key(), now=now, hostnames=hostnames
    )
    escrow = x25519.X25519PrivateKey.generate()
    receipt = ed25519.Ed25519PrivateKey.generate()
    # Keys first, the CA certificate last: its presence marks a complete init.
    atomic_write(data / CA_KEY, pki.key_to_pem(ca_key))
    atomic_write(data / SERVER_KEY, pki.key_to_pem(server_key))
    atomic_write(data / SERVER_BACKUP_KEY, pki.key_to_pem(backup_key))
    atomic_write(data / SERVER_CERT, pki.cert_to_pem(server_cert))
    atomic_write(data / ESCROW_KEY, _pkcs8(escrow))
    atomic_write(data / ESCROW_PUB, _spki_pem(escrow.public_key()))
    atomic_write(data / AUDIT_RECEIPT_KEY, _pkcs8(receipt))
    atomic_write(data / AUDIT_RECEIPT_PUB, _spki_pem(receipt.public_key()))
    SqliteStore(data / DATABASE).close()
    (data / DATABASE).chmod(0o600)
    atomic_write(data / CA_CERT, pki.cert_to_pem(ca_cert))
    return InitResult(
        server_pin=spki_sha256_b64(server_cert),
        backup_pin=spki_sha256_b64(backup_key.public_key()),
        ca_pin=spki_sha256_b64(ca_cert),
    )
