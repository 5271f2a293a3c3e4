"""Search-as-you-type, keyboard navigation, the chart's safety-first order, and UI-1."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from client.core.chart import TimelineEntry
from client.ui.caseload import ALERT_MARK, COLUMNS, EMPTY_HINT, OTHER_SITE, CaseloadScreen
from client.ui.chart_view import ChartScreen, timeline_heading
from client.ui.qt import (
    QApplication,
    QComboBox,
    QFrame,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    Qt,
    QTableView,
    QWidget,
)
from tests.support.ui import (
    HTML,
    HTML_FAMILY,
    HTML_PATIENT,
    OUTSIDE_PATIENT,
    ProvisionedDevice,
    device,
    open_chart,
    workspace,
)


@pytest.fixture
def td(tmp_path: Path) -> ProvisionedDevice:
    return device(tmp_path, transfer=True)


def test_search_as_you_type_then_arrows_and_enter_open_the_chart(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    _win, ws, _session = workspace(qtbot, td)
    caseload: CaseloadScreen = ws.caseload
    # Before anything is typed: the site's caseload, by name (in scope only).
    qtbot.waitUntil(lambda: caseload.model.rowCount() > 1, timeout=5000)
    assert EMPTY_HINT in caseload.hint.text() and "site's patients" in caseload.hint.text()
    listed = [caseload.model.patient(r) for r in range(caseload.model.rowCount())]
    assert all(p is not None and p.in_scope for p in listed)
    qtbot.waitUntil(lambda: caseload.query.hasFocus())
    qtbot.keyClicks(caseload.query, "Zephyr")
    qtbot.waitUntil(lambda: caseload.model.rowCount() == 1, timeout=5000)
    hit = caseload.model.patient(0)
    assert hit is not None and hit.id == HTML_PATIENT
    qtbot.keyClick(caseload.query, Qt.Key.Key_Down)
    assert caseload.table.hasFocus()
    assert caseload.table.currentIndex().row() == 0
    qtbot.keyClick(caseload.table, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    assert ws.chart is not None and ws.chart.banner.patient_id == HTML_PATIENT


def test_result_cells_format_identifiers_and_mark_alerts_and_other_sites_in_text(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    _win, ws, _session = workspace(qtbot, td)
    caseload = ws.caseload
    caseload.query.setText("A1234BC")
    qtbot.waitUntil(lambda: caseload.model.rowCount() == 1, timeout=5000)
    row = [caseload.model.data(caseload.model.index(0, c)) for c in range(len(COLUMNS))]
    assert row[0] == f"{HTML_FAMILY}, Ada"
    assert row[1] == "07-Mar-1984 (42)"  # FakeClocks: June 2026
    assert row[2] == "Male"  # beside the date of birth: two namesakes are told apart
    assert len(row[3].split(" ")) == 3 and [len(p) for p in row[3].split(" ")] == [3, 3, 4]
    assert row[4] == "A1234BC"
    assert row[6] == ALERT_MARK
    assert row[7] == ""
    caseload.query.setText("Quennell")
    qtbot.waitUntil(
        lambda: (
            caseload.model.rowCount() == 1
            and caseload.model.data(caseload.model.index(0, COLUMNS.index("Scope"))) == OTHER_SITE
        ),
        timeout=5000,
    )
    assert "break-glass needed" in caseload.hint.text()
    hit = caseload.model.patient(0)
    assert hit is not None and hit.id == OUTSIDE_PATIENT


def test_chart_shows_banner_then_alerts_and_allergies_before_everything_else(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    _win, ws, _session = workspace(qtbot, td)
    screen = open_chart(qtbot, ws, HTML_PATIENT)
    layout = screen.layout()
    header_at = layout.indexOf(screen.header)
    details_at = layout.indexOf(screen.scroll_area)
    assert 0 <= header_at < details_at  # alerts and allergies sit above the scrolling details
    header_layout = screen.header.layout()
    alerts = screen.header.findChild(QFrame, "alerts_box")
    allergies = screen.header.findChild(QFrame, "allergies_box")
    assert alerts is not None and allergies is not None
    alert_texts = [w.text() for w in alerts.findChildren(QLabel)]
    allergy_texts = [w.text() for w in allergies.findChildren(QLabel)]
    assert alert_texts[0] == "⚠ ALERTS (1)"  # a text label, not colour alone
    assert any("Violence risk" in t for t in alert_texts)
    assert allergy_texts[0] == "⚠ ALLERGIES (1)"
    assert any(t.startswith("HIGH RISK — Penicillin") for t in allergy_texts)
    assert header_layout is not None
    # The problems and timeline sections come after, inside the scroll area.
    detail_texts = [w.text() for w in screen.scroll_area.widget().findChildren(QLabel)]
    assert any(t.startswith("Timeline — newest first") for t in detail_texts)
    assert not any("ALERTS" in t for t in detail_texts)


def test_UI1_html_in_a_name_and_a_note_shows_literally_as_plain_text(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    _win, ws, _session = workspace(qtbot, td)
    ws.caseload.query.setText("Zephyrine")
    qtbot.waitUntil(lambda: ws.caseload.model.rowCount() == 1, timeout=5000)
    cell = ws.caseload.model.data(ws.caseload.model.index(0, 0))
    assert cell == f"{HTML_FAMILY}, Ada"
    screen = open_chart(qtbot, ws, HTML_PATIENT)
    assert screen.header.name.text() == f"{HTML_FAMILY.upper()}, Ada"
    assert screen.header.name.textFormat() == Qt.TextFormat.PlainText
    note_labels = [w for w in screen.findChildren(QLabel) if w.text() == f"Note says {HTML}"]
    assert len(note_labels) == 1
    assert note_labels[0].textFormat() == Qt.TextFormat.PlainText
    # Every label anywhere that shows the HTML is plain text, and no tooltip carries it.
    showing = [  # the banner shows the family name in capitals (NHS CUI)
        w
        for w in QApplication.allWidgets()
        if isinstance(w, QLabel) and (HTML in w.text() or HTML.upper() in w.text())
    ]
    assert len(showing) >= 2
    assert all(w.textFormat() == Qt.TextFormat.PlainText for w in showing)
    assert not any(HTML in w.toolTip() for w in QApplication.allWidgets())


def test_escape_goes_back_to_search_and_destroys_the_chart(
    qtbot: QtBot, td: ProvisionedDevice
) -> None:
    _win, ws, _session = workspace(qtbot, td)
    chart_screen = open_chart(qtbot, ws, HTML_PATIENT)
    with qtbot.waitSignal(chart_screen.destroyed, timeout=3000):
        qtbot.keyClick(chart_screen, Qt.Key.Key_Escape)
    assert ws.patient_screen is None
    assert ws.stack.currentWidget() is ws.caseload


def test_typing_then_enter_at_once_opens_the_first_hit(qtbot: QtBot, td: ProvisionedDevice) -> None:
    _win, ws, _session = workspace(qtbot, td)
    qtbot.keyClicks(ws.caseload.query, "A1234BC")
    qtbot.keyClick(ws.caseload.query, Qt.Key.Key_Return)  # before the debounce fired
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    assert ws.chart is not None and ws.chart.banner.patient_id == HTML_PATIENT


def test_controls_have_accessible_names(qtbot: QtBot, td: ProvisionedDevice) -> None:
    win, ws, _session = workspace(qtbot, td)
    open_chart(qtbot, ws, HTML_PATIENT)
    ws.new_consultation()
    controls = [
        w
        for w in win.findChildren(QWidget)
        if isinstance(w, QLineEdit | QPlainTextEdit | QComboBox | QPushButton | QTableView)
    ]
    assert len(controls) > 15
    unnamed = [type(w).__name__ for w in controls if not w.accessibleName()]
    assert unnamed == []


def test_a_timeline_heading_never_repeats_its_kind_and_keeps_a_real_title() -> None:
    when = dt.datetime(2026, 7, 1, 9, 5, tzinfo=dt.UTC)  # 10:05 in London (BST)
    note = TimelineEntry("note", "n1", when, "Consultation note", "text", unsent=False)
    assert timeline_heading(note) == "01-Jul-2026 10:05 · Consultation note"
    visit = TimelineEntry("encounter", "e1", when, "GP clinic", "", unsent=False)
    assert timeline_heading(visit) == "01-Jul-2026 10:05 · Encounter · GP clinic"
    undated = TimelineEntry("note", "n2", None, "", "text", unsent=False)
    assert timeline_heading(undated) == "date not recorded · Consultation note"
