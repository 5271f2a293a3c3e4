"""Issue 12: the clinician's journey walked with the keyboard alone.

Every key goes to whatever widget has the focus at that moment, as a real keyboard would send
it; the test never clicks and never moves the focus itself. Sign in, find a patient by name,
open the chart, write a consultation with vital signs, save it, go back to the search and lock.
Real window, real vault (offscreen).
"""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from client.ui.chart_view import ChartScreen
from client.ui.clinical import ClinicalWorkspace
from client.ui.consultation_form import ConsultationForm
from client.ui.main_window import MainWindow
from client.ui.qt import QApplication, Qt
from tests.support.device import CLINICIAN, load_records
from tests.support.fhir import nhs_number, patient
from tests.support.keyboard import focused, press, sign_in_by_keyboard, type_text
from tests.support.ui import device, window

PATIENT = patient("pt-walk-1", "Keyworth", ["Kit"], birth_date="1981-03-02", nhs=nhs_number(51))
NOTE = "Seen on the wing. Chest clear."


def test_the_clinician_journey_works_from_the_keyboard_alone(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, load=False)
    load_records(td.device, [PATIENT], user=CLINICIAN)
    win: MainWindow = window(qtbot, td)

    # Sign in: the user field has the focus; Tab to the password; Enter submits.
    sign_in_by_keyboard(qtbot, win, CLINICIAN)
    qtbot.waitUntil(lambda: isinstance(win.workspace, ClinicalWorkspace), timeout=15000)
    ws = win.workspace
    assert isinstance(ws, ClinicalWorkspace)

    # Find the patient: the search box has the focus; one match, so Enter opens the chart.
    qtbot.waitUntil(lambda: QApplication.focusWidget() is ws.caseload.query, timeout=5000)
    type_text(qtbot, "keyworth")
    qtbot.waitUntil(lambda: ws.caseload.model.rowCount() == 1, timeout=5000)
    press(qtbot, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)

    # Ctrl+N: a new consultation, the focus in the first vital sign.
    press(qtbot, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ConsultationForm), timeout=5000)
    form = ws.patient_screen
    assert isinstance(form, ConsultationForm)
    assert focused() is form.vital_fields["systolic"]
    type_text(qtbot, "124")
    press(qtbot, Qt.Key.Key_Tab)
    assert focused() is form.vital_fields["diastolic"]
    type_text(qtbot, "78")
    # The note by its label's mnemonic (Alt+N: "Consultation &note").
    press(qtbot, Qt.Key.Key_N, Qt.KeyboardModifier.AltModifier)
    assert focused() is form.note
    type_text(qtbot, NOTE)

    # Ctrl+S saves; the chart comes back with the note marked as not yet sent.
    press(qtbot, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(
        lambda: ws.chart is not None and any(e.unsent for e in ws.chart.timeline), timeout=10000
    )
    assert win.session is not None
    saved = [e for e in ws.chart.timeline if e.unsent]
    assert any(NOTE in e.text for e in saved), saved

    # Esc goes back to the search; Ctrl+L locks.
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    press(qtbot, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: ws.patient_screen is None, timeout=5000)
    press(qtbot, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: win.session is None and win.login_screen is not None, timeout=5000)
