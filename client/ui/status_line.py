"""The status bar's one owner: one line of text, never one message printed over another.

Guarantees:
- The main window's status bar holds exactly one widget, a ``StatusLine``, and nothing else
  writes to the status bar (``QStatusBar.showMessage`` is never used: its temporary message
  and the permanent widgets shared the bar and overlapped in a narrow window).
- Three sources, one text: a transient ``notice`` (newest wins; it shows alone for
  ``NOTICE_MS`` and then the line falls back), the sync state (``set_sync``) and the session
  state (``set_session``), shown together when no notice is up, separated by " · ".
- The label wraps to at most two lines (whole text in its tooltip) rather than running off
  the edge or growing the window, and every text is plain (UI-1). Texts are
  sentences written for people (UI-4); a failed sync's text is ``client.core.sync_failures``'s.
- ``clear()`` (the lock) drops all three at once.
"""

from __future__ import annotations

from client.ui.qt import QSizePolicy, Qt, QTimer, QVBoxLayout, QWidget
from client.ui.widgets import data_label

NOTICE_MS = 8000


class StatusLine(QWidget):
    """The status bar's single widget."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("status_line")
        self.setAccessibleName("Status")
        self.label = data_label("", wrap=True)
        self.label.setObjectName("status_text")
        self.label.setAccessibleName("Status")
        # At most two lines high and never wider than the window: a longer text is cut at
        # the second line and is whole in the tooltip (and the sync panel has it all).
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.label.setFixedHeight(2 * self.label.fontMetrics().lineSpacing() + 4)
        self.label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 0, 6, 0)
        layout.addWidget(self.label)
        self.notice_text = ""
        self.sync_text = ""
        self.session_text = ""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(NOTICE_MS)
        self._timer.timeout.connect(self._notice_expired)

    def text(self) -> str:
        return self.label.text()

    def notice(self, text: str) -> None:
        """Show ``text`` now (replacing any older notice) for ``NOTICE_MS``."""
        self.notice_text = text
        self._timer.start()
        self._render()

    def set_sync(self, text: str) -> None:
        self.sync_text = text
        self._render()

    def set_session(self, text: str) -> None:
        self.session_text = text
        self._render()

    def clear(self) -> None:
        self._timer.stop()
        self.notice_text = self.sync_text = self.session_text = ""
        self._render()

    def _notice_expired(self) -> None:
        self.notice_text = ""
        self._render()

    def _render(self) -> None:
        state = " · ".join(t for t in (self.sync_text, self.session_text) if t)
        text = self.notice_text or state
        self.label.setText(text)
        self.label.setToolTip(text)
