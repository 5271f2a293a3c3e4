"""What the sync panel says: pure functions over real result types (the readiness verdicts are
tested without Qt in tests/client/test_readiness.py)."""

from __future__ import annotations

import datetime as dt

from client.ui.error_boundary import explain
from client.ui.sync_panel import (
    SyncOutcome,
    describe_connection,
    describe_outcome,
    describe_progress,
    outcome_counts,
)
from sync.device.engine import Progress, SyncResult
from sync.device.enrolment import EnrolmentError
from sync.device.transport import TransportError

NOW = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)


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
