"""Policy, commands and trusted time over real TLS (site isolation on every route)."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.gateway import policies
from sync.gateway.signing import (
    SignatureRefused,
    verify_command,
    verify_command_receipt,
    verify_time,
)
from sync.gateway.store.base import CommandRecord
from tests.support.control import enrol, policy_envelope
from tests.support.gateway import SITE_A, SITE_B, Gateway

POLICY_KEY = Ed25519PrivateKey.generate()


def _queue(gw: Gateway, device_id: str, kind: str, user_id: str | None = None) -> str:
    command_id = str(uuid.uuid4())
    gw.store.add_command(
        CommandRecord(command_id, device_id, kind, user_id, dt.datetime.now(dt.UTC), "pending")  # type: ignore[arg-type]
    )
    return command_id


def test_policy_served_is_the_latest_for_the_device_site_or_the_device(
    gateway: Gateway, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    assert gateway.a.get(f"{gateway.url}/device/policy", timeout=10).json() == {"policy": None}
    site_v1 = policy_envelope(SITE_A, 1, POLICY_KEY)
    site_v2 = policy_envelope(SITE_A, 2, POLICY_KEY)
    other_site = policy_envelope(SITE_B, 9, POLICY_KEY)
    only_b = policy_envelope(SITE_A, 3, POLICY_KEY, devices=("dev-other",))
    for envelope in (site_v1, site_v2, other_site, only_b):
        policies.publish(gateway.store, envelope, now=now)
    answer = gateway.a.get(f"{gateway.url}/device/policy", timeout=10).json()
    assert answer["policy"].encode() == site_v2  # v3 names another device; v9 is site B's
    assert gateway.b.get(f"{gateway.url}/device/policy", timeout=10).json()["policy"].encode() == (
        other_site
    )
    mine = policy_envelope(SITE_A, 4, POLICY_KEY, devices=("dev-a",))
    policies.publish(gateway.store, mine, now=now)
    assert (
        gateway.a.get(f"{gateway.url}/device/policy", timeout=10).json()["policy"].encode() == mine
    )
    # A newly enrolled device of the site receives the site policy in its enrolment answer.
    assert enrol(gateway, SITE_A, tmp_path / "n").answer["policy"].encode() == site_v2


def test_policy_publish_checks_structure_version_and_trust(gateway: Gateway) -> None:
    now = dt.datetime.now(dt.UTC)
    envelope = policy_envelope(SITE_A, 1, POLICY_KEY)
    with pytest.raises(policies.PolicyPublishError) as err:
        policies.publish(gateway.store, b'{"payload": "x"}', now=now)
    assert err.value.reason == "malformed"
    stranger = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(policies.PolicyPublishError) as err:
        policies.publish(gateway.store, envelope, now=now, trust_keys=[stranger])
    assert err.value.reason == "unknown_key"
    policies.publish(gateway.store, envelope, now=now, trust_keys=[POLICY_KEY.public_key()])
    with pytest.raises(policies.PolicyPublishError) as err:
        policies.publish(gateway.store, envelope, now=now)
    assert err.value.reason == "policy_version_exists"


def test_wipe_command_is_signed_for_the_device_and_its_receipt_marks_it_wiped(
    gateway: Gateway,
) -> None:
    command_id = _queue(gateway, "dev-a", "wipe")
    _queue(gateway, "dev-b", "lock")
    public = gateway.authority.receipt_key.public_key()
    session = gateway.a
    commands = session.get(f"{gateway.url}/device/commands", timeout=10).json()["commands"]
    assert [(c["id"], c["kind"], c["user_id"]) for c in commands] == [(command_id, "wipe", None)]
    verify_command(public, commands[0], "dev-a")
    with pytest.raises(SignatureRefused):
        verify_command(public, commands[0], "dev-b")  # bound to the device id
    with pytest.raises(SignatureRefused):
        verify_command(public, {**commands[0], "kind": "lock"}, "dev-a")
    # Another device cannot acknowledge it.
    answer = gateway.b.post(
        f"{gateway.url}/device/commands/{command_id}/receipt", json={"status": "done"}, timeout=10
    )
    assert (answer.status_code, answer.json()["error"]) == (404, "command_unknown")
    report = {"wiped_at": "2026-11-22T20:00:00+00:00", "files_removed": 3}
    answer = session.post(
        f"{gateway.url}/device/commands/{command_id}/receipt",
        json={"status": "done", "report": report},
        timeout=10,
    )
    assert answer.status_code == 200
    receipt = answer.json()["receipt"]
    verify_command_receipt(public, receipt)
    assert (receipt["command_id"], receipt["device_id"], receipt["status"]) == (
        command_id,
        "dev-a",
        "done",
    )
    assert gateway.store.device("dev-a").status == "wiped"  # type: ignore[union-attr]
    after = session.get(f"{gateway.url}/device/commands", timeout=10)
    assert (after.status_code, after.json()["error"]) == (403, "device_wiped")


def test_revoke_user_command_and_failed_receipt(gateway: Gateway) -> None:
    command_id = _queue(gateway, "dev-a", "revoke_user", "nurse1")
    session = gateway.a
    (command,) = session.get(f"{gateway.url}/device/commands", timeout=10).json()["commands"]
    assert (command["kind"], command["user_id"]) == ("revoke_user", "nurse1")
    verify_command(gateway.authority.receipt_key.public_key(), command, "dev-a")
    url = f"{gateway.url}/device/commands/{command_id}/receipt"
    first = session.post(url, json={"status": "failed", "report": {}}, timeout=10)
    assert first.status_code == 200
    again = session.post(url, json={"status": "failed", "report": {}}, timeout=10)
    assert again.json() == first.json()  # idempotent: the stored receipt
    assert session.get(f"{gateway.url}/device/commands", timeout=10).json() == {"commands": []}
    assert gateway.store.device("dev-a").status == "active"  # type: ignore[union-attr]
    bad = session.post(url, json={"status": "maybe"}, timeout=10)
    assert bad.status_code == 400


def test_TM2_time_is_signed_over_nonce_time_and_device(gateway: Gateway) -> None:
    nonce = base64.b64encode(secrets.token_bytes(16)).decode()
    before = dt.datetime.now(dt.UTC)
    answer = gateway.a.post(f"{gateway.url}/device/time", json={"nonce": nonce}, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["nonce"] == nonce
    assert before <= dt.datetime.fromisoformat(body["time"]) <= dt.datetime.now(dt.UTC)
    public = gateway.authority.receipt_key.public_key()
    verify_time(public, body, "dev-a")
    with pytest.raises(SignatureRefused):
        verify_time(public, body, "dev-b")  # a relay cannot hand it to another device
    with pytest.raises(SignatureRefused):
        verify_time(public, {**body, "nonce": base64.b64encode(b"x" * 16).decode()}, "dev-a")
    for bad in ({"nonce": "short"}, {"nonce": base64.b64encode(b"x" * 8).decode()}, {}):
        answer = gateway.a.post(f"{gateway.url}/device/time", json=bad, timeout=10)
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_request")


def test_control_plane_bodies_are_bounded_and_strict(gateway: Gateway) -> None:
    url = f"{gateway.url}/device/time"
    big = gateway.a.post(url, data=b"{" + b" " * 70_000 + b"}", timeout=10)
    assert (big.status_code, big.json()["error"]) == (413, "body_too_large")
    for raw in (b"not json", b'{"nonce": 1, "nonce": 2}', b"[]"):
        answer = gateway.a.post(url, data=raw, timeout=10)
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_request")
    assert gateway.a.get(f"{gateway.url}/device/nothing", timeout=10).status_code == 404
