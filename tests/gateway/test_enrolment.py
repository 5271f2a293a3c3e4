"""NW-4 enrolment over real TLS: one-time tokens, CSR checks, issuance, renewal."""

from __future__ import annotations

import base64
import datetime as dt
import threading
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sync.gateway import pki
from sync.gateway.enrolment import token_hash
from sync.gateway.store.base import DatabaseFailure, EnrolledDevice
from sync.protocol.audit.chain import genesis_hash
from tests.support.control import (
    csr_pem,
    enrol,
    enrol_request,
    key_pem,
    token_for,
)
from tests.support.gateway import SITE_A, SITE_B, Gateway, patient


def _enrolled(gw: Gateway) -> list[EnrolledDevice]:
    return [d for d in gw.store.enrolled_devices(SITE_A) if d.enrolled_at is not None]


def test_NW4_enrolment_issues_a_working_certificate_for_the_token_site(
    gateway: Gateway, tmp_path: Path
) -> None:
    gateway.load(patient("pa", SITE_A), patient("pb", SITE_B))
    device = enrol(gateway, SITE_A, tmp_path / "laptop")
    body = device.answer
    assert body["device_id"].startswith("dev-") and len(body["device_id"]) == 16
    assert body["site"] == SITE_A
    assert body["ca_certificate"] == gateway.authority.ca_pem
    assert body["escrow_public_key"] == gateway.authority.escrow_public_b64
    assert body["receipt_public_key"] == gateway.authority.receipt_public_pem
    assert body["policy"] is None
    identity = pki.verify_device_certificate(
        device.creds.cert, gateway.pki.ca_cert, now=dt.datetime.now(dt.UTC)
    )
    assert (identity.device_id, identity.site) == (device.device_id, SITE_A)
    # The device row is active, its audit chain starts at genesis with the k0 it sent.
    assert gateway.store.device(device.device_id).status == "active"  # type: ignore[union-attr]
    chain = gateway.store.audit_chain(device.device_id)
    assert chain is not None and chain.k0 == device.k0 and chain.seq == 0
    assert chain.head_hash == genesis_hash(device.device_id)
    # The new certificate opens the data plane of its own site only.
    session = gateway.session(device.creds)
    assert session.get(f"{gateway.fhir}/Patient/pa", timeout=10).status_code == 200
    assert session.get(f"{gateway.fhir}/Patient/pb", timeout=10).status_code == 404


def test_a_database_failure_while_enrolling_is_a_503_not_a_refusal(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy or unreachable database says nothing about the token: the device is told the
    gateway is busy (503 with Retry-After, issue 15 item 4), never that its token was refused
    (4xx)."""
    token = token_for(gateway, SITE_A)

    def busy(*args: object, **kwargs: object) -> str:
        raise DatabaseFailure("database_busy")

    monkeypatch.setattr(gateway.store, "enrol_device", busy)
    answer = enrol_request(gateway, token)
    assert (answer.status_code, answer.json()["error"]) == (503, "database_busy")
    assert int(answer.headers["Retry-After"]) > 0
    monkeypatch.undo()
    assert enrol_request(gateway, token).status_code == 200  # the token was not spent


def test_a_busy_database_on_the_data_plane_is_a_503_with_retry_after(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 4: a read or a transaction that meets a busy database is answered 503
    with Retry-After and an OperationOutcome naming the reason (was 500, or 400 inside a
    transaction), so the laptop backs off instead of giving up on its note."""
    gateway.load(patient("pa", SITE_A))
    device = enrol(gateway, SITE_A, tmp_path / "laptop")
    session = gateway.session(device.creds)

    def busy(*args: object, **kwargs: object) -> None:
        raise DatabaseFailure("database_busy")

    monkeypatch.setattr(gateway.store, "read", busy)
    monkeypatch.setattr(gateway.store, "write", busy)
    read = session.get(f"{gateway.fhir}/Patient/pa", timeout=10)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    post = session.post(
        gateway.fhir, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=10
    )
    for answer in (read, post):
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["Retry-After"]) > 0
        outcome = answer.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert "database_busy" in answer.text
    monkeypatch.undo()
    assert session.get(f"{gateway.fhir}/Patient/pa", timeout=10).status_code == 200


def test_NW4_token_replay_is_refused_even_when_the_first_answer_was_lost(
    gateway: Gateway,
) -> None:
    token = token_for(gateway, SITE_A)
    first = enrol_request(gateway, token)  # the laptop never read this answer
    assert first.status_code == 200
    again = enrol_request(gateway, token)
    assert again.status_code == 403
    assert again.json()["error"] == "token_used"
    assert "certificate" not in again.json()
    assert len(_enrolled(gateway)) == 1


def test_NW4_expired_and_unknown_tokens_are_refused(gateway: Gateway) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    gateway.store.add_enrol_token(
        token_hash("old-token"), SITE_A, now=past, expires_at=past + dt.timedelta(hours=1)
    )
    answer = enrol_request(gateway, "old-token")
    assert (answer.status_code, answer.json()["error"]) == (403, "token_expired")
    answer = enrol_request(gateway, "never-issued")
    assert (answer.status_code, answer.json()["error"]) == (403, "token_unknown")
    assert _enrolled(gateway) == []


def test_NW4_concurrent_use_of_one_token_exactly_one_wins(gateway: Gateway) -> None:
    token = token_for(gateway, SITE_A)
    contenders = 6
    barrier = threading.Barrier(contenders)
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def attempt() -> None:
        key = pki.generate_key()
        body = {
            "token": token,
            "csr": csr_pem(key),
            "audit_k0": base64.b64encode(b"k" * 32).decode(),
        }
        with requests.Session() as session:
            session.trust_env = False
            session.verify = str(gateway.pki.ca_path)
            barrier.wait()
            answer = session.post(f"{gateway.url}/device/enrol", json=body, timeout=30)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=attempt) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [403] * (contenders - 1)
    assert {a.json()["error"] for a in answers if a.status_code == 403} == {"token_used"}
    assert len(_enrolled(gateway)) == 1


def test_NW4_bad_csrs_are_refused_and_do_not_burn_the_token(gateway: Gateway) -> None:
    token = token_for(gateway, SITE_A)
    p384 = ec.generate_private_key(ec.SECP384R1())
    good = csr_pem(pki.generate_key())
    tampered = good.replace(good.splitlines()[3], good.splitlines()[3][::-1])
    for csr in (csr_pem(p384), csr_pem(pki.generate_key(), ca=True), tampered, "garbage", ""):
        body = {"token": token, "csr": csr, "audit_k0": base64.b64encode(b"k" * 32).decode()}
        answer = gateway.session(None).post(f"{gateway.url}/device/enrol", json=body, timeout=10)
        assert (answer.status_code, answer.json()["error"]) == (400, "csr_invalid"), csr[:40]
    assert enrol_request(gateway, token).status_code == 200


def test_NW4_audit_k0_must_be_32_bytes(gateway: Gateway) -> None:
    token = token_for(gateway, SITE_A)
    body = {"token": token, "csr": csr_pem(pki.generate_key()), "audit_k0": "c2hvcnQ="}
    answer = gateway.session(None).post(f"{gateway.url}/device/enrol", json=body, timeout=10)
    assert (answer.status_code, answer.json()["error"]) == (400, "bad_request")


def test_NW4_ed25519_device_key_enrols_and_speaks_tls(gateway: Gateway, tmp_path: Path) -> None:
    device = enrol(gateway, SITE_B, tmp_path / "ed", key=ed25519.Ed25519PrivateKey.generate())
    answer = gateway.session(device.creds).get(f"{gateway.url}/device/policy", timeout=10)
    assert answer.status_code == 200


def test_NW4_renewal_needs_the_current_certificate(gateway: Gateway, tmp_path: Path) -> None:
    device = enrol(gateway, SITE_A, tmp_path / "laptop")
    new_key = pki.generate_key()
    anonymous = gateway.session(None).post(
        f"{gateway.url}/device/renew", json={"csr": csr_pem(new_key)}, timeout=10
    )
    assert anonymous.status_code == 401
    answer = gateway.session(device.creds).post(
        f"{gateway.url}/device/renew", json={"csr": csr_pem(new_key)}, timeout=10
    )
    assert answer.status_code == 200
    renewed = pki.load_cert(answer.json()["certificate"].encode())
    identity = pki.device_identity(renewed)
    assert (identity.device_id, identity.site) == (device.device_id, SITE_A)
    assert renewed.serial_number != device.creds.cert.serial_number
    listed = _enrolled(gateway)[0]
    assert listed.cert_serial == format(renewed.serial_number, "x")
    # The renewed certificate with the new key works.
    (tmp_path / "r").mkdir()
    cert_path, key_path = tmp_path / "r" / "c.pem", tmp_path / "r" / "k.pem"
    cert_path.write_bytes(answer.json()["certificate"].encode())
    key_path.write_bytes(key_pem(new_key))
    session = requests.Session()
    session.trust_env, session.verify = False, str(gateway.pki.ca_path)
    session.cert = (str(cert_path), str(key_path))
    with session:
        assert session.get(f"{gateway.url}/device/policy", timeout=10).status_code == 200
    # M5: the superseded certificate (a stolen older key) no longer works, nor renews.
    old = gateway.session(device.creds).get(f"{gateway.url}/device/policy", timeout=10)
    assert old.status_code == 403 and old.json()["error"] == "certificate_superseded"
