"""Helpers for control-plane tests: enrol over HTTP, users, escrow blobs, audit chains."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policy.atomic import atomic_write
from policy.schema import defaults
from sync.gateway import enrolment, pki, users
from sync.protocol.audit.audit_event import export_bundle
from sync.protocol.audit.chain import ChainState, append
from sync.protocol.audit.entry import AuditEntry
from sync.protocol.escrow import escrow_aad, seal
from tests.support.gateway import TEST_HASHER, Gateway
from tests.support.policy import envelope_around
from tests.support.tls import DeviceCredentials

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
PASSWORD = "correct horse battery staple"

DeviceKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def csr_pem(key: DeviceKey, *, ca: bool = False) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "laptop")])
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_pem(key: DeviceKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Enrolled:
    device_id: str
    site: str
    creds: DeviceCredentials
    k0: bytes
    answer: dict[str, Any]


def token_for(gw: Gateway, site: str, ttl: dt.timedelta = dt.timedelta(hours=1)) -> str:
    token, _ = enrolment.create_enrol_token(gw.store, site, now=dt.datetime.now(dt.UTC), ttl=ttl)
    return token


def enrol_request(
    gw: Gateway, token: str, key: DeviceKey | None = None, k0: bytes | None = None
) -> requests.Response:
    key = key or pki.generate_key()
    body = {
        "token": token,
        "csr": csr_pem(key),
        "audit_k0": base64.b64encode(k0 or secrets.token_bytes(32)).decode(),
    }
    return gw.session(None).post(f"{gw.url}/device/enrol", json=body, timeout=30)


def enrol(gw: Gateway, site: str, folder: Path, key: DeviceKey | None = None) -> Enrolled:
    key = key or pki.generate_key()
    k0 = secrets.token_bytes(32)
    answer = enrol_request(gw, token_for(gw, site), key, k0)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{body['device_id']}.pem", folder / f"{body['device_id']}.key"
    atomic_write(cert_path, body["certificate"].encode())
    atomic_write(key_path, key_pem(key))
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    creds = DeviceCredentials(body["device_id"], body["site"], cert_path, key_path, cert)
    return Enrolled(body["device_id"], body["site"], creds, k0, body)


def add_user(gw: Gateway, user_id: str, role: str, site: str) -> None:
    users.add_user(
        gw.store,
        user_id=user_id,
        role=role,
        site=site,
        password=PASSWORD,
        now=dt.datetime.now(dt.UTC),
        hasher=TEST_HASHER,
        allow_weak_hasher=True,
    )


def escrow_blob(gw: Gateway, device_id: str, dek: bytes) -> str:
    blob = seal(dek, gw.authority.escrow_key.public_key(), escrow_aad(device_id))
    return base64.b64encode(blob).decode()


def login(
    gw: Gateway,
    session: requests.Session,
    device_id: str,
    user_id: str,
    password: str = PASSWORD,
    dek: bytes = b"\x07" * 32,
) -> requests.Response:
    body = {"user_id": user_id, "password": password, "escrow": escrow_blob(gw, device_id, dek)}
    return session.post(f"{gw.url}/device/login", json=body, timeout=30)


def bearer(gw: Gateway, session: requests.Session, device_id: str, user_id: str) -> str:
    answer = login(gw, session, device_id, user_id)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def chain(
    device_id: str,
    k0: bytes,
    actions: Sequence[dict[str, Any]],
    *,
    state: ChainState | None = None,
    start: dt.datetime = T0,
) -> tuple[list[AuditEntry], ChainState]:
    state = state or ChainState.genesis(device_id, k0)
    entries = []
    for fields in actions:
        entry, state = append(
            state,
            {"device_id": device_id, **fields},
            start + dt.timedelta(minutes=state.seq),
        )
        entries.append(entry)
    return entries, state


def views(n: int, user: str = "nurse1", patient: str = "pt000001") -> list[dict[str, Any]]:
    return [
        {
            "action": "record_view",
            "outcome": "success",
            "user_id": user,
            "role": "clinician",
            "patient_id": patient,
        }
        for _ in range(n)
    ]


def break_glass(user: str, patient: str, reason: str) -> dict[str, Any]:
    """A clinician's break-glass entry (purpose BTG) with its free-text reason."""
    return {
        "action": "break_glass",
        "outcome": "success",
        "user_id": user,
        "role": "clinician",
        "patient_id": patient,
        "purpose": "BTG",
        "reason_text": reason,
    }


def enrol_with_entries(
    gw: Gateway,
    site: str,
    folder: Path,
    actions: Sequence[dict[str, Any]],
    *,
    start: dt.datetime = T0,
) -> Enrolled:
    """A device enrolled in ``site`` that has uploaded the chain of ``actions`` (accepted),
    the first made at ``start``, one a minute."""
    device = enrol(gw, site, folder)
    entries, _ = chain(device.device_id, device.k0, actions, start=start)
    assert upload(gw, gw.session(device.creds), entries).status_code == 200
    return device


def upload(
    gw: Gateway, session: requests.Session, entries: Sequence[AuditEntry]
) -> requests.Response:
    return session.post(f"{gw.url}/device/audit", json=export_bundle(entries), timeout=30)


def policy_envelope(
    site: str,
    version: int,
    key: Ed25519PrivateKey,
    devices: tuple[str, ...] | None = None,
) -> bytes:
    return envelope_around(
        dt.datetime.now(dt.UTC),
        site=site,
        settings=defaults(),
        key=key,
        version=version,
        devices=devices,
    )
