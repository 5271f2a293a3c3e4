"""Idle lock that also works across suspend (SECURITY.md AU-3).

Guarantees:
- Any keyboard or mouse input anywhere in the application counts as activity.
- Idleness is measured with an injected clock that, in production, is the boot clock
  (``CLOCK_BOOTTIME``): it keeps counting while the laptop sleeps, so opening the lid after the
  idle period locks at once, not after another full period. A Qt timer only *polls*; it is never
  the measure of time.
- ``lock_requested`` is emitted once per idle period; activity re-arms it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from client.ui.qt import QApplication, QEvent, QObject, QTimer, Signal

_ACTIVITY_EVENTS = frozenset(
    {
        QEvent.Type.KeyPress,
        QEvent.Type.MouseButtonPress,
        QEvent.Type.MouseMove,
        QEvent.Type.Wheel,
        QEvent.Type.TouchBegin,
    }
)
POLL_INTERVAL_MS = 1000  # how often the clock is looked at; not the idle measure itself


def boot_clock() -> float:
    """Seconds on a clock that counts suspend and cannot be set by the user."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


class IdleWatcher(QObject):
    """Emits ``lock_requested`` when nobody has touched the app for ``idle_seconds``."""

    lock_requested = Signal()

    def __init__(
        self,
        idle_seconds: int,
        clock: Callable[[], float] = boot_clock,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._last_activity = clock()
        self._armed = True
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.check)
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self)

    def start(self) -> None:
        self.touch()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def set_idle_seconds(self, seconds: int) -> None:
        self._idle_seconds = seconds

    def touch(self) -> None:
        self._last_activity = self._clock()
        self._armed = True

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() in _ACTIVITY_EVENTS:
            self.touch()
        return False

    def check(self) -> None:
        """Look at the clock now (the timer calls this; so does a resume-from-suspend hook)."""
        if self._armed and self._clock() - self._last_activity >= self._idle_seconds:
            self._armed = False
            self.lock_requested.emit()
