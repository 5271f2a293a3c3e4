"""How screens call the core: through the one executor, with results dropped after a lock.

Guarantees:
- Every call a screen makes runs on the window's single-worker ``Executor`` (never on the GUI
  thread); callbacks run on the GUI thread.
- A ``Runner`` belongs to one signed-in session. ``revoke()`` (called by the lock) makes every
  callback still in flight a no-op, so a chart that finishes loading after the lock never
  creates a widget holding patient data (UI-3), and work submitted after the revoke is never
  run (a scrubbed screen cannot, say, overwrite a kept draft with empty text).
- Failures without their own handler go to the one error boundary (``error_boundary.explain``),
  shown as a message box; never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from client.ui.error_boundary import explain
from client.ui.executor import Executor
from client.ui.qt import QMessageBox, Qt, QWidget

Callback = Callable[[Any], None]


def show_error(parent: QWidget | None, error: BaseException) -> None:
    """The one place an error reaches the screen: plain text, no traceback."""
    explanation = explain(error)
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(explanation.title)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(explanation.message)
    box.setAccessibleName("Error message")
    box.setObjectName(f"error:{explanation.reason}")
    box.open()


class Runner:
    """Submit core calls for one session; callbacks are dropped once revoked."""

    def __init__(self, executor: Executor, error_parent: QWidget | None) -> None:
        self._executor = executor
        self._error_parent = error_parent
        self._live = True

    @property
    def live(self) -> bool:
        return self._live

    def revoke(self) -> None:
        self._live = False

    def run(
        self,
        work: Callable[[], Any],
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
    ) -> None:
        if not self._live:
            return  # a revoked runner submits nothing: no work runs on a session after its lock

        def success(result: Any) -> None:
            if self._live and on_success is not None:
                on_success(result)

        def failure(error: Any) -> None:
            if not self._live:
                return
            if on_failure is not None:
                on_failure(error)
            else:
                show_error(self._error_parent, error)

        self._executor.submit(work, success, failure)

    def after(self, work: Callable[[], Any]) -> None:
        """Queue ``work`` behind everything submitted so far, ignoring its result."""
        self._executor.submit(work, None, lambda _error: None)
