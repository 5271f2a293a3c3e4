"""The consultation form: vitals with units, note and plan; saved offline at once.

Guarantees:
- The core validates (``write_consultation`` raises ``ConsultationError`` naming the field);
  the form shows that message next to the field it names and moves focus there. Text that is
  not a number is passed on as NaN so the core's own "must be a number" message is shown.
- Save runs on the executor; on success the form says "Saved on this laptop — not yet sent"
  and emits ``saved``; nothing is lost on failure (the save is one transaction). On a full
  disk the form says "Not saved" with the disk's figures and keeps every field (CR-3).
- The patient's alerts and allergies stay on screen above the form (``PatientHeader``).
"""

from __future__ import annotations

import math

from client.core.chart import Chart
from client.core.consultation import VITAL_SPECS, ConsultationError, ConsultationResult, Vital
from client.core.disk_space import DiskFull
from client.core.session import BreakGlassGrant, Session
from client.ui.chart_view import PatientHeader
from client.ui.qt import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner, show_error
from client.ui.widgets import button, data_label, set_role

SAVED_MESSAGE = "Saved on this laptop — not yet sent"


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
        self, session: Session, runner: Runner, chart: Chart, grant: BreakGlassGrant | None
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
        outer.addWidget(data_label("New consultation", role="title"))

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
            error.setMinimumWidth(300)
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
        plan_label = QLabel("P&lan")
        self.plan = QPlainTextEdit()
        self.plan.setAccessibleName("Plan")
        self.plan.setTabChangesFocus(True)
        plan_label.setBuddy(self.plan)
        self.plan_error = data_label("", role="error", wrap=True)
        for widget in (note_label, self.note, self.note_error, plan_label, self.plan):
            texts.addWidget(widget)
        texts.addWidget(self.plan_error)
        body.addLayout(texts, 4)
        outer.addLayout(body, 1)

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
        self.save.setEnabled(True)
        set_role(self.status, "ok")
        self.status.setText(SAVED_MESSAGE)
        self.saved.emit(result)

    def _failed(self, error: BaseException) -> None:
        self._saving = False
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
