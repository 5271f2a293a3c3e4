"""Consultation save ("not yet sent"), range checks next to the field, and break-glass (AU-4)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from client.core.humanize import format_moment
from client.ui.break_glass import BreakGlassDialog
from client.ui.chart_view import UNSENT_MARK, ChartScreen
from client.ui.clinical import ClinicalWorkspace
from client.ui.consultation_form import SAVED_MESSAGE, ConsultationForm
from client.ui.qt import QLabel, Qt
from tests.support.ui import (
    CLINICIAN,
    HTML_PATIENT,
    OUTSIDE_PATIENT,
    ProvisionedDevice,
    audit_actions,
    device,
    on_worker,
    open_chart,
    workspace,
)


@pytest.fixture
def td(tmp_path: Path) -> ProvisionedDevice:
    return device(tmp_path, transfer=True)


def _open_form(qtbot: QtBot, ws: ClinicalWorkspace, pid: str) -> ConsultationForm:
    open_chart(qtbot, ws, pid)
    ws.new_consultation()
    form = ws.patient_screen
    assert isinstance(form, ConsultationForm)
    return form


def _break_glass_dialog(qtbot: QtBot, ws: ClinicalWorkspace) -> BreakGlassDialog:
    """Open the out-of-scope patient: break-glass asks first."""
    ws.open_patient(OUTSIDE_PATIENT)
    qtbot.waitUntil(lambda: ws.break_glass_dialog is not None, timeout=5000)
    dialog = ws.break_glass_dialog
    assert isinstance(dialog, BreakGlassDialog)
    return dialog


def test_save_writes_offline_and_the_chart_marks_it_not_yet_sent(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    win, ws, session = workspace(qtbot, td)
    before = on_worker(win, session.outbox_status)[0]
    form = _open_form(qtbot, ws, HTML_PATIENT)
    form.vital_fields["systolic"].setText("128")
    form.vital_fields["diastolic"].setText("82")
    form.vital_fields["temperature"].setText("37,2")  # a decimal comma is fine
    form.note.setPlainText("Chest clear. Zanzibar-unique-note.")
    form.plan.setPlainText("Review in two weeks.")
    with qtbot.waitSignal(form.saved, timeout=5000):
        qtbot.keyClick(form, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert form.status.text() == SAVED_MESSAGE
    qtbot.waitUntil(
        lambda: (
            isinstance(ws.patient_screen, ChartScreen)
            and ws.patient_screen.chart is not None
            and any(e.unsent for e in ws.patient_screen.chart.timeline)
        ),
        timeout=5000,
    )
    chart = ws.patient_screen
    assert isinstance(chart, ChartScreen)
    assert chart.chart is not None
    unsent = [e for e in chart.chart.timeline if e.unsent]
    assert any("Zanzibar-unique-note" in e.text for e in unsent)
    marks = [w for w in chart.findChildren(QLabel) if w.text() == UNSENT_MARK]
    assert len(marks) == len(unsent)
    assert on_worker(win, session.outbox_status)[0] > before
    qtbot.waitUntil(lambda: "not yet sent" in win.status_line.session_text, timeout=5000)


def test_out_of_range_vital_shows_the_core_message_next_to_the_field_and_saves_nothing(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    win, ws, session = workspace(qtbot, td)
    before = on_worker(win, session.outbox_status)[0]
    form = _open_form(qtbot, ws, HTML_PATIENT)
    form.vital_fields["heart_rate"].setText("400")
    form.vital_fields["spo2"].setText("ninety")
    form.note.setPlainText("Tachycardic?")
    form.submit()
    qtbot.waitUntil(lambda: bool(form.vital_errors["heart_rate"].text()), timeout=5000)
    assert "between 20 and 250" in form.vital_errors["heart_rate"].text()
    assert form.vital_errors["heart_rate"].textFormat() == Qt.TextFormat.PlainText
    assert "Not saved" in form.status.text()
    form.vital_fields["heart_rate"].setText("88")
    form.submit()
    qtbot.waitUntil(lambda: bool(form.vital_errors["spo2"].text()), timeout=5000)
    assert "must be a number" in form.vital_errors["spo2"].text()
    assert form.vital_errors["heart_rate"].text() == ""
    assert on_worker(win, session.outbox_status)[0] == before


def test_AU4_break_glass_asks_reason_and_password_then_shows_a_banner_until_expiry(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    win, ws, session = workspace(qtbot, td)
    dialog = _break_glass_dialog(qtbot, ws)
    assert ws.patient_screen is None  # nothing opened before the grant
    dialog.reason.setCurrentIndex(1)
    dialog.text.setPlainText("short")
    dialog.password.setText(CLINICIAN[1])
    dialog.submit()
    qtbot.waitUntil(lambda: "at least" in dialog.feedback.text(), timeout=5000)
    assert dialog.password.text() == ""
    dialog.text.setPlainText("Arrived from another prison, collapsed on the wing")
    dialog.password.setText(CLINICIAN[1])
    dialog.submit()
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=10000)
    screen = ws.patient_screen
    assert isinstance(screen, ChartScreen)
    banner = screen.header.break_glass
    assert banner is not None and banner.isVisibleTo(screen)
    text = " ".join(w.text() for w in banner.findChildren(QLabel))
    assert "BREAK-GLASS ACCESS" in text
    assert ws.grant is not None
    assert format_moment(ws.grant.expires_at) in text  # UK local time
    assert "break_glass" in audit_actions(win, session)
    td.clocks.advance(dt.timedelta(hours=1))  # the grant runs out
    ws.check_grant()
    assert ws.patient_screen is None
    assert ws.stack.currentWidget() is ws.caseload


def test_wrong_password_in_break_glass_is_refused_in_the_dialog(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    _win, ws, _session = workspace(qtbot, td)
    dialog = _break_glass_dialog(qtbot, ws)
    dialog.reason.setCurrentIndex(1)
    dialog.text.setPlainText("Arrived from another prison, collapsed on the wing")
    dialog.password.setText("not the password")
    dialog.submit()
    qtbot.waitUntil(lambda: "not right" in dialog.feedback.text(), timeout=10000)
    assert ws.patient_screen is None
    assert dialog.isVisible()
