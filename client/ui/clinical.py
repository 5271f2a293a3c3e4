"""The clinician's workspace: caseload → chart → consultation, with break-glass and lockdown.

Guarantees:
- Holds at most one patient screen at a time; leaving it (back, another patient, expiry of a
  break-glass grant, lock) scrubs its text and deletes it, so patient data does not linger.
- Opening a patient outside the scope shows the break-glass dialog; only a granted request
  opens the chart, which then carries the break-glass banner with the expiry time. When the
  grant expires the chart closes.
- The copy guard covers the whole workspace; the watermark covers it when the policy asks.
- Every Session call goes through the ``Runner`` (the executor).
- Nothing typed is discarded without asking (CR-4): leaving a consultation form that holds
  typing (Esc, Cancel, Ctrl+F) asks "Keep as draft / Discard / Continue writing" (Esc on the
  question continues writing); leaving without asking (a break-glass grant ending, the lock)
  keeps the draft. Opening a patient for whom this clinician has a draft opens the form with
  the draft restored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from client.core.chart import Chart
from client.core.drafts import Draft, DraftFields
from client.core.session import BreakGlassGrant, BreakGlassRequired, Session
from client.ui.break_glass import BreakGlassDialog
from client.ui.caseload import CaseloadScreen
from client.ui.chart_view import ChartScreen
from client.ui.consultation_form import ConsultationForm
from client.ui.lockdown import (
    CopyGuard,
    Watermark,
    print_chart,
    printer_available,
    printing_offered,
    scrub_tree,
)
from client.ui.qt import (
    QKeySequence,
    QMessageBox,
    QShortcut,
    QStackedWidget,
    Qt,
    QTimer,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner, show_error
from policy.decisions import UiPermissions

GRANT_CHECK_MS = 5_000


class ClinicalWorkspace(QWidget):
    """Caseload and one patient at a time. Emits ``notify(text)`` and ``records_changed``."""

    notify = Signal(str)
    records_changed = Signal()

    def __init__(
        self,
        session: Session,
        runner: Runner,
        permissions: UiPermissions,
        clock: Callable[[], dt.datetime],
        *,
        has_printer: Callable[[], bool] = printer_available,
    ) -> None:
        super().__init__()
        self.setObjectName("clinical_workspace")
        self._session = session
        self._runner = runner
        self._permissions = permissions
        self._clock = clock
        # Print is offered only when the policy allows it and a printer exists (asked once).
        self.can_print = printing_offered(permissions.printing, has_printer)
        self.chart: Chart | None = None
        self.grant: BreakGlassGrant | None = None
        self.patient_screen: QWidget | None = None
        self.break_glass_dialog: BreakGlassDialog | None = None
        self.leave_question: QMessageBox | None = None
        # The open patient's kept draft as last read or written here (the vault has the truth;
        # this lets Ctrl+N restore it without a round trip to the executor).
        self.kept_draft: Draft | None = None

        self.stack = QStackedWidget()
        self.caseload = CaseloadScreen(session, runner, lambda: clock().date())
        self.caseload.open_requested.connect(self.open_patient)
        self.stack.addWidget(self.caseload)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stack)

        self.copy_guard = CopyGuard(session, runner, permissions.clipboard_copy_out, self)
        self.copy_guard.guard(self, None)
        self.copy_guard.blocked.connect(self.notify)
        self.watermark: Watermark | None = None
        if permissions.watermark:
            self.watermark = Watermark(self, session.user_id, clock)

        self._grant_timer = QTimer(self)
        self._grant_timer.setInterval(GRANT_CHECK_MS)
        self._grant_timer.timeout.connect(self.check_grant)
        self._grant_timer.start()

        def shortcut(keys: QKeySequence | str, slot: Callable[[], None]) -> None:
            sc = QShortcut(QKeySequence(keys), self)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.activated.connect(slot)

        shortcut("Esc", self._escape)
        shortcut("Ctrl+F", self.back_to_search)
        shortcut("Ctrl+N", self.new_consultation)
        shortcut("Ctrl+P", self.print_current)
        shortcut("Ctrl+S", self._save_current)
        self._announce_drafts()

    # -- opening a patient -----------------------------------------------------------------

    def open_patient(self, patient_id: str) -> None:
        session = self._session
        self._runner.run(
            lambda: (
                session.open_chart(patient_id),
                session.active_grant(patient_id),
                session.draft(patient_id),
            ),
            self._opened,
            lambda error: self._open_failed(patient_id, error),
        )

    def _opened(self, result: tuple[Chart, BreakGlassGrant | None, Draft | None]) -> None:
        chart, grant, draft = result
        self.chart, self.grant, self.kept_draft = chart, grant, draft
        if draft is None:
            self.show_chart()
            return
        self.new_consultation()
        self.notify.emit("Your unsaved consultation for this patient was restored.")

    def _announce_drafts(self) -> None:
        def say(patients: list[str]) -> None:
            if patients:
                self.notify.emit(
                    f"You have unsaved consultation drafts for {len(patients)} patient(s): "
                    "open the patient to continue."
                )

        self._runner.run(self._session.patients_with_drafts, say)

    def _open_failed(self, patient_id: str, error: BaseException) -> None:
        if not isinstance(error, BreakGlassRequired):
            show_error(self, error)
            return
        dialog = BreakGlassDialog(self._session, self._runner, patient_id, self)
        self.break_glass_dialog = dialog
        dialog.granted.connect(lambda _grant: self.open_patient(patient_id))
        dialog.finished.connect(self._break_glass_closed)
        dialog.open()

    def _break_glass_closed(self, _result: int) -> None:
        dialog, self.break_glass_dialog = self.break_glass_dialog, None
        if dialog is not None:
            dialog.deleteLater()

    # -- screens ---------------------------------------------------------------------------

    def _replace_patient_screen(self, screen: QWidget | None, patient_id: str | None) -> None:
        old, self.patient_screen = self.patient_screen, screen
        if screen is not None:
            self.stack.addWidget(screen)
            self.stack.setCurrentWidget(screen)
        else:
            self.stack.setCurrentWidget(self.caseload)
        if old is not None:
            if isinstance(old, ChartScreen):
                old.chart = None
            self.stack.removeWidget(old)
            scrub_tree(old)
            old.hide()
            old.deleteLater()
        self.copy_guard.guard(self, patient_id)
        if self.watermark is not None:
            self.watermark.raise_()

    def show_chart(self) -> None:
        if self.chart is None:
            return
        screen = ChartScreen(self.chart, self.grant, can_print=self.can_print)
        screen.back_requested.connect(self.back_to_search)
        screen.new_consultation_requested.connect(self.new_consultation)
        screen.print_requested.connect(self.print_current)
        self._replace_patient_screen(screen, self.chart.banner.patient_id)
        screen.scroll_area.setFocus()

    def new_consultation(self) -> None:
        """The consultation form, with this clinician's kept draft for the patient if any."""
        if self.chart is None or isinstance(self.patient_screen, ConsultationForm):
            return
        draft = self.kept_draft
        if draft is not None and draft.patient_id != self.chart.banner.patient_id:
            draft = None
        form = ConsultationForm(self._session, self._runner, self.chart, self.grant, draft)
        form.saved.connect(self._consultation_saved)
        form.cancelled.connect(lambda: self._leave_form(self.show_chart))
        self._replace_patient_screen(form, self.chart.banner.patient_id)
        next(iter(form.vital_fields.values())).setFocus()

    # -- leaving a consultation form (CR-4) --------------------------------------------------

    def _leave_form(self, then: Callable[[], None]) -> None:
        """Leave the form: ask first when it holds typing; ``then`` moves on."""
        form = self.patient_screen
        if not isinstance(form, ConsultationForm) or not form.has_typing:
            self._keep_draft_of_current()
            then()
            return
        if self.leave_question is not None:
            return
        box = QMessageBox(self)
        box.setObjectName("leave_consultation_question")
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Consultation not saved")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setText("This consultation is not saved in the record.")
        box.setInformativeText(
            "Keep it as a draft on this laptop (it comes back when you next open this patient), "
            "or discard what you typed?"
        )
        keep = box.addButton("&Keep as draft", QMessageBox.ButtonRole.AcceptRole)
        discard = box.addButton("&Discard what I typed", QMessageBox.ButtonRole.DestructiveRole)
        stay = box.addButton("&Continue writing", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.setEscapeButton(stay)
        self.leave_question = box

        def answered(_result: int) -> None:
            self.leave_question = None
            clicked = box.clickedButton()
            box.deleteLater()
            if self.patient_screen is not form:
                return  # locked or moved on meanwhile (the lock kept the draft)
            if clicked is keep:
                self._keep_draft_of_current()
                then()
            elif clicked is discard:
                form.close_drafts()
                session, pid = self._session, form.patient_id
                self._runner.run(lambda: session.discard_draft(pid))
                self.kept_draft = None
                self.notify.emit("The unsaved consultation was discarded.")
                then()
            else:
                form.note.setFocus()

        box.finished.connect(answered)
        box.open()

    def _keep_draft_of_current(self) -> None:
        """Keep what the open form holds, without asking (queued before anything that follows)."""
        self._keep(self.pending_draft())

    def _keep(self, pending: tuple[str, DraftFields] | None) -> None:
        if pending is None:
            return
        session = self._session
        pid, fields = pending
        self._runner.run(lambda: session.save_draft(pid, fields))
        now = self._clock()
        started = self.kept_draft.started_at if self.kept_draft is not None else now
        self.kept_draft = None if fields.is_empty else Draft(pid, fields, started, now)

    def pending_draft(self) -> tuple[str, DraftFields] | None:
        """Close the open form's drafts and return (patient, typing) to keep, if any."""
        form = self.patient_screen
        if not isinstance(form, ConsultationForm):
            return None
        fields = form.take_draft()
        return None if fields is None else (form.patient_id, fields)

    def _consultation_saved(self, _result: object) -> None:
        self.kept_draft = None  # the save removed it in the same transaction
        self.records_changed.emit()
        self.notify.emit("Consultation saved on this laptop — not yet sent.")
        if self.chart is not None:
            self.open_patient(self.chart.banner.patient_id)

    def back_to_search(self) -> None:
        if isinstance(self.patient_screen, ConsultationForm):
            self._leave_form(self._close_patient)
            return
        self._close_patient()

    def _close_patient(self) -> None:
        self.chart, self.grant, self.kept_draft = None, None, None
        self._replace_patient_screen(None, None)
        self.caseload.focus_search()

    def _escape(self) -> None:
        if isinstance(self.patient_screen, ConsultationForm):
            self._leave_form(self.show_chart)
        elif self.patient_screen is not None:
            self.back_to_search()

    def _save_current(self) -> None:
        if isinstance(self.patient_screen, ConsultationForm):
            self.patient_screen.submit()

    def print_current(self) -> None:
        if self.chart is None:
            return
        print_chart(
            self,
            self._session,
            self._runner,
            self.chart.banner.patient_id,
            self._permissions.printing,
            self.notify.emit,
        )

    def check_grant(self) -> None:
        """Close a break-glass chart once its grant has expired."""
        if self.grant is not None and self._clock() >= self.grant.expires_at:
            kept = self.pending_draft()
            self._keep(kept)
            self._close_patient()
            self.notify.emit(
                "Break-glass access has ended. The record was closed"
                + (" and your unsaved consultation kept as a draft." if kept else ".")
            )

    # -- lock ------------------------------------------------------------------------------

    def scrub(self) -> None:
        """Empty every text this workspace shows and stop guarding (the lock deletes it next)."""
        self._grant_timer.stop()
        self.copy_guard.detach()
        if isinstance(self.patient_screen, ConsultationForm):
            self.patient_screen.close_drafts()  # the lock took the draft first (pending_draft)
        if self.leave_question is not None:
            self.leave_question.reject()
        if self.break_glass_dialog is not None:
            self.break_glass_dialog.reject()
        self.chart, self.grant, self.kept_draft = None, None, None
        self.caseload.scrub()
        scrub_tree(self)
