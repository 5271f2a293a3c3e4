"""The auditor's laptop tab: "who opened patient X last week" by NHS number, date of birth or
name with From/To days (UK local), actions in plain words, exports of exactly the rows shown.
Real vault, real sessions, real widgets; only the wall clock is moved."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

from pytestqt.qtbot import QtBot

from client.core.audit_export import WORD_COLUMNS
from client.core.humanize import DISPLAY_ZONE
from client.core.session import Session
from client.ui.audit_filters import PatientDaysFilter
from client.ui.audit_view import AuditWorkspace
from client.ui.main_window import MainWindow
from client.ui.qt import QDateEdit, QPoint, Qt
from sync.protocol.audit.audit_event import CSV_HEADER, entries_from_bundle
from tests.support.fhir import nhs_number
from tests.support.ui import (
    CLINICIAN,
    HTML_PATIENT,
    add_slot,
    device,
    on_worker,
    sign_in,
    widget_texts,
    window,
)

AUDITOR = ("ig.officer", "audit trail reviewer 2026")
NHS = nhs_number(18)
NHS_SPACED = f"{NHS[:3]} {NHS[3:6]} {NHS[6:]}"
DAY1, DAY2, DAY3 = dt.date(2026, 6, 1), dt.date(2026, 6, 2), dt.date(2026, 6, 3)
PATIENT_COLUMN, ACTION_COLUMN = 4, 2


def auditor_view(qtbot: QtBot, tmp_path: Path) -> tuple[MainWindow, AuditWorkspace, str]:
    """A clinician opens the HTML patient on three days and another patient on two; then the
    auditor signs in on the same laptop."""
    td = device(tmp_path)
    clinician = Session.login(td.device, *CLINICIAN)
    other = next(p.id for p in clinician.caseload() if p.id != HTML_PATIENT)
    clinician.open_chart(HTML_PATIENT)
    clinician.open_chart(other)
    td.clocks.advance(dt.timedelta(days=1))
    clinician.open_chart(HTML_PATIENT)
    td.clocks.advance(dt.timedelta(days=1))
    clinician.open_chart(HTML_PATIENT)
    clinician.open_chart(other)
    clinician.lock()
    add_slot(td, AUDITOR, "auditor")
    win = window(qtbot, td)
    sign_in(qtbot, win, AUDITOR)
    audit = win.workspace
    assert isinstance(audit, AuditWorkspace)
    qtbot.waitUntil(lambda: audit.model.rowCount() > 5, timeout=10000)
    return win, audit, other


def search(
    qtbot: QtBot,
    audit: AuditWorkspace,
    text: str,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> None:
    before = audit.searched
    audit.search(text, since, until)
    qtbot.waitUntil(
        lambda: audit.find_button.isEnabled() and audit.searched is not before, timeout=10000
    )


def column(audit: AuditWorkspace, index: int) -> list[str]:
    return [row[index] for row in audit.model.rows]


def test_search_by_nhs_number_shows_that_patients_opened_record_rows_only(
    qtbot: QtBot, tmp_path: Path
) -> None:
    win, audit, other = auditor_view(qtbot, tmp_path)
    assert "Opened record" in column(audit, ACTION_COLUMN)  # plain words before any search
    search(qtbot, audit, NHS_SPACED)
    assert set(column(audit, PATIENT_COLUMN)) == {HTML_PATIENT}
    assert column(audit, ACTION_COLUMN).count("Opened record") == 3
    audit.action.setCurrentIndex(audit.action.findText("Opened record"))
    assert column(audit, ACTION_COLUMN) == ["Opened record"] * 3
    assert audit.model.rowCount() == 3
    search(qtbot, audit, NHS)  # without spaces: the same answer
    assert audit.model.rowCount() == 3
    texts = " ".join(widget_texts())
    for code in ("record_view", "login_ok", "audit_read", "TREAT"):
        assert code not in texts, code
    assert audit.action.findText("Opened record") > 0 and audit.action.findText("record_view") < 0
    # The search itself is audited, naming the patient it was about (not in any app log).
    session = win.session
    assert session is not None
    entries = on_worker(win, session.audit_entries)
    searches = [e for e in entries if e.action == "audit_query"]
    assert searches and searches[0].patient_id == HTML_PATIENT
    assert dict(searches[0].detail)["where"] == "laptop"
    # Part of an NHS number is refused, never a prefix match over several people.
    audit.search(NHS[:6], None, None)
    qtbot.waitUntil(audit.find_button.isEnabled, timeout=10000)
    assert "whole NHS number" in audit.feedback.text()
    assert other not in column(audit, PATIENT_COLUMN)


def test_date_of_birth_in_every_form_the_caseload_accepts(qtbot: QtBot, tmp_path: Path) -> None:
    _win, audit, _other = auditor_view(qtbot, tmp_path)
    found = []
    for typed in ("07-Mar-1984", "07/03/84", "07/03/1984", "1984-03-07"):
        search(qtbot, audit, typed)
        assert audit.searched is not None and audit.searched.patient_ids is not None
        found.append(audit.searched.patient_ids)
    assert HTML_PATIENT in found[0] and all(ids == found[0] for ids in found)


def test_from_and_to_days_limit_the_rows(qtbot: QtBot, tmp_path: Path) -> None:
    _win, audit, _other = auditor_view(qtbot, tmp_path)
    assert isinstance(audit.finder.since, QDateEdit) and audit.finder.since.calendarPopup()
    assert audit.finder.since.displayFormat() == "dd-MMM-yyyy"
    search(qtbot, audit, NHS_SPACED, DAY2, DAY2)
    assert column(audit, ACTION_COLUMN).count("Opened record") == 1
    assert audit.finder.since.text() == "02-Jun-2026"
    search(qtbot, audit, NHS_SPACED, DAY2, None)
    assert column(audit, ACTION_COLUMN).count("Opened record") == 2
    search(qtbot, audit, NHS_SPACED, None, DAY1)
    assert column(audit, ACTION_COLUMN).count("Opened record") == 1
    assert all(row[0].startswith("01-Jun-2026") for row in audit.model.rows)
    search(qtbot, audit, "", DAY3, DAY3)  # anyone, one day
    assert audit.model.rows and all(row[0].startswith("03-Jun-2026") for row in audit.model.rows)
    audit.search(NHS_SPACED, DAY3, DAY1)
    qtbot.waitUntil(audit.find_button.isEnabled, timeout=10000)
    assert "before the 'From' date" in audit.feedback.text()


def test_export_writes_exactly_the_filtered_rows_and_says_where(
    qtbot: QtBot, tmp_path: Path
) -> None:
    _win, audit, _other = auditor_view(qtbot, tmp_path)
    search(qtbot, audit, NHS_SPACED, DAY2, None)
    audit.action.setCurrentIndex(audit.action.findText("Opened record"))
    shown = audit.model.rowCount()
    assert shown == 2 and shown < len(audit.entries)
    messages: list[str] = []
    audit.notify.connect(messages.append)
    out_csv, out_json = tmp_path / "who-opened.csv", tmp_path / "who-opened.json"
    for path, kind in ((out_csv, "csv"), (out_json, "json")):
        audit.export_to(path, kind)
        qtbot.waitUntil(lambda p=path: str(p.resolve()) in audit.feedback.text(), timeout=10000)
    assert any(str(out_csv.resolve()) in m for m in messages)
    rows = list(csv.reader(out_csv.read_text(encoding="utf-8").splitlines()))
    assert tuple(rows[0]) == (*CSV_HEADER, *WORD_COLUMNS)
    assert len(rows) - 1 == shown
    patient, words = rows[0].index("patient_id"), rows[0].index("action_in_words")
    assert {r[patient] for r in rows[1:]} == {HTML_PATIENT}
    assert {r[words] for r in rows[1:]} == {"Opened record"}
    exported = entries_from_bundle(json.loads(out_json.read_text(encoding="utf-8")))
    assert len(exported) == shown
    assert {(e.action, e.patient_id) for e in exported} == {("record_view", HTML_PATIENT)}


def test_a_day_left_at_any_starts_at_today_by_keyboard_and_in_the_calendar(
    qtbot: QtBot,
) -> None:
    """Never January 2000 (the value hidden behind "any"): Up or Down gives today (UK), and
    the calendar opens on today's month while the day still reads "any"."""
    days = PatientDaysFilter("t", ("&Patient", "&From", "&To"))
    qtbot.addWidget(days)
    days.show()
    qtbot.waitExposed(days)
    today = dt.datetime.now(DISPLAY_ZONE).date()
    qtbot.keyClick(days.since, Qt.Key.Key_Up)
    qtbot.keyClick(days.until, Qt.Key.Key_Down)
    assert days.days() == (today, today)
    days.clear()
    edit = days.since
    qtbot.mouseClick(
        edit, Qt.MouseButton.LeftButton, pos=QPoint(edit.width() - 6, edit.height() // 2)
    )
    calendar = edit.calendarWidget()
    qtbot.waitUntil(calendar.isVisible)
    assert (calendar.yearShown(), calendar.monthShown()) == (today.year, today.month)
    assert edit.text() == "any" and days.days() == (None, None)
    calendar.window().hide()
