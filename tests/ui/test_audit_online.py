"""The auditor's "Online (gateway)" tab against a real gateway (mutual TLS on 127.0.0.1): a
clinician's views and break-glass reach the gateway by sync, the auditor re-authenticates and
sees them (and the chain status), exports, and every query is audited on the laptop; no
clinical content anywhere; roles enforced in the core."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from client.core import audit_online
from client.core.audit_export import WORD_COLUMNS
from client.core.audit_reauth import REAUTH_WINDOW_SECONDS
from client.core.audit_words import action_words
from client.core.device import Device
from client.core.humanize import DISPLAY_ZONE
from client.core.provisioning import add_user_online
from client.core.session import NotAllowed, Session
from client.core.sync_runner import run_sync
from client.ui.audit_online_view import chain_row
from client.ui.audit_view import AuditWorkspace, OnlineAuditPanel
from client.ui.main_window import MainWindow
from client.ui.qt import Qt
from sync.device.audit_queries import AuditQuery
from sync.gateway.store.upstream_tables import OutboxItem
from sync.protocol.audit.audit_event import CSV_HEADER, entries_from_bundle
from tests.support.ui import disk_is_fine, on_worker, widget_texts
from tests.support.ui_gateway import (
    AUDITOR,
    NURSE,
    LiveGateway,
    provision_for_tests,
    start_live_gateway,
)

OUTSIDE = "not-on-this-laptop"
NOTE_TEXT = "Confided on the wing: never on an auditor's screen"
HELD_AT = dt.datetime(2026, 7, 1, 9, 30, tzinfo=dt.UTC)  # 10:30 in London


@dataclasses.dataclass
class Scene:
    live: LiveGateway
    device: Device
    viewed: str  # a patient the clinician opened
    viewed_nhs: str  # their NHS number (10 digits)
    clinical: list[str]  # names and text that must never show in the auditor's screens
    not_filed: list[OutboxItem]  # the consultation's rows the gateway holds back
    # (tests that sign the auditor in run before the wrong-password tests lock the account)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("audit-online")
    live = start_live_gateway(folder, patients=12)
    try:
        raw = live.bundle(folder / "bundle.json").read_bytes()
        device = provision_for_tests(folder / "device", raw)
        add_user_online(device, *NURSE)
        nurse = Session.login(device, *NURSE)
        assert run_sync(nurse).error is None
        patients = nurse.caseload()
        chart = nurse.open_chart(patients[0].id)
        clinical = [p.display_name for p in patients]
        clinical += [a.substance for a in chart.allergies] + [p.text for p in chart.problems]
        assert len(clinical) > len(patients)  # the chart had something clinical to leak
        nurse.break_glass(OUTSIDE, "transfer", "Arrived from another prison today", NURSE[1])
        nurse.write_consultation(patients[0].id, vitals=[], note_text=NOTE_TEXT, plan_text="-")
        clinical.append(NOTE_TEXT)
        assert run_sync(nurse).error is None  # the audit chain goes up with the sync
        # The upstream refused one note of the consultation (held, with its reason) and the
        # other met a change there (conflict): what the filer records (upstream/filing.py).
        not_filed = live.store.outbox(("pending",))[:2]
        assert len(not_filed) == 2  # the encounter and its note
        live.store.outbox_done(
            not_filed[0].seq, "held", HELD_AT, reason="upstream_refused", detail="x"
        )
        live.store.outbox_done(not_filed[1].seq, "conflict", HELD_AT, reason="upstream_conflict")
        with pytest.raises(NotAllowed):  # AU-5: a clinician cannot query the audit trail
            audit_online.query_gateway(nurse, NURSE[1], AuditQuery())
        nurse.lock()
        add_user_online(device, *AUDITOR)
        nhs = patients[0].nhs_number
        assert nhs is not None and len(nhs) == 10
        yield Scene(live, device, patients[0].id, nhs, clinical, not_filed)
    finally:
        live.stop()


def auditor_window(qtbot: QtBot, scene: Scene) -> tuple[MainWindow, OnlineAuditPanel]:
    win = MainWindow(scene.device, launch_check=disk_is_fine)
    win.app_state = lambda: Qt.ApplicationState.ApplicationActive
    qtbot.addWidget(win)
    win.show()
    login = win.login_screen
    assert login is not None
    login.user.setText(AUDITOR[0])
    login.password.setText(AUDITOR[1])
    login.submit()
    qtbot.waitUntil(lambda: win.session is not None, timeout=15000)
    audit = win.workspace
    assert isinstance(audit, AuditWorkspace)
    audit.tabs.setCurrentWidget(audit.online)
    return win, audit.online


def search(qtbot: QtBot, panel: OnlineAuditPanel, password: str = AUDITOR[1]) -> None:
    panel.password.setText(password)
    panel.search_button.click()
    assert not panel.search_button.isEnabled()  # on the executor, the window stays live
    qtbot.waitUntil(panel.search_button.isEnabled, timeout=20000)


def test_auditor_sees_the_clinicians_views_and_break_glass_at_the_gateway(
    qtbot: QtBot, scene: Scene
) -> None:
    win, panel = auditor_window(qtbot, scene)
    search(qtbot, panel)
    assert panel.password.text() == ""  # used once, not kept
    rows = panel.model.rows
    device_id = scene.device.profile.device_id
    views = [r for r in rows if r[3] == "Opened record" and r[1] == NURSE[0]]
    assert views and views[0][5] == scene.viewed and views[0][2] == device_id
    (glass,) = [r for r in rows if r[3] == "Break-glass access"]
    assert glass[5] == OUTSIDE and glass[6] == "Break-glass"
    assert glass[7] == "Arrived from another prison today"
    (chain,) = panel.chains.rows
    assert chain[0] == device_id and int(chain[1]) > 0 and chain[4] == "0"
    assert "break-glass" in panel.summary.text()

    panel.break_glass_only.setChecked(True)
    search(qtbot, panel)
    assert {r[6] for r in panel.model.rows} == {"Break-glass"} and len(panel.model.rows) == 1
    panel.break_glass_only.setChecked(False)
    panel.patient.setText(scene.viewed)
    search(qtbot, panel)
    assert panel.model.rows and {r[5] for r in panel.model.rows} == {scene.viewed}
    panel.patient.clear()
    panel.user.setText(AUDITOR[0])  # the auditor's own sign-ins are on the laptop, not yet up
    search(qtbot, panel)
    assert all(r[1] == AUDITOR[0] for r in panel.model.rows)

    texts = " ".join(widget_texts())
    for clinical in scene.clinical:
        assert clinical not in texts

    # Every query is in the laptop's own chain, with its filters and no clinical content.
    session = win.session
    assert session is not None
    entries = on_worker(win, session.audit_entries)
    queries = [e for e in entries if e.action == "audit_query" and e.user_id == AUDITOR[0]]
    assert len(queries) == 4
    refused = [e for e in entries if e.action == "audit_query" and e.user_id == NURSE[0]]
    assert [e.outcome for e in refused] == ["denied"]  # the clinician's attempt (AU-5)
    assert queries[0].outcome == "success" and queries[0].detail["where"] == "gateway"
    assert dict(queries[1].detail)["break_glass"] == "yes"
    assert queries[2].patient_id == scene.viewed and queries[2].detail["patients"] == 1


def test_the_auditor_sees_the_sites_notes_held_back_from_the_health_record(
    qtbot: QtBot, scene: Scene
) -> None:
    """A clinician's consultation reaches the gateway; the upstream refuses one note (held,
    with its reason) and another met a change there (conflict). The auditor's gateway tab
    lists both with the patient, the reason in words and the UK time; never record content."""
    queued = scene.not_filed
    win, panel = auditor_window(qtbot, scene)
    search(qtbot, panel)
    rows = panel.not_filed.rows
    assert [r[2] for r in rows] == ["Held", "Conflict"]
    assert all(r[0] == scene.viewed for r in rows)
    assert rows[0][3] == "the health record refused it"
    assert rows[0][4] == "01-Jul-2026 10:30"
    assert rows[0][1].startswith(f"{queued[0].rtype}/{queued[0].rid} v")
    assert "2 note(s) held or in conflict" in panel.not_filed_summary.text()
    assert not any(NOTE_TEXT in t for t in widget_texts())
    win.lock()


def test_wrong_password_shows_no_results_and_is_audited(qtbot: QtBot, scene: Scene) -> None:
    win, panel = auditor_window(qtbot, scene)
    search(qtbot, panel, password="not the password at all")
    assert panel.model.rowCount() == 0 and panel.chains.rowCount() == 0
    assert panel.feedback.text() and "Traceback" not in panel.feedback.text()
    panel.password.clear()
    panel.search_button.click()  # no password: nothing is asked
    assert "password" in panel.feedback.text()
    session = win.session
    assert session is not None
    entries = on_worker(win, session.audit_entries)
    failed = [e for e in entries if e.action == "audit_query" and e.outcome == "failure"]
    assert failed and "why" in failed[-1].detail


def test_lock_scrubs_the_online_results(qtbot: QtBot, scene: Scene) -> None:
    win, panel = auditor_window(qtbot, scene)
    search(qtbot, panel)
    assert panel.model.rowCount() > 0
    win.lock()
    assert panel.model.rowCount() == 0 and panel.chains.rowCount() == 0
    assert panel.entries == []


def test_gateway_search_by_nhs_number_and_uk_days(qtbot: QtBot, scene: Scene) -> None:
    win, panel = auditor_window(qtbot, scene)
    nhs = scene.viewed_nhs
    spaced = f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}"
    today = dt.datetime.now(DISPLAY_ZONE).date()
    panel.password.setText(AUDITOR[1])
    panel.search(spaced, today, today)
    qtbot.waitUntil(
        lambda: panel.search_button.isEnabled() and bool(panel.summary.text()), timeout=20000
    )
    assert panel.model.rows, panel.feedback.text()
    assert {r[5] for r in panel.model.rows} == {scene.viewed}
    assert "Opened record" in {r[3] for r in panel.model.rows}
    assert panel.finder.since.text() == today.strftime("%d-%b-%Y")
    panel.summary.clear()
    panel.search(spaced, today + dt.timedelta(days=1), None)  # nothing yet tomorrow
    qtbot.waitUntil(
        lambda: panel.search_button.isEnabled() and bool(panel.summary.text()), timeout=20000
    )
    assert panel.model.rowCount() == 0
    session = win.session
    assert session is not None
    queries = [e for e in on_worker(win, session.audit_entries) if e.action == "audit_query"]
    assert queries[-1].patient_id == scene.viewed and queries[-1].detail["where"] == "gateway"
    panel.summary.clear()
    panel.search(OUTSIDE, None, None)  # never on this laptop: asked for by id
    qtbot.waitUntil(
        lambda: panel.search_button.isEnabled() and bool(panel.summary.text()), timeout=20000
    )
    assert {(r[3], r[5]) for r in panel.model.rows} == {("Break-glass access", OUTSIDE)}


def test_one_password_per_auditor_session_forgotten_after_the_window_and_on_lock(
    qtbot: QtBot, scene: Scene
) -> None:
    win, panel = auditor_window(qtbot, scene)
    session = win.session
    assert session is not None
    assert panel.needs_password()
    search(qtbot, panel)  # the password, once
    first = panel.model.rowCount()
    assert first > 0 and not panel.needs_password()
    panel.model.set_rows([])
    panel.search_button.click()  # no password typed: within the window, none is asked
    qtbot.waitUntil(panel.search_button.isEnabled, timeout=20000)
    assert panel.model.rowCount() == first and "password" not in panel.feedback.text()
    real = session.reauth.clock
    session.reauth.clock = lambda: real() + REAUTH_WINDOW_SECONDS + 1  # the window has passed
    panel.search_button.click()
    assert "Type your password" in panel.feedback.text() and panel.needs_password()
    search(qtbot, panel)  # asked again, and remembered again
    assert not panel.needs_password()
    queries = [
        e
        for e in on_worker(win, session.audit_entries)
        if e.action == "audit_query" and e.user_id == AUDITOR[0]
    ]
    assert [e.outcome for e in queries[-3:]] == ["success"] * 3  # each search audited
    win.lock()
    assert session.reauth.token() is None and not session.reauth.confirmed
    _win2, again = auditor_window(qtbot, scene)
    assert again.needs_password()


# Last in the module: its wrong password throttles further sign-ins on this laptop.
def test_exports_need_the_password_and_hold_only_audit_metadata(
    qtbot: QtBot, scene: Scene, tmp_path: Path
) -> None:
    win, panel = auditor_window(qtbot, scene)
    assert not panel.export_fhir.isEnabled()  # nothing to export yet
    search(qtbot, panel)
    messages: list[str] = []
    panel.notify.connect(messages.append)
    out_json, out_csv, refused = tmp_path / "a.json", tmp_path / "a.csv", tmp_path / "no.json"
    for path, kind in ((out_json, "json"), (out_csv, "csv")):
        panel.password.setText(AUDITOR[1])
        panel.export_to(path, kind)
        before = len(messages)
        qtbot.waitUntil(lambda: panel.export_fhir.isEnabled(), timeout=10000)
        assert len(messages) > before, panel.feedback.text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    exported = entries_from_bundle(json.loads(out_json.read_text(encoding="utf-8")))
    assert [action_words(e.action) for e in exported] == [r[3] for r in panel.model.rows]
    rows = list(csv.reader(out_csv.read_text(encoding="utf-8").splitlines()))
    assert tuple(rows[0]) == (*CSV_HEADER, *WORD_COLUMNS) and len(rows) == len(exported) + 1
    text = out_json.read_text(encoding="utf-8") + out_csv.read_text(encoding="utf-8")
    for clinical in scene.clinical:
        assert clinical not in text
    # A wrong password writes nothing (last: it throttles the next attempts).
    panel.password.setText("wrong password for export")
    panel.export_to(refused, "json")
    qtbot.waitUntil(lambda: panel.export_fhir.isEnabled(), timeout=10000)
    assert not refused.exists() and panel.feedback.text()
    session = win.session
    assert session is not None
    exports = [e for e in on_worker(win, session.audit_entries) if e.action == "export"]
    assert [e.outcome for e in exports] == ["success", "success", "denied"]


def test_a_chain_row_names_the_first_bad_entry_only_where_there_is_one() -> None:
    """A chain break names its entry; a wipe report (``device_wiped``) is about the device and
    names none (it said "at entry None")."""
    raised = "2026-12-06T10:00:00+00:00"
    chain = {"device_id": "lap-1", "last_seq": 9, "head_hash": "ab" * 32, "last_receipt_at": None}
    broken = chain | {"alerts": 1, "latest_alert": {
        "reason": "chain_broken", "first_bad_seq": 4, "raised_at": raised}}  # fmt: skip
    wiped = chain | {"alerts": 1, "latest_alert": {
        "reason": "device_wiped", "first_bad_seq": None, "raised_at": raised}}  # fmt: skip
    assert chain_row(broken)[-1] == "chain_broken at entry 4 (06-Dec-2026 10:00)"
    assert chain_row(wiped)[-1] == "device_wiped (06-Dec-2026 10:00)"
    assert chain_row(chain | {"alerts": 0, "latest_alert": None})[-2:] == ("0", "")
