"""The gateway's PKI: device CA, server certificate, device certificates, device identity.

Invariants:
- Every gateway key is ECDSA P-256 (what OpenSSL handles everywhere for TLS 1.3 client auth);
  a device key may be P-256 or Ed25519 (``check_device_csr``).
- ``check_device_csr`` refuses a CSR whose signature does not verify, whose key is neither
  P-256 nor Ed25519, or that asks for CA powers (basicConstraints CA, keyCertSign, cRLSign):
  reason ``csr_invalid`` with the detail in ``PkiError.detail``.
- A device certificate names exactly one device and one site, both in URI SANs
  (``urn:gatehouse:device:<id>``, ``urn:gatehouse:site:<site>``; also CN = device id and
  OU = site for humans), carries EKU clientAuth only, and lives ``DEVICE_CERT_DAYS`` days.
  The device id and site come from the gateway, never from the CSR's subject.
- ``verify_device_certificate`` accepts a certificate only when it was issued by the device CA
  (signature checked), is within its validity at ``now``, is for clientAuth and names a device
  and a site; every failure is one ``PkiError`` with a stable ``reason``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sync.gateway.errors import GatewayError
from sync.protocol.fhir.vocabulary import SITE_CODE_RE

DEVICE_CERT_DAYS = 90
SERVER_CERT_DAYS = 397  # the CA/B Forum ceiling for a TLS server certificate
CA_CERT_DAYS = 3650
BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew on a fresh certificate

DEVICE_URN = "urn:gatehouse:device:"
SITE_URN = "urn:gatehouse:site:"
SITE_RE = SITE_CODE_RE
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PkiError(GatewayError):
    """A certificate or CSR was refused; ``reason`` is a stable code for logs and audit."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.detail = detail


@dataclass(frozen=True)
class DeviceIdentity:
    """Who is talking: read from a verified device certificate, never from the request."""

    device_id: str
    site: str
    serial: int
    not_after: dt.datetime


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("key_not_ecdsa")
    return key


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gatehouse")]
    if unit is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def create_ca(
    *, now: dt.datetime, common_name: str = "Gatehouse device CA", days: int = CA_CERT_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that signs the server certificate and every device certificate."""
    key = generate_key()
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


DevicePublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
MAX_CSR_PEM_CHARS = 8192  # a P-256 CSR is about 500 characters of PEM


def _leaf_builder(
    ca_cert: x509.Certificate,
    public_key: DevicePublicKey,
    subject: x509.Name,
    *,
    now: dt.datetime,
    days: int,
    sans: list[x509.GeneralName],
    eku: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )


def issue_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: dt.datetime,
    hostnames: tuple[str, ...] = (),
    days: int = SERVER_CERT_DAYS,
) -> x509.Certificate:
    """A TLS server certificate for 127.0.0.1, localhost and each configured hostname."""
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    for host in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    first = hostnames[0] if hostnames else "localhost"
    builder = _leaf_builder(
        ca_cert,
        public_key,
        _name(first),
        now=now,
        days=days,
        sans=sans,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    return builder.sign(ca_key, hashes.SHA256())


def make_csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    """What a device sends at enrolment: its public key, proven by a signature."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name("gatehouse device"))
        .sign(key, hashes.SHA256())
    )


def sign_device_csr(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    *,
    device_id: str,
    site: str,
    now: dt.datetime,
    days: int = DEVICE_CERT_DAYS,
) -> x509.Certificate:
    """Issue a device certificate for ``device_id`` in ``site`` over the CSR's key."""
    if not DEVICE_ID_RE.match(device_id):
        raise PkiError("bad_device_id")
    if not SITE_RE.fullmatch(site):
        raise PkiError("bad_site")
    if not csr.is_signature_valid:
        raise PkiError("csr_signature_invalid")
    public_key = csr.public_key()
    if not (
        isinstance(public_key, ed25519.Ed25519PublicKey)
        or (
            isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, ec.SECP256R1)
        )
    ):
        raise PkiError("csr_key_not_allowed")
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(DEVICE_URN + device_id),
        x509.UniformResourceIdentifier(SITE_URN + site),
    ]
    builder = _leaf_builder(
        ca_cert,
        public_key,
        _name(device_id, unit=site),
        now=now,
        days=days,
        sans=sans,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return builder.sign(ca_key, hashes.SHA256())


def check_device_csr(pem: str) -> x509.CertificateSigningRequest:
    """Parse and check a device's CSR (see the module invariants); ``PkiError`` otherwise."""
    if not isinstance(pem, str) or not 0 < len(pem) <= MAX_CSR_PEM_CHARS:
        raise PkiError("csr_invalid", "missing or too large")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise PkiError("csr_invalid", "not a PEM certificate request") from None
    try:
        if not csr.is_signature_valid:
            raise PkiError("csr_invalid", "signature does not verify")
        public_key = csr.public_key()
        extensions = list(csr.extensions)
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType):
        raise PkiError("csr_invalid", "unreadable request") from None
    p256 = isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    )
    if not (p256 or isinstance(public_key, ed25519.Ed25519PublicKey)):
        raise PkiError("csr_invalid", "key must be P-256 or Ed25519")
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise PkiError("csr_invalid", "asks to be a CA")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise PkiError("csr_invalid", "asks for certificate signing")
    return csr


def device_identity(cert: x509.Certificate) -> DeviceIdentity:
    """The device id and site a certificate names (exactly one of each), unverified."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PkiError("no_device_identity") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    devices = [u[len(DEVICE_URN) :] for u in uris if u.startswith(DEVICE_URN)]
    sites = [u[len(SITE_URN) :] for u in uris if u.startswith(SITE_URN)]
    if len(devices) != 1 or len(sites) != 1:
        raise PkiError("no_device_identity")
    if not DEVICE_ID_RE.match(devices[0]) or not SITE_RE.fullmatch(sites[0]):
        raise PkiError("no_device_identity")
    return DeviceIdentity(
        device_id=devices[0],
        site=sites[0],
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
    )


def verify_device_certificate(
    cert: x509.Certificate, ca_cert: x509.Certificate, *, now: dt.datetime
) -> DeviceIdentity:
    """Check issuer signature, validity at ``now`` and clientAuth; return the identity."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError("not_issued_by_device_ca") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PkiError("certificate_expired")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise PkiError("not_client_certificate") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PkiError("not_client_certificate")
    return device_identity(cert)
