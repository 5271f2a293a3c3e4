"""The readiness check before a prison visit: will this laptop still work inside, offline?

Guarantees:
- ``assess`` is pure (no I/O, the clock comes in as ``now``): from the session's status, the
  offline grace as it stands now, the last successful sync time and the planned visit length it
  returns one ``Check`` per question — policy valid for the visit, offline grace left, cache
  fresh, audit uploaded, work sent — each with a verdict and, when not ready, what to do.
  Nobody should find out inside.
- A check is never "ready" on missing information (no sync ever → cache not fresh).
- ``gather`` only reads (the session's status, an ``offline_preview`` that persists nothing,
  the last server time anchor); it runs on the UI's executor.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from client.core.humanize import format_moment, format_span
from client.core.session import Session, SessionStatus
from client.core.sign_in import offline_preview
from policy import decisions
from policy.decisions import OfflineKind

CACHE_FRESH: Final = dt.timedelta(hours=24)  # older records may miss yesterday's changes


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    ready: bool
    verdict: str
    todo: str  # empty when ready


@dataclass(frozen=True)
class SyncFacts:
    """What the sync panel and the readiness check are computed from."""

    status: SessionStatus
    offline: decisions.OfflineState
    last_sync: dt.datetime | None


def gather(session: Session) -> SyncFacts:
    """Status, offline grace as it stands now, last successful sync."""
    status = session.status()
    preview = offline_preview(session.device)
    return SyncFacts(status, preview.state, session.device.time_state().last_server_anchor)


def _restarts(offline: decisions.OfflineState) -> str:
    """Restarts count too (TM-3): time switched off cannot always be measured."""
    if offline.too_many_restarts:
        return "; but it was restarted too often since the last sync"
    if offline.restarts_left is None:
        return ""
    if offline.restarts_left == 0:
        return ", or at the next restart"
    return f", or after {offline.restarts_left + 1} more restarts"


def assess(
    status: SessionStatus,
    offline: decisions.OfflineState,
    last_sync: dt.datetime | None,
    now: dt.datetime,
    visit: dt.timedelta,
) -> list[Check]:
    """One check per question a clinician should answer before going in."""
    checks: list[Check] = []
    policy_left = status.policy_expires_at - now
    checks.append(
        Check(
            "policy",
            "Security policy valid for the visit",
            policy_left >= visit,
            f"The policy (version {status.policy_version}) is valid for "
            f"{format_span(policy_left)} more."
            if policy_left > dt.timedelta(0)
            else "The policy has expired.",
            ""
            if policy_left >= visit
            else "Sync now to receive the new policy; if none arrives, call IT before the visit.",
        )
    )
    grace_ok = offline.kind is OfflineKind.OK and offline.until_block >= visit
    checks.append(
        Check(
            "grace",
            "Offline time left",
            grace_ok,
            f"{format_span(offline.until_block)} of offline use left before records are "
            f"blocked until the next sync{_restarts(offline)}.",
            ""
            if grace_ok
            else "Sync now, while the network is here: that resets the offline time.",
        )
    )
    fresh = last_sync is not None and now - last_sync <= CACHE_FRESH
    checks.append(
        Check(
            "cache",
            "Records up to date",
            fresh,
            "No successful sync yet on this laptop."
            if last_sync is None
            else f"Last successful sync: {format_moment(last_sync)} "
            f"({format_span(now - last_sync)} ago).",
            "" if fresh else "Sync now so the records you take in are current.",
        )
    )
    audit_ok = status.audit_unsent == 0
    checks.append(
        Check(
            "audit",
            "Audit log uploaded",
            audit_ok,
            "Every audit entry has reached the gateway."
            if audit_ok
            else f"{status.audit_unsent} audit entries are not yet uploaded.",
            "" if audit_ok else "Sync now; the audit log uploads with it.",
        )
    )
    checks.append(_work_check(status))
    return checks


def _work_check(status: SessionStatus) -> Check:
    """Your work sent: a note the gateway refused is named with why and what to do — never
    "sync now" for a refusal another sync cannot fix; a consultation kept as a draft is typed
    work that is not in the record, so it is never "all work is on the gateway"."""
    check = _sent_check(status)
    if not status.drafts:
        return check
    kept = (
        f"{status.drafts} consultation(s) you started are kept as drafts on this laptop and "
        "are not in the record."
    )
    todo = "Open the patient to finish and save each draft, or discard it."
    if check.ready:
        return Check("work", "Your work sent", False, kept, todo)
    return Check("work", "Your work sent", False, f"{check.verdict} {kept}", f"{check.todo} {todo}")


def _sent_check(status: SessionStatus) -> Check:
    sent_ok = status.unsent_items == 0 and status.conflicts == 0
    if sent_ok:
        return Check("work", "Your work sent", True, "All work is on the gateway.", "")
    counts = f"{status.unsent_items} item(s) not yet sent, {status.conflicts} conflict(s)."
    if not status.refused:
        return Check(
            "work",
            "Your work sent",
            False,
            counts,
            "Sync now, and resolve any conflict, so colleagues see your latest notes.",
        )
    verdict = " ".join(refusal.sentence for refusal in status.refused)
    todos = list(dict.fromkeys(refusal.todo for refusal in status.refused))
    others = status.unsent_items - sum(refusal.items for refusal in status.refused)
    if others > 0 or status.conflicts:
        verdict += f" In all: {counts}"
        todos.append("Sync now for the rest of your work, and resolve any conflict.")
    return Check("work", "Your work sent", False, verdict, " ".join(todos))
