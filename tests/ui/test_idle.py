"""AU-3: idle lock with an injected clock, including time spent suspended."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from client.ui.idle import IdleWatcher, boot_clock
from client.ui.qt import QLineEdit, Qt


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_locks_after_the_idle_period_and_only_once(qtbot: QtBot) -> None:
    clock = FakeClock()
    watcher = IdleWatcher(300, clock)
    locks: list[bool] = []
    watcher.lock_requested.connect(lambda: locks.append(True))
    watcher.start()
    clock.now += 299
    watcher.check()
    assert locks == []
    clock.now += 1
    watcher.check()
    watcher.check()
    assert locks == [True]
    watcher.stop()


def test_keyboard_activity_resets_the_idle_period(qtbot: QtBot) -> None:
    clock = FakeClock()
    watcher = IdleWatcher(60, clock)
    locks: list[bool] = []
    watcher.lock_requested.connect(lambda: locks.append(True))
    field = QLineEdit()
    qtbot.addWidget(field)
    field.show()
    watcher.start()
    clock.now += 50
    qtbot.keyClick(field, Qt.Key.Key_A)
    clock.now += 50
    watcher.check()
    assert locks == []
    clock.now += 10
    watcher.check()
    assert locks == [True]
    watcher.stop()


def test_time_asleep_counts_a_resume_locks_at_once(qtbot: QtBot) -> None:
    """The boot clock jumps by the suspended time; the first poll after resume locks."""
    clock = FakeClock()
    watcher = IdleWatcher(300, clock)
    locks: list[bool] = []
    watcher.lock_requested.connect(lambda: locks.append(True))
    watcher.start()
    clock.now += 8 * 3600  # the lid was closed overnight; no timer fired meanwhile
    watcher.check()
    assert locks == [True]
    watcher.stop()


def test_the_real_boot_clock_moves() -> None:
    assert boot_clock() > 0
