"""Provisioning from IT's bundle, the device's TLS identity, and a clinician's first (online)
sign-in on this device (DESIGN.md §Keys and the vault; docs/control-plane.md).

Guarantees:
- The device's TLS private key never leaves the device and is stored encrypted (PKCS#8) with
  a key derived from the keyring's device secret: the data folder alone does not yield it, and
  a wipe (which destroys the keyring secret) makes it unreadable.
- A provisioned-from-bundle device has no user slot at first, only the escrow slot; the first
  sign-in of each clinician is online: the gateway checks them and unseals the escrow over the
  pinned mutual-TLS channel, and the device writes their slot. Later sign-ins work offline.
- The network settings (gateway URL, allowed hosts, pins) come from the signed policy, never
  from the bundle once enrolment is done.
- Enrolment also registers this laptop's wipe-report key (WP-3) and keeps the reporter
  (``client.core.wipe_report``) beside the vault, so a wipe that destroys the TLS identity can
  still be reported; a report left by a previous laptop in this folder is sent first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from keyring.backend import KeyringBackend

from client.core.audit_log import AuditLog
from client.core.device import (
    GATEWAY_CA,
    PROFILE_NAME,
    RECEIPT_KEY,
    TLS_CERT,
    TLS_KEY,
    Device,
    ProvisioningError,
    utc_now,
)
from client.core.kdf import KdfParams, calibrate
from client.core.schema import MIGRATIONS
from client.core.trusted_time import ClockReading, anchor, read_clocks
from client.core.vault import Vault, database_path
from client.core.wipe_report import (
    address,
    has_pending_report,
    new_reporter_key,
    save_reporter,
    send_pending_report,
)
from policy import decisions
from policy.atomic import atomic_write
from sync.device.enrolment import (
    EnrolmentError,
    ProvisioningBundle,
    encrypted_key_pem,
    enrol,
    generate_device_key,
    new_audit_key,
    online_login,
)
from sync.device.transport import Transport, TransportConfig, TransportError
from sync.protocol.wipe_report import public_key_text


def tls_key_password(device: Device) -> bytes:
    """The passphrase of the device's TLS key file, derived from the keyring's device secret."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"gatehouse-device-tls-key-v1|" + device.profile.device_id.encode(),
    ).derive(device.keyring.device_secret())


def provision_from_bundle(
    data_dir: Path,
    bundle_bytes: bytes,
    *,
    keyring_backend: KeyringBackend | None = None,
    clock: Callable[[], dt.datetime] = utc_now,
    clocks: Callable[[], ClockReading] = read_clocks,
    kdf_params: KdfParams | None = None,
) -> Device:
    """Enrol with the gateway and set this laptop up for the bundle's site."""
    bundle = ProvisioningBundle.parse(bundle_bytes)
    data_dir = Path(data_dir)
    if has_pending_report(data_dir):  # this folder's last laptop was wiped: tell the gateway
        send_pending_report(data_dir)
    key = generate_device_key()
    audit_k0 = new_audit_key()
    reporter_key = new_reporter_key()
    try:
        enrolment = enrol(
            bundle,
            key,
            audit_k0,
            now=clock(),
            wipe_report_key=public_key_text(reporter_key.public_key()),
        )
    except TransportError as error:
        raise ProvisioningError(
            "gateway_unreachable",
            f"The gateway cannot be reached safely ({error.reason}). Check the network and "
            "that the bundle is for this health board, then try again.",
        ) from error
    if enrolment.policy is None:
        raise ProvisioningError(
            "no_policy",
            "The gateway has no device policy for this site yet. Ask IT to publish one, "
            "then use a new provisioning bundle.",
        )
    device = Device.provision(
        data_dir,
        device_id=enrolment.device_id,
        site=enrolment.site,
        trust_keys=bundle.policy_trust_keys,
        trust_threshold=bundle.policy_trust_threshold,
        policy_envelope=enrolment.policy,
        first_user=None,
        escrow_public_key=enrolment.escrow_public_key,
        keyring_backend=keyring_backend,
        clock=clock,
        clocks=clocks,
        kdf_params=kdf_params,
        audit_initial_key=audit_k0,
    )
    save_reporter(
        data_dir,
        device_id=enrolment.device_id,
        key=reporter_key,
        gateway=address(bundle.gateway_url, [bundle.host], bundle.spki_pins),
        ca_pem=enrolment.ca_certificate_pem,
        receipt_key_pem=enrolment.receipt_public_key_pem,
    )
    atomic_write(data_dir / TLS_KEY, encrypted_key_pem(key, tls_key_password(device)))
    atomic_write(data_dir / TLS_CERT, enrolment.certificate_pem)
    atomic_write(data_dir / GATEWAY_CA, enrolment.ca_certificate_pem)
    atomic_write(data_dir / RECEIPT_KEY, enrolment.receipt_public_key_pem)
    device.save_time_state(anchor(device.time_state(), enrolment.server_time, clocks()))
    profile = dataclasses.replace(
        device.profile,
        enrolment={
            "enrolled_at": clock().isoformat(),
            "certificate": TLS_CERT,
            "key": TLS_KEY,
            "gateway_ca": GATEWAY_CA,
            "receipt_key": RECEIPT_KEY,
        },
    )
    atomic_write(data_dir / PROFILE_NAME, json.dumps(profile.to_json(), indent=2).encode())
    device.profile = profile
    return device


def transport_config(device: Device) -> TransportConfig:
    """How this device reaches its gateway: from the signed policy and its enrolment."""
    if not device.profile.enrolment:
        raise ProvisioningError(
            "not_enrolled", "This laptop is not enrolled with a gateway, so it cannot sync."
        )
    policy = device.policy()
    data_dir = device.data_dir
    return TransportConfig(
        gateway_url=policy.gateway_url,
        allowed_hosts=policy.allowed_hosts,
        spki_pins=decisions.spki_pins(policy),
        client_cert_file=data_dir / TLS_CERT,
        client_key_file=data_dir / TLS_KEY,
        client_key_password=tls_key_password(device),
        server_ca_file=data_dir / GATEWAY_CA,
        connect_timeout_s=float(policy.get_int("network.connect_timeout_seconds")),
        read_timeout_s=float(policy.get_int("network.read_timeout_seconds")),
    )


def data_transport_config(device: Device) -> TransportConfig | None:
    """How this device reaches its FHIR data plane when that is another origin than the
    gateway's (``network.fhir_base_url``); None when the gateway serves it. The same pins and
    allowed hosts apply (both planes pinned); the gateway's CA is not required of a
    third-party server, whose key the pin authenticates."""
    gateway = transport_config(device)
    base = decisions.fhir_base_url(device.policy())
    if _origin(base) == _origin(gateway.gateway_url):
        return None
    return dataclasses.replace(gateway, gateway_url=_origin(base) + "/", server_ca_file=None)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def add_user_online(device: Device, user_id: str, password: str) -> str:
    """A clinician's first sign-in on this device: online, creates their key slot. → role."""
    policy = device.policy()
    minimum = decisions.min_password_length(policy)
    if len(password) < minimum:
        raise ProvisioningError(
            "password_too_short", f"The password must be at least {minimum} characters."
        )
    escrow = device.header.escrow_blob()
    if escrow is None:
        raise ProvisioningError(
            "no_escrow", "This laptop has no escrow key, so new users cannot be added online."
        )
    try:
        with Transport(transport_config(device)) as transport:
            login = online_login(transport, user_id, password, escrow)
    except EnrolmentError as error:
        raise ProvisioningError(error.reason, error.message) from error
    except TransportError as error:
        raise ProvisioningError(
            "gateway_unreachable",
            f"The first sign-in needs the gateway, which cannot be reached ({error.reason}).",
        ) from error
    if login.site != device.profile.site:
        raise ProvisioningError("wrong_site", "This user belongs to another site.")
    params = device.kdf_params or calibrate()
    device.header.add_slot(login.user_id, login.role, password, login.dek, params)
    vault = Vault.open(database_path(device.data_dir), login.dek, MIGRATIONS)
    try:
        with vault.transaction() as conn:
            AuditLog().append(
                conn,
                ts=device.clock(),
                action="user_added",
                outcome="success",
                user_id=login.user_id,
                role=login.role,
                detail={"how": "online_escrow"},
            )
    finally:
        vault.close()
    return login.role
