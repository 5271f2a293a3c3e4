"""Issue 12: the auditor's journey walked with the keyboard alone: sign in, go to the patient
field by its Alt+P mnemonic, type an NHS number, Enter to find, read the rows, lock with
Ctrl+L. Every key goes to whatever widget has the focus. Real vault, real widgets (offscreen).
"""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from client.core.session import Session
from client.ui.admin import AdminPanel
from client.ui.audit_view import AuditWorkspace
from client.ui.qt import Qt
from tests.support.fhir import nhs_number
from tests.support.keyboard import focused, sign_in_by_keyboard
from tests.support.ui import CLINICIAN, HTML_PATIENT, add_slot, device, window

AUDITOR = ("ig.walker", "audit trail reviewer 2026")
NHS = nhs_number(18)  # HTML_PATIENT's


def test_the_auditor_journey_works_from_the_keyboard_alone(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path)
    clinician = Session.login(td.device, *CLINICIAN)
    other = next(p.id for p in clinician.caseload() if p.id != HTML_PATIENT)
    clinician.open_chart(HTML_PATIENT)
    clinician.open_chart(other)
    clinician.lock()
    add_slot(td, AUDITOR, "auditor")
    win = window(qtbot, td)
    sign_in_by_keyboard(qtbot, win, AUDITOR)
    qtbot.waitUntil(lambda: isinstance(win.workspace, AuditWorkspace), timeout=15000)
    audit = win.workspace
    assert isinstance(audit, AuditWorkspace)
    qtbot.waitUntil(lambda: audit.model.rowCount() > 2, timeout=10000)

    qtbot.keyClick(focused(), Qt.Key.Key_P, Qt.KeyboardModifier.AltModifier)  # "&Patient"
    patient_field = focused()
    qtbot.keyClicks(patient_field, f"{NHS[:3]} {NHS[3:6]} {NHS[6:]}")
    qtbot.keyClick(patient_field, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: audit.searched is not None, timeout=10000)
    qtbot.waitUntil(audit.find_button.isEnabled, timeout=10000)
    patients = {row[4] for row in audit.model.rows}
    assert patients == {HTML_PATIENT}, patients
    assert "Opened record" in {row[2] for row in audit.model.rows}

    qtbot.keyClick(focused(), Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: win.session is None and win.login_screen is not None, timeout=5000)


def test_after_an_admin_signs_in_the_keyboard_focus_is_in_the_admin_panel(
    qtbot: QtBot, tmp_path: Path
) -> None:
    admin = ("it.walker", "it admin passphrase 2026")
    td = device(tmp_path, load=False)
    add_slot(td, admin, "admin")
    win = window(qtbot, td)
    sign_in_by_keyboard(qtbot, win, admin)
    qtbot.waitUntil(lambda: isinstance(win.workspace, AdminPanel), timeout=15000)
    panel = win.workspace
    assert isinstance(panel, AdminPanel)
    assert focused() is panel.users
