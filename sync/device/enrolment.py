"""Device enrolment and online user setup, client side (NW-4; docs/control-plane.md).

Guarantees:
- The device's TLS key pair is generated on the device; only a CSR leaves it. The answer's
  certificate must carry exactly that public key, else enrolment is refused.
- Everything from the provisioning bundle and from the gateway is parsed strictly and bounded;
  any failure is one ``EnrolmentError`` with a stable reason, never another exception.
- The enrolment connection is pinned like every other (the bundle carries the pins); it is the
  only request made without a client certificate.
- The online login returns the DEK unsealed by the gateway over the pinned mutual-TLS channel;
  the caller writes the user's key slot and drops the DEK.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sync.device.errors import DeviceError
from sync.device.transport import Transport, TransportConfig, TransportError, decode_pin
from sync.protocol.fhir.bounded_json import MAX_CONTROL_BYTES, BoundedJsonError, loads_bounded

BUNDLE_FORMAT = "gatehouse-provisioning-bundle/1"
MAX_BUNDLE_BYTES = 64 * 1024  # a bundle is a few KiB of PEM and base64


class EnrolmentError(DeviceError):
    """Enrolment or online login failed; ``reason`` is stable, ``message`` is for people."""


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 16_384:
        raise EnrolmentError("bad_bundle", f"the provisioning bundle's {key} is missing or bad")
    return value


@dataclass(frozen=True)
class ProvisioningBundle:
    gateway_url: str
    spki_pins: tuple[bytes, ...]
    ca_certificate: str
    policy_trust_keys: tuple[str, ...]
    policy_trust_threshold: int
    token: str
    token_expires_at: dt.datetime
    site: str
    escrow_public_key: bytes
    receipt_public_key: str

    @property
    def host(self) -> str:
        return (urlsplit(self.gateway_url).hostname or "").lower()

    @classmethod
    def parse(cls, raw: bytes) -> ProvisioningBundle:
        try:
            data = loads_bounded(raw, max_bytes=MAX_BUNDLE_BYTES, max_depth=4, max_items=200)
        except BoundedJsonError as error:
            raise EnrolmentError("bad_bundle", "the provisioning bundle is not valid") from error
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise EnrolmentError("bad_bundle", "this is not a Gatehouse provisioning bundle")
        pins = data.get("spki_pins")
        keys = data.get("policy_trust_keys")
        threshold = data.get("policy_trust_threshold")
        if not isinstance(pins, list) or not pins or not isinstance(keys, list) or not keys:
            raise EnrolmentError("bad_bundle", "the bundle has no pins or no policy keys")
        if type(threshold) is not int or not 1 <= threshold <= len(keys):
            raise EnrolmentError("bad_bundle", "the bundle's policy threshold is not valid")
        try:
            escrow = base64.b64decode(_text(data, "escrow_public_key"), validate=True)
            expires = dt.datetime.fromisoformat(_text(data, "token_expires_at"))
            decoded_pins = tuple(decode_pin(p) for p in pins if isinstance(p, str))
        except (ValueError, TransportError) as error:
            raise EnrolmentError(
                "bad_bundle", "the bundle's keys or dates are not valid"
            ) from error
        if len(escrow) != 32 or len(decoded_pins) != len(pins) or expires.tzinfo is None:
            raise EnrolmentError("bad_bundle", "the bundle's keys or dates are not valid")
        url = _text(data, "gateway_url")
        if urlsplit(url).scheme != "https":
            raise EnrolmentError("bad_bundle", "the gateway address must use https")
        return cls(
            gateway_url=url,
            spki_pins=decoded_pins,
            ca_certificate=_text(data, "ca_certificate"),
            policy_trust_keys=tuple(k for k in keys if isinstance(k, str)),
            policy_trust_threshold=threshold,
            token=_text(data, "token"),
            token_expires_at=expires,
            site=_text(data, "site"),
            escrow_public_key=escrow,
            receipt_public_key=_text(data, "receipt_public_key"),
        )

    def transport_config(
        self,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        key_password: bytes | None = None,
    ) -> TransportConfig:
        return TransportConfig(
            gateway_url=self.gateway_url,
            allowed_hosts=[self.host],
            spki_pins=self.spki_pins,
            client_cert_file=cert_file,
            client_key_file=key_file,
            client_key_password=key_password,
        )


@dataclass(frozen=True)
class Enrolment:
    device_id: str
    site: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    escrow_public_key: bytes
    receipt_public_key_pem: bytes
    policy: bytes | None
    server_time: dt.datetime


def generate_device_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def encrypted_key_pem(key: ec.EllipticCurvePrivateKey, password: bytes) -> bytes:
    """The device key for the disk: PKCS#8, encrypted with a key held in the keyring."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR for the device key; the gateway assigns the device id and the site."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse-device")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _answer(transport: Transport, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    response = transport.post_json(path, body)
    try:
        data = loads_bounded(response.body, max_bytes=MAX_CONTROL_BYTES, max_depth=8)
    except BoundedJsonError as error:
        raise EnrolmentError("bad_answer", f"the gateway's {what} answer is not valid") from error
    if response.status != 200:
        reason = data.get("error") if isinstance(data, dict) else None
        message = data.get("message") if isinstance(data, dict) else None
        raise EnrolmentError(
            str(reason) if isinstance(reason, str) else f"http_{response.status}",
            str(message) if isinstance(message, str) else f"the gateway refused the {what}",
        )
    if not isinstance(data, dict):
        raise EnrolmentError("bad_answer", f"the gateway's {what} answer is not valid")
    return data


def enrol(
    bundle: ProvisioningBundle,
    key: ec.EllipticCurvePrivateKey,
    audit_k0: bytes,
    *,
    now: dt.datetime,
    wipe_report_key: str | None = None,
) -> Enrolment:
    """Exchange the one-time token and a CSR for this device's certificate.

    ``wipe_report_key`` (base64 raw Ed25519) registers the key of this laptop's wipe reports.
    """
    if now >= bundle.token_expires_at:
        raise EnrolmentError("token_expired", "This provisioning bundle has expired. Ask IT.")
    body = {
        "token": bundle.token,
        "csr": make_csr(key).decode("ascii"),
        "audit_k0": base64.b64encode(audit_k0).decode("ascii"),
    }
    if wipe_report_key is not None:
        body["wipe_report_key"] = wipe_report_key
    with Transport(bundle.transport_config()) as transport:
        data = _answer(transport, "device/enrol", body, "enrolment")
    try:
        certificate = x509.load_pem_x509_certificate(_text(data, "certificate").encode())
        ca = _text(data, "ca_certificate").encode()
        escrow = base64.b64decode(_text(data, "escrow_public_key"), validate=True)
        server_time = dt.datetime.fromisoformat(_text(data, "server_time"))
        if server_time.tzinfo is None:
            raise ValueError("server time without a time zone")
    except (ValueError, EnrolmentError) as error:
        raise EnrolmentError("bad_answer", "the gateway's enrolment answer is not valid") from error
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise EnrolmentError("bad_answer", "the certificate is not for this device's key")
    policy = data.get("policy")
    return Enrolment(
        device_id=_text(data, "device_id"),
        site=_text(data, "site"),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
        ca_certificate_pem=ca,
        escrow_public_key=escrow,
        receipt_public_key_pem=_text(data, "receipt_public_key").encode(),
        policy=policy.encode() if isinstance(policy, str) else None,
        server_time=server_time,
    )


@dataclass(frozen=True)
class OnlineLogin:
    user_id: str
    role: str
    site: str
    token: str
    dek: bytes


def online_login(transport: Transport, user_id: str, password: str, escrow: bytes) -> OnlineLogin:
    """A clinician's first sign-in on this device: the gateway checks them, unseals the escrow."""
    data = _answer(
        transport,
        "device/login",
        {"user_id": user_id, "password": password, "escrow": base64.b64encode(escrow).decode()},
        "sign-in",
    )
    try:
        dek = base64.b64decode(_text(data, "dek"), validate=True)
    except ValueError as error:
        raise EnrolmentError("bad_answer", "the gateway's sign-in answer is not valid") from error
    role = _text(data, "role")
    if len(dek) != 32 or role not in {"clinician", "auditor", "admin"}:
        raise EnrolmentError("bad_answer", "the gateway's sign-in answer is not valid")
    return OnlineLogin(_text(data, "user_id"), role, _text(data, "site"), _text(data, "token"), dek)


def new_audit_key() -> bytes:
    return secrets.token_bytes(32)
