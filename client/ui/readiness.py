"""The readiness panel: the core's readiness checks (``client.core.readiness``) on screen.

Guarantees:
- ``ReadinessPanel`` shows every check as plain text with a ✔/✖ word, never colour alone,
  and a one-line summary of how many checks need attention.
- It decides nothing: which checks pass is ``client.core.readiness.assess``.
"""

from __future__ import annotations

from client.core.readiness import Check
from client.ui.qt import QGridLayout, QLabel, QVBoxLayout, QWidget
from client.ui.widgets import data_label, set_role


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
