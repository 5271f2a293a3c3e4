"""Lockdown from the signed policy (UI-2, UI-3): copy, print, watermark, capture, scrubbing.

Guarantees:
- ``CopyGuard`` sees every Ctrl+C / Ctrl+X and every context menu inside the guarded patient
  screen, before the widget does. When the policy blocks copy-out the clipboard is not written
  and ``Session.record_disclosure("copy", patient_id, allowed=False)`` is audited; when it
  allows it, the selected text is copied and the copy is audited as allowed. Native copy paths
  (a table's Ctrl+C, a text field's menu) never run on guarded widgets.
- ``print_chart`` follows ``ui.printing``: blocked → audited as blocked; allowed → the password
  again and a reason (AU-4), then audited. (No printer path yet: nothing is written to disk,
  because a PDF of a chart would be plaintext patient data on the disk, against ST-1.)
  ``printing_offered`` says whether a Print button is shown at all: only when the policy allows
  printing AND the operating system lists a printer (``printer_available``: Qt's
  ``QPrinterInfo``; a system without print support counts as having no printer).
- ``Watermark`` paints the user id and the time, semi-transparent, over patient screens; it
  takes no input and holds no patient data.
- ``exclude_from_capture`` asks the OS to keep the window out of screenshots and recordings.
  Platform limits: on Windows 10 2004+ ``SetWindowDisplayAffinity(WDA_EXCLUDEFROMCAPTURE)``
  blanks the window in captures (older Windows: ``WDA_MONITOR`` shows it black); on macOS the
  equivalent is ``NSWindow.sharingType = none``, which Qt does not expose and recent macOS
  versions do not honour for all capture APIs; on X11 and Wayland there is no such mechanism
  (any client can read the screen on X11; Wayland compositors decide). There it is a
  documented no-op that returns False, and the watermark is the remaining deterrent.
- ``scrub_tree`` empties every text a widget tree shows (labels, fields, editors, item views)
  so that a screen being destroyed at lock holds no patient data even before Qt deletes it.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import sys
from collections.abc import Callable

from client.core import accounts
from client.core.humanize import format_moment
from client.core.session import Session
from client.ui.login import describe_refusal
from client.ui.qt import (
    QAbstractItemView,
    QApplication,
    QColor,
    QComboBox,
    QContextMenuEvent,
    QDialog,
    QDialogButtonBox,
    QEvent,
    QFont,
    QFormLayout,
    QKeyEvent,
    QKeySequence,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QObject,
    QPainter,
    QPaintEvent,
    QPlainTextEdit,
    QPrinterInfo,
    Qt,
    QTimer,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import data_label, field

WDA_EXCLUDEFROMCAPTURE = 0x11
_GUARDED_EVENTS = frozenset({QEvent.Type.KeyPress, QEvent.Type.ContextMenu})
WATERMARK_REFRESH_MS = 30_000
COPY_BLOCKED_MESSAGE = (
    "Copying patient information is turned off on this laptop by the device policy. "
    "The attempt was recorded."
)


def exclude_from_capture(widget: QWidget) -> bool:
    """Exclude ``widget``'s window from screen capture where the OS allows it (see module doc)."""
    if sys.platform != "win32":
        return False
    try:
        user32 = ctypes.WinDLL("user32")  # type: ignore[attr-defined,unused-ignore]
        return bool(user32.SetWindowDisplayAffinity(int(widget.winId()), WDA_EXCLUDEFROMCAPTURE))
    except (AttributeError, OSError):
        return False


def _within(root: QWidget, widget: QObject | None) -> bool:
    return isinstance(widget, QWidget) and (widget is root or root.isAncestorOf(widget))


def selected_text(widget: QWidget) -> str:
    if isinstance(widget, QLineEdit):
        return widget.selectedText()
    if isinstance(widget, QPlainTextEdit):
        return widget.textCursor().selectedText().replace("\u2029", "\n")
    if isinstance(widget, QLabel):
        return widget.selectedText()
    if isinstance(widget, QAbstractItemView) and widget.model() is not None:
        value = widget.model().data(widget.currentIndex())
        return value if isinstance(value, str) else ""
    return ""


class CopyGuard(QObject):
    """Application-wide filter for copy attempts inside the guarded patient screen."""

    blocked = Signal(str)  # a message for the status bar

    def __init__(
        self, session: Session, runner: Runner, allowed: bool, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)  # owned by Qt: never destroyed by a GC on the worker thread
        self._session = session
        self._runner = runner
        self.allowed = allowed
        self._root: QWidget | None = None
        self._patient_id: str | None = None
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self)

    def guard(self, root: QWidget | None, patient_id: str | None) -> None:
        """Guard ``root`` (a patient screen) for ``patient_id``; None stops guarding."""
        self._root = root
        self._patient_id = patient_id

    def detach(self) -> None:
        self._root = None
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind not in _GUARDED_EVENTS:
            return False  # decided before touching any widget: safe while screens are deleted
        root = self._root
        if root is None or not _within(root, watched):
            return False
        assert isinstance(watched, QWidget)
        if isinstance(event, QKeyEvent) and (
            event.matches(QKeySequence.StandardKey.Copy)
            or event.matches(QKeySequence.StandardKey.Cut)
        ):
            self.attempt_copy(watched)
            return True
        if isinstance(event, QContextMenuEvent):
            menu = QMenu(watched)
            menu.setObjectName("copy_menu")
            menu.setAccessibleName("Copy menu")
            action = menu.addAction("&Copy")
            action.triggered.connect(lambda: self.attempt_copy(watched))
            menu.popup(event.globalPos())
            return True
        return False

    def attempt_copy(self, widget: QWidget) -> None:
        """One copy attempt: written to the clipboard and audited only as the policy says."""
        pid, session = self._patient_id, self._session
        if not self.allowed:
            self._runner.run(lambda: session.record_disclosure("copy", pid, allowed=False))
            self.blocked.emit(COPY_BLOCKED_MESSAGE)
            return
        text = selected_text(widget)
        self._runner.run(lambda: session.record_disclosure("copy", pid, allowed=True))
        clipboard = QApplication.clipboard()
        if clipboard is not None and text:
            clipboard.setText(text)


class PrintAuthorisation(QDialog):
    """Reason and password again before printing (AU-4)."""

    def __init__(
        self, on_accept: Callable[[str, str], None], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._on_accept = on_accept
        self.setWindowTitle("Print patient record")
        self.setAccessibleName("Print patient record")
        self.reason = field("Reason for printing")
        self.password = field("Your password", password=True)
        form = QFormLayout()
        form.addRow("&Reason", self.reason)
        form.addRow("&Password", self.password)
        self.feedback = data_label("", role="error", wrap=True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(
            data_label(
                "Printing is recorded and reviewed. Collect the printout at once.", wrap=True
            )
        )
        layout.addLayout(form)
        layout.addWidget(self.feedback)
        layout.addWidget(buttons)

    def accept(self) -> None:
        reason, password = self.reason.text().strip(), self.password.text()
        self.password.clear()
        super().accept()
        self.deleteLater()
        self._on_accept(reason, password)

    def reject(self) -> None:
        self.password.clear()
        super().reject()
        self.deleteLater()


def printer_available() -> bool:
    """True when the operating system lists at least one printer (a print queue)."""
    try:
        return bool(QPrinterInfo.availablePrinterNames())
    except RuntimeError:  # no print support in this Qt build: treat as no printer
        return False


def printing_offered(allowed_by_policy: bool, has_printer: Callable[[], bool]) -> bool:
    """Show Print only when the policy allows it and a printer exists (asked only then)."""
    return allowed_by_policy and has_printer()


def print_chart(
    parent: QWidget,
    session: Session,
    runner: Runner,
    patient_id: str,
    allowed: bool,
    notify: Callable[[str], None],
) -> None:
    """The Print action of a patient screen, per ``ui.printing`` (see module doc)."""
    if not allowed:
        runner.run(lambda: session.record_disclosure("print", patient_id, allowed=False))
        notify(
            "Printing is turned off on this laptop by the device policy. The attempt was recorded."
        )
        return

    def authorise(reason: str, password: str) -> None:
        if len(reason) < 5:
            notify("Not printed: give a reason for printing (at least 5 characters).")
            return

        def work() -> None:
            accounts.reauthenticate(session.device, session.user_id, password)
            session.record_disclosure("print", patient_id, allowed=True)

        runner.run(
            work,
            lambda _r: notify(
                "Printing authorised and recorded. No printer is set up on this laptop yet."
            ),
            lambda error: notify(f"Not printed. {describe_refusal(error)}"),
        )

    PrintAuthorisation(authorise, parent).open()


class Watermark(QWidget):
    """A semi-transparent overlay with the user id and the time, over its parent."""

    def __init__(self, parent: QWidget, user_id: str, clock: Callable[[], dt.datetime]) -> None:
        super().__init__(parent)
        self.setObjectName("watermark")
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self._user_id = user_id
        self._clock = clock
        self._timer = QTimer(self)
        self._timer.setInterval(WATERMARK_REFRESH_MS)
        self._timer.timeout.connect(self.update)
        self._timer.start()
        parent.installEventFilter(self)
        self.setGeometry(parent.rect())
        self.raise_()

    def text(self) -> str:
        return f"{self._user_id} · {format_moment(self._clock())}"

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.parent() and event.type() in (
            QEvent.Type.Resize,
            QEvent.Type.ChildAdded,
            QEvent.Type.Show,
        ):
            parent = self.parentWidget()
            if parent is not None:
                self.setGeometry(parent.rect())
                self.raise_()
        return False

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        colour = QColor(40, 50, 70)
        colour.setAlpha(34)
        painter.setPen(colour)
        font = QFont()
        font.setPointSize(15)
        font.setBold(True)
        painter.setFont(font)
        text = self.text()
        step_x, step_y = 520, 170
        painter.rotate(-20)
        for y in range(-self.width(), self.height() + self.width(), step_y):
            offset = (y // step_y % 2) * (step_x // 2)
            for x in range(-self.width(), self.width() * 2, step_x):
                painter.drawText(x + offset, y, text)
        painter.end()


def scrub_tree(root: QWidget) -> None:
    """Empty every text shown in ``root``'s tree (before it is deleted at lock)."""
    for widget in [root, *root.findChildren(QWidget)]:
        if isinstance(widget, QLabel | QLineEdit | QPlainTextEdit | QComboBox):
            widget.clear()
        elif isinstance(widget, QAbstractItemView):
            model = widget.model()
            clear = getattr(model, "clear", None)
            if callable(clear):
                clear()
        widget.setToolTip("")
        widget.setAccessibleDescription("")


def info(parent: QWidget, title: str, text: str) -> None:
    box = QMessageBox(parent)
    box.setWindowTitle(title)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    box.open()
