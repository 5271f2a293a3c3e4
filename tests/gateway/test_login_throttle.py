"""Issue 15 item 5: a sign-in throttle that cannot be turned against the users it protects.

Failures count per (user, laptop) and per laptop with growing delays; a spread guessing pattern
raises an alert. Real gateway over real TLS (SQLite, or PostgreSQL with
GATEHOUSE_TEST_STORE=postgres) for the lockout and the alerts; the delay schedule is driven with
an explicit clock through ``users.login`` on the same real store.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from sync.gateway import users
from sync.gateway.errors import ControlError
from sync.gateway.login_throttle import SPREAD_DEVICE, SPREAD_USER, LoginPolicy
from sync.gateway.pki import DeviceIdentity
from tests.support.control import PASSWORD, add_user, enrol, escrow_blob, login
from tests.support.gateway import SITE_A, SITE_B, TEST_HASHER, Gateway


def test_issue15_attacker_laptop_cannot_lock_a_user_out_of_their_own_laptop(
    gateway: Gateway, tmp_path: Path
) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    attacker = enrol(gateway, SITE_B, tmp_path / "attacker")  # any enrolled laptop, any site
    attacker_session = gateway.session(attacker.creds)
    answers = [
        login(gateway, attacker_session, attacker.device_id, "nurse1", password=f"guess {i}")
        for i in range(12)
    ]
    codes = [a.status_code for a in answers]
    assert codes[:3] == [401, 401, 401]  # the test gateway allows 3 failures per pair
    assert set(codes[3:]) == {429}  # then the ATTACKER's laptop waits
    # nurse1 on their own laptop is not affected at all.
    own = login(gateway, gateway.a, "dev-a", "nurse1")
    assert own.status_code == 200, own.text
    # ... and the attacker's laptop is still slowed after nurse1 signed in elsewhere.
    again = login(gateway, attacker_session, attacker.device_id, "nurse1")
    assert again.status_code == 429
    assert again.json()["error"] == "login_throttled"


def _attempt(
    gateway: Gateway,
    policy: LoginPolicy,
    identity: DeviceIdentity,
    user_id: str,
    password: str,
    now: dt.datetime,
) -> str | int:
    """``login_failed``, ``ok``, or the seconds to wait (a throttled attempt)."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "password": password,
        "escrow": escrow_blob(gateway, identity.device_id, b"k" * 32),
    }
    try:
        users.login(gateway.store, gateway.authority, policy, identity, body, now=now)
    except ControlError as err:
        if err.reason == "login_throttled":
            return int(err.extra["retry_after"])
        return err.reason
    return "ok"


def test_issue15_attacker_laptop_is_slowed_with_growing_delays(gateway: Gateway) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    policy = LoginPolicy(
        hasher=TEST_HASHER,
        max_failures=3,
        window=dt.timedelta(minutes=1),
        max_delay=dt.timedelta(minutes=8),
        device_max_failures=100,
    )
    attacker = DeviceIdentity("dev-attacker", SITE_B, 7, dt.datetime.now(dt.UTC))
    t = dt.datetime.now(dt.UTC)
    for _ in range(3):
        assert _attempt(gateway, policy, attacker, "nurse1", "guess", t) == "login_failed"
    waits: list[int] = []
    for _ in range(5):
        wait = _attempt(gateway, policy, attacker, "nurse1", PASSWORD, t + dt.timedelta(seconds=1))
        assert isinstance(wait, int)  # even the right password is refused while it waits
        waits.append(wait)
        t += dt.timedelta(seconds=wait + 1)  # wait it out, then guess wrong once more
        assert _attempt(gateway, policy, attacker, "nurse1", "guess", t) == "login_failed"
    # 1, 2, 4, 8, 8 minutes (capped), give or take the second it already waited.
    assert [round(w / 60) for w in waits] == [1, 2, 4, 8, 8]
    # The user's own laptop was never slowed by any of it.
    own = DeviceIdentity("dev-a", SITE_A, 1, dt.datetime.now(dt.UTC))
    assert _attempt(gateway, policy, own, "nurse1", PASSWORD, t) == "ok"


def test_issue15_one_laptop_guessing_across_many_users_is_slowed_too(gateway: Gateway) -> None:
    policy = LoginPolicy(
        hasher=TEST_HASHER,
        max_failures=3,
        device_max_failures=4,
        device_delay=dt.timedelta(seconds=30),
        spread_users=1000,
    )
    attacker = DeviceIdentity("dev-attacker", SITE_A, 7, dt.datetime.now(dt.UTC))
    t = dt.datetime.now(dt.UTC)
    results = [
        _attempt(gateway, policy, attacker, f"user{i}", "guess", t + dt.timedelta(seconds=i))
        for i in range(6)
    ]
    # One failure per user never reaches a pair's limit; the laptop's own limit is 4.
    assert results[:4] == ["login_failed"] * 4
    assert isinstance(results[4], int) and 25 <= results[4] <= 31
    assert isinstance(results[5], int)


def test_issue15_spread_guessing_raises_one_alert_per_pattern(
    gateway: Gateway, tmp_path: Path
) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    laptops = [enrol(gateway, SITE_A, tmp_path / f"l{i}") for i in range(3)]
    # Three laptops each fail once for nurse1: a spread pattern on one user.
    for laptop in laptops:
        answer = login(
            gateway, gateway.session(laptop.creds), laptop.device_id, "nurse1", password="nope"
        )
        assert answer.status_code == 401
    alerts = [a for a in gateway.store.audit_alerts() if a.reason == SPREAD_USER]
    assert len(alerts) == 1
    assert "nurse1" in alerts[0].sentence and "3 different laptops" in alerts[0].sentence
    assert alerts[0].device_id == laptops[-1].device_id and alerts[0].site == SITE_A
    # More failures the same day do not flood the security team.
    login(gateway, gateway.session(laptops[0].creds), laptops[0].device_id, "nurse1", "x")
    assert len([a for a in gateway.store.audit_alerts() if a.reason == SPREAD_USER]) == 1

    # One laptop failing for five different user names: a spread pattern on one device.
    session = gateway.session(laptops[1].creds)
    names = ["nurse1", "doc1", "doc2", "my-secret-password", "pharm1"]
    for name in names:
        assert login(gateway, session, laptops[1].device_id, name, "nope").status_code == 401
    alerts = [a for a in gateway.store.audit_alerts() if a.reason == SPREAD_DEVICE]
    assert len(alerts) == 1
    assert alerts[0].device_id == laptops[1].device_id
    assert "5 different users" in alerts[0].sentence
    # An unknown "user id" (perhaps a password typed in the wrong field) is never repeated.
    for alert in gateway.store.audit_alerts():
        assert "my-secret-password" not in alert.sentence


def test_issue15_spread_alert_never_names_an_unknown_user(gateway: Gateway) -> None:
    policy = LoginPolicy(hasher=TEST_HASHER, spread_devices=2)
    t = dt.datetime.now(dt.UTC)
    for n in range(2):
        laptop = DeviceIdentity(f"dev-{n}", SITE_A, n + 1, t)
        result = _attempt(gateway, policy, laptop, "Tr0ub4dor-typed-here", "guess", t)
        assert result == "login_failed"
    (alert,) = gateway.store.audit_alerts()
    assert alert.reason == SPREAD_USER
    assert "Tr0ub4dor" not in alert.sentence and "does not exist" in alert.sentence


@pytest.mark.parametrize("max_failures", [1, 3])
def test_issue15_a_success_forgets_only_that_users_failures_on_that_laptop(
    gateway: Gateway, max_failures: int
) -> None:
    add_user(gateway, "nurse1", "clinician", SITE_A)
    policy = LoginPolicy(hasher=TEST_HASHER, max_failures=max_failures)
    laptop = DeviceIdentity("dev-a", SITE_A, 1, dt.datetime.now(dt.UTC))
    t = dt.datetime.now(dt.UTC)
    for _ in range(max_failures - 1):
        assert _attempt(gateway, policy, laptop, "nurse1", "typo", t) == "login_failed"
    assert _attempt(gateway, policy, laptop, "nurse1", PASSWORD, t) == "ok"
    # After the success the user has all their free attempts again.
    for _ in range(max_failures):
        assert _attempt(gateway, policy, laptop, "nurse1", "typo", t) == "login_failed"
    assert isinstance(_attempt(gateway, policy, laptop, "nurse1", PASSWORD, t), int)


def test_issue15_a_devices_attempts_queue_on_its_gate_row_not_on_a_global_lock(
    tmp_path: Path,
) -> None:
    """The throttle stays race-free without a store-wide writer lock: an attempt of a device
    waits while another transaction holds that device's ``login_gates`` row (PostgreSQL)."""
    import threading

    import psycopg

    from sync.gateway.store.postgres import PgStore
    from tests.support.postgres import require_server

    dsn = require_server().new_database("gate")
    store = PgStore(dsn)
    policy = LoginPolicy(hasher=TEST_HASHER)
    t = dt.datetime.now(dt.UTC)
    try:
        store.login_gate("u", "dev-x", t, since=t - policy.remember, decide=lambda *_: None)
        finished = threading.Event()
        with psycopg.connect(dsn) as other:
            other.execute("UPDATE login_gates SET last_us = 0 WHERE device_id = 'dev-x'")
            attempt = threading.Thread(
                target=lambda: (
                    store.login_gate(
                        "u", "dev-x", t, since=t - policy.remember, decide=lambda *_: None
                    ),
                    finished.set(),
                )
            )
            attempt.start()
            assert not finished.wait(1.0)  # queued behind the other holder of the gate row
            other.commit()
        assert finished.wait(10)
        attempt.join(10)
    finally:
        store.close()
