"""Signing in from the login screen, in the core and without Qt: the offline preview persists
nothing, a person with no key slot on an enrolled laptop is sent to the online first sign-in
before any attempt is counted, and a failed follow-up step never leaves a vault open."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from client.core.accounts import LoginRefused
from client.core.sign_in import FirstSignInNeeded, offline_preview, prepared, sign_in
from policy.decisions import OfflineKind
from tests.support.device import CLINICIAN, SITE, provision


def _header_bytes(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir()) if p.is_file()}


def test_the_offline_preview_reads_the_grace_left_and_writes_nothing(tmp_path: Path) -> None:
    td = provision(tmp_path / "d")
    before = _header_bytes(td.data_dir)
    fresh = offline_preview(td.device)
    assert fresh.site == SITE and fresh.state.kind is OfflineKind.OK
    td.clocks.advance(dt.timedelta(days=400))  # far past every offline threshold
    late = offline_preview(td.device)
    assert late.state.kind is not OfflineKind.OK and late.state.until_block == dt.timedelta(0)
    assert _header_bytes(td.data_dir) == before  # no anchor moved, no wipe, no attempt counted


def test_no_key_slot_on_an_enrolled_laptop_means_the_online_first_sign_in(
    tmp_path: Path,
) -> None:
    td = provision(tmp_path / "d")
    with pytest.raises(LoginRefused):  # not enrolled: an ordinary refused login, counted
        sign_in(td.device, "dr.new", "some password here")
    counted = td.device.header.counters.failed_attempts
    td.device.profile = dataclasses.replace(td.device.profile, enrolment={"gateway": "x"})
    with pytest.raises(FirstSignInNeeded) as caught:
        sign_in(td.device, "dr.other", "some password here")
    assert caught.value.reason == "first_sign_in_needed"
    assert td.device.header.counters.failed_attempts == counted  # nothing tried, nothing counted
    td.clocks.advance(dt.timedelta(minutes=5))  # past the throttle of the counted attempt
    session = sign_in(td.device, *CLINICIAN)  # a user with a slot signs in offline as usual
    assert session.user_id == CLINICIAN[0]
    session.lock()


def test_a_failing_follow_up_step_locks_the_session(tmp_path: Path) -> None:
    td = provision(tmp_path / "d")
    session = sign_in(td.device, *CLINICIAN)
    assert prepared(session, None) == (session, None)
    assert prepared(session, lambda s: s.user_id) == (session, CLINICIAN[0])

    def broken(_session: object) -> object:
        raise OSError("sysfs unreadable")

    with pytest.raises(OSError):
        prepared(session, broken)
    assert session.is_locked
