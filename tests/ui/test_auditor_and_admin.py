"""The auditor's workspace (no clinical content, filters, exports) and the admin panel."""

from __future__ import annotations

import csv
import json
import stat
from pathlib import Path

from pytestqt.qtbot import QtBot

from client.core.audit_export import WORD_COLUMNS
from client.core.server_profile import save_server_profile
from client.core.session import Session
from client.ui.admin import AdminPanel
from client.ui.audit_view import AuditWorkspace
from sync.device.capabilities import read_server_profile
from sync.device.transport import Transport
from sync.protocol.audit.audit_event import CSV_HEADER, entries_from_bundle
from sync.protocol.audit.chain import verify
from tests.support.device import DEVICE_ID
from tests.support.medplum_server import running_medplum
from tests.support.sync import TYPES, transport_config
from tests.support.ui import (
    CLINICIAN,
    HTML_FAMILY,
    HTML_PATIENT,
    OUTSIDE_PATIENT,
    add_slot,
    device,
    sign_in,
    widget_texts,
    window,
)

AUDITOR = ("ig.officer", "audit trail reviewer 2026")
ADMIN = ("it.admin", "provisioning desk password")


def test_auditor_sees_filterable_metadata_and_no_clinical_content(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path, transfer=True)
    clinician = Session.login(td.device, *CLINICIAN)
    clinician.open_chart(HTML_PATIENT)
    clinician.break_glass(
        OUTSIDE_PATIENT, "transfer", "Arrived from another prison today", CLINICIAN[1]
    )
    clinician.open_chart(OUTSIDE_PATIENT)
    clinician.lock()
    add_slot(td, AUDITOR, "auditor")
    win = window(qtbot, td)
    sign_in(qtbot, win, AUDITOR)
    audit = win.workspace
    assert isinstance(audit, AuditWorkspace)
    qtbot.waitUntil(lambda: audit.model.rowCount() > 5, timeout=5000)
    texts = " ".join(widget_texts())
    for clinical in (HTML_FAMILY, "Zephyrine", "Penicillin", "Violence risk", "Note says"):
        assert clinical not in texts
    audit.break_glass_only.setChecked(True)
    rows = audit.filtered()
    assert rows and all(e.purpose == "BTG" or e.action == "break_glass" for e in rows)
    assert audit.model.rowCount() == len(rows)
    assert {e.patient_id for e in rows} == {OUTSIDE_PATIENT}
    audit.break_glass_only.setChecked(False)
    audit.search(HTML_PATIENT, None, None)  # a patient id is found too
    qtbot.waitUntil(lambda: audit.searched is not None, timeout=5000)
    assert {e.action for e in audit.filtered()} >= {"record_view"}
    assert all(e.patient_id == HTML_PATIENT for e in audit.filtered())
    audit.show_all.click()
    audit.action.setCurrentIndex(audit.action.findText("Opened record"))
    assert {e.action for e in audit.filtered()} == {"record_view"}
    audit.action.setCurrentIndex(0)  # all actions: the export below is the whole chain

    out_json, out_csv = tmp_path / "audit.json", tmp_path / "audit.csv"
    messages: list[str] = []
    audit.notify.connect(messages.append)
    audit.export_to(out_json, "json")
    audit.export_to(out_csv, "csv")
    qtbot.waitUntil(lambda: len(messages) == 2, timeout=5000)
    for path in (out_json, out_csv):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = entries_from_bundle(json.loads(out_json.read_text(encoding="utf-8")))
    assert any(e.action == "break_glass" for e in entries)
    # The whole chain, in chain order (the table shows newest first): it verifies as a chain.
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    # Shown newest first, written in chain order: the whole chain still verifies.
    assert verify(entries, device_id=DEVICE_ID, initial_key=None).ok
    rows_csv = list(csv.reader(out_csv.read_text(encoding="utf-8").splitlines()))
    assert tuple(rows_csv[0]) == (*CSV_HEADER, *WORD_COLUMNS)
    assert len(rows_csv) >= len(entries)
    exported = out_json.read_text(encoding="utf-8") + out_csv.read_text(encoding="utf-8")
    assert "Zephyrine" not in exported


def test_admin_panel_shows_the_device_and_adds_a_user(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, role="admin", user=ADMIN, load=False)
    win = window(qtbot, td)
    sign_in(qtbot, win, ADMIN)
    panel = win.workspace
    assert isinstance(panel, AdminPanel)
    qtbot.waitUntil(lambda: panel.device_id.text() == "dev-test-0001", timeout=5000)
    assert panel.site.text() == "hmp-brixton"
    assert panel.policy.text().startswith("version 1, expires ")
    assert panel.keyring.text() == td.device.keyring.backend_name
    assert [panel.users.item(i).text() for i in range(panel.users.count())] == ["it.admin — admin"]
    assert panel.new_role.findText("clinician") == -1  # clinicians come from the gateway
    panel.new_user.setText("dr.who")
    panel.new_role.setCurrentText("auditor")
    panel.new_password.setText("tardis blue box 1963")
    panel.new_password_again.setText("tardis blue box 1963")
    panel.add_user()
    qtbot.waitUntil(lambda: panel.users.count() == 2, timeout=15000)
    assert "dr.who — auditor" in [panel.users.item(i).text() for i in range(2)]
    assert panel.new_password.text() == ""


def test_issue13_admin_panel_shows_what_the_records_server_offers_and_lacks(
    qtbot: QtBot, tmp_path: Path
) -> None:
    """The panel describes the data plane as its last sync read it (a real Medplum FHIR R4
    server's CapabilityStatement, over mutual TLS): what it offers, and what is missing in
    words with what the laptop does instead; no codes."""
    td = device(tmp_path, role="admin", user=ADMIN, load=False)
    with running_medplum(tmp_path / "medplum") as medplum:
        creds = medplum.pki.device("dev-admin-profile", "hmp-brixton")
        config = transport_config(medplum.origin, medplum.pki.server_pin, creds)
        with Transport(config) as transport:
            profile = read_server_profile(transport, medplum.base)
    assert profile is not None
    save_server_profile(td.device.data_dir, profile.to_json(TYPES), td.device.clock())
    win = window(qtbot, td)
    sign_in(qtbot, win, ADMIN)
    panel = win.workspace
    assert isinstance(panel, AdminPanel)
    qtbot.waitUntil(lambda: panel.server.text().startswith("Medplum"), timeout=5000)
    assert "(FHIR 4.0.1), read " in panel.server.text()
    offers = panel.server_offers.text()
    assert offers == (
        "Offers transactions; search (every record type); conditional create (every record "
        "type); versioned updates (every record type)."
    )
    missing = panel.server_missing.text().splitlines()
    assert missing == [
        "⚠ No change history (_history) for every record type: the laptop reads them by "
        "date-sorted search, finds deleted patients by listing them at every sync, and other "
        "deleted records by a daily id check."
    ]
    assert ":history-type" not in panel.server_missing.text()  # words, not codes


def test_admin_panel_says_when_the_records_server_was_never_read(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path, role="admin", user=ADMIN, load=False)
    win = window(qtbot, td)
    sign_in(qtbot, win, ADMIN)
    panel = win.workspace
    assert isinstance(panel, AdminPanel)
    qtbot.waitUntil(lambda: panel.server.text().startswith("Not read yet"), timeout=5000)
