"""The lock (UI-3, AU-3) and the policy's lockdown of copy, print and watermark (UI-2)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from pytestqt.qtbot import QtBot

from client.core.errors import VaultLocked
from client.core.session import Session
from client.ui.caseload import COLUMNS
from client.ui.chart_view import ChartScreen
from client.ui.clinical import ClinicalWorkspace
from client.ui.lockdown import (
    COPY_BLOCKED_MESSAGE,
    PrintAuthorisation,
    Watermark,
    exclude_from_capture,
)
from client.ui.login import LoginScreen
from client.ui.main_window import MainWindow
from client.ui.qt import (
    QApplication,
    QContextMenuEvent,
    QKeySequence,
    QMenu,
    QPoint,
    Qt,
    QWidget,
)
from tests.support.ui import (
    CLINICIAN,
    HTML_FAMILY,
    HTML_PATIENT,
    IdleClock,
    ProvisionedDevice,
    audit_actions,
    device,
    flush_deletes,
    on_worker,
    sign_in,
    widget_texts,
    window,
    workspace,
)


def _chart_open(
    qtbot: QtBot, td: ProvisionedDevice, idle: IdleClock | None = None
) -> tuple[MainWindow, ClinicalWorkspace, Session]:
    win, ws, session = workspace(qtbot, td, idle)
    ws.caseload.query.setText("Zephyrine")
    qtbot.waitUntil(lambda: ws.caseload.model.rowCount() == 1, timeout=5000)
    ws.open_patient(HTML_PATIENT)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    return win, ws, session


def _assert_locked_and_nothing_left(qtbot: QtBot, win: MainWindow, session: Session) -> None:
    assert win.session is None and win.workspace is None
    assert isinstance(win.screens.currentWidget(), LoginScreen)
    assert win.screens.currentWidget().objectName() == "lock_screen"
    flush_deletes()
    qtbot.waitUntil(lambda: not any("Zephyrine" in t for t in widget_texts()), timeout=3000)
    assert not any(w.objectName() == "chart_screen" for w in QApplication.allWidgets())
    assert not any(w.objectName() == "clinical_workspace" for w in QApplication.allWidgets())
    qtbot.waitUntil(lambda: session.is_locked, timeout=5000)  # Session.lock ran on the worker
    try:
        on_worker(win, lambda: session.search("a"))
    except VaultLocked:
        pass
    else:
        raise AssertionError("a data call after the lock must fail")


def test_UI3_lock_destroys_every_widget_holding_patient_data(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path)
    win, _ws, session = _chart_open(qtbot, td)
    assert any(HTML_FAMILY in t for t in widget_texts())  # the name is on screen before
    win.lock_action.trigger()
    _assert_locked_and_nothing_left(qtbot, win, session)
    # The lock screen offers sign-in again, for the same user.
    screen = win.login_screen
    assert screen is not None and screen.user.text() == "nurse.amira"
    sign_in(qtbot, win)
    assert isinstance(win.workspace, ClinicalWorkspace)


def test_AU3_idle_lock_on_the_injected_boot_clock(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, session__idle_lock_seconds=60)
    idle = IdleClock()
    win, _ws, session = _chart_open(qtbot, td, idle)
    idle.seconds += 59
    win.idle.check()
    assert win.session is session  # not yet
    idle.seconds += 2  # e.g. the lid was closed: the boot clock kept counting
    win.idle.check()
    _assert_locked_and_nothing_left(qtbot, win, session)


def test_ctrl_l_locks_and_a_result_arriving_after_the_lock_is_dropped(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path)
    win, ws, session = workspace(qtbot, td)
    ws.open_patient(HTML_PATIENT)  # queued on the worker ...
    qtbot.keyClick(ws.caseload.query, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert win.session is None  # ... and the lock came first on the GUI thread
    qtbot.wait(300)
    _assert_locked_and_nothing_left(qtbot, win, session)


def test_minimise_locks_when_the_policy_says_so(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, load=False)
    win = window(qtbot, td)
    session = sign_in(qtbot, win)
    win.showMinimized()
    qtbot.waitUntil(lambda: win.session is None, timeout=3000)
    qtbot.waitUntil(lambda: session.is_locked, timeout=5000)


def test_UI2_copy_blocked_by_policy_leaves_the_clipboard_alone_and_is_audited(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path)  # the default policy blocks copy-out
    win, ws, session = _chart_open(qtbot, td)
    clipboard = QApplication.clipboard()
    clipboard.setText("sentinel")
    ws.back_to_search()
    ws.caseload.query.setText("Zephyrine")
    qtbot.waitUntil(lambda: ws.caseload.model.rowCount() == 1, timeout=5000)
    ws.caseload.table.setFocus()
    ws.caseload.table.selectRow(0)
    with qtbot.waitSignal(ws.copy_guard.blocked) as blocked:
        qtbot.keySequence(ws.caseload.table, QKeySequence.StandardKey.Copy)
    assert blocked.args == [COPY_BLOCKED_MESSAGE]
    assert clipboard.text() == "sentinel"
    qtbot.waitUntil(lambda: "copy_blocked" in audit_actions(win, session), timeout=5000)
    assert "copy_allowed" not in audit_actions(win, session)


def test_UI2_copy_allowed_by_policy_copies_and_is_audited(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, ui__clipboard_copy_out=True)
    win, ws, session = _chart_open(qtbot, td)
    ws.back_to_search()
    ws.caseload.query.setText("Zephyrine")
    qtbot.waitUntil(lambda: ws.caseload.model.rowCount() == 1, timeout=5000)
    ws.caseload.table.setFocus()
    ws.caseload.table.setCurrentIndex(ws.caseload.model.index(0, COLUMNS.index("Prison number")))
    QApplication.clipboard().setText("sentinel")
    qtbot.keySequence(ws.caseload.table, QKeySequence.StandardKey.Copy)
    assert QApplication.clipboard().text() == "A1234BC"
    qtbot.waitUntil(lambda: "copy_allowed" in audit_actions(win, session), timeout=5000)


def test_UI2_print_blocked_by_policy_is_audited(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path)  # the default policy blocks printing
    win, ws, session = _chart_open(qtbot, td)
    messages: list[str] = []
    ws.notify.connect(messages.append)
    qtbot.keyClick(ws.patient_screen, Qt.Key.Key_P, Qt.KeyboardModifier.ControlModifier)
    assert any("Printing is turned off" in m for m in messages)
    qtbot.waitUntil(lambda: "print_blocked" in audit_actions(win, session), timeout=5000)


def test_watermark_follows_the_policy(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, load=False)
    _win, ws, _session = workspace(qtbot, td)
    assert isinstance(ws.watermark, Watermark)
    assert ws.watermark.text().startswith("nurse.amira · ")
    assert ws.watermark.testAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
    assert ws.watermark.geometry() == ws.rect()

    td2 = device(tmp_path / "b", load=False, ui__watermark=False)
    _win2, ws2, _session2 = workspace(qtbot, td2)
    assert ws2.watermark is None


def test_screen_capture_exclusion_is_a_documented_no_op_off_windows(qtbot: QtBot) -> None:
    widget = QWidget()
    qtbot.addWidget(widget)
    assert exclude_from_capture(widget) is (sys.platform == "win32")


def test_losing_focus_to_another_application_locks_when_the_policy_says_so(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path)
    win, _ws, session = _chart_open(qtbot, td)
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    app.applicationStateChanged.emit(Qt.ApplicationState.ApplicationInactive)
    qtbot.wait(600)
    assert win.session is session  # focus came straight back (a dialog closing): no lock
    win.app_state = lambda: Qt.ApplicationState.ApplicationInactive  # the OS says: elsewhere
    app.applicationStateChanged.emit(Qt.ApplicationState.ApplicationInactive)
    qtbot.waitUntil(lambda: win.session is None, timeout=3000)
    _assert_locked_and_nothing_left(qtbot, win, session)


def test_UI2_context_menu_copy_on_the_chart_is_blocked_and_audited(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path)
    win, ws, session = _chart_open(qtbot, td)
    screen = ws.patient_screen
    assert isinstance(screen, ChartScreen)
    QApplication.clipboard().setText("sentinel")
    name = screen.header.name
    event = QContextMenuEvent(
        QContextMenuEvent.Reason.Keyboard, QPoint(2, 2), name.mapToGlobal(QPoint(2, 2))
    )
    assert QApplication.sendEvent(name, event)  # the guard took it; no native menu
    menu = name.findChild(QMenu, "copy_menu")
    assert menu is not None
    with qtbot.waitSignal(ws.copy_guard.blocked):
        menu.actions()[0].trigger()
    menu.close()
    assert QApplication.clipboard().text() == "sentinel"
    qtbot.waitUntil(lambda: "copy_blocked" in audit_actions(win, session), timeout=5000)


def test_AU4_print_allowed_by_policy_asks_reason_and_password_and_is_audited(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path, ui__printing=True)
    win, ws, session = _chart_open(qtbot, td)
    messages: list[str] = []
    ws.notify.connect(messages.append)
    ws.print_current()
    dialog = ws.findChild(PrintAuthorisation)
    assert dialog is not None and dialog.isVisible()
    dialog.reason.setText("Hospital escort needs the medication list")
    dialog.password.setText("wrong password here")
    dialog.accept()
    qtbot.waitUntil(lambda: any(m.startswith("Not printed.") for m in messages), timeout=10000)
    assert "print_allowed" not in audit_actions(win, session)
    td.clocks.advance(dt.timedelta(seconds=30))  # past the re-authentication throttle
    ws.print_current()
    dialogs = [d for d in ws.findChildren(PrintAuthorisation) if d.isVisible()]
    assert len(dialogs) == 1
    dialogs[0].reason.setText("Hospital escort needs the medication list")
    dialogs[0].password.setText(CLINICIAN[1])
    dialogs[0].accept()
    qtbot.waitUntil(lambda: any("authorised and recorded" in m for m in messages), timeout=10000)
    assert "print_allowed" in audit_actions(win, session)
