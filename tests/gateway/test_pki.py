"""PKI: device CA, server and device certificates, SPKI pins, ``gatehouse-gateway init``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sync.gateway import datadir, pki
from sync.gateway.cli import main
from sync.protocol.pins import spki_sha256_b64
from tests.support.tls import foreign_device, make_test_pki

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def _openssl_style_pin(cert_pem: bytes) -> str:
    """The pin computed the way `openssl x509 -pubkey | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | base64` does, via the ssl module's DER round trip."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_pin_is_the_same_for_certificate_der_and_public_key() -> None:
    ca_key, ca_cert = pki.create_ca(now=NOW)
    pin = spki_sha256_b64(ca_cert)
    assert pin == spki_sha256_b64(ca_key.public_key())
    assert pin == spki_sha256_b64(ca_cert.public_bytes(serialization.Encoding.DER))
    assert pin == _openssl_style_pin(pki.cert_to_pem(ca_cert))
    assert len(base64.b64decode(pin)) == 32
    assert pin != spki_sha256_b64(pki.generate_key().public_key())


def test_device_certificate_names_device_and_site_and_is_short_lived() -> None:
    ca_key, ca_cert = pki.create_ca(now=NOW)
    key = pki.generate_key()
    cert = pki.sign_device_csr(
        ca_key, ca_cert, pki.make_csr(key), device_id="dev-7", site="hmp-alpha", now=NOW
    )
    uris = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert sorted(uris) == ["urn:gatehouse:device:dev-7", "urn:gatehouse:site:hmp-alpha"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-7"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "hmp-alpha"
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=pki.DEVICE_CERT_DAYS)
    assert spki_sha256_b64(cert) == spki_sha256_b64(key.public_key())
    identity = pki.verify_device_certificate(cert, ca_cert, now=NOW)
    assert (identity.device_id, identity.site) == ("dev-7", "hmp-alpha")


def test_server_certificate_covers_loopback_and_configured_host() -> None:
    ca_key, ca_cert = pki.create_ca(now=NOW)
    cert = pki.issue_server_cert(
        ca_key, ca_cert, pki.generate_key().public_key(), now=NOW, hostnames=("gw.example.org",)
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "gw.example.org"}
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    cert.verify_directly_issued_by(ca_cert)


def test_device_certificates_are_refused_for_the_right_reasons(tmp_path: Path) -> None:
    files = make_test_pki(tmp_path / "pki")
    good = files.device("dev-a", "hmp-alpha")
    now = dt.datetime.now(dt.UTC)
    assert pki.verify_device_certificate(good.cert, files.ca_cert, now=now).site == "hmp-alpha"
    stranger = foreign_device(tmp_path / "other", "dev-a", "hmp-alpha")
    with pytest.raises(pki.PkiError) as err:
        pki.verify_device_certificate(stranger.cert, files.ca_cert, now=now)
    assert err.value.reason == "not_issued_by_device_ca"
    with pytest.raises(pki.PkiError) as err:
        pki.verify_device_certificate(good.cert, files.ca_cert, now=now + dt.timedelta(days=91))
    assert err.value.reason == "certificate_expired"
    server_cert = pki.load_cert(files.server_cert_path.read_bytes())
    with pytest.raises(pki.PkiError) as err:
        pki.verify_device_certificate(server_cert, files.ca_cert, now=now)
    assert err.value.reason == "not_client_certificate"


@pytest.mark.parametrize(
    ("device_id", "site", "reason"),
    [
        ("dev/1", "hmp-a", "bad_device_id"),
        ("dev-1", "HMP A", "bad_site"),
        ("", "x", "bad_device_id"),
    ],
)
def test_bad_names_are_refused(device_id: str, site: str, reason: str) -> None:
    ca_key, ca_cert = pki.create_ca(now=NOW)
    csr = pki.make_csr(pki.generate_key())
    with pytest.raises(pki.PkiError) as err:
        pki.sign_device_csr(ca_key, ca_cert, csr, device_id=device_id, site=site, now=NOW)
    assert err.value.reason == reason


def test_init_creates_private_files_and_prints_pins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "gw"
    assert main(["init", "--data", str(data), "--hostname", "gw.example.org"]) == 0
    out = capsys.readouterr().out
    names = [
        datadir.CA_CERT,
        datadir.CA_KEY,
        datadir.SERVER_CERT,
        datadir.SERVER_KEY,
        datadir.SERVER_BACKUP_KEY,
        datadir.ESCROW_KEY,
        datadir.ESCROW_PUB,
        datadir.AUDIT_RECEIPT_KEY,
        datadir.AUDIT_RECEIPT_PUB,
        datadir.DATABASE,
    ]
    for name in names:
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    server_cert = pki.load_cert((data / datadir.SERVER_CERT).read_bytes())
    backup = pki.load_key((data / datadir.SERVER_BACKUP_KEY).read_bytes())
    assert f"current: {spki_sha256_b64(server_cert)}" in out
    assert f"backup:  {spki_sha256_b64(backup.public_key())}" in out
    assert spki_sha256_b64(server_cert) != spki_sha256_b64(backup.public_key())
    ca_cert = pki.load_cert((data / datadir.CA_CERT).read_bytes())
    server_cert.verify_directly_issued_by(ca_cert)
    escrow = serialization.load_pem_private_key(
        (data / datadir.ESCROW_KEY).read_bytes(), password=None
    )
    receipt = serialization.load_pem_private_key(
        (data / datadir.AUDIT_RECEIPT_KEY).read_bytes(), password=None
    )
    assert isinstance(escrow, x25519.X25519PrivateKey)
    assert isinstance(receipt, ed25519.Ed25519PrivateKey)
    for name in (datadir.CA_KEY, datadir.SERVER_KEY, datadir.ESCROW_KEY):
        assert (data / name).read_bytes().decode() not in out  # no key material printed


def test_init_refuses_to_replace_an_existing_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "gw"
    assert main(["init", "--data", str(data)]) == 0
    before = (data / datadir.CA_KEY).read_bytes()
    assert main(["init", "--data", str(data)]) == 2
    assert "already_initialised" in capsys.readouterr().err
    assert (data / datadir.CA_KEY).read_bytes() == before
