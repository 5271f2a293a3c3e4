"""Issue 12 item 4: Enter in the search box never opens the wrong patient.

A clinician types part of a name and presses Enter: a record opens only when exactly one
patient matches; with several, focus moves into the results and the hint asks them to choose.
Real vault, real widgets (offscreen).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from client.ui.chart_view import ChartScreen
from client.ui.clinical import ClinicalWorkspace
from client.ui.qt import Qt
from tests.support.device import CLINICIAN, load_records
from tests.support.fhir import nhs_number, patient
from tests.support.ui import ProvisionedDevice, device, sign_in, window

JONES = [
    patient("pt-jones-1", "Joneswick", ["Joanna"], birth_date="1978-11-19", nhs=nhs_number(41)),
    patient("pt-jones-2", "Joneswick", ["Jonah"], birth_date="1990-02-01", nhs=nhs_number(42)),
]


@pytest.fixture
def ws(qtbot: QtBot, tmp_path: Path) -> ClinicalWorkspace:
    td: ProvisionedDevice = device(tmp_path, load=False)
    load_records(td.device, JONES, user=CLINICIAN)
    win = window(qtbot, td)
    sign_in(qtbot, win)
    assert isinstance(win.workspace, ClinicalWorkspace)
    return win.workspace


@pytest.mark.parametrize("wait_for_results", [True, False])
def test_enter_with_several_matches_asks_to_choose_and_opens_nothing(
    qtbot: QtBot, ws: ClinicalWorkspace, wait_for_results: bool
) -> None:
    caseload = ws.caseload
    qtbot.keyClicks(caseload.query, "jo joneswick")
    if wait_for_results:
        qtbot.waitUntil(lambda: caseload.model.rowCount() == 2, timeout=5000)
    qtbot.keyClick(caseload.query, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: caseload.table.hasFocus(), timeout=5000)
    assert ws.patient_screen is None  # nothing opened
    assert "2 patients match" in caseload.hint.text()
    assert caseload.table.currentIndex().row() == 0
    # The clinician chooses the second one and opens it from the table.
    qtbot.keyClick(caseload.table, Qt.Key.Key_Down)
    chosen = caseload.model.patient(caseload.table.currentIndex().row())
    assert chosen is not None
    qtbot.keyClick(caseload.table, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    assert ws.chart is not None and ws.chart.banner.patient_id == chosen.id


def test_enter_with_one_match_opens_it_and_dates_in_the_shown_form_find_it(
    qtbot: QtBot, ws: ClinicalWorkspace
) -> None:
    caseload = ws.caseload
    qtbot.keyClicks(caseload.query, "joneswick 19-Nov-1978")
    qtbot.keyClick(caseload.query, Qt.Key.Key_Return)  # before the debounce fired
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    assert ws.chart is not None and ws.chart.banner.patient_id == "pt-jones-1"
