"""What the sync panel and the readiness check say: pure functions over real result types."""

from __future__ import annotations

import datetime as dt

from client.core.session import SessionStatus
from client.ui.error_boundary import explain
from client.ui.readiness import assess
from client.ui.sync_panel import (
    SyncOutcome,
    describe_connection,
    describe_outcome,
    describe_progress,
    outcome_counts,
)
from policy.decisions import OfflineKind, OfflineState
from sync.device.engine import Progress, SyncResult
from sync.device.enrolment import EnrolmentError
from sync.device.transport import TransportError

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


def verdicts(checks: list) -> dict[str, bool]:  # type: ignore[type-arg]
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


def test_outcome_words_say_what_happened_and_that_nothing_is_lost() -> None:
    ok = SyncOutcome(SyncResult(pulled=1200, pushed=3, duration_s=1.5), None, NOW)
    assert "1,200 received" in describe_outcome(ok) and "3 sent" in describe_outcome(ok)
    assert describe_connection(ok).startswith("Online")
    offline = SyncOutcome(SyncResult(error="connection"), None, NOW)
    words = describe_outcome(offline)
    assert "cannot be reached" in words and "Nothing you saved has been lost" in words
    assert describe_connection(offline).startswith("Offline")
    cancelled = SyncOutcome(SyncResult(pulled=10, error="cancelled"), None, NOW)
    assert "cancelled" in describe_outcome(cancelled) and "10 received" in describe_outcome(
        cancelled
    )
    failed = SyncOutcome(None, TransportError("pin_mismatch", "x"), NOW)
    assert "call IT" in describe_outcome(failed) and failed.reason == "pin_mismatch"
    assert describe_connection(None).startswith("Not known")
    assert outcome_counts(ok)["pulled"] == 1200 and outcome_counts(failed)["ok"] is False
    lock = SyncResult()
    lock.control["lock_requested"] = True
    assert SyncOutcome(lock, None, NOW).lock_requested


def test_progress_words_carry_phase_items_and_bytes() -> None:
    words = describe_progress(Progress("pull", "Observation", 1234, 2_500_000))
    assert words == "Receiving records (Observation): 1,234 items, 2.5 MB received"


def test_network_and_gateway_refusals_are_explained_without_raw_text() -> None:
    pinned = explain(TransportError("pin_mismatch", "raw detail with <b>html</b>"))
    assert pinned.reason == "pin_mismatch" and "raw detail" not in pinned.message
    used = explain(EnrolmentError("token_used", "the server said something"))
    assert "already been used" in used.message and "Nothing you saved" in used.message
    odd = explain(EnrolmentError("http_500", "x" * 1000))
    assert len(odd.message) < 400
