"""The consultation form: vitals with units, note and plan; saved offline at once.

Guarantees:
- The core validates (``write_consultation`` raises ``ConsultationError`` naming the field);
  the form shows that message next to the field it names and moves focus there. Text that is
  not a number is passed on as NaN so the core's own "must be a number" message is shown.
- Save runs on the executor; on success the form says "Saved on this laptop — not yet sent"
  and emits ``saved``; nothing is lost on failure (the save is one transaction). On a full
  disk the form says "Not saved" with the disk's figures and keeps every field (CR-3).
- The patient's alerts and allergies stay on screen above the form (``PatientHeader``).
- Nothing typed is lost (CR-4): every change is kept as an encrypted draft in the vault within
  ``AUTOSAVE_MS`` (``Session.save_draft``), and ``take_draft()`` hands the form's contents to
  whoever closes it without asking (the lock, an ended break-glass grant) so they can keep it.
  A form opened with a draft shows it and says so. After a successful save, or once the form is
  closed (``close_drafts``), it never autosaves again (a scrubbed, empty form must not replace
  the kept draft).
"""

from __future__ import annotations

import math

from client.core.chart import Chart
from client.core.consultation import VITAL_SPECS, ConsultationError, ConsultationResult, Vital
from client.core.disk_space import DiskFull
from client.core.drafts import Draft, DraftFields
from client.core.humanize import format_moment
from client.core.session import BreakGlassGrant, Session
from client.ui.chart_view import PatientHeader
from client.ui.qt import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QTimer,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner, show_error
from client.ui.widgets import button, data_label, scrolling, set_role

SAVED_MESSAGE = "Saved on this laptop — not yet sent"
AUTOSAVE_MS = 3_000  # at most this much typing is lost to a crash (CR-4)


def parse_number(text: str) -> float | None:
    """The typed value: None when empty, NaN when not a number (the core then names it)."""
    cleaned = text.strip().replace(",", ".")
    if not cleaned:
        return None
    try:
        return float(cleaned)
    except ValueError:
        return math.nan


class ConsultationForm(QWidget):
    """Vitals, note, plan for one patient. Emits ``saved(ConsultationResult)`` and ``cancelled``."""

    saved = Signal(object)
    cancelled = Signal()

    def __init__(
        self,
        session: Session,
        runner: Runner,
        chart: Chart,
        grant: BreakGlassGrant | None,
        draft: Draft | None = None,
    ) -> None:
        super().__init__()
        self.setObjectName("consultation_form")
        self.setAccessibleName("New consultation")
        self._session = session
        self._runner = runner
        self.patient_id = chart.banner.patient_id
        self._saving = False
        outer = QVBoxLayout(self)
        outer.setContentsMargins(12, 8, 12, 8)
        self.header = PatientHeader(chart, grant)
        outer.addWidget(self.header)
        form_body = QWidget()
        form_column = QVBoxLayout(form_body)
        form_column.setContentsMargins(0, 0, 8, 0)
        form_column.addWidget(data_label("New consultation", role="title"))

        body = QHBoxLayout()
        vitals = QGridLayout()
        vitals.setHorizontalSpacing(8)
        vitals.setVerticalSpacing(4)
        self.vital_fields: dict[str, QLineEdit] = {}
        self.vital_errors: dict[str, QLabel] = {}
        vitals.addWidget(data_label("Vital signs (leave blank if not taken)", role="section"),
                         0, 0, 1, 4)  # fmt: skip
        for row, (kind, spec) in enumerate(VITAL_SPECS.items(), start=1):
            edit = QLineEdit()
            edit.setAccessibleName(f"{spec.label} in {spec.unit}")
            edit.setFixedWidth(110)
            edit.setPlaceholderText(f"{spec.low:g}–{spec.high:g}")
            caption = QLabel(spec.label)
            caption.setBuddy(edit)
            error = data_label("", role="error", wrap=True)
            error.setAccessibleName(f"{spec.label} problem")
            error.setMinimumWidth(200)
            vitals.addWidget(caption, row, 0)
            vitals.addWidget(edit, row, 1)
            vitals.addWidget(data_label(spec.unit, role="hint"), row, 2)
            vitals.addWidget(error, row, 3)
            self.vital_fields[kind] = edit
            self.vital_errors[kind] = error
        vitals.setColumnStretch(3, 1)
        vitals.setRowStretch(len(VITAL_SPECS) + 1, 1)
        body.addLayout(vitals, 4)

        texts = QVBoxLayout()
        note_label = QLabel("Consultation &note")
        self.note = QPlainTextEdit()
        self.note.setAccessibleName("Consultation note")
        self.note.setTabChangesFocus(True)
        note_label.setBuddy(self.note)
        self.note_error = data_label("", role="error", wrap=True)
        plan_label = QLabel("&Plan")
        self.plan = QPlainTextEdit()
        self.plan.setAccessibleName("Plan")
        self.plan.setTabChangesFocus(True)
        plan_label.setBuddy(self.plan)
        self.plan_error = data_label("", role="error", wrap=True)
        for widget in (note_label, self.note, self.note_error, plan_label, self.plan):
            texts.addWidget(widget)
        texts.addWidget(self.plan_error)
        body.addLayout(texts, 4)
        form_column.addLayout(body, 1)
        # The fields scroll under the fixed banner and buttons in a small window (150%).
        self.scroll_area = scrolling(form_body, "Consultation fields")
        outer.addWidget(self.scroll_area, 1)

        actions = QHBoxLayout()
        self.status = data_label("", role="hint", wrap=True)
        self.status.setAccessibleName("Save status")
        self.cancel = button("&Cancel", "Cancel and return to the chart")
        self.save = button("&Save (Ctrl+S)", "Save consultation")
        self.save.setDefault(True)
        actions.addWidget(self.status, 1)
        actions.addWidget(self.cancel)
        actions.addWidget(self.save)
        outer.addLayout(actions)
        self.save.clicked.connect(self.submit)
        self.cancel.clicked.connect(self.cancelled)
        first = next(iter(self.vital_fields.values()))
        first.setFocus()

        self._changes = 0  # typing generation; the draft kept is of generation _kept
        self._kept = 0
        self._drafts_open = True
        self.restored_from: Draft | None = None
        if draft is not None:
            self._restore(draft)
        self._autosave = QTimer(self)
        self._autosave.setInterval(AUTOSAVE_MS)
        self._autosave.timeout.connect(self.keep_draft)
        self._autosave.start()
        for edit in self.vital_fields.values():
            edit.textChanged.connect(self._changed)
        self.note.textChanged.connect(self._changed)
        self.plan.textChanged.connect(self._changed)

    # -- drafts (CR-4) ---------------------------------------------------------------------

    def _restore(self, draft: Draft) -> None:
        self.restored_from = draft
        for kind, text in draft.fields.vitals.items():
            edit = self.vital_fields.get(kind)
            if edit is not None:
                edit.setText(text)
        self.note.setPlainText(draft.fields.note)
        self.plan.setPlainText(draft.fields.plan)
        set_role(self.status, "warning")
        self.status.setText(
            f"Unsaved draft restored (last kept {format_moment(draft.saved_at)}). "
            "Check it, then save — it is not in the record yet."
        )

    def _changed(self) -> None:
        if self._drafts_open:
            self._changes += 1

    def fields(self) -> DraftFields:
        """The form exactly as typed."""
        return DraftFields(
            vitals={kind: edit.text() for kind, edit in self.vital_fields.items() if edit.text()},
            note=self.note.toPlainText(),
            plan=self.plan.toPlainText(),
        )

    @property
    def has_typing(self) -> bool:
        return not self.fields().is_empty

    @property
    def has_unkept_typing(self) -> bool:
        """Typed since the last kept draft (what a question before leaving is about)."""
        return self._changes != self._kept

    def keep_draft(self) -> None:
        """Autosave: keep the form as the patient's draft if it changed since the last one."""
        if not self._drafts_open or self._saving or self._changes == self._kept:
            return
        generation, fields = self._changes, self.fields()
        session, pid = self._session, self.patient_id

        def kept(_result: object) -> None:
            self._kept = max(self._kept, generation)

        self._runner.run(lambda: session.save_draft(pid, fields), kept, self._draft_failed)

    def _draft_failed(self, error: BaseException) -> None:
        set_role(self.status, "error")
        self.status.setText("Could not keep a draft on this laptop: save the consultation now.")
        show_error(self, error)

    def take_draft(self) -> DraftFields | None:
        """Close drafts and return what should be kept now (None when the form is empty and
        nothing was kept before: there is nothing to keep or to replace)."""
        fields = self.fields()
        typed_before = self._kept > 0 or self.restored_from is not None
        self.close_drafts()
        if fields.is_empty and not typed_before:
            return None
        return fields

    def close_drafts(self) -> None:
        """No more autosaves from this form (it is being closed or was saved)."""
        self._drafts_open = False
        self._autosave.stop()

    def vitals(self) -> list[Vital]:
        values = []
        for kind, edit in self.vital_fields.items():
            value = parse_number(edit.text())
            if value is not None:
                values.append(Vital(kind, value))
        return values

    def _clear_errors(self) -> None:
        for label in (*self.vital_errors.values(), self.note_error, self.plan_error):
            label.setText("")

    def submit(self) -> None:
        if self._saving:
            return
        self._clear_errors()
        vitals = self.vitals()
        note, plan = self.note.toPlainText(), self.plan.toPlainText()
        if not vitals and not note.strip() and not plan.strip():
            self.status.setText("Nothing to save yet: enter vital signs, a note or a plan.")
            return
        self._saving = True
        self._autosave.stop()
        self.save.setEnabled(False)
        set_role(self.status, "hint")
        self.status.setText("Saving…")
        session, pid = self._session, self.patient_id
        self._runner.run(
            lambda: session.write_consultation(pid, vitals=vitals, note_text=note, plan_text=plan),
            self._saved,
            self._failed,
        )

    def _saved(self, result: ConsultationResult) -> None:
        self._saving = False
        self.close_drafts()  # the save removed the draft in its own transaction
        self.restored_from = None
        self._kept = self._changes
        self.save.setEnabled(True)
        set_role(self.status, "ok")
        self.status.setText(SAVED_MESSAGE)
        self.saved.emit(result)

    def _failed(self, error: BaseException) -> None:
        self._saving = False
        if self._drafts_open:
            self._autosave.start()
        self.save.setEnabled(True)
        if isinstance(error, ConsultationError):
            set_role(self.status, "error")
            self.status.setText(
                "Not saved: correct the entry with the red message, then save again."
            )
            target = self.vital_errors.get(error.field)
            if target is not None:
                target.setText(f"⚠ {error.message}")
                self.vital_fields[error.field].setFocus()
            elif error.field in ("plan", "plan_text"):
                self.plan_error.setText(error.message)
                self.plan.setFocus()
            else:
                self.note_error.setText(error.message)
                self.note.setFocus()
            return
        if isinstance(error, DiskFull):  # the text stays in the form; say so where they look
            set_role(self.status, "error")
            self.status.setText(f"Not saved. {error.message} Your note is still in this form.")
        else:
            self.status.setText("")
        show_error(self, error)
