"""Keyboard-only walks for the UI tests: every key goes to whatever widget has the focus at
that moment, as a real keyboard would send it; nothing here clicks or moves the focus."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from client.ui.main_window import MainWindow
from client.ui.qt import QApplication, Qt, QWidget


def focused() -> QWidget:
    widget = QApplication.focusWidget()
    assert widget is not None, "nothing has the keyboard focus"
    return widget


def press(qtbot: QtBot, key: Qt.Key, modifier: Qt.KeyboardModifier | None = None) -> None:
    if modifier is None:
        qtbot.keyClick(focused(), key)
    else:
        qtbot.keyClick(focused(), key, modifier)


def type_text(qtbot: QtBot, text: str) -> None:
    qtbot.keyClicks(focused(), text)


def sign_in_by_keyboard(qtbot: QtBot, win: MainWindow, user: tuple[str, str]) -> None:
    """The sign-in screen has the focus in the user field; type, Tab, type, Enter."""
    login = win.login_screen
    assert login is not None
    win.activateWindow()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is login.user, timeout=5000)
    type_text(qtbot, user[0])
    press(qtbot, Qt.Key.Key_Tab)
    assert focused() is login.password
    type_text(qtbot, user[1])
    press(qtbot, Qt.Key.Key_Return)
