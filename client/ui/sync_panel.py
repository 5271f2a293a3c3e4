"""Sync: the controller that runs it on its own worker, and the panel that shows it.

Guarantees:
- ``SyncController`` runs ``client.core.sync_runner.run_sync`` on its OWN single-worker
  ``Executor`` (not the database executor), so searching and reading charts go on during a
  sync and the window never freezes. At most one sync runs at a time.
- Progress (phase, items, bytes) crosses from the sync worker to the GUI thread only through a
  queued Qt signal; no widget is touched from the worker.
- ``cancel()`` sets the sync's cancel event; the engine stops between pages, keeping what it
  received. ``when_idle(fn)`` runs ``fn`` on the GUI thread once no sync is running (the lock
  uses it: the session is locked only after the sync has stopped).
- Every finished sync (success, failure or cancel) is reported once through ``finished`` with a
  ``SyncOutcome``; exceptions become outcomes too (explained, never a traceback).
- The panel shows the status (connection as last known, last successful sync, unsent items,
  conflicts, offline grace left), "Sync now" with a progress bar and a result summary, and the
  readiness check (facts and verdicts from ``client.core.readiness``); every text is plain.
- The result is green only when everything was sent and nothing was refused: a sync in which
  the gateway refused a note is amber and names each refused note, why and what to do
  (``client.core.push_refusals``); a sync in which this laptop refused a policy update (PO-3:
  signature, rollback, schema…) is amber and says so in a sentence with what to do
  (``client.core.sync_failures.policy_refusal_sentence``); a failed sync is red.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.core.humanize import format_moment
from client.core.push_refusals import Refusal
from client.core.readiness import SyncFacts, assess, gather
from client.core.session import Session
from client.core.sync_failures import (
    is_connection_failure,
    policy_refusal_sentence,
    sync_failure_sentence,
)
from client.core.sync_runner import run_sync
from client.ui.error_boundary import explain
from client.ui.executor import Executor
from client.ui.login import describe_offline
from client.ui.qt import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QObject,
    QProgressBar,
    QSpinBox,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.readiness import ReadinessPanel
from client.ui.runner import Runner
from client.ui.widgets import button, data_label, set_role
from sync.device.engine import Progress, SyncResult

SyncFunction = Callable[..., SyncResult]
PHASES = {
    "push": "Sending your work",
    "pull": "Receiving records",
    "control": "Checking policy, time, audit and commands",
    "done": "Finishing",
}


@dataclass(frozen=True)
class SyncOutcome:
    result: SyncResult | None
    error: BaseException | None
    finished_at: dt.datetime

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None and self.result.ok

    @property
    def reason(self) -> str | None:
        if self.error is not None:
            return explain(self.error).reason
        return None if self.result is None else self.result.error

    @property
    def lock_requested(self) -> bool:
        return bool(self.result is not None and self.result.control.get("lock_requested"))

    @property
    def wiped(self) -> bool:
        commands = self.result.control.get("commands") if self.result is not None else None
        return isinstance(commands, list) and "wipe" in commands


def describe_progress(progress: Progress) -> str:
    phase = PHASES.get(progress.phase, progress.phase)
    what = f" ({progress.detail})" if progress.detail else ""
    return f"{phase}{what}: {progress.items:,} items, {progress.bytes / 1_000_000:.1f} MB received"


def failure_sentence(outcome: SyncOutcome) -> str:
    """What went wrong and what to do, as one plain sentence (UI-4): never a reason code."""
    if outcome.error is not None:
        explained = explain(outcome.error)
        if explained.reason == "bug":
            return sync_failure_sentence("bug")
        return explained.message.split("\n\n")[0]
    return sync_failure_sentence(outcome.reason)


def refused_policy(result: SyncResult | None) -> str | None:
    """The reason code of a policy update refused during the sync (PO-3), if one was."""
    state = result.control.get("policy") if result is not None else None
    if isinstance(state, str) and state.startswith("refused:"):
        return state.removeprefix("refused:")
    return None


def describe_outcome(outcome: SyncOutcome, refused: tuple[Refusal, ...] = ()) -> str:
    """The result summary: counts on success, with each refused note (``refused``: from the
    status read after the sync) named; on failure what happened and that nothing is lost."""
    when = format_moment(outcome.finished_at)
    result = outcome.result
    if outcome.ok and result is not None:
        text = (
            f"Sync finished {when} in {result.duration_s:.1f} s: {result.pulled:,} received "
            f"({result.deleted:,} removed), {result.pushed:,} sent, {result.conflicts} "
            f"conflict(s), {result.quarantined} set aside as invalid."
        )
        if result.push_errors:
            text += (
                f" {result.push_errors} item(s) not accepted by the gateway, kept on this laptop."
            )
        for refusal in refused:
            text += f"\n{refusal.sentence} What to do: {refusal.todo}"
        policy = refused_policy(result)
        if policy is not None:
            text += f"\n{policy_refusal_sentence(policy)}"
        return text
    if outcome.error is not None:
        return f"Sync did not run {when}: {explain(outcome.error).message}"
    why = failure_sentence(outcome)  # the code stays in the audit entry (UI-4)
    counts = ""
    if result is not None:
        counts = f" Before it stopped: {result.pulled:,} received, {result.pushed:,} sent."
    return (
        f"Sync stopped {when}. {why}{counts} Nothing you saved has been lost: unsent work stays "
        "on this laptop and goes with the next sync."
    )


def outcome_role(outcome: SyncOutcome, refused: tuple[Refusal, ...] = ()) -> str:
    """The result's colour: "ok" (green) only when nothing was refused, "warning" (amber) when
    the sync finished but the gateway refused work, "error" (red) when it did not finish."""
    if not outcome.ok:
        return "error"
    if refused or (outcome.result is not None and outcome.result.push_errors):
        return "warning"
    if refused_policy(outcome.result) is not None:
        return "warning"  # a refused policy update is not "all well" (PO-3)
    return "ok"


def describe_connection(outcome: SyncOutcome | None) -> str:
    if outcome is None:
        return "Not known yet: no sync since you signed in."
    when = format_moment(outcome.finished_at)
    if outcome.ok:
        return f"Online: the gateway answered at {when}."
    if is_connection_failure(outcome.reason):
        return f"Offline: the gateway could not be reached at {when}."
    return f"The gateway was reached at {when}, but the sync did not finish."


class SyncController(QObject):
    """Runs one sync at a time on its own worker; reports progress and the outcome."""

    started = Signal()
    progressed = Signal(object)  # Progress, emitted on the worker; queued to the GUI thread
    finished = Signal(object)  # SyncOutcome

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        sync: SyncFunction = run_sync,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__(parent)
        self.executor = Executor("gatehouse-sync", self)
        self._sync = sync
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._cancel: threading.Event | None = None
        self._when_idle: list[Callable[[], None]] = []
        self.last: SyncOutcome | None = None

    @property
    def running(self) -> bool:
        return self._cancel is not None

    def start(self, session: Session) -> bool:
        """Start a sync for ``session``; False when one is already running."""
        if self.running:
            return False
        cancel = threading.Event()
        self._cancel = cancel
        sync, report = self._sync, self.progressed.emit

        def work() -> SyncResult:
            return sync(session, progress=report, cancel=cancel)

        self.started.emit()
        self.executor.submit(work, self._succeeded, self._failed)
        return True

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def when_idle(self, work: Callable[[], None]) -> None:
        """Run ``work`` now if no sync runs, else right after the running one has stopped."""
        if self.running:
            self._when_idle.append(work)
        else:
            work()

    def _succeeded(self, result: SyncResult) -> None:
        self._finish(SyncOutcome(result, None, self._clock()))

    def _failed(self, error: BaseException) -> None:
        self._finish(SyncOutcome(None, error, self._clock()))

    def _finish(self, outcome: SyncOutcome) -> None:
        self._cancel = None
        self.last = outcome
        waiting, self._when_idle = self._when_idle, []
        for work in waiting:
            work()
        self.finished.emit(outcome)

    def shutdown(self) -> None:
        self.cancel()
        self.executor.shutdown(wait=True)


class SyncPanel(QWidget):
    """Status, "Sync now" with progress and result, and the readiness check."""

    conflicts_requested = Signal()

    def __init__(
        self,
        session: Session,
        runner: Runner,
        controller: SyncController,
        clock: Callable[[], dt.datetime],
    ) -> None:
        super().__init__()
        self.setObjectName("sync_panel")
        self.setAccessibleName("Sync and readiness")
        self._session = session
        self._runner = runner
        self._controller = controller
        self._clock = clock

        self.connection = data_label(wrap=True)
        self.last_sync = data_label(wrap=True)
        self.unsent = data_label(wrap=True)
        self.grace = data_label(wrap=True)
        for label, name in (
            (self.connection, "Connection"),
            (self.last_sync, "Last successful sync"),
            (self.unsent, "Unsent work"),
            (self.grace, "Offline time left"),
        ):
            label.setAccessibleName(name)
        form = QFormLayout()
        form.addRow(data_label("Connection:"), self.connection)
        form.addRow(data_label("Last successful sync:"), self.last_sync)
        form.addRow(data_label("Unsent work:"), self.unsent)
        form.addRow(data_label("Offline time left:"), self.grace)

        self.sync_now = button("&Sync now", "Sync now")
        self.cancel = button("Cancel sync", "Cancel sync")
        self.cancel.setEnabled(False)
        self.resolve = button("Resolve &conflicts…", "Resolve sync conflicts")
        self.resolve.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Sync progress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.phase = data_label("", role="hint", wrap=True)
        self.phase.setAccessibleName("Sync phase")
        self.result = data_label("", wrap=True)
        self.result.setAccessibleName("Sync result")
        self.visit_days = QSpinBox()
        self.visit_days.setRange(1, 14)
        self.visit_days.setValue(1)
        self.visit_days.setSuffix(" day(s)")
        self.visit_days.setAccessibleName("Planned visit length in days")
        self.readiness = ReadinessPanel()

        buttons = QHBoxLayout()
        buttons.addWidget(self.sync_now)
        buttons.addWidget(self.cancel)
        buttons.addWidget(self.resolve)
        buttons.addStretch(1)
        visit = QHBoxLayout()
        visit_label = QLabel("Planned &visit length:")
        visit_label.setBuddy(self.visit_days)
        visit.addWidget(visit_label)
        visit.addWidget(self.visit_days)
        visit.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(data_label("Sync with the gateway", role="title"))
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.phase)
        layout.addWidget(self.result)
        layout.addLayout(visit)
        layout.addWidget(self.readiness)
        layout.addStretch(1)

        self.sync_now.clicked.connect(self.start)
        self.cancel.clicked.connect(controller.cancel)
        self.resolve.clicked.connect(self.conflicts_requested)
        self.visit_days.valueChanged.connect(lambda _v: self.refresh())
        controller.started.connect(self._started)
        controller.progressed.connect(self._progressed)
        controller.finished.connect(self._finished)
        self.facts: SyncFacts | None = None
        if controller.running:
            self._started()
        elif controller.last is not None:
            self._show_outcome(controller.last, ())
        self.connection.setText(describe_connection(controller.last))
        self.refresh()

    def start(self) -> None:
        self._controller.start(self._session)

    def refresh(self) -> None:
        session = self._session
        self._runner.run(lambda: gather(session), self._show)

    def _show(self, facts: SyncFacts) -> None:
        self.facts = facts
        status = facts.status
        self.last_sync.setText(format_moment(facts.last_sync) or "Never on this laptop.")
        self.unsent.setText(
            f"{status.unsent_items} item(s) not yet sent, {status.conflicts} conflict(s), "
            f"{status.audit_unsent} audit entries not yet uploaded"
            + (f", {status.drafts} unsaved consultation draft(s)." if status.drafts else ".")
        )
        self.resolve.setEnabled(status.conflicts > 0)
        self.grace.setText(describe_offline(facts.offline))
        if self._controller.last is not None and not self._controller.running:
            self._show_outcome(self._controller.last, status.refused)
        visit = dt.timedelta(days=self.visit_days.value())
        self.readiness.show_checks(
            assess(status, facts.offline, facts.last_sync, self._clock(), visit)
        )

    def _show_outcome(self, outcome: SyncOutcome, refused: tuple[Refusal, ...]) -> None:
        """The result, naming ``refused`` (the notes the gateway refused, read after it)."""
        self.result.setText(describe_outcome(outcome, refused))
        set_role(self.result, outcome_role(outcome, refused))

    def _started(self) -> None:
        self.sync_now.setEnabled(False)
        self.cancel.setEnabled(True)
        self.progress.setRange(0, 0)  # busy: the total is not known in advance
        self.phase.setText("Connecting to the gateway…")
        self.result.setText("")

    def _progressed(self, progress: Progress) -> None:
        self.phase.setText(describe_progress(progress))

    def _finished(self, outcome: SyncOutcome) -> None:
        self.sync_now.setEnabled(True)
        self.cancel.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if outcome.ok else 0)
        self.phase.setText("")
        self._show_outcome(outcome, ())  # the refused notes are named once the status is read
        self.connection.setText(describe_connection(outcome))
        if not outcome.lock_requested:
            self.refresh()


def outcome_counts(outcome: SyncOutcome) -> dict[str, Any]:
    """The numbers of a sync for scripts (the demo's summary.json); no record content."""
    result = outcome.result
    if result is None:
        return {"ok": False, "error": outcome.reason}
    return {
        "ok": result.ok,
        "error": result.error,
        "pulled": result.pulled,
        "deleted": result.deleted,
        "pushed": result.pushed,
        "conflicts": result.conflicts,
        "quarantined": result.quarantined,
        "push_errors": result.push_errors,
        "requests": result.requests,
        "bytes_received": result.bytes_received,
        "bytes_sent": result.bytes_sent,
        "duration_s": round(result.duration_s, 3),
    }
