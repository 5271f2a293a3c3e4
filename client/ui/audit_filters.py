"""The auditor's "which patient, which days" row, shared by the laptop and the gateway tabs.

Guarantees:
- A visible label for each field (no placeholder stands in for a label), each with a mnemonic
  that focuses it: the patient (a name, an NHS number with or without spaces, a date of birth
  in the caseload search's forms, or a patient id) and the From/To days.
- The days are ``QDateEdit``s with a calendar popup in the UK form ``05-Dec-2026``; the lowest
  date reads "any" and means no limit on that side. From "any", Up/Down start at today (UK) and
  the calendar opens on today's month.
- Enter in any field emits ``submitted`` (the tab runs its search).
- Only what the auditor typed is held here; nothing is resolved or read on the GUI thread.
"""

from __future__ import annotations

import datetime as dt

from client.core.humanize import DISPLAY_ZONE
from client.ui.qt import (
    QAbstractSpinBox,
    QDate,
    QDateEdit,
    QEvent,
    QHBoxLayout,
    QKeyEvent,
    QLabel,
    QObject,
    Qt,
    QWidget,
    Signal,
)
from client.ui.widgets import field

DISPLAY_FORMAT = "dd-MMM-yyyy"
ANY_DAY = QDate(2000, 1, 1)  # shown as "any": no limit on that side
ANY_TEXT = "any"


def _today() -> QDate:
    today = dt.datetime.now(DISPLAY_ZONE).date()  # the UK day, whatever the laptop's zone
    return QDate(today.year, today.month, today.day)


class _DayEdit(QDateEdit):
    """A day picker whose Enter is the tab's search (a bare QDateEdit swallows it). From "any",
    the first Up or Down gives today (UK) and the calendar opens on today's month: never on
    January 2000, the hidden value behind "any"."""

    submitted = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def stepEnabled(self) -> QAbstractSpinBox.StepEnabledFlag:
        if self.date() == ANY_DAY:
            return QAbstractSpinBox.StepEnabledFlag.StepUpEnabled | (
                QAbstractSpinBox.StepEnabledFlag.StepDownEnabled
            )
        return super().stepEnabled()

    def stepBy(self, steps: int) -> None:
        if self.date() == ANY_DAY and steps:
            self.setDate(_today())
            return
        super().stepBy(steps)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        calendar = self.calendarWidget()
        if watched is calendar and event.type() == QEvent.Type.Show and self.date() == ANY_DAY:
            today = _today()
            calendar.setCurrentPage(today.year(), today.month())
        return super().eventFilter(watched, event)


def _day_edit(name: str, object_name: str) -> _DayEdit:
    edit = _DayEdit()
    edit.setObjectName(object_name)
    edit.setAccessibleName(name)
    edit.setCalendarPopup(True)
    edit.setDisplayFormat(DISPLAY_FORMAT)
    edit.setMinimumDate(ANY_DAY)
    edit.setSpecialValueText(ANY_TEXT)
    edit.setDate(ANY_DAY)
    edit.calendarWidget().installEventFilter(edit)
    return edit


class PatientDaysFilter(QWidget):
    """Patient text plus From/To days. ``prefix`` keeps the two tabs' objectNames apart."""

    submitted = Signal()

    def __init__(self, prefix: str, mnemonics: tuple[str, str, str]) -> None:
        super().__init__()
        self.setObjectName(f"{prefix}_patient_days")
        self.patient = field("Patient: name, NHS number or date of birth")
        self.patient.setObjectName(f"{prefix}_patient")
        self.patient.setMinimumWidth(220)
        self.since = _day_edit("From day (UK)", f"{prefix}_from")
        self.until = _day_edit("To day (UK)", f"{prefix}_to")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        for text, widget in zip(mnemonics, (self.patient, self.since, self.until), strict=True):
            label = QLabel(text)
            label.setBuddy(widget)
            # Qt measures "&To" kerned but draws the underlined letter apart: room for both.
            label.setMinimumWidth(label.sizeHint().width() + label.fontMetrics().averageCharWidth())
            row.addWidget(label)
            row.addWidget(widget)
        self.patient.returnPressed.connect(self.submitted)
        self.since.submitted.connect(self.submitted)
        self.until.submitted.connect(self.submitted)

    def patient_text(self) -> str:
        return self.patient.text().strip()

    @staticmethod
    def _day(edit: QDateEdit) -> dt.date | None:
        value = edit.date()
        if value == ANY_DAY:
            return None
        return dt.date(value.year(), value.month(), value.day())

    def days(self) -> tuple[dt.date | None, dt.date | None]:
        return self._day(self.since), self._day(self.until)

    def set_values(self, patient_text: str, since: dt.date | None, until: dt.date | None) -> None:
        self.patient.setText(patient_text)
        for edit, day in ((self.since, since), (self.until, until)):
            edit.setDate(ANY_DAY if day is None else QDate(day.year, day.month, day.day))

    def clear(self) -> None:
        self.set_values("", None, None)
