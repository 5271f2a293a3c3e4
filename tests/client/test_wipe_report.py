"""WP-3: a wipe caused on the laptop is reported to the gateway at the next contact, with its
cause, although the device's TLS identity is gone — against the real gateway over real TLS
(pinned, no client certificate for the report), real SQLCipher vaults and the real wipe.

Only the clocks (``FakeClocks``, started at the real time so the gateway's policy is valid) and
the OS keyring (in memory) are replaced.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import cli
from client.core.accounts import LoginRefused
from client.core.device import Device, report_wipe_if_any
from client.core.device_keyring import InMemoryKeyring
from client.core.provisioning import add_user_online
from client.core.session import Session
from client.core.wipe import PENDING_REPORT_NAME
from client.core.wipe_report import REPORTER_NAME, load_reporter
from sync.gateway.store.base import EnrolledDevice
from sync.protocol.wipe_report import WipeReport, report_statement, sign_statement, verify_ack
from tests.support.device import FakeClocks
from tests.support.gateway import Gateway
from tests.support.laptop import NURSE, laptop_gateway, now, provision_laptop


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with laptop_gateway(
        tmp_path / "gw", auth__lockout_after_failures=3, auth__wipe_after_failures=4
    ) as gateway:
        yield gateway


def _laptop(gw: Gateway, data: Path) -> tuple[Device, FakeClocks, InMemoryKeyring]:
    clocks = FakeClocks(wall=now())
    keyring = InMemoryKeyring()
    device = provision_laptop(gw, data, keyring, clock=clocks.now, clocks=clocks.reading)
    add_user_online(device, *NURSE)
    return device, clocks, keyring


def _listed(gw: Gateway, device_id: str) -> EnrolledDevice:
    return next(d for d in gw.store.enrolled_devices() if d.device_id == device_id)


def _alerts(gw: Gateway, device_id: str) -> list[tuple[str, str]]:
    return [(a.reason, a.sentence) for a in gw.store.audit_alerts(device_id)]


def test_WP3_a_wipe_after_failed_sign_ins_is_reported_at_the_next_start(
    gw: Gateway, tmp_path: Path
) -> None:
    data = tmp_path / "laptop"
    device, clocks, keyring = _laptop(gw, data)
    device_id = device.profile.device_id
    Session.login(device, *NURSE).lock()
    refused: LoginRefused | None = None
    for _ in range(10):
        clocks.advance(dt.timedelta(hours=1))  # past any throttle or lockout
        try:
            Session.login(device, NURSE[0], "not the password at all")
        except LoginRefused as caught:
            refused = caught
            if caught.reason == "wiped_failed_logins":
                break
    assert refused is not None and refused.reason == "wiped_failed_logins"
    assert not (data / "vault.db").exists() and not (data / "device-tls.key").exists()
    assert (data / PENDING_REPORT_NAME).exists()
    # The TLS identity is gone; until the laptop makes contact, the gateway knows nothing.
    assert gw.store.device(device_id).status == "active"  # type: ignore[union-attr]

    assert report_wipe_if_any(data, keyring_backend=keyring) == "sent"  # the next start

    assert gw.store.device(device_id).status == "wiped"  # type: ignore[union-attr]
    listed = _listed(gw, device_id)
    assert listed.wipe_cause == "too_many_failed_logins" and listed.wiped_at is not None
    [(reason, sentence)] = _alerts(gw, device_id)
    assert reason == "device_wiped" and "too many failed sign-ins" in sentence
    # Acknowledged: nothing is left to send, and the report key's job is done.
    assert not (data / PENDING_REPORT_NAME).exists() and not (data / REPORTER_NAME).exists()
    assert report_wipe_if_any(data, keyring_backend=keyring) == "none"


def test_WP3_a_wipe_for_too_long_offline_is_reported_by_the_next_gatehouse_command(
    gw: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "laptop"
    device, clocks, _keyring = _laptop(gw, data)
    device_id = device.profile.device_id
    Session.login(device, *NURSE).lock()
    clocks.advance(dt.timedelta(days=31))  # beyond offline.wipe_after_days (30)
    with pytest.raises(LoginRefused) as caught:
        Session.login(device, *NURSE)
    assert caught.value.reason == "wiped_offline_too_long"
    # The next start of the product (here the device CLI), before anything else.
    cli.main(["device", "status", "--data", str(data)])
    assert "wipe was reported to the gateway" in capsys.readouterr().err
    assert gw.store.device(device_id).status == "wiped"  # type: ignore[union-attr]
    assert _listed(gw, device_id).wipe_cause == "offline_too_long"


def _post(gw: Gateway, body: object) -> tuple[int, dict[str, object]]:
    """Over TLS to the gateway, without a client certificate (as a wiped laptop must)."""
    response = gw.session(None).post(f"{gw.url}/device/wipe-report", json=body, timeout=30)
    return response.status_code, response.json()


def _signed(key: Ed25519PrivateKey, **fields: object) -> dict[str, object]:
    report = WipeReport(**fields)  # type: ignore[arg-type]
    return {"report": report.fields(), "signature": sign_statement(key, report_statement(report))}


def test_WP3_a_report_cannot_be_forged_replayed_to_change_anything_or_used_to_learn(
    gw: Gateway, tmp_path: Path
) -> None:
    device, _clocks, keyring = _laptop(gw, tmp_path / "a")
    other, _, _ = _laptop(gw, tmp_path / "b")
    a_id, b_id = device.profile.device_id, other.profile.device_id
    reporter = load_reporter(tmp_path / "a")
    assert reporter is not None
    device.wipe("too_many_failed_logins")
    genuine = json.loads((tmp_path / "a" / PENDING_REPORT_NAME).read_text())
    body = {"report": genuine["report"], "signature": genuine["signature"]}

    refusals = [
        {**body, "report": {**body["report"], "cause": "offline_too_long"}},  # edited
        _signed(Ed25519PrivateKey.generate(), **{**body["report"]}),  # another key
        _signed(reporter.key, **{**body["report"], "device_id": b_id}),  # A's key for B
        _signed(reporter.key, **{**body["report"], "device_id": "dev-000000000000"}),  # unknown
        {**body, "signature": base64.b64encode(b"x" * 64).decode()},
        {"report": body["report"]},  # malformed
    ]
    answers = [_post(gw, forged) for forged in refusals]
    # One answer for every refusal: no oracle for device ids or keys.
    assert {json.dumps(a, sort_keys=True) for a in answers} == {
        json.dumps((403, {"error": "report_refused", "message": answers[0][1]["message"]}))
    }
    assert gw.store.device(a_id).status == "active"  # type: ignore[union-attr]
    assert gw.store.device(b_id).status == "active"  # type: ignore[union-attr]
    assert _alerts(gw, a_id) == [] and _alerts(gw, b_id) == []

    status, answer = _post(gw, body)
    assert status == 200 and set(answer) == {"ack"}  # the acknowledgement and nothing else
    ack = verify_ack(reporter.receipt_key, answer["ack"], WipeReport(**body["report"]))
    assert ack["status"] == "recorded"
    assert set(ack) == {"report_id", "device_id", "status", "received_at", "signature"}
    # Replayed, or a second report with the same key: accepted as known, nothing changes.
    assert _post(gw, body)[1]["ack"]["status"] == "duplicate"  # type: ignore[index]
    again = _signed(reporter.key, **{**body["report"], "report_id": "A" * 24, "cause": "requested"})
    assert _post(gw, again)[1]["ack"]["status"] == "already_reported"  # type: ignore[index]
    assert gw.store.device(a_id).status == "wiped"  # type: ignore[union-attr]
    assert _listed(gw, a_id).wipe_cause == "too_many_failed_logins"
    assert len(_alerts(gw, a_id)) == 1
    assert gw.store.device(b_id).status == "active"  # type: ignore[union-attr]
    # The laptop's own send is acknowledged too (the gateway keeps its first report).
    assert report_wipe_if_any(tmp_path / "a", keyring_backend=keyring) == "sent"
