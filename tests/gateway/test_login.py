"""Online login over real TLS: Argon2id, one refusal, throttle, escrow binding, bearer tokens."""

from __future__ import annotations

import base64
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from sync.gateway import users
from sync.gateway.errors import ControlError
from sync.gateway.login_throttle import LoginPolicy
from sync.gateway.pki import DeviceIdentity
from sync.gateway.users import authenticate_bearer, bearer_hash, default_hasher
from tests.support.control import PASSWORD, add_user, bearer, enrol, escrow_blob, login
from tests.support.gateway import SITE_A, SITE_B, TEST_HASHER, Gateway, patient


def test_login_returns_the_escrowed_key_role_and_a_short_token(
    gateway: Gateway, tmp_path: Path
) -> None:
    device = enrol(gateway, SITE_A, tmp_path / "d")
    add_user(gateway, "nurse1", "clinician", SITE_A)
    dek = bytes(range(32))
    answer = login(gateway, gateway.session(device.creds), device.device_id, "nurse1", dek=dek)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["user_id"], body["role"], body["site"]) == ("nurse1", "clinician", SITE_A)
    assert base64.b64decode(body["dek"]) == dek
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert expires - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=15)
    assert answer.headers["cache-control"] == "no-store"
    session = gateway.store.session(bearer_hash(body["token"]))
    assert session is not None and session.device_id == device.device_id
    assert body["token"] not in str(session)


def test_unknown_user_and_wrong_password_get_the_same_refusal(gateway: Gateway) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    wrong = login(gateway, gateway.a, "dev-a", "nurse1", password="wrong password")
    unknown = login(gateway, gateway.a, "dev-a", "nobody")
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {
            "error": "login_failed",
            "message": "The user name or password is wrong.",
        }
    )


def test_failed_logins_are_throttled_per_user_even_with_the_right_password(
    gateway: Gateway,
) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    add_user(gateway, "nurse2", "clinician", SITE_A)
    for _ in range(3):  # the test gateway allows 3 failures per window
        assert login(gateway, gateway.a, "dev-a", "nurse1", password="nope").status_code == 401
    answer = login(gateway, gateway.a, "dev-a", "nurse1")
    assert answer.status_code == 429
    assert answer.json()["error"] == "login_throttled"
    assert int(answer.headers["retry-after"]) > 0
    assert "token" not in answer.json()
    # Another user is not affected.
    assert login(gateway, gateway.a, "dev-a", "nurse2").status_code == 200


def test_throttle_lifts_after_the_window(gateway: Gateway) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    policy = LoginPolicy(hasher=TEST_HASHER, max_failures=2, window=dt.timedelta(minutes=10))
    identity = DeviceIdentity("dev-a", SITE_A, 1, dt.datetime.now(dt.UTC))
    t0 = dt.datetime.now(dt.UTC)
    good = {
        "user_id": "nurse1",
        "password": PASSWORD,
        "escrow": escrow_blob(gateway, "dev-a", b"k" * 32),
    }
    bad = {**good, "password": "nope"}

    def attempt(body: dict[str, Any], after: dt.timedelta) -> Any:
        return users.login(gateway.store, gateway.authority, policy, identity, body, now=t0 + after)

    for minute in (0, 1):
        with pytest.raises(ControlError) as err:
            attempt(bad, dt.timedelta(minutes=minute))
        assert err.value.reason == "login_failed"
    with pytest.raises(ControlError) as err:
        attempt(good, dt.timedelta(minutes=9))
    assert err.value.reason == "login_throttled"
    result = attempt(good, dt.timedelta(minutes=11, seconds=1))
    assert result.user_id == "nurse1"


def test_escrow_blob_of_another_device_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    other = enrol(gateway, SITE_A, tmp_path / "other")
    body = {
        "user_id": "nurse1",
        "password": PASSWORD,
        "escrow": escrow_blob(gateway, other.device_id, b"s" * 32),  # sealed for the other laptop
    }
    answer = gateway.a.post(f"{gateway.url}/device/login", json=body, timeout=10)
    assert (answer.status_code, answer.json()["error"]) == (403, "escrow_mismatch")
    assert "dek" not in answer.json()


def test_user_of_another_site_and_revoked_user_are_refused(gateway: Gateway) -> None:
    add_user(gateway, "nurse-b", "clinician", SITE_B)
    add_user(gateway, "gone", "clinician", SITE_A)
    gateway.store.set_user_status("gone", "revoked")
    answer = login(gateway, gateway.a, "dev-a", "nurse-b")
    assert (answer.status_code, answer.json()["error"]) == (403, "wrong_site")
    answer = login(gateway, gateway.a, "dev-a", "gone")
    assert (answer.status_code, answer.json()["error"]) == (403, "user_revoked")


def test_bearer_token_is_bound_to_the_device_that_obtained_it(gateway: Gateway) -> None:
    add_user(gateway, "aud-a", "auditor", SITE_A)
    token = bearer(gateway, gateway.a, "dev-a", "aud-a")
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        gateway.a.get(f"{gateway.url}/audit/chains", headers=headers, timeout=10).status_code == 200
    )
    stolen = gateway.b.get(f"{gateway.url}/audit/chains", headers=headers, timeout=10)
    assert (stolen.status_code, stolen.json()["error"]) == (401, "bearer_invalid")
    forged = gateway.a.get(
        f"{gateway.url}/audit/chains", headers={"Authorization": "Bearer made-up"}, timeout=10
    )
    assert forged.status_code == 401
    none = gateway.a.get(f"{gateway.url}/audit/chains", timeout=10)
    assert (none.status_code, none.json()["error"]) == (401, "bearer_required")


def test_bearer_token_expires_after_fifteen_minutes(gateway: Gateway) -> None:
    add_user(gateway, "aud-a", "auditor", SITE_A)
    token = bearer(gateway, gateway.a, "dev-a", "aud-a")
    session = gateway.store.session(bearer_hash(token))
    assert session is not None
    identity = DeviceIdentity("dev-a", SITE_A, int(session.cert_serial, 16), session.expires_at)
    header = f"Bearer {token}"
    now = session.expires_at - dt.timedelta(seconds=1)
    assert authenticate_bearer(gateway.store, header, identity, now=now).user_id == "aud-a"
    with pytest.raises(ControlError) as err:
        authenticate_bearer(gateway.store, header, identity, now=session.expires_at)
    assert err.value.reason == "bearer_invalid"


@pytest.mark.parametrize("role", ["auditor", "admin"])
def test_auditors_and_admins_never_receive_clinical_resources(gateway: Gateway, role: str) -> None:
    gateway.load(patient("p1", SITE_A, family="Canary"))
    add_user(gateway, "u1", role, SITE_A)
    token = bearer(gateway, gateway.a, "dev-a", "u1")
    headers = {"Authorization": f"Bearer {token}"}
    for path in ("/fhir/Patient/p1", "/fhir/Patient", "/fhir/_history"):
        answer = gateway.a.get(f"{gateway.url}{path}", headers=headers, timeout=10)
        assert answer.status_code == 403, path
        assert answer.json()["issue"][0]["details"]["text"] == "role_forbidden"
        assert "Canary" not in answer.text


def test_a_clinician_token_may_be_sent_to_the_data_plane(gateway: Gateway) -> None:
    gateway.load(patient("p1", SITE_A))
    add_user(gateway, "nurse1", "clinician", SITE_A)
    token = bearer(gateway, gateway.a, "dev-a", "nurse1")
    answer = gateway.a.get(
        f"{gateway.fhir}/Patient/p1", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200


def test_clinicians_cannot_query_the_audit_trail(gateway: Gateway) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    token = bearer(gateway, gateway.a, "dev-a", "nurse1")
    answer = gateway.a.get(
        f"{gateway.url}/audit/AuditEvent", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert (answer.status_code, answer.json()["error"]) == (403, "role_forbidden")


def test_production_hasher_meets_the_argon2id_floor() -> None:
    hasher = default_hasher()
    assert users.meets_floor(hasher)
    assert not users.meets_floor(TEST_HASHER)
    with pytest.raises(ValueError, match="floor"):
        users.add_user(
            None,  # type: ignore[arg-type]  # refused before the store is touched
            user_id="x",
            role="clinician",
            site=SITE_A,
            password="pw",
            now=dt.datetime.now(dt.UTC),
            hasher=TEST_HASHER,
        )


def test_no_password_token_key_or_user_id_reaches_the_logs(
    gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary_user, canary_password = "canary-user-7731", "canary-password-7731"
    users.add_user(
        gateway.store,
        user_id=canary_user,
        role="auditor",
        site=SITE_A,
        password=canary_password,
        now=dt.datetime.now(dt.UTC),
        hasher=TEST_HASHER,
        allow_weak_hasher=True,
    )
    device = enrol(gateway, SITE_A, tmp_path / "d")
    session = gateway.session(device.creds)
    login(gateway, session, device.device_id, canary_user, password="wrong-canary-7731")
    answer = login(gateway, session, device.device_id, canary_user, password=canary_password)
    token = answer.json()["token"]
    dek = answer.json()["dek"]
    session.get(
        f"{gateway.url}/audit/AuditEvent?patient=canary-patient-7731",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    # The test's own HTTP client (urllib3) logs its URLs; only the gateway's records count.
    text = "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("urllib3")
    )
    assert "sync.gateway.users login failed" in text  # the gateway did log, without details
    for secret in (canary_user, canary_password, "wrong-canary-7731", token, dek, "canary-patient"):
        assert secret not in text
    assert base64.b64encode(device.k0).decode() not in text


def test_M4_parallel_guesses_cannot_slip_past_the_throttle(gateway: Gateway) -> None:
    import datetime as dt
    from concurrent.futures import ThreadPoolExecutor

    from argon2 import PasswordHasher, Type

    from sync.gateway import users as gateway_users
    from sync.gateway.errors import ControlError
    from sync.gateway.login_throttle import LoginPolicy
    from sync.gateway.pki import DeviceIdentity
    from tests.support.control import escrow_blob
    from tests.support.gateway import SITE_A

    slow = PasswordHasher(time_cost=3, memory_cost=16384, parallelism=1, type=Type.ID)
    now = dt.datetime.now(dt.UTC)
    gateway_users.add_user(
        gateway.store,
        user_id="nurse9",
        role="clinician",
        site=SITE_A,
        password="x" * 12,
        now=now,
        hasher=slow,
        allow_weak_hasher=True,
    )
    policy = LoginPolicy(hasher=slow, max_failures=3)
    identity = DeviceIdentity("dev-a", SITE_A, 1, now)
    body = {"user_id": "nurse9", "escrow": escrow_blob(gateway, "dev-a", b"k" * 32)}

    def guess(i: int) -> str:
        try:
            gateway_users.login(
                gateway.store,
                gateway.authority,
                policy,
                identity,
                {**body, "password": f"guess number {i}"},
                now=dt.datetime.now(dt.UTC),
            )
        except ControlError as error:
            return error.reason
        return "ok"

    with ThreadPoolExecutor(20) as pool:
        reasons = list(pool.map(guess, range(20)))
    assert reasons.count("login_failed") <= 3  # only that many passwords were ever checked
    assert reasons.count("login_throttled") >= 17
