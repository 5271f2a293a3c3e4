"""Real certificates for tests that speak real TLS on 127.0.0.1.

``make_test_pki(tmp_path)`` writes a device CA, a server certificate for 127.0.0.1/localhost
and its key under ``tmp_path``; ``PkiFiles.device(...)`` issues device client certificates
(optionally expired); ``foreign_device(...)`` issues one from an unrelated CA. Files are PEM,
private keys 0600. Import the ``device_pki`` fixture into a conftest to share it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from policy.atomic import atomic_write
from sync.gateway import pki
from sync.protocol.pins import spki_sha256_b64


@dataclass(frozen=True)
class DeviceCredentials:
    device_id: str
    site: str
    cert_path: Path
    key_path: Path
    cert: x509.Certificate

    @property
    def requests_cert(self) -> tuple[str, str]:
        """The ``cert=`` argument of ``requests``."""
        return (str(self.cert_path), str(self.key_path))


@dataclass(frozen=True)
class PkiFiles:
    directory: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    ca_path: Path
    server_cert_path: Path
    server_key_path: Path
    server_pin: str

    def device(
        self,
        device_id: str,
        site: str,
        *,
        now: dt.datetime | None = None,
        days: int = pki.DEVICE_CERT_DAYS,
        expired: bool = False,
    ) -> DeviceCredentials:
        """A device key and certificate signed by this CA (expired 10 days ago if asked)."""
        moment = now or dt.datetime.now(dt.UTC)
        if expired:
            moment -= dt.timedelta(days=days + 10)
        return _issue(self.directory, self.ca_key, self.ca_cert, device_id, site, moment, days)


def _issue(
    directory: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    device_id: str,
    site: str,
    now: dt.datetime,
    days: int,
) -> DeviceCredentials:
    key = pki.generate_key()
    cert = pki.sign_device_csr(
        ca_key, ca_cert, pki.make_csr(key), device_id=device_id, site=site, now=now, days=days
    )
    stem = f"{device_id}-{cert.serial_number:x}"[:80]
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    atomic_write(cert_path, pki.cert_to_pem(cert))
    atomic_write(key_path, pki.key_to_pem(key))
    return DeviceCredentials(device_id, site, cert_path, key_path, cert)


def make_test_pki(directory: Path, *, hostnames: tuple[str, ...] = ()) -> PkiFiles:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = pki.create_ca(now=now)
    server_key = pki.generate_key()
    server_cert = pki.issue_server_cert(
        ca_key, ca_cert, server_key.public_key(), now=now, hostnames=hostnames
    )
    ca_path = directory / "ca.pem"
    server_cert_path, server_key_path = directory / "server.pem", directory / "server.key"
    atomic_write(ca_path, pki.cert_to_pem(ca_cert))
    atomic_write(server_cert_path, pki.cert_to_pem(server_cert))
    atomic_write(server_key_path, pki.key_to_pem(server_key))
    return PkiFiles(
        directory,
        ca_key,
        ca_cert,
        ca_path,
        server_cert_path,
        server_key_path,
        spki_sha256_b64(server_cert),
    )


def foreign_device(directory: Path, device_id: str, site: str) -> DeviceCredentials:
    """A well-formed device certificate from a CA the gateway has never seen."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = pki.create_ca(now=now, common_name="Gatehouse device CA")
    return _issue(directory, ca_key, ca_cert, device_id, site, now, pki.DEVICE_CERT_DAYS)


@pytest.fixture
def device_pki(tmp_path: Path) -> PkiFiles:
    return make_test_pki(tmp_path / "pki")
