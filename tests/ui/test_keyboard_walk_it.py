"""Issue 12: IT's first run of a laptop walked with the keyboard alone, against a real gateway
(mutual TLS on 127.0.0.1): the bundle preview, Enter to set the laptop up, Enter to continue,
then the clinician's first (online) sign-in by its Alt+F mnemonic. Every key goes to whatever
widget has the focus, as a real keyboard would send it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from client.ui.clinical import ClinicalWorkspace
from client.ui.main_window import MainWindow
from client.ui.provisioning import ProvisioningWindow
from client.ui.qt import QApplication, Qt
from tests.support.keyboard import focused
from tests.support.ui import disk_is_fine
from tests.support.ui_gateway import NURSE, LiveGateway, provision_for_tests, start_live_gateway


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = start_live_gateway(tmp_path_factory.mktemp("gw"), patients=5)
    try:
        yield gateway
    finally:
        gateway.stop()


def _main(device: Any) -> MainWindow:
    win = MainWindow(device, launch_check=disk_is_fine)
    win.app_state = lambda: Qt.ApplicationState.ApplicationActive
    return win


def test_it_sets_up_a_laptop_and_the_first_sign_in_works_from_the_keyboard_alone(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    bundle = live.bundle(tmp_path / "bundle.json")
    first = ProvisioningWindow(
        tmp_path / "device", bundle_path=bundle, provision=provision_for_tests, open_main=_main
    )
    first.show()  # not handed to qtbot: it closes (and deletes) itself on "Continue"
    first.activateWindow()
    screen = first.screen_widget
    qtbot.waitUntil(lambda: screen.enrol.isEnabled() and screen.enrol.hasFocus(), timeout=10000)

    qtbot.keyClick(focused(), Qt.Key.Key_Return)  # "Set up this laptop"
    qtbot.waitUntil(lambda: screen.proceed.isVisible() and screen.proceed.hasFocus(), timeout=30000)
    qtbot.keyClick(focused(), Qt.Key.Key_Return)  # "Continue to sign-in"
    qtbot.waitUntil(lambda: isinstance(first.main_window, MainWindow), timeout=10000)
    win = first.main_window
    assert isinstance(win, MainWindow)
    qtbot.addWidget(win)
    win.show()
    win.activateWindow()
    login = win.login_screen
    assert login is not None
    qtbot.waitUntil(lambda: QApplication.focusWidget() is login.user, timeout=5000)
    qtbot.keyClicks(focused(), NURSE[0])
    qtbot.keyClick(focused(), Qt.Key.Key_Tab)
    assert focused() is login.password
    qtbot.keyClicks(focused(), NURSE[1])
    qtbot.keyClick(focused(), Qt.Key.Key_F, Qt.KeyboardModifier.AltModifier)  # First sign-in
    qtbot.waitUntil(lambda: isinstance(win.workspace, ClinicalWorkspace), timeout=30000)
    assert win.session is not None and win.session.role == "clinician"
