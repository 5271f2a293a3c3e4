"""SPKI SHA-256 pins, shared by the gateway (which prints them) and the client transport.

Invariant: a pin is ``base64(SHA-256(DER SubjectPublicKeyInfo))`` — the HPKP / RFC 7469 form —
so it survives certificate renewal with the same key and can be pre-computed for a backup key
that has never been used in a certificate.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes


def spki_der(cert_or_pubkey: x509.Certificate | PublicKeyTypes | bytes) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate, a public key, or a DER certificate."""
    if isinstance(cert_or_pubkey, bytes):
        cert_or_pubkey = x509.load_der_x509_certificate(cert_or_pubkey)
    key = (
        cert_or_pubkey.public_key()
        if isinstance(cert_or_pubkey, x509.Certificate)
        else cert_or_pubkey
    )
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256_b64(cert_or_pubkey: x509.Certificate | PublicKeyTypes | bytes) -> str:
    """The pin of a certificate (object or DER bytes) or a public key."""
    return base64.b64encode(hashlib.sha256(spki_der(cert_or_pubkey)).digest()).decode("ascii")
