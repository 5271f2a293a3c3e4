"""The break-glass dialog: reason code, reason text and the password again (AU-4).

Guarantees:
- The dialog shows no patient data (only that the patient is outside this site's caseload).
- The request (``Session.break_glass``: re-authentication, audit with purpose BTG) runs on the
  executor; a refusal (reason too short, wrong password with attempts left) is shown in the
  dialog in plain text and the password field is cleared.
- ``granted`` carries the ``BreakGlassGrant``; the chart then shows a persistent banner with the
  expiry time.
"""

from __future__ import annotations

from client.core.session import BREAK_GLASS_REASONS, MIN_BREAK_GLASS_TEXT, Session
from client.ui.login import describe_refusal
from client.ui.qt import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import data_label, field


class BreakGlassDialog(QDialog):
    """Ask why, and for the password again, before opening an out-of-scope record."""

    granted = Signal(object)

    def __init__(
        self, session: Session, runner: Runner, patient_id: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("break_glass_dialog")
        self.setWindowTitle("Break-glass access")
        self.setAccessibleName("Break-glass access")
        self.setMinimumWidth(520)
        self._session = session
        self._runner = runner
        self._patient_id = patient_id
        self._busy = False
        intro = data_label(
            "This patient is not on your site's caseload. You can open the record in an "
            "emergency or for continuity of care. Give the reason and your password again. "
            "The access is recorded, time-limited and reviewed by information governance.",
            wrap=True,
        )
        self.reason = QComboBox()
        self.reason.setAccessibleName("Reason for access")
        self.reason.addItem("— choose a reason —", "")
        for code, text in BREAK_GLASS_REASONS.items():
            self.reason.addItem(text, code)
        self.text = QPlainTextEdit()
        self.text.setAccessibleName("Explain the reason")
        self.text.setTabChangesFocus(True)
        self.text.setMaximumHeight(90)
        self.text.setPlaceholderText(f"At least {MIN_BREAK_GLASS_TEXT} characters")
        self.password = field("Your password", password=True)
        form = QFormLayout()
        for caption, widget in (
            ("&Reason", self.reason),
            ("&Explain", self.text),
            ("&Password", self.password),
        ):
            label = QLabel(caption)
            label.setBuddy(widget)
            form.addRow(label, widget)
        self.feedback = data_label("", role="error", wrap=True)
        self.feedback.setAccessibleName("Break-glass feedback")
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("&Open record")
        ok.setAccessibleName("Open record with break-glass access")
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        self.password.returnPressed.connect(self.submit)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.feedback)
        layout.addWidget(self.buttons)
        self.reason.setFocus()

    def submit(self) -> None:
        if self._busy:
            return
        code = str(self.reason.currentData() or "")
        text, password = self.text.toPlainText(), self.password.text()
        self._busy = True
        self.buttons.setEnabled(False)
        self.feedback.setText("Checking…")
        session, pid = self._session, self._patient_id
        self._runner.run(
            lambda: session.break_glass(pid, code, text, password), self._granted, self._refused
        )

    def _granted(self, grant: object) -> None:
        self._busy = False
        self.password.clear()
        self.granted.emit(grant)
        self.accept()

    def _refused(self, error: BaseException) -> None:
        self._busy = False
        self.buttons.setEnabled(True)
        self.password.clear()
        self.feedback.setText(describe_refusal(error))
