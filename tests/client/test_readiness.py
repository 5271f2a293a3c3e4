"""The readiness check before a visit, in the core and without Qt: every gap is named with
what to do, nothing is "ready" on missing information, and the facts come from a real device."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from client.core.readiness import CACHE_FRESH, Check, assess, gather
from client.core.session import Session, SessionStatus
from client.core.trusted_time import anchor
from policy.decisions import OfflineKind, OfflineState
from tests.support.device import CLINICIAN, provision

NOW = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def status(**changes: object) -> SessionStatus:
    values: dict[str, object] = {
        "user_id": "nurse",
        "role": "clinician",
        "site": "hmp-brixton",
        "policy_version": 3,
        "policy_expires_at": NOW + dt.timedelta(days=30),
        "policy_mode": "normal",
        "offline": OfflineState(OfflineKind.OK, 40 * HOUR, 70 * HOUR, 700 * HOUR),
        "unsent_items": 0,
        "conflicts": 0,
        "audit_unsent": 0,
        "break_glass": (),
    }
    values.update(changes)
    return SessionStatus(**values)  # type: ignore[arg-type]


def grace(hours_left: float, kind: OfflineKind = OfflineKind.OK) -> OfflineState:
    return OfflineState(kind, dt.timedelta(0), dt.timedelta(hours=hours_left), 500 * HOUR)


def verdicts(checks: list[Check]) -> dict[str, bool]:
    return {c.key: c.ready for c in checks}


def test_everything_fresh_is_ready_for_a_one_day_visit() -> None:
    checks = assess(status(), grace(70), NOW - HOUR, NOW, dt.timedelta(days=1))
    assert verdicts(checks) == {
        "policy": True,
        "grace": True,
        "cache": True,
        "audit": True,
        "work": True,
    }
    assert all(c.todo == "" for c in checks)


def test_each_gap_is_named_with_what_to_do() -> None:
    checks = assess(
        status(policy_expires_at=NOW + 12 * HOUR, audit_unsent=4, unsent_items=2, conflicts=1),
        grace(10, OfflineKind.WARN),
        NOW - dt.timedelta(days=3),
        NOW,
        dt.timedelta(days=1),
    )
    assert not any(verdicts(checks).values())
    by_key = {c.key: c for c in checks}
    assert "12 h" in by_key["policy"].verdict and "Sync now" in by_key["policy"].todo
    assert "4 audit entries" in by_key["audit"].verdict
    assert "2 item(s) not yet sent, 1 conflict(s)" in by_key["work"].verdict
    assert all(c.todo for c in checks)


def test_no_sync_ever_is_never_fresh_and_a_long_visit_needs_more_grace() -> None:
    checks = verdicts(assess(status(), grace(30), None, NOW, dt.timedelta(days=2)))
    assert checks["cache"] is False and checks["grace"] is False
    assert checks["policy"] is True


def test_facts_come_from_the_device_and_a_sync_makes_the_cache_fresh(tmp_path: Path) -> None:
    td = provision(tmp_path / "data")
    session = Session.login(td.device, *CLINICIAN)
    before = gather(session)
    assert before.last_sync is None  # provisioned offline: never synced
    assert before.offline.kind is OfflineKind.OK and before.status.user_id == CLINICIAN[0]
    now = td.clocks.now()
    cache = {c.key: c for c in assess(before.status, before.offline, None, now, HOUR)}["cache"]
    assert not cache.ready and "No successful sync yet" in cache.verdict
    td.clocks.advance(HOUR)
    device = td.device  # a sync anchors trusted time (what run_sync's time step does)
    device.save_time_state(anchor(device.time_state(), td.clocks.now(), td.clocks.reading()))
    after = gather(session)
    assert after.last_sync == td.clocks.now()
    checks = assess(after.status, after.offline, after.last_sync, td.clocks.now(), HOUR)
    assert {c.key: c.ready for c in checks}["cache"] is True
    later = td.clocks.now() + CACHE_FRESH + HOUR
    stale = assess(after.status, after.offline, after.last_sync, later, HOUR)
    assert {c.key: c.ready for c in stale}["cache"] is False
    session.lock()


def test_TM3_the_grace_left_names_the_restarts_left_honestly() -> None:
    """Time switched off may go uncounted, so the restarts left are part of the answer."""
    one_left = OfflineState(OfflineKind.OK, 40 * HOUR, 70 * HOUR, 700 * HOUR, restarts_left=1)
    grace_check = next(c for c in assess(status(), one_left, NOW, NOW, HOUR) if c.key == "grace")
    assert "or after 2 more restarts" in grace_check.verdict
    none_left = OfflineState(OfflineKind.OK, 40 * HOUR, 70 * HOUR, 700 * HOUR, restarts_left=0)
    grace_check = next(c for c in assess(status(), none_left, NOW, NOW, HOUR) if c.key == "grace")
    assert "or at the next restart" in grace_check.verdict
    too_many = OfflineState(
        OfflineKind.BLOCKED_UNTIL_SYNC,
        40 * HOUR,
        70 * HOUR,
        700 * HOUR,
        restarts_left=0,
        too_many_restarts=True,
    )
    grace_check = next(c for c in assess(status(), too_many, NOW, NOW, HOUR) if c.key == "grace")
    assert not grace_check.ready and "restarted too often" in grace_check.verdict
