"""The login screen: success, refusal feedback, offline state, password change, no freezing."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

from pytestqt.qtbot import QtBot

from client.core.session import Session
from client.ui.clinical import ClinicalWorkspace
from client.ui.login import LoginScreen, PasswordChangeDialog
from client.ui.main_window import MainWindow
from client.ui.qt import QTimer
from tests.support.ui import (
    CLINICIAN,
    ProvisionedDevice,
    device,
    on_worker,
    sign_in,
    window,
)


def login_window(
    qtbot: QtBot, tmp_path: Path, td: ProvisionedDevice | None = None
) -> tuple[MainWindow, LoginScreen]:
    """The main window of a provisioned laptop with no records, on its sign-in screen."""
    win = window(qtbot, td or device(tmp_path, load=False))
    screen = win.login_screen
    assert screen is not None
    return win, screen


def test_sign_in_runs_on_the_executor_and_opens_the_clinical_workspace(
    qtbot: QtBot, tmp_path: Path
) -> None:
    win, screen = login_window(qtbot, tmp_path)
    qtbot.waitUntil(lambda: "left before a sync" in screen.offline.text())
    assert "(and 2 more restarts)" in screen.offline.text()  # TM-3: restarts count too
    screen.user.setText(CLINICIAN[0])
    screen.password.setText(CLINICIAN[1])
    qtbot.keyClick(screen.password, "\r")  # Enter submits
    assert screen.busy.isVisible()  # Argon2 runs on the worker; the busy bar shows meanwhile
    assert not screen.sign_in.isEnabled()
    qtbot.waitUntil(lambda: win.session is not None, timeout=15000)
    assert isinstance(win.workspace, ClinicalWorkspace)
    assert win.toolbar.isVisible()
    assert "nurse.amira" in win.who.text()


def test_wrong_password_shows_attempts_left_and_clears_the_field(
    qtbot: QtBot, tmp_path: Path
) -> None:
    win, screen = login_window(qtbot, tmp_path)
    screen.user.setText(CLINICIAN[0])
    screen.password.setText("not my password at all")
    screen.submit()
    qtbot.waitUntil(lambda: bool(screen.feedback.text()), timeout=15000)
    assert "4 attempt(s) left before lockout" in screen.feedback.text()
    assert screen.password.text() == ""
    assert win.session is None
    assert screen.sign_in.isEnabled()


def test_lockout_shows_the_locked_until_time(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, load=False, auth__lockout_after_failures=3, auth__wipe_after_failures=9)
    _win, screen = login_window(qtbot, tmp_path, td)
    for attempt in range(3):
        screen.user.setText(CLINICIAN[0])
        screen.password.setText(f"wrong password {attempt}")
        screen.feedback.clear()
        screen.submit()
        qtbot.waitUntil(lambda: bool(screen.feedback.text()), timeout=15000)
        td.clocks.advance(dt.timedelta(seconds=30))  # past the throttle delay
    assert "locked until" in screen.feedback.text().lower()
    # UK local time in the one display format, never UTC
    assert re.search(r"\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}", screen.feedback.text())
    assert "UTC" not in screen.feedback.text()


def test_password_change_dialog_rewraps_the_key(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, load=False)
    win = window(qtbot, td)
    session = sign_in(qtbot, win)
    assert win.runner is not None
    dialog = PasswordChangeDialog(session, win.runner, win)
    qtbot.addWidget(dialog)
    dialog.old.setText(CLINICIAN[1])
    dialog.new.setText("a brand new long passphrase")
    dialog.again.setText("a different long passphrase")
    dialog.submit()
    assert "not the same" in dialog.feedback.text()
    dialog.again.setText("a brand new long passphrase")
    with qtbot.waitSignal(dialog.accepted, timeout=15000):
        dialog.submit()
    fresh = on_worker(
        win, lambda: Session.login(td.device, CLINICIAN[0], "a brand new long passphrase")
    )
    assert fresh.role == "clinician"
    on_worker(win, fresh.lock)


def test_the_event_loop_keeps_turning_while_a_slow_call_runs(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, load=False)
    win = window(qtbot, td)
    sign_in(qtbot, win)
    assert win.runner is not None
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    done: list[object] = []
    win.runner.run(lambda: time.sleep(0.6), done.append)  # a slow core call
    qtbot.waitUntil(lambda: bool(done), timeout=5000)
    timer.stop()
    assert len(ticks) >= 10  # the GUI thread kept running timers throughout
