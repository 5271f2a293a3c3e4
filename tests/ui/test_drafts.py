"""CR-4: a half-written consultation survives Esc, Cancel, the idle lock, sign-out and the end of
a break-glass grant; nothing typed is discarded without asking.

Real window, real vault, real executor; only the clocks are fake.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from client.ui.chart_view import ChartScreen
from client.ui.clinical import ClinicalWorkspace
from client.ui.consultation_form import ConsultationForm
from client.ui.qt import QMessageBox, Qt
from tests.support.ui import (
    CLINICIAN,
    HTML_PATIENT,
    OUTSIDE_PATIENT,
    IdleClock,
    ProvisionedDevice,
    audit_actions,
    device,
    on_worker,
    open_chart,
    sign_in,
    window,
    workspace,
)

NOTE = "Wheeze on exertion since Tuesday. Draft-unique-Quixotic."


@pytest.fixture
def td(tmp_path: Path) -> ProvisionedDevice:
    return device(tmp_path, transfer=True)


def _form(qtbot: QtBot, ws: ClinicalWorkspace, pid: str = HTML_PATIENT) -> ConsultationForm:
    open_chart(qtbot, ws, pid)
    ws.new_consultation()
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ConsultationForm), timeout=5000)
    form = ws.patient_screen
    assert isinstance(form, ConsultationForm)
    return form


def _type(form: ConsultationForm) -> None:
    form.vital_fields["heart_rate"].setText("88")
    form.vital_fields["temperature"].setText("37,")  # half-typed: kept as typed
    form.note.setPlainText(NOTE)
    form.plan.setPlainText("Peak flow diary.")


def _restored_form(
    qtbot: QtBot, ws: ClinicalWorkspace, pid: str = HTML_PATIENT
) -> ConsultationForm:
    """Reopen the patient: the form comes back with the draft in it."""
    ws.open_patient(pid)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ConsultationForm), timeout=5000)
    form = ws.patient_screen
    assert isinstance(form, ConsultationForm)
    assert form.restored_from is not None
    return form


def _assert_typed(form: ConsultationForm) -> None:
    assert form.note.toPlainText() == NOTE
    assert form.plan.toPlainText() == "Peak flow diary."
    assert form.vital_fields["heart_rate"].text() == "88"
    assert form.vital_fields["temperature"].text() == "37,"
    assert "Unsaved draft restored" in form.status.text()


def _question(qtbot: QtBot, ws: ClinicalWorkspace) -> QMessageBox:
    qtbot.waitUntil(lambda: ws.leave_question is not None, timeout=5000)
    box = ws.leave_question
    assert isinstance(box, QMessageBox)
    return box


def _click(box: QMessageBox, label_start: str) -> None:
    for button in box.buttons():
        if button.text().replace("&", "").startswith(label_start):
            button.click()
            return
    raise AssertionError(f"no button {label_start!r}")


def test_cr4_draft_survives_the_idle_lock_and_comes_back_on_reopening_the_patient(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    idle = IdleClock()
    win = window(qtbot, td, idle)
    sign_in(qtbot, win)
    ws = win.workspace
    assert isinstance(ws, ClinicalWorkspace)
    form = _form(qtbot, ws)
    _type(form)
    idle.seconds += 10_000  # the idle lock fires
    qtbot.waitUntil(lambda: win.session is None and win.login_screen is not None, timeout=5000)
    session = sign_in(qtbot, win)
    ws = win.workspace
    assert isinstance(ws, ClinicalWorkspace)
    form = _restored_form(qtbot, ws)
    _assert_typed(form)
    # The draft is in the vault, encrypted with everything else, and only for this clinician.
    assert on_worker(win, session.patients_with_drafts) == [HTML_PATIENT]


def test_cr4_draft_survives_sign_out_by_closing_the_window(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    win, ws, _session = workspace(qtbot, td)
    form = _form(qtbot, ws)
    _type(form)
    win.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)  # pytest-qt closes it again
    win.close()  # sign-out: the window locks, then closes
    _win2, ws2, _ = workspace(qtbot, td)
    _assert_typed(_restored_form(qtbot, ws2))


def test_cr4_escape_asks_and_keep_as_draft_keeps_it(qtbot: QtBot, td: ProvisionedDevice) -> None:
    _win, ws, _session = workspace(qtbot, td)
    form = _form(qtbot, ws)
    _type(form)
    qtbot.keyClick(form.note, Qt.Key.Key_Escape)
    box = _question(qtbot, ws)
    assert box.defaultButton().text().replace("&", "") == "Keep as draft"
    _click(box, "Keep as draft")
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    ws.back_to_search()
    _assert_typed(_restored_form(qtbot, ws))


def test_cr4_escape_on_the_question_goes_back_to_writing(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    _win, ws, _session = workspace(qtbot, td)
    form = _form(qtbot, ws)
    _type(form)
    form.cancel.click()
    box = _question(qtbot, ws)
    box.reject()  # Esc on the question
    qtbot.waitUntil(lambda: ws.leave_question is None, timeout=5000)
    assert ws.patient_screen is form
    assert form.note.toPlainText() == NOTE


def test_cr4_discard_is_asked_then_removes_the_draft_and_is_audited(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    win, ws, session = workspace(qtbot, td)
    form = _form(qtbot, ws)
    _type(form)
    form.keep_draft()  # an autosave happened before
    qtbot.waitUntil(lambda: on_worker(win, session.patients_with_drafts) != [], timeout=5000)
    ws.back_to_search()  # Ctrl+F from the form asks too
    _click(_question(qtbot, ws), "Discard")
    qtbot.waitUntil(lambda: ws.patient_screen is None, timeout=5000)
    qtbot.waitUntil(lambda: on_worker(win, session.patients_with_drafts) == [], timeout=5000)
    assert "draft_discarded" in audit_actions(win, session)
    ws.open_patient(HTML_PATIENT)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)


def test_cr4_empty_form_leaves_without_a_question(qtbot: QtBot, td: ProvisionedDevice) -> None:
    win, ws, session = workspace(qtbot, td)
    form = _form(qtbot, ws)
    qtbot.keyClick(form.note, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    assert ws.leave_question is None
    assert on_worker(win, session.patients_with_drafts) == []


def test_cr4_autosave_keeps_typing_within_seconds_and_saving_removes_the_draft(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    win, ws, session = workspace(qtbot, td)
    form = _form(qtbot, ws)
    _type(form)
    # No lock, no question: the autosave alone puts it in the vault within a few seconds.
    qtbot.waitUntil(lambda: on_worker(win, session.patients_with_drafts) != [], timeout=8000)
    draft = on_worker(win, lambda: session.draft(HTML_PATIENT))
    assert draft is not None and draft.fields.note == NOTE
    form.vital_fields["temperature"].setText("37.4")
    with qtbot.waitSignal(form.saved, timeout=5000):
        form.submit()
    assert on_worker(win, session.patients_with_drafts) == []
    qtbot.wait(3500)  # past an autosave tick: a saved form never brings its draft back
    assert on_worker(win, session.patients_with_drafts) == []


def test_cr4_end_of_break_glass_keeps_the_draft(qtbot: QtBot, td: ProvisionedDevice) -> None:
    win, ws, session = workspace(qtbot, td)
    grant = on_worker(
        win,
        lambda: session.break_glass(
            OUTSIDE_PATIENT, "continuity", "Seen on the wing before transfer", CLINICIAN[1]
        ),
    )
    form = _form(qtbot, ws, OUTSIDE_PATIENT)
    _type(form)
    td.clocks.advance(grant.expires_at - td.clocks.now() + dt.timedelta(seconds=1))
    ws.check_grant()
    assert ws.patient_screen is None
    qtbot.waitUntil(lambda: on_worker(win, session.patients_with_drafts) != [], timeout=5000)
    draft = on_worker(win, lambda: session.draft(OUTSIDE_PATIENT))
    assert draft is not None and draft.fields.note == NOTE
