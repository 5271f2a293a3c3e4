"""TM-3: reboots do not reset the offline clock.

A real provisioned device (real header, real policy, real SQLCipher); only the wall clock and
the boot clock with its boot id are faked (``FakeClocks``: outside the product). A "reboot" is a
new boot id and a boot clock that starts again from zero; "switched off for 48 h" is 48 h that
neither clock shows, because the attacker sets the wall clock at each boot.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path

import pytest

from client.core.accounts import LoginRefused
from client.core.session import Session
from client.core.sign_in import offline_preview
from client.core.trusted_time import anchor
from policy.errors import PolicyRefused
from policy.schema import validate_settings
from tests.support.device import CLINICIAN, ProvisionedDevice, policy_envelope, provision

SESSION = dt.timedelta(hours=1)  # what the attacker reads on each boot
UP_AT_SIGN_IN = 90.0  # seconds the laptop has been up when the app signs in


def _blocks_at_two_hours(tmp_path: Path, **settings: object) -> ProvisionedDevice:
    envelope = policy_envelope(
        offline__warn_after_hours=1, offline__block_after_hours=2, **settings
    )
    td = provision(tmp_path / "laptop", policy=envelope)
    # The laptop synced (trusted server time) just before it was taken.
    device = td.device
    device.save_time_state(anchor(device.time_state(), td.clocks.now(), td.clocks.reading()))
    return td


def _reboot(td: ProvisionedDevice, n: int, *, ahead_of_high_water: dt.timedelta) -> None:
    """Switched off for 48 h (unseen), booted, up ``UP_AT_SIGN_IN`` s, the wall clock set to
    the highest time the device has seen plus ``ahead_of_high_water``."""
    high = td.device.time_state().wall_high_water
    assert high is not None
    td.clocks.boot_id = f"boot-after-48h-{n}"
    td.clocks.boot = UP_AT_SIGN_IN
    td.clocks.wall = high + ahead_of_high_water


def _use_for_a_while(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    td.clocks.advance(SESSION)
    session.lock()


def test_TM3_three_reboots_48h_apart_with_the_clock_just_past_the_high_water_mark_block(
    tmp_path: Path,
) -> None:
    """The issue's probe: before TM-3 all three sign-ins were allowed, with 0.03 h counted
    after 144 h really offline, under a policy that blocks at 2 h."""
    td = _blocks_at_two_hours(tmp_path)
    refused: list[str] = []
    for n in range(3):
        _reboot(td, n, ahead_of_high_water=dt.timedelta(seconds=1))
        try:
            _use_for_a_while(td)
        except LoginRefused as caught:
            refused.append(caught.reason)
    assert refused, "sign-in stayed allowed after three reboots 48 h apart"
    assert set(refused) <= {"offline_too_long", "offline_restarts", "clock_tamper"}
    # Each boot's uptime and each session counted: well over the 2 h, whatever the clock said.
    assert td.device.time_state().offline_elapsed_seconds >= 2 * 3600
    # The sync-only sign-in still works: the laptop can reach the gateway that lifts the block.
    Session.login(td.device, *CLINICIAN, for_sync=True).lock()


def test_TM3_the_clock_set_at_each_boot_to_just_past_the_high_water_mark_is_tamper(
    tmp_path: Path,
) -> None:
    """Up for ten minutes but the clock says it booted before it was last seen running."""
    td = _blocks_at_two_hours(tmp_path)
    _use_for_a_while(td)
    high = td.device.time_state().wall_high_water
    assert high is not None
    td.clocks.boot_id, td.clocks.boot = "boot-b", 600.0
    td.clocks.wall = high + dt.timedelta(seconds=1)
    with pytest.raises(LoginRefused) as caught:
        Session.login(td.device, *CLINICIAN)
    assert caught.value.reason == "clock_tamper"
    assert td.device.header.counters.pending_audit_events[-1]["event"] == "clock_tamper"


def test_TM3_a_careful_clock_still_pays_each_boots_uptime_and_session(tmp_path: Path) -> None:
    """The clock set to the high-water mark plus the uptime (not tamper) and restarts allowed
    generously: the sessions' own time still adds up to the 2 h block."""
    td = _blocks_at_two_hours(tmp_path, offline__max_boots=50)
    with pytest.raises(LoginRefused) as caught:
        for n in range(3):
            _reboot(td, n, ahead_of_high_water=dt.timedelta(seconds=UP_AT_SIGN_IN + 1))
            _use_for_a_while(td)
    assert caught.value.reason == "offline_too_long"
    assert n == 2  # the third boot: 2 h of sessions were counted before it


def test_TM3_the_policy_caps_restarts_while_offline_and_shows_what_is_left(
    tmp_path: Path,
) -> None:
    td = _blocks_at_two_hours(tmp_path, offline__max_boots=1)
    assert offline_preview(td.device).state.restarts_left == 1
    _reboot(td, 0, ahead_of_high_water=dt.timedelta(seconds=UP_AT_SIGN_IN + 1))
    preview = offline_preview(td.device)
    assert preview.state.restarts_left == 0 and not preview.state.too_many_restarts
    Session.login(td.device, *CLINICIAN).lock()
    _reboot(td, 1, ahead_of_high_water=dt.timedelta(seconds=UP_AT_SIGN_IN + 1))
    assert offline_preview(td.device).state.too_many_restarts
    with pytest.raises(LoginRefused) as caught:
        Session.login(td.device, *CLINICIAN)
    assert caught.value.reason == "offline_restarts"
    assert "restarted too many times" in caught.value.message
    # A sync (a trusted server time) gives the restarts back.
    device = td.device
    device.save_time_state(anchor(device.time_state(), td.clocks.now(), td.clocks.reading()))
    assert offline_preview(td.device).state.restarts_left == 1
    Session.login(td.device, *CLINICIAN).lock()


def test_TM3_the_restart_cap_has_a_safe_default_and_a_checked_range() -> None:
    pins = [base64.b64encode(hashlib.sha256(s).digest()).decode() for s in (b"a", b"b")]
    base = {
        "network.gateway_url": "https://127.0.0.1/",
        "network.allowed_hosts": ["127.0.0.1"],
        "network.spki_pins": pins,
    }
    assert validate_settings(base)["offline.max_boots"] == 2
    for bad in (-1, 101, True, "3"):
        with pytest.raises(PolicyRefused):
            validate_settings({**base, "offline.max_boots": bad})
