"""A laptop's life against the real gateway over real mutual TLS: provisioning from IT's
bundle (NW-4), a clinician's first online sign-in through the escrow, offline work, a full
sync with its control steps (time, audit upload with receipt, policy, commands), and remote
commands (revoke a user, wipe) — SECURITY.md NW-4, AD-2 (gateway side), TM-2, WP-2."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from client.cli import device_status
from client.core import consultation
from client.core.device import Device, ProvisioningError
from client.core.device_keyring import InMemoryKeyring
from client.core.kdf import FLOOR
from client.core.provisioning import add_user_online, provision_from_bundle
from client.core.session import Session
from client.core.sync_runner import run_sync
from sync.device.enrolment import BUNDLE_FORMAT, EnrolmentError
from sync.gateway import enrolment, policies, users
from sync.gateway.store.base import CommandRecord
from tests.support.device import policy_envelope, trust_pem
from tests.support.gateway import TEST_HASHER, Gateway, running_gateway
from tests.support.sync import seed_resources

SITE = "hmp-brixton"
NURSE = ("nurse.ada", "a long and memorable phrase")
NOW = dt.datetime.now(dt.UTC)


def _policy(gw: Gateway, version: int = 1, **settings: Any) -> bytes:
    """The test policy (device_fixtures) pointed at this gateway and its pins."""
    return policy_envelope(
        version,
        around=NOW,
        network__gateway_url=gw.server.url + "/",
        network__allowed_hosts=["127.0.0.1"],
        network__spki_pins=[gw.pki.server_pin, base64.b64encode(b"b" * 32).decode()],
        **settings,
    )


def _bundle(gw: Gateway) -> bytes:
    token, expires = enrolment.create_enrol_token(
        gw.store, SITE, now=NOW, ttl=dt.timedelta(hours=1)
    )
    assert gw.authority is not None
    return json.dumps(
        {
            "format": BUNDLE_FORMAT,
            "gateway_url": gw.server.url + "/",
            "spki_pins": [gw.pki.server_pin, base64.b64encode(b"b" * 32).decode()],
            "ca_certificate": gw.authority.ca_pem,
            "policy_trust_keys": [trust_pem()],
            "policy_trust_threshold": 1,
            "token": token,
            "token_expires_at": expires.isoformat(),
            "site": SITE,
            "escrow_public_key": gw.authority.escrow_public_b64,
            "receipt_public_key": gw.authority.receipt_public_pem,
        }
    ).encode()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path / "gw") as gateway:
        gateway.load(*seed_resources(patients=20, seed=5))
        policies.publish(gateway.store, _policy(gateway), now=NOW, trust_keys=())
        users.add_user(
            gateway.store,
            user_id=NURSE[0],
            role="clinician",
            site=SITE,
            password=NURSE[1],
            now=NOW,
            hasher=TEST_HASHER,
            allow_weak_hasher=True,
        )
        yield gateway


def _provision(gw: Gateway, data: Path, keyring: InMemoryKeyring) -> Device:
    return provision_from_bundle(data, _bundle(gw), keyring_backend=keyring, kdf_params=FLOOR)


def test_NW4_provision_first_online_sign_in_then_offline_and_a_full_sync(
    gw: Gateway, tmp_path: Path
) -> None:
    keyring = InMemoryKeyring()
    data = tmp_path / "laptop"
    device = _provision(gw, data, keyring)
    assert device.profile.site == SITE and device.profile.enrolment
    assert device.header.users() == []  # nobody can sign in offline yet
    # The TLS key on disk is encrypted: useless without the keyring's device secret.
    assert b"ENCRYPTED" in (data / "device-tls.key").read_bytes()
    with pytest.raises(TypeError, match="encrypted"):
        serialization.load_pem_private_key((data / "device-tls.key").read_bytes(), password=None)

    assert add_user_online(device, *NURSE) == "clinician"
    session = Session.login(device, *NURSE)  # offline from now on
    result = run_sync(session)
    assert result.ok, result.error
    assert result.pulled > 0 and result.control["audit_uploaded"] >= 3
    assert result.control["policy"] == "current" and result.control["commands"] == []
    # What the server offers is kept for IT (device status --json), read without signing in.
    server = device_status(device)["server"]
    assert server["software"] == "Gatehouse gateway" and server["missing"] == []
    assert server["types"]["Patient"]["history_type"] is True
    patient = session.caseload()[0]
    session.write_consultation(
        patient.id,
        vitals=[consultation.Vital("heart_rate", 80)],
        note_text="Seen.",
        plan_text="Review.",
    )
    second = run_sync(session)
    assert second.ok and second.pushed == 3  # encounter, observation, note
    assert session.outbox_status() == (0, 0)
    third = run_sync(session)
    assert third.ok and third.pushed == 0 and third.pulled == 0
    # The gateway holds the device's whole chain, verified, with a receipt.
    chain = gw.store.audit_chain(device.profile.device_id)
    assert chain is not None
    session.lock()


def test_NW4_a_bundle_cannot_be_used_twice(gw: Gateway, tmp_path: Path) -> None:
    bundle = _bundle(gw)
    provision_from_bundle(
        tmp_path / "one", bundle, keyring_backend=InMemoryKeyring(), kdf_params=FLOOR
    )
    with pytest.raises(EnrolmentError) as caught:
        provision_from_bundle(
            tmp_path / "two", bundle, keyring_backend=InMemoryKeyring(), kdf_params=FLOOR
        )
    assert caught.value.reason == "token_used"


def test_first_sign_in_with_a_wrong_password_creates_no_slot(gw: Gateway, tmp_path: Path) -> None:
    device = _provision(gw, tmp_path / "laptop", InMemoryKeyring())
    with pytest.raises(ProvisioningError):
        add_user_online(device, NURSE[0], "not the right password")
    assert device.header.users() == []


def test_a_newer_policy_arrives_with_the_sync_and_a_forged_one_is_refused(
    gw: Gateway, tmp_path: Path
) -> None:
    device = _provision(gw, tmp_path / "laptop", InMemoryKeyring())
    add_user_online(device, *NURSE)
    session = Session.login(device, *NURSE)
    policies.publish(
        gw.store, _policy(gw, version=2, session__idle_lock_seconds=120), now=NOW, trust_keys=()
    )
    result = run_sync(session)
    assert result.control["policy"] == "installed"
    assert session.policy.version == 2 and device.policy().idle_lock_seconds == 120
    session.lock()


def _command(gw: Gateway, device_id: str, kind: str, user_id: str | None = None) -> None:
    gw.store.add_command(
        CommandRecord(
            command_id=str(uuid.uuid4()),
            device_id=device_id,
            kind=kind,  # type: ignore[arg-type]
            user_id=user_id,
            issued_at=NOW,
            status="pending",
        )
    )


def test_a_revoked_user_loses_their_slot_at_the_next_sync(gw: Gateway, tmp_path: Path) -> None:
    device = _provision(gw, tmp_path / "laptop", InMemoryKeyring())
    add_user_online(device, *NURSE)
    session = Session.login(device, *NURSE)
    _command(gw, device.profile.device_id, "revoke_user", NURSE[0])
    result = run_sync(session)
    assert result.control["commands"] == ["revoke_user"]
    session.lock()
    assert device.header.users() == []
    with pytest.raises(Exception):  # noqa: B017 - the slot is gone: no offline sign-in
        Session.login(device, *NURSE)


def test_WP2_a_remote_wipe_erases_the_laptop_and_is_acknowledged(
    gw: Gateway, tmp_path: Path
) -> None:
    data = tmp_path / "laptop"
    keyring = InMemoryKeyring()
    device = _provision(gw, data, keyring)
    add_user_online(device, *NURSE)
    session = Session.login(device, *NURSE)
    assert run_sync(session).ok
    copy_before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    _command(gw, device.profile.device_id, "wipe")
    result = run_sync(session)
    assert result.control["commands"] == ["wipe"] and result.control["lock_requested"]
    session.lock()
    assert not (data / "vault.db").exists() and not (data / "device-tls.key").exists()
    assert keyring.get_password("gatehouse", f"{device.profile.device_id}:device_secret") is None
    assert gw.store.device(device.profile.device_id).status == "wiped"
    # WP-1: the copy taken before the wipe no longer opens, even with the right password.
    restored = tmp_path / "restored"
    restored.mkdir()
    for name, content in copy_before.items():
        (restored / name).write_bytes(content)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; none opens it
        Session.login(Device.open(restored, keyring_backend=keyring, kdf_params=FLOOR), *NURSE)


def test_ST1_no_record_text_in_plaintext_after_a_full_session_with_sync(
    gw: Gateway,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sync, search, view, write, sync again, lock: then scan every file and the logs."""
    import logging
    import os
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    for name in ("TMPDIR", "SQLITE_TMPDIR"):
        monkeypatch.setenv(name, str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    caplog.set_level(logging.DEBUG)
    canary = "Canary-Pq9-Confidential-Note"
    data = tmp_path / "laptop"
    device = _provision(gw, data, InMemoryKeyring())
    add_user_online(device, *NURSE)
    session = Session.login(device, *NURSE)
    assert run_sync(session).ok
    patient = session.caseload()[0]
    family = patient.display_name.split(",")[0]
    session.search(family[:4])
    session.open_chart(patient.id)
    session.write_consultation(patient.id, vitals=[], note_text=canary, plan_text=canary)
    assert run_sync(session).ok
    session.lock()
    needles = [n.encode() for n in (canary, family, patient.nhs_number) if n]
    for folder in (data, temp):
        for root, _, files in os.walk(folder):
            for name in files:
                content = (Path(root) / name).read_bytes()
                for needle in needles:
                    assert needle not in content, f"plaintext in {name}"
    for needle in needles:
        assert needle.decode() not in caplog.text


def test_after_a_good_sync_no_audit_entry_is_left_unsent(gw: Gateway, tmp_path: Path) -> None:
    """The readiness check before a visit relies on it: the sync's own entry goes up too."""
    device = _provision(gw, tmp_path / "laptop", InMemoryKeyring())
    add_user_online(device, *NURSE)
    session = Session.login(device, *NURSE)
    assert run_sync(session).ok
    assert session.status().audit_unsent == 0
    session.lock()
