"""The readiness check before a prison visit: will this laptop still work inside, offline?

Guarantees:
- ``assess`` is pure (no Qt, no I/O): from the session's status, the offline grace as it stands
  now, the last successful sync time and the planned visit length it returns one ``Check`` per
  question — policy valid for the visit, offline grace left, cache fresh, audit uploaded, work
  sent — each with a verdict and, when not ready, what to do. Nobody should find out inside.
- A check is never "ready" on missing information (no sync ever → cache not fresh).
- ``ReadinessPanel`` shows every check as plain text with a ✔/✖ word, never colour alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from client.core.session import SessionStatus
from client.ui.qt import QGridLayout, QLabel, QVBoxLayout, QWidget
from client.ui.widgets import data_label, format_moment, format_span, set_role
from policy import decisions
from policy.decisions import OfflineKind

CACHE_FRESH = dt.timedelta(hours=24)  # records older than a day may miss yesterday's changes


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    ready: bool
    verdict: str
    todo: str  # empty when ready


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
            "blocked until the next sync.",
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
    sent_ok = status.unsent_items == 0 and status.conflicts == 0
    checks.append(
        Check(
            "work",
            "Your work sent",
            sent_ok,
            "All work is on the gateway."
            if sent_ok
            else f"{status.unsent_items} item(s) not yet sent, {status.conflicts} conflict(s).",
            ""
            if sent_ok
            else "Sync now, and resolve any conflict, so colleagues see your latest notes.",
        )
    )
    return checks


class ReadinessPanel(QWidget):
    """The checks as a grid of plain-text rows: ✔/✖, title, verdict, what to do."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("readiness_panel")
        self.setAccessibleName("Readiness check before a visit")
        self.summary = data_label("Readiness not checked yet.", role="hint", wrap=True)
        self.summary.setAccessibleName("Readiness summary")
        self.grid = QGridLayout()
        self.grid.setColumnStretch(2, 1)
        self.labels: dict[str, tuple[QLabel, QLabel]] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(data_label("Ready for a visit?", role="section"))
        layout.addWidget(self.summary)
        layout.addLayout(self.grid)

    def show_checks(self, checks: list[Check]) -> None:
        for row, check in enumerate(checks):
            pair = self.labels.get(check.key)
            if pair is None:
                mark, text = data_label(), data_label(wrap=True)
                self.grid.addWidget(mark, row, 0)
                self.grid.addWidget(data_label(check.title), row, 1)
                self.grid.addWidget(text, row, 2)
                self.labels[check.key] = (mark, text)
                pair = (mark, text)
            mark, text = pair
            mark.setText("✔ Ready" if check.ready else "✖ Not ready")
            mark.setAccessibleName(f"{check.title}: {'ready' if check.ready else 'not ready'}")
            set_role(mark, "ok" if check.ready else "error")
            text.setText(check.verdict + (f"\nWhat to do: {check.todo}" if check.todo else ""))
        failing = [c for c in checks if not c.ready]
        if failing:
            self.summary.setText(
                f"Not ready: {len(failing)} of {len(checks)} checks need attention before you go "
                "in (there is no network inside)."
            )
            set_role(self.summary, "error")
        else:
            self.summary.setText("Ready: this laptop will work offline for the visit.")
            set_role(self.summary, "ok")
