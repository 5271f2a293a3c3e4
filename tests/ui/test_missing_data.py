"""UI-5: when the laptop does not hold a patient's whole record, the chart's alert and allergy
boxes say "Not available on this laptop — last complete on …", never "none recorded", and the
banner shows the patient's current site.

Real window, real vault; the records are put in as a sync would (tests.support.device).
"""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from client.core import records
from client.core.completeness import SECTION_NOT_HELD
from client.core.humanize import format_moment
from client.core.session import Session
from client.ui.chart_view import ChartScreen
from client.ui.qt import QFrame, QLabel
from tests.support.device import load_records
from tests.support.fhir import allergy, flag, patient
from tests.support.ui import (
    CLINICIAN,
    OTHER_SITE,
    OUTSIDE_PATIENT,
    ProvisionedDevice,
    device,
    on_worker,
    open_chart,
    transfer_outside_patient,
    workspace,
)

NONE_SAID = ("No active alerts recorded.", "No allergies recorded", "⚠ ALERTS (0)")


def _box_texts(screen: ChartScreen, name: str) -> list[str]:
    box = screen.findChild(QFrame, name)
    assert box is not None, name
    return [label.text() for label in box.findChildren(QLabel)]


def _break_glass_chart(qtbot: QtBot, td: ProvisionedDevice) -> ChartScreen:
    win, ws, session = workspace(qtbot, td)
    on_worker(
        win,
        lambda: session.break_glass(
            OUTSIDE_PATIENT, "continuity", "Follow-up after transfer", CLINICIAN[1]
        ),
    )
    return open_chart(qtbot, ws, OUTSIDE_PATIENT)


def test_ui5_a_transferred_patient_s_chart_says_not_available_never_none(
    qtbot: QtBot, tmp_path: Path
) -> None:
    """The issue's case: after a transfer the break-glass chart showed "ALERTS (0) — No active
    alerts recorded" and "No allergies recorded" for a patient with two alerts and asthma."""
    td = device(tmp_path, transfer=True)
    screen = _break_glass_chart(qtbot, td)
    assert screen.chart is not None
    last = screen.chart.completeness.last_complete
    assert last is not None
    for name in ("alerts_box", "allergies_box"):
        texts = _box_texts(screen, name)
        assert f"Not available on this laptop — last complete on {format_moment(last)}." in texts
        assert any("now at hmp-pentonville" in t for t in texts), texts
        assert not any(t.startswith(NONE_SAID) for t in texts), texts
    labels = [label.text() for label in screen.findChildren(QLabel)]
    assert f"{OTHER_SITE} (transferred — not this laptop's site)" in labels
    # Problems, medications, vital signs: what the transfer took away is not "none" either.
    assert "None recorded." not in labels
    assert labels.count(SECTION_NOT_HELD) >= 3
    assert "Active problems (0 held on this laptop)" in labels


def test_ui5_a_patient_who_left_to_a_site_not_told_to_the_laptop_is_not_shown_at_the_old_one(
    qtbot: QtBot, tmp_path: Path
) -> None:
    """The gateway tells the old site only that the patient left (a deletion in its feed): the
    banner must not present the old site as the patient's current one."""
    td = device(tmp_path, transfer=True)
    session = Session.login(td.device, *CLINICIAN)
    with session.transaction() as conn:  # as replica._leave does for a leave without a new site
        conn.execute(
            "UPDATE patient_index SET site = NULL WHERE patient_id = ?", (OUTSIDE_PATIENT,)
        )
    session.lock()
    screen = _break_glass_chart(qtbot, td)
    labels = [label.text() for label in screen.findChildren(QLabel)]
    site_labels = [t for t in labels if t.startswith("not known on this laptop")]
    assert site_labels, labels
    assert "None recorded." not in labels


def test_ui5_alerts_held_from_before_a_transfer_are_shown_as_possibly_out_of_date(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path)
    load_records(
        td.device,
        [
            flag("fl-out-1", OUTSIDE_PATIENT, "Cell-sharing risk assessment"),
            flag("fl-out-2", OUTSIDE_PATIENT, "Self-harm risk"),
            allergy("al-out-1", OUTSIDE_PATIENT, "Latex"),
        ],
    )
    transfer_outside_patient(td)
    screen = _break_glass_chart(qtbot, td)
    alerts = _box_texts(screen, "alerts_box")
    assert alerts[0] == "⚠ ALERTS: NOT AVAILABLE ON THIS LAPTOP (2 held here, may be out of date)"
    assert any("Cell-sharing risk assessment" in t for t in alerts)
    allergies = _box_texts(screen, "allergies_box")
    assert allergies[0].startswith("⚠ ALLERGIES: NOT AVAILABLE ON THIS LAPTOP (1 held here")


def test_ui5_a_patient_pulled_by_a_sync_that_stopped_part_way_is_not_complete(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path)
    arrived = patient("pt-partial", "Partridge", ["Pip"])
    session = Session.login(td.device, *CLINICIAN)
    with session.transaction() as conn:  # as a pull that stopped after the Patient page
        records.apply_resources(conn, [arrived])
    session.lock()
    _win, ws, _ = workspace(qtbot, td)
    screen = open_chart(qtbot, ws, "pt-partial")
    for name in ("alerts_box", "allergies_box"):
        texts = _box_texts(screen, name)
        assert "Not available on this laptop — never complete on this laptop." in texts
        assert any("sync to get all of it" in t for t in texts)
        assert not any(t.startswith(NONE_SAID) for t in texts)


def test_ui5_a_complete_record_with_no_alerts_still_says_none_recorded(
    qtbot: QtBot, tmp_path: Path
) -> None:
    """The control: a patient whose whole record is here and has no alerts says so."""
    td = device(tmp_path)
    load_records(td.device, [patient("pt-clear", "Clearwater", ["Cal"])])
    _win, ws, _ = workspace(qtbot, td)
    screen = open_chart(qtbot, ws, "pt-clear")
    assert "No active alerts recorded." in _box_texts(screen, "alerts_box")
    assert not any("Not available" in t for t in _box_texts(screen, "allergies_box"))
