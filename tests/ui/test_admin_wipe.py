"""Admin panel: certificate expiry, storage used, audit backlog, and the wipe (WP-1) from the UI.

A real provisioned device, a real window, real sign-in and a real wipe; only the device clock is
fake. The final yes/no is a real QMessageBox, answered by clicking its button.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from pytestqt.qtbot import QtBot

from client.core.device import TLS_CERT
from client.core.device_admin import certificate_expiry, storage_used
from client.core.humanize import format_moment, human_size
from client.core.vault import database_path
from client.ui.admin import AdminPanel
from client.ui.main_window import MainWindow
from client.ui.qt import QLabel, QMessageBox
from tests.support.certificates import certificate_pem
from tests.support.device import T0, ProvisionedDevice
from tests.support.ui import device, sign_in, window

ADMIN = ("it.admin", "provisioning desk password")
DEVICE_ID = "dev-test-0001"


def admin_panel(
    qtbot: QtBot, tmp_path: Path, cert: bytes | None = None
) -> tuple[MainWindow, AdminPanel, ProvisionedDevice]:
    td = device(tmp_path, role="admin", user=ADMIN, load=False)
    if cert is not None:
        (td.device.data_dir / TLS_CERT).write_bytes(cert)
    win = window(qtbot, td)
    sign_in(qtbot, win, ADMIN)
    panel = win.workspace
    assert isinstance(panel, AdminPanel)
    qtbot.waitUntil(lambda: panel.device_id.text() == DEVICE_ID, timeout=5000)
    return win, panel, td


def answer(qtbot: QtBot, panel: AdminPanel, choice: QMessageBox.StandardButton) -> None:
    qtbot.waitUntil(lambda: panel.wipe_question is not None, timeout=2000)
    box = panel.wipe_question
    assert box is not None and box.isVisible()
    assert box.defaultButton() is box.button(QMessageBox.StandardButton.No)
    box.button(choice).click()


def test_admin_panel_shows_certificate_expiry_storage_and_audit_backlog(
    qtbot: QtBot, tmp_path: Path
) -> None:
    not_after = (T0 + dt.timedelta(days=90)).replace(microsecond=0)
    _win, panel, td = admin_panel(qtbot, tmp_path, certificate_pem(not_after))
    data_dir = td.data_dir
    assert panel.certificate.text().startswith(f"expires {format_moment(not_after)}")
    assert "(in " in panel.certificate.text()
    used = storage_used(data_dir)
    assert used >= database_path(data_dir).stat().st_size > 0
    assert panel.storage.text().endswith(("KiB", "MiB"))
    backlog = re.search(r"(\d+) audit entries", panel.backlog.text())
    assert backlog is not None and int(backlog.group(1)) > 0  # the admin's sign-in, at least


def test_admin_panel_says_not_enrolled_and_flags_an_expired_certificate(
    qtbot: QtBot, tmp_path: Path
) -> None:
    assert certificate_expiry(tmp_path / "absent.crt") == ("missing", None)
    junk = tmp_path / "junk.crt"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
    assert certificate_expiry(junk) == ("unreadable", None)
    assert human_size(532) == "532 bytes"
    assert human_size(3 * 1024 * 1024 + 200 * 1024) == "3.2 MiB"
    _win, panel, _data = admin_panel(qtbot, tmp_path, certificate_pem(T0 - dt.timedelta(days=1)))
    assert panel.certificate.text().startswith("⚠ EXPIRED ")
    assert panel.certificate.property("role") == "error"


def test_admin_panel_without_a_certificate_says_not_enrolled(qtbot: QtBot, tmp_path: Path) -> None:
    _win, panel, _data = admin_panel(qtbot, tmp_path)
    assert panel.certificate.text().startswith("Not enrolled")


def test_WP1_wipe_refuses_a_wrong_confirmation_or_password_then_wipes(
    qtbot: QtBot, tmp_path: Path
) -> None:
    win, panel, td = admin_panel(qtbot, tmp_path)
    clocks = td.clocks
    vault = database_path(td.data_dir)
    # Wrong device id: refused before any question, nothing happens.
    panel.wipe_confirmation.setText("dev-test-0002")
    panel.wipe_password.setText(ADMIN[1])
    panel.wipe_button.click()
    assert panel.wipe_question is None
    assert "device id exactly" in panel.wipe_feedback.text()
    # Right id, but "No" at the final question: nothing happens.
    panel.wipe_confirmation.setText(DEVICE_ID)
    panel.wipe_button.click()
    answer(qtbot, panel, QMessageBox.StandardButton.No)
    assert panel.wipe_feedback.text() == "Not wiped."
    assert vault.exists() and win.session is not None
    # Right id, wrong password, "Yes": the core refuses; still signed in, nothing erased.
    panel.wipe_password.setText("not the admin password")
    panel.wipe_button.click()
    answer(qtbot, panel, QMessageBox.StandardButton.Yes)
    qtbot.waitUntil(lambda: panel.wipe_button.isEnabled(), timeout=15000)
    assert panel.wipe_password.text() == ""
    assert vault.exists() and win.session is not None and win.workspace is panel
    assert "password is not right" in panel.wipe_feedback.text()
    clocks.advance(dt.timedelta(seconds=30))  # past the re-authentication throttle
    # Right id, right password, "Yes": wiped, and the window says so.
    panel.wipe_password.setText(ADMIN[1])
    panel.wipe_button.click()
    answer(qtbot, panel, QMessageBox.StandardButton.Yes)

    def wiped_screen() -> bool:
        screen = win.screens.currentWidget()
        return screen is not None and screen.objectName() == "wiped_screen"

    qtbot.waitUntil(wiped_screen, timeout=15000)
    assert win.session is None and win.login_screen is None
    screen = win.screens.currentWidget()
    assert isinstance(screen, QLabel) and "This laptop was wiped" in screen.text()
    assert not vault.exists()
    assert win.device.wiped
