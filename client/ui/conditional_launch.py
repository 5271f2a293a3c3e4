"""The conditional-launch screen: records stay closed on a device that fails the policy's
device rules (the check and its audit entry are ``client.core.conditional_launch``).

Guarantees:
- The main window shows ``ConditionalLaunchScreen`` instead of the clinical workspace when the
  core's check fails (no record is read).
- The screen says what failed and what IT must do, in plain text; it holds no patient data.
"""

from __future__ import annotations

from client.core.conditional_launch import LaunchFailure
from client.ui.qt import QWidget
from client.ui.widgets import centred_card, data_label


class ConditionalLaunchScreen(QWidget):
    """Records stay closed: what failed, what IT must do."""

    def __init__(self, failures: list[LaunchFailure], site: str, device_id: str) -> None:
        super().__init__()
        self.setObjectName("conditional_launch_screen")
        self.setAccessibleName("Records cannot open on this laptop")
        inner = centred_card(self, 720)
        inner.addWidget(data_label("Records cannot open on this laptop", role="title"))
        inner.addWidget(
            data_label(
                "The security policy IT signed for this site requires checks this laptop does "
                "not pass. No patient record has been opened, and nothing has been lost. "
                "This refusal has been recorded.",
                wrap=True,
            )
        )
        self.rows: list[QWidget] = []
        for number, failure in enumerate(failures, start=1):
            what = data_label(f"✖ Problem {number}: {failure.what}", role="error", wrap=True)
            todo = data_label(f"What IT must do: {failure.todo}", wrap=True)
            what.setAccessibleName(f"Problem {number}")
            inner.addWidget(what)
            inner.addWidget(todo)
            self.rows.extend((what, todo))
        inner.addWidget(
            data_label(
                f"Tell IT: device {device_id}, site {site}. You can lock or close Gatehouse.",
                role="hint",
                wrap=True,
            )
        )
