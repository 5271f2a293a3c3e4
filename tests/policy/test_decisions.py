"""Decisions: pure functions of (policy, state, now) and their boundaries (AU-2, NW-1/2, TM-1)."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest

from policy.decisions import (
    OfflineKind,
    PolicyMode,
    ThrottleKind,
    audit_backlog_blocks_access,
    break_glass_expires_at,
    clock_skew_ok,
    failed_login_outcome,
    fhir_base_url,
    host_allowed,
    idle_lock_seconds,
    min_password_length,
    offline_state,
    os_version_ok,
    policy_mode,
    spki_pins,
    ui_permissions,
)
from policy.model import Policy
from policy.verify import verify_policy
from tests.support.policy import KEY_A, NOW, PINS, SITE, payload_doc, signed, trust


def make(**settings: Any) -> Policy:
    doc = payload_doc(**settings)
    return verify_policy(
        signed(doc), trust(KEY_A), now=NOW, installed_version=None, site=SITE, device_id=None
    )


def test_idle_lock_and_password_length_come_from_policy() -> None:
    policy = make(session__idle_lock_seconds=90, auth__min_password_length=16)
    assert idle_lock_seconds(policy) == 90
    assert min_password_length(policy) == 16
    assert min_password_length(make()) == 12


def test_AU2_throttle_grows_exponentially_then_locks_then_wipes() -> None:
    policy = make(
        auth__throttle_base_seconds=2,
        auth__lockout_after_failures=5,
        auth__wipe_after_failures=8,
        auth__lockout_seconds=600,
    )
    first = failed_login_outcome(policy, 0, NOW)
    assert first.kind is ThrottleKind.ALLOWED
    assert first.attempts_left_before_lockout == 5
    delays = [failed_login_outcome(policy, n, NOW).retry_after_seconds for n in range(1, 5)]
    assert delays == [2, 4, 8, 16]
    assert {failed_login_outcome(policy, n, NOW).kind for n in range(1, 5)} == {
        ThrottleKind.RETRY_AFTER
    }
    assert failed_login_outcome(policy, 4, NOW).attempts_left_before_lockout == 1
    for n in (5, 6, 7):
        locked = failed_login_outcome(policy, n, NOW)
        assert locked.kind is ThrottleKind.LOCKED_UNTIL
        assert locked.locked_until == NOW + timedelta(seconds=600)
        assert locked.attempts_left_before_lockout == 0
        assert locked.attempts_left_before_wipe == 8 - n
    assert failed_login_outcome(policy, 8, NOW).kind is ThrottleKind.WIPE
    assert failed_login_outcome(policy, 80, NOW).kind is ThrottleKind.WIPE


def test_throttle_is_capped_at_the_lockout_length() -> None:
    policy = make(
        auth__throttle_base_seconds=60,
        auth__lockout_after_failures=10,
        auth__wipe_after_failures=20,
        auth__lockout_seconds=120,
    )
    assert failed_login_outcome(policy, 9, NOW).retry_after_seconds == 120


def test_throttle_rejects_caller_bugs() -> None:
    with pytest.raises(ValueError):
        failed_login_outcome(make(), -1, NOW)
    with pytest.raises(ValueError):
        failed_login_outcome(make(), 1, NOW.replace(tzinfo=None))


def test_TM1_offline_stages_at_their_boundaries() -> None:
    policy = make(
        offline__warn_after_hours=10, offline__block_after_hours=20, offline__wipe_after_days=2
    )
    hour = timedelta(hours=1)
    tiny = timedelta(seconds=1)
    cases = {
        timedelta(0): OfflineKind.OK,
        10 * hour - tiny: OfflineKind.OK,
        10 * hour: OfflineKind.WARN,
        20 * hour - tiny: OfflineKind.WARN,
        20 * hour: OfflineKind.BLOCKED_UNTIL_SYNC,
        48 * hour - tiny: OfflineKind.BLOCKED_UNTIL_SYNC,
        48 * hour: OfflineKind.WIPE,
        1000 * hour: OfflineKind.WIPE,
    }
    for elapsed, kind in cases.items():
        assert offline_state(policy, elapsed).kind is kind, elapsed
    warn = offline_state(policy, 15 * hour)
    assert (warn.until_warn, warn.until_block, warn.until_wipe) == (
        timedelta(0),
        5 * hour,
        33 * hour,
    )
    with pytest.raises(ValueError):
        offline_state(policy, -tiny)


def test_NW2_host_allowed_is_exact_and_case_insensitive() -> None:
    policy = make(
        network__allowed_hosts=[
            "gateway.example.org",
            "keys.example.org",
            "10.0.0.5",
            "2001:db8::1",
        ],
        network__gateway_url="https://gateway.example.org",
    )
    assert host_allowed(policy, "gateway.example.org")
    assert host_allowed(policy, "GATEWAY.Example.ORG")
    assert host_allowed(policy, "Keys.example.org")
    assert host_allowed(policy, "10.0.0.5")
    assert host_allowed(policy, "[2001:db8::1]")
    assert host_allowed(policy, "2001:0db8:0:0:0:0:0:1")
    for host in (
        "evil.gateway.example.org",
        "gateway.example.org.",
        "gateway.example.org.evil.com",
        "example.org",
        "*.example.org",
        "gateway.example.org:443",
        "\u212aeys.example.org",  # KELVIN SIGN lowercases to 'k'
        "10.0.0.50",
        "",
    ):
        assert not host_allowed(policy, host), host


def test_NW1_spki_pins_are_digests() -> None:
    pins = spki_pins(make())
    assert pins == tuple(base64.b64decode(p) for p in PINS)
    assert all(len(p) == 32 for p in pins)


def test_UI2_ui_permissions_follow_policy() -> None:
    locked = ui_permissions(make())
    assert not locked.clipboard_copy_out and not locked.printing
    assert locked.screen_capture_exclusion and locked.watermark and locked.blur_on_lock
    opened = ui_permissions(
        make(ui__clipboard_copy_out=True, ui__printing=True, ui__watermark=False)
    )
    assert opened.clipboard_copy_out and opened.printing and not opened.watermark


def test_PO2_policy_mode_outside_the_window_is_restricted() -> None:
    policy = make()
    assert policy_mode(policy, NOW) is PolicyMode.NORMAL
    assert policy_mode(policy, policy.expires_at) == "restricted"
    assert policy_mode(policy, policy.expires_at - timedelta(seconds=1)) == "normal"
    assert policy_mode(policy, policy.not_before - timedelta(seconds=1)) is PolicyMode.RESTRICTED


def test_os_version_minimum() -> None:
    assert os_version_ok(make(), "anything")
    policy = make(device__min_os_version="10.0.19045")
    assert os_version_ok(policy, "10.0.19045")
    assert os_version_ok(policy, "10.0.22631.1")
    assert os_version_ok(policy, "11")
    assert not os_version_ok(policy, "10.0.19044")
    assert not os_version_ok(policy, "10")
    assert not os_version_ok(policy, "unknown")


def test_clock_skew_backlog_and_break_glass() -> None:
    policy = make(
        time__max_clock_skew_seconds=60,
        audit__max_unsent_events=100,
        session__break_glass_minutes=10,
    )
    assert clock_skew_ok(policy, NOW + timedelta(seconds=60), NOW)
    assert not clock_skew_ok(policy, NOW - timedelta(seconds=61), NOW)
    assert not audit_backlog_blocks_access(policy, 99)
    assert audit_backlog_blocks_access(policy, 100)
    assert break_glass_expires_at(policy, NOW) == NOW + timedelta(minutes=10)


def test_issue13_the_fhir_base_is_the_gateways_unless_the_policy_names_one() -> None:
    """network.fhir_base_url: a data plane with any path, or <gateway_url>/fhir by default."""
    gateway = make(network__gateway_url="https://gateway.example.org/")
    assert fhir_base_url(gateway) == "https://gateway.example.org/fhir"
    named = make(
        network__gateway_url="https://gateway.example.org",
        network__allowed_hosts=["gateway.example.org", "fhir.example.org"],
        network__fhir_base_url="https://fhir.example.org/fhir/R4/",
    )
    assert fhir_base_url(named) == "https://fhir.example.org/fhir/R4"
