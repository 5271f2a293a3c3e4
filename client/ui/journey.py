"""The headless demo journey: the real screens, driven offscreen against a real gateway.

``run_journey`` provisions a laptop from IT's bundle, signs the clinician in for the first
time (online), syncs, searches, opens a chart (also as a 1366×768 screen at 150% shows it),
writes a consultation, syncs it up (with an upstream: waits for the gateway to file it, syncs
again and shows it "Filed in the health record"), saves a follow-up and begins another note that
the idle lock keeps as a draft, signs in again while the gateway transfers the patient (through
``gateway_ops``), syncs (the follow-up is filed at the new site), opens the transferred patient
through break-glass (the draft comes back; the chart says what is not on this laptop), locks,
signs the auditor in and opens the audit view, exporting the audit chain. Each step is a small
method of ``Journey`` that may take screenshots with ``shoot``; adding a screen is one line in
the step that shows it. Waiting, settling, the headless window and the PNGs come from
``client.ui.offscreen`` (shared with ``scripts/screenshots.py``).

Length: one class whose steps run in order and share its window and summary; its inputs are
already apart (``journey_inputs.py``). Splitting the steps across modules would scatter one
story the demo tells top to bottom.

It is the client half of ``make demo`` and ships in the laptop bundle, so the frozen client
runs it too (``gatehouse --demo-journey``). Invariants:
- No gateway code here: the steps the gateway must take mid-way come in as ``GatewayOps``
  callbacks (in-process from ``scripts/demo.py``, or a hook command run by the frozen client).
- Passwords come in as arguments from the caller (the CLI reads them from standard input) and
  are never printed; the printed lines name users, sites, devices and counts only — no
  patient names or clinical text.
- Every screen is written as ``NN-name.png`` in ``out_dir``, numbered in journey order; the
  returned summary names them, with the device data folder, the audit export and the sync
  counts.
- A step that does not happen in time raises ``JourneyError`` (reason ``timeout``); a failing
  gateway hook raises it with reason ``gateway_hook``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from client.core.humanize import DISPLAY_ZONE
from client.ui.journey_inputs import (
    Credentials,
    GatewayOps,
    HookGatewayOps,
    JourneyError,
    JourneyUsers,
)
from client.ui.offscreen import headless_window, settle, sign_in, submit_sign_in, wait_until
from client.ui.offscreen import shoot as shoot_png
from client.ui.offscreen import shoot_scaled as shoot_scaled_png

JOURNEY_FILE = "journey.json"
SCREEN_150 = (911, 512)  # a 1366x768 screen at 150% scaling, in logical points
DRAFT_TEXT = "Chest clear on auscultation. Peak flow to be repeated"


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


class Journey:
    """The journey's state and its steps, in order (see ``STEPS``)."""

    STEPS = (
        "provision",
        "clinician_first_sign_in",
        "first_sync",
        "search",
        "open_chart",
        "chart_at_150_percent",
        "consultation",
        "push_sync",
        "filed_in_health_record",
        "transfer_and_follow_up",
        "transfer_sync",
        "break_glass",
        "lock",
        "auditor_audit_view",
        "auditor_search_by_nhs_number",
        "auditor_online_audit",
    )

    def __init__(
        self,
        data_dir: Path,
        bundle: Path,
        out_dir: Path,
        users: JourneyUsers,
        gateway_ops: GatewayOps | None,
    ) -> None:
        self.data_dir, self.bundle, self.out = data_dir, bundle, out_dir
        self.users, self.gateway_ops = users, gateway_ops
        self.screens: list[str] = []
        self.outcomes: list[Any] = []
        self.sync_runs: list[Any] = []
        self.first: Any = None
        self.win: Any = None
        self.device: Any = None
        self.patient: Any = None
        self.transferred = False
        self.draft_restored = False
        self.audit_search_rows = 0
        self.chart_150_size: tuple[int, int] | None = None
        self.filed_shown = False
        self.export = out_dir / "audit-export.json"

    # -- helpers ---------------------------------------------------------------------------

    def shoot(self, widget: Any, name: str) -> None:
        path = self.out / f"{len(self.screens) + 1:02d}-{name}.png"
        try:
            shoot_png(widget, path)
        except OSError as error:
            raise JourneyError("timeout", str(error)) from error
        self.screens.append(path.name)
        print(f"    screenshot {path.name}", flush=True)

    def shoot_scaled(self, widget: Any, name: str, scale: float) -> None:
        path = self.out / f"{len(self.screens) + 1:02d}-{name}.png"
        try:
            shoot_scaled_png(widget, path, scale)
        except OSError as error:
            raise JourneyError("timeout", str(error)) from error
        self.screens.append(path.name)
        print(f"    screenshot {path.name}", flush=True)

    def _workspace(self) -> Any:
        from client.ui.clinical import ClinicalWorkspace

        workspace = self.win.workspace
        if not isinstance(workspace, ClinicalWorkspace):
            raise JourneyError("timeout", "the clinical workspace is not open")
        return workspace

    def sign_in_first(self, user: Credentials, name: str) -> None:
        win = self.win
        submit_sign_in(win, user.user, user.password)
        login = win.login_screen
        wait_until(lambda: login.first.isVisible(), "the first sign-in offer")
        self.shoot(win, name)
        login.first.click()
        wait_until(lambda: win.session is not None, f"{user.user}'s first sign-in")
        print(f"    {user.user} signed in ({win.session.role if win.session else '?'})")

    def sync(self, name: str) -> Any:
        from client.ui.sync_panel import describe_outcome

        win = self.win
        count = len(self.outcomes)
        win.open_sync()
        panel = win.sync_panel
        if panel is None or win.sync_dialog is None:
            raise JourneyError("timeout", "the sync panel did not open")
        panel.sync_now.click()
        wait_until(lambda: len(self.outcomes) > count, "the sync")
        wait_until(lambda: panel.facts is not None and bool(panel.readiness.labels), "readiness")
        settle(0.3)
        outcome = self.outcomes[-1]
        print(f"    {describe_outcome(outcome)}")
        self.shoot(win.sync_dialog, name)
        win.sync_dialog.reject()
        settle(0.1)
        self.sync_runs.append(outcome)
        return outcome

    # -- the steps -------------------------------------------------------------------------

    def provision(self) -> None:
        from client.ui.main_window import WINDOW_SIZE, MainWindow
        from client.ui.provisioning import ProvisioningWindow

        step("first run: the provisioning screen reads the bundle")
        first = ProvisioningWindow(
            self.data_dir, bundle_path=self.bundle, open_main=headless_window
        )
        self.first = first
        first.resize(*WINDOW_SIZE)
        first.show()
        screen = first.screen_widget
        wait_until(lambda: screen.enrol.isEnabled(), "the bundle preview")
        print(f"    bundle for site {screen.site.text()}, gateway {screen.gateway.text()}")
        self.shoot(first, "provisioning-bundle")
        step("enrolling this laptop (device key, CSR + one-time token, vault, escrow slot)")
        screen.enrol.click()
        wait_until(lambda: screen.proceed.isVisible(), "enrolment")
        self.device = screen.device
        if self.device is None:
            raise JourneyError("timeout", "enrolment left no device")
        print(f"    device {self.device.profile.device_id} for site {self.device.profile.site}")
        self.shoot(first, "provisioned")
        screen.proceed.click()
        self.win = first.main_window
        if not isinstance(self.win, MainWindow):
            raise JourneyError("timeout", "the main window did not open")
        self.win.sync.finished.connect(self.outcomes.append)

    def clinician_first_sign_in(self) -> None:
        step("first sign-in of the clinician on this laptop (online: the gateway unseals escrow)")
        self.sign_in_first(self.users.clinician, "first-sign-in")

    def first_sync(self) -> None:
        step("first sync: the site's records come down")
        self.sync("sync-first")

    def search(self) -> None:
        step("search as you type")
        workspace = self._workspace()
        workspace.caseload.query.setText("a")
        wait_until(lambda: workspace.caseload.model.rowCount() > 0, "search results")
        self.shoot(self.win, "search")
        model = workspace.caseload.model
        rows = [model.patient(r) for r in range(model.rowCount())]
        in_scope = [p for p in rows if p is not None and p.in_scope]
        if not in_scope:
            raise JourneyError("timeout", "no patient of this site in the results")
        self.patient = next((p for p in in_scope if p.has_alerts), in_scope[0])

    def open_chart(self) -> None:
        step("opening a chart (alerts and allergies first)")
        workspace = self._workspace()
        workspace.open_patient(self.patient.id)
        wait_until(lambda: workspace.chart is not None, "the chart")
        self.shoot(self.win, "chart")

    def chart_at_150_percent(self) -> None:
        """The chart on a 1366×768 screen at 150% scaling: 911×512 points, 1.5 pixels each."""
        from client.ui.main_window import WINDOW_SIZE

        step("the same chart at 150% scaling on a 1366x768 screen (911x512 points)")
        win = self.win
        win.resize(*SCREEN_150)
        settle(0.3)
        self.chart_150_size = (win.width(), win.height())
        if self.chart_150_size != SCREEN_150:
            print(f"    the window cannot shrink below {win.width()}x{win.height()} points")
        self.shoot_scaled(win, "chart-150", 1.5)
        win.resize(*WINDOW_SIZE)
        settle(0.2)

    def consultation(self) -> None:
        from client.ui.consultation_form import ConsultationForm

        step("writing a consultation offline")
        workspace = self._workspace()
        workspace.new_consultation()
        form = workspace.patient_screen
        if not isinstance(form, ConsultationForm):
            raise JourneyError("timeout", "the consultation form did not open")
        for kind, value in (("systolic", "128"), ("diastolic", "82"), ("heart_rate", "72")):
            form.vital_fields[kind].setText(value)
        form.note.setPlainText("Reviewed on the wing. Inhaler technique good.")
        form.plan.setPlainText("Review in 4 weeks.")
        self.shoot(self.win, "consultation")
        form.submit()
        wait_until(
            lambda: workspace.chart is not None and any(e.unsent for e in workspace.chart.timeline),
            "the saved consultation",
        )
        self.shoot(self.win, "chart-not-yet-sent")

    def push_sync(self) -> None:
        step("sync: the consultation goes up")
        self.sync("sync-pushed")

    def filed_in_health_record(self) -> None:
        """With an upstream: the gateway files the note; the next sync says so in the chart."""
        from client.ui.main_window import WINDOW_SIZE

        if self.gateway_ops is None:
            return
        step("the gateway files the consultation into the health record (its upstream)")
        if not self.gateway_ops.wait_filed():
            step("no upstream, or not filed in time: the note stays 'At the gateway'")
            return
        self.sync("sync-filed")
        workspace = self._workspace()
        workspace.open_patient(self.patient.id)

        def filed() -> bool:
            chart = workspace.chart
            return chart is not None and any(
                e.filing is not None and e.filing.kind == "filed" for e in chart.timeline
            )

        wait_until(filed, "the note shown filed in the health record")
        self.filed_shown = True
        settle(0.2)
        self.shoot(self.win, "chart-filed")
        self.win.resize(*SCREEN_150)
        settle(0.3)
        self.shoot_scaled(self.win, "chart-filed-150", 1.5)
        self.win.resize(*WINDOW_SIZE)
        settle(0.2)

    def transfer_and_follow_up(self) -> None:
        from client.ui.consultation_form import ConsultationForm

        if self.gateway_ops is None:
            step("no gateway operator for this run: the transfer and break-glass are skipped")
            return
        step("a follow-up is saved while the patient is still here; another note is begun")
        workspace = self._workspace()
        workspace.new_consultation()
        follow_up = workspace.patient_screen
        if not isinstance(follow_up, ConsultationForm):
            raise JourneyError("timeout", "the follow-up form did not open")
        follow_up.note.setPlainText("Follow-up: handover note for the receiving prison.")
        follow_up.submit()
        wait_until(lambda: workspace.patient_screen is not follow_up, "the follow-up note")
        workspace.new_consultation()
        begun = workspace.patient_screen
        if not isinstance(begun, ConsultationForm):
            raise JourneyError("timeout", "the second consultation form did not open")
        begun.vital_fields["heart_rate"].setText("76")
        begun.note.setPlainText(DRAFT_TEXT)
        step("the laptop locks itself after the idle time; what was typed is kept as a draft")
        self.win.idle.lock_requested.emit()  # what the idle watcher sends after the timeout
        wait_until(lambda: self.win.session is None, "the idle lock")
        settle(0.3)
        self.shoot(self.win, "idle-locked")
        step("the clinician signs in again; meanwhile IT transfers the patient on the gateway")
        sign_in(self.win, self.users.clinician.user, self.users.clinician.password)
        self.gateway_ops.transfer_patient(self.patient.id)
        self.transferred = True

    def transfer_sync(self) -> None:
        if not self.transferred:
            return
        step("sync: the transfer comes down; the follow-up written here is filed at the new site")
        self.sync("sync-after-transfer")

    def break_glass(self) -> None:
        from client.ui.chart_view import ChartScreen
        from client.ui.consultation_form import ConsultationForm

        if not self.transferred:
            return
        step("break-glass: the transferred patient stays on this laptop only for the draft")
        workspace = self._workspace()
        workspace.open_patient(self.patient.id)
        wait_until(lambda: workspace.break_glass_dialog is not None, "the break-glass dialog")
        dialog = workspace.break_glass_dialog
        dialog.reason.setCurrentIndex(1)
        dialog.text.setPlainText("Patient transferred today; unfinished note to complete.")
        dialog.password.setText(self.users.clinician.password)
        self.shoot(dialog, "break-glass")
        dialog.submit()
        wait_until(
            lambda: isinstance(workspace.patient_screen, ConsultationForm), "the restored draft"
        )
        form = workspace.patient_screen
        self.draft_restored = (
            form.restored_from is not None and form.note.toPlainText() == DRAFT_TEXT
        )
        print(f"    draft restored after the idle lock: {self.draft_restored}")
        self.shoot(self.win, "draft-restored")
        step("keep the draft for now and read the chart: what is not on this laptop is said")
        form.cancel.click()
        wait_until(lambda: workspace.leave_question is not None, "the leave question")
        question = workspace.leave_question
        keep = next(b for b in question.buttons() if b.text() == "&Keep as draft")
        keep.click()
        wait_until(lambda: isinstance(workspace.patient_screen, ChartScreen), "the chart")
        chart = workspace.chart
        if chart is None or chart.completeness.complete:
            raise JourneyError("timeout", "the transferred patient's chart claims to be complete")
        self.shoot(self.win, "chart-incomplete")

    def lock(self) -> None:
        step("lock: every patient screen is destroyed")
        self.win.lock()
        settle(0.3)
        self.shoot(self.win, "locked")

    def auditor_audit_view(self) -> None:
        from client.ui.audit_view import AuditWorkspace

        step("the auditor's first sign-in and the audit view")
        self.sign_in_first(self.users.auditor, "auditor-first-sign-in")
        audit = self.win.workspace
        if not isinstance(audit, AuditWorkspace):
            raise JourneyError("timeout", "the audit workspace did not open")
        wait_until(lambda: audit.model.rowCount() > 0, "the audit entries")
        self.shoot(self.win, "audit")
        audit.export_to(self.export, "json")
        wait_until(self.export.exists, "the audit export")
        print(f"    audit export: {self.export}")

    def auditor_search_by_nhs_number(self) -> None:
        """ "Who opened this patient this week?": the patient's NHS number (3-3-4, as the banner
        shows it) and the last seven UK days, on the laptop tab."""
        from client.ui.audit_view import AuditWorkspace
        from client.ui.widgets import format_nhs

        step("the auditor asks who opened the patient this week, by NHS number")
        audit = self.win.workspace
        if not isinstance(audit, AuditWorkspace):
            raise JourneyError("timeout", "the audit workspace is not open")
        nhs = format_nhs(self.patient.nhs_number) if self.patient.nhs_number else self.patient.id
        today = dt.datetime.now(DISPLAY_ZONE).date()
        audit.search(nhs, today - dt.timedelta(days=7), today)
        wait_until(lambda: audit.searched is not None, "the audit search")
        wait_until(lambda: audit.model.rowCount() > 0, "the patient's audit entries")
        self.audit_search_rows = audit.model.rowCount()
        print(f"    {self.audit_search_rows} entries about the patient in the last 7 days")
        self.shoot(self.win, "audit-by-nhs-number")

    def auditor_online_audit(self) -> None:
        """The "Online (gateway)" tab: a sync uploads the chain, then the site's trail is asked."""
        from client.ui.audit_view import AuditWorkspace

        step("the auditor's online audit view (chain uploaded, then the gateway asked)")
        audit = self.win.workspace
        if not isinstance(audit, AuditWorkspace):
            raise JourneyError("timeout", "the audit workspace is not open")
        count = len(self.outcomes)
        if not self.win.start_sync():
            raise JourneyError("timeout", "the audit upload did not start")
        wait_until(lambda: len(self.outcomes) > count, "the audit upload")
        online = audit.online
        audit.tabs.setCurrentWidget(online)
        online.password.setText(self.users.auditor.password)
        online.search()
        wait_until(lambda: online.search_button.isEnabled(), "the gateway's audit trail")
        actions = sorted({row[3] for row in online.model.rows})
        rows, chains = online.model.rowCount(), online.chains.rowCount()
        print(f"    gateway: {rows} entries ({', '.join(actions)}), {chains} device chain(s)")
        self.shoot(self.win, "audit-online")

    # -- the whole run ---------------------------------------------------------------------

    def close(self) -> None:
        if self.win is not None:
            self.win.lock()
            settle(0.2)
            self.win.close()
        elif self.first is not None:  # stopped before the provisioning window handed over
            self.first.close()
        settle(0.2)

    def summary(self) -> dict[str, Any]:
        from client.ui.sync_panel import outcome_counts

        runs = [outcome_counts(o) for o in self.sync_runs]
        totals = {
            key: sum(int(r.get(key) or 0) for r in runs)
            for key in ("pulled", "deleted", "pushed", "conflicts", "quarantined", "push_errors")
        }
        return {
            "device_data": str(self.data_dir),
            "device_id": self.device.profile.device_id if self.device else None,
            "site": self.device.profile.site if self.device else None,
            "audit_export": str(self.export),
            "sync": {**totals, "runs": runs},
            "break_glass_patient": self.patient.id if self.transferred else None,
            "screens": list(self.screens),
            "draft_restored": self.draft_restored,
            "note_shown_filed": self.filed_shown,
            "chart_150_points": list(self.chart_150_size) if self.chart_150_size else None,
            "time_zone": DISPLAY_ZONE.key,
            "audit_search_rows": self.audit_search_rows,
            "frozen": bool(getattr(sys, "frozen", False)),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        }

    def run(self) -> dict[str, Any]:
        try:
            for name in self.STEPS:
                getattr(self, name)()
        except TimeoutError as error:  # a screen that did not get there (client.ui.offscreen)
            raise JourneyError("timeout", str(error)) from error
        finally:
            self.close()
        return self.summary()


def run_journey(
    data_dir: Path,
    bundle: Path,
    out_dir: Path,
    *,
    gateway_ops: GatewayOps | None,
    users: JourneyUsers,
) -> dict[str, Any]:
    """Drive every screen offscreen; PNGs and the audit export go to ``out_dir``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from client.ui.collector import GuiThreadCollector
    from client.ui.qt import QApplication

    app = QApplication.instance() or QApplication([])
    out_dir.mkdir(parents=True, exist_ok=True)
    collector = GuiThreadCollector(app)
    collector.start()
    try:
        return Journey(data_dir, bundle, out_dir, users, gateway_ops).run()
    finally:
        collector.stop()
        del app


def cli_main(data: str, bundle: str, out: str, hook: str | None) -> int:
    """``gatehouse --demo-journey``: users as JSON on stdin; ``OUT/journey.json`` at the end."""
    from policy.atomic import atomic_write

    try:
        users = JourneyUsers.from_json(sys.stdin.read())
        ops = HookGatewayOps(hook) if hook else None
        summary = run_journey(Path(data), Path(bundle), Path(out), gateway_ops=ops, users=users)
    except JourneyError as error:
        print(f"error: journey stopped ({error.reason}): {error.message}", file=sys.stderr)
        return 1
    atomic_write(Path(out) / JOURNEY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    step(f"journey done: {Path(out) / JOURNEY_FILE}")
    return 0
