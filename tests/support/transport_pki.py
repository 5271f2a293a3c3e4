"""A small PKI for transport tests: a CA, a server certificate for 127.0.0.1 and a device
certificate, written to files; a raw TLS server presenting that server certificate, and a
transport configuration pinned to it."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sync.device.transport import TransportConfig, spki_sha256
from tests.support.tls_server import Handler, RawTlsServer, server_context


@dataclass
class Issued:
    cert: Path
    key: Path
    der: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(tmp: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))


def issue_certificate(
    tmp: Path,
    stem: str,
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer_name = issuer[0].subject if issuer else _name(cn)
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    return _write(tmp, stem, cert, key), cert, key


@dataclass
class Pki:
    ca: Issued
    server: Issued
    device: Issued
    rogue_ca: Issued
    rogue_server: Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, ca_cert, ca_key = issue_certificate(tmp_path, "ca", "Gateway CA", None, ca=True)
    server, _, _ = issue_certificate(tmp_path, "server", "gateway", (ca_cert, ca_key), server=True)
    device, _, _ = issue_certificate(tmp_path, "device", "device-1", (ca_cert, ca_key))
    rogue_ca, rogue_cert, rogue_key = issue_certificate(
        tmp_path, "rogue-ca", "Trusted CA", None, ca=True
    )
    rogue_server, _, _ = issue_certificate(
        tmp_path, "rogue", "gateway", (rogue_cert, rogue_key), server=True
    )
    return Pki(ca, server, device, rogue_ca, rogue_server)


def transport_config(pki: Pki, port: int, pins: tuple[bytes, ...], **kw: object) -> TransportConfig:
    return TransportConfig(
        gateway_url=f"https://127.0.0.1:{port}/",
        allowed_hosts=["127.0.0.1"],
        spki_pins=pins,
        client_cert_file=pki.device.cert,
        client_key_file=pki.device.key,
        **kw,  # type: ignore[arg-type]
    )


def pinned_config(pki: Pki, port: int, **kw: object) -> TransportConfig:
    """``transport_config`` pinned to the real server certificate's key."""
    return transport_config(pki, port, (spki_sha256(pki.server.der),), **kw)


def serve(pki: Pki, handler: Handler, *, tls12_only: bool = False) -> Iterator[RawTlsServer]:
    """A ``RawTlsServer`` with the real server certificate, requiring a device certificate of
    the CA: one iteration, while the server runs."""
    context = server_context(pki.server.cert, pki.server.key, pki.ca.cert, tls12_only=tls12_only)
    yield from RawTlsServer(context, handler).serve()
