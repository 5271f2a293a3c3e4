"""The conflict view: a real 412 conflict in a real vault, both versions side by side as plain
text in clinical words with the patient's banner, authors and UK local times; keep theirs /
keep mine through the session, each confirmed first ("Go back" is the default)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from pathlib import Path
from typing import Any

from pytestqt.qtbot import QtBot

from client.core import conflicts, consultation
from client.core.session import Session
from client.ui.chart_view import PatientBanner
from client.ui.conflicts import ConflictsDialog
from client.ui.main_window import MainWindow
from client.ui.qt import QApplication, QKeySequence, QLabel, QMessageBox, QPlainTextEdit, Qt
from tests.support.ui import (
    HTML,
    HTML_PATIENT,
    audit_actions,
    device,
    flush_deletes,
    note,
    on_worker,
    sign_in,
    widget_texts,
    window,
)

NOTE_ID = "doc-html-1"
MY_AUTHOR = "Dr Mina Okafor"
THEIR_AUTHOR = "Nurse Tom Reyes"
# Raw bookkeeping that must never reach the clinician's eyes in the conflict view.
RAW = (NOTE_ID, HTML_PATIENT, "DocumentReference", "attachment", "content[", "versionId",
       "valueQuantity", "contentType", "subject", "Patient/", "meta")  # fmt: skip


def _text(resource: dict[str, Any], text: str) -> dict[str, Any]:
    edited = copy.deepcopy(resource)
    edited["content"][0]["attachment"]["data"] = base64.b64encode(text.encode()).decode()
    return edited


def _make_conflict(win: Any, session: Session) -> None:
    server = note(NOTE_ID, HTML_PATIENT, f"Gateway version says {HTML}")
    server["meta"] = {"versionId": "7", "lastUpdated": "2026-06-01T08:00:00+00:00"}
    server["author"] = [{"display": THEIR_AUTHOR}]

    def work() -> None:
        with session._act() as conn:
            mine = _text(note(NOTE_ID, HTML_PATIENT, "x"), "My edit on the wing.")
            mine["author"] = [{"display": MY_AUTHOR}]
            seq = consultation.queue_update(conn, mine, now=dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
            conflicts.record_conflict(conn, seq, server)

    on_worker(win, work)


def _conflict_view(qtbot: QtBot, tmp_path: Path) -> tuple[MainWindow, Session, ConflictsDialog]:
    """Signed in, with one conflict recorded and the conflict view open on it."""
    td = device(tmp_path)
    win = window(qtbot, td)
    session = sign_in(qtbot, win)
    _make_conflict(win, session)
    win.open_conflicts()
    dialog = win.conflicts_dialog
    assert isinstance(dialog, ConflictsDialog)
    qtbot.waitUntil(lambda: len(dialog.items) == 1, timeout=10000)
    return win, session, dialog


def test_conflict_shows_both_versions_as_plain_text_and_keep_theirs_resolves_it(
    qtbot: QtBot, tmp_path: Path
) -> None:
    win, session, dialog = _conflict_view(qtbot, tmp_path)
    assert "My edit on the wing." in dialog.mine.toPlainText()
    assert f"Gateway version says {HTML}" in dialog.theirs.toPlainText()  # literally
    assert all(isinstance(v, QPlainTextEdit) for v in (dialog.mine, dialog.theirs))
    assert all(
        label.textFormat() == Qt.TextFormat.PlainText for label in dialog.findChildren(QLabel)
    )
    assert dialog.keep_mine.isEnabled() and dialog.keep_theirs.isEnabled()
    dialog.keep_theirs.click()
    with qtbot.waitSignal(dialog.resolved, timeout=10000):
        dialog.confirm_button("discard").click()
    qtbot.waitUntil(lambda: dialog.items == [], timeout=10000)
    assert "No conflicts left" in dialog.feedback.text()
    assert on_worker(win, session.outbox_status)[1] == 0


def test_keep_mine_queues_the_edit_again_on_top_of_the_gateway_version(
    qtbot: QtBot, tmp_path: Path
) -> None:
    win, session, dialog = _conflict_view(qtbot, tmp_path)
    dialog.keep_mine.click()
    assert dialog.confirmation is not None
    assert "Nurse Tom Reyes" in dialog.confirmation.informativeText()  # whose words are replaced
    with qtbot.waitSignal(dialog.resolved, timeout=10000) as resolved:
        dialog.confirm_button("discard").click()
    assert resolved.args == ["mine"]
    unsent, conflicts = on_worker(win, session.outbox_status)
    assert (unsent, conflicts) == (1, 0)  # the edit waits for the next sync, based on v7


def test_conflict_view_names_the_patient_authors_and_uk_times_in_clinical_words(
    qtbot: QtBot, tmp_path: Path
) -> None:
    _win, _session, dialog = _conflict_view(qtbot, tmp_path)
    banner = dialog.banner
    assert isinstance(banner, PatientBanner) and "ZEPHYRINE" in banner.name.text().upper()
    shown = "\n".join(widget_texts([dialog, *dialog.findChildren(QLabel)]))
    shown += "\n".join(dialog.listing.item(i).text() for i in range(dialog.listing.count()))
    for raw in RAW:
        assert raw not in shown, raw
    mine, theirs = dialog.mine.toPlainText(), dialog.theirs.toPlainText()
    assert MY_AUTHOR in mine and MY_AUTHOR in dialog.mine_heading.text()
    assert THEIR_AUTHOR in theirs and THEIR_AUTHOR in dialog.theirs_heading.text()
    # UK local time (BST in June): 08:00 UTC on the gateway, the edit at 00:00 UTC.
    assert "01-Jun-2026 09:00" in theirs and "01-Jun-2026 01:00" in mine
    assert "Progress note" in mine and "Note:" in mine  # the note's title and its text
    assert dialog.differences.text() == "Different: Written by, Note."
    # Usable on 1366x768 at 150% scaling (911x512 points): it needs no more than that.
    hint = dialog.minimumSizeHint()
    assert hint.width() <= 911 and hint.height() <= 512, (hint.width(), hint.height())


def test_keep_theirs_asks_first_and_go_back_keeps_the_clinicians_note(
    qtbot: QtBot, tmp_path: Path
) -> None:
    win, session, dialog = _conflict_view(qtbot, tmp_path)
    assert dialog.keep_theirs.shortcut() == QKeySequence("Alt+T")
    assert dialog.keep_mine.shortcut() == QKeySequence("Alt+M")
    dialog.keep_theirs.setFocus()
    qtbot.keyClick(dialog.keep_theirs, Qt.Key.Key_Return)  # Tab + Enter reach it
    box = dialog.confirmation
    assert isinstance(box, QMessageBox)
    assert box.defaultButton() is dialog.confirm_button("go_back")
    assert box.escapeButton() is dialog.confirm_button("go_back")
    assert (
        MY_AUTHOR in box.informativeText() and "deleted from this laptop" in box.informativeText()
    )
    assert dialog.confirm_button("go_back").shortcut() == QKeySequence("Alt+G")
    assert dialog.confirm_button("discard").shortcut() == QKeySequence("Alt+D")
    qtbot.keyClick(dialog.confirm_button("go_back"), Qt.Key.Key_Return)  # Enter = the default
    qtbot.waitUntil(lambda: dialog.confirmation is None, timeout=5000)
    assert "Nothing was changed" in dialog.feedback.text()

    def open_conflicts() -> list[conflicts.Conflict]:
        with session._act() as conn:
            return conflicts.list_conflicts(conn)

    kept = on_worker(win, open_conflicts)
    assert len(kept) == 1 and "My edit on the wing." in readable_note(kept[0].local_body)
    assert on_worker(win, session.outbox_status) == (1, 1)  # still unsent work, still open
    assert "conflict_resolved" not in audit_actions(win, session)

    dialog.keep_theirs.click()
    with qtbot.waitSignal(dialog.resolved, timeout=10000):
        dialog.confirm_button("discard").click()
    qtbot.waitUntil(lambda: dialog.items == [], timeout=10000)
    assert on_worker(win, open_conflicts) == []

    def resolved_entries() -> list[Any]:
        with session._act() as conn:
            return [e for e in session.audit_log.entries(conn) if e.action == "conflict_resolved"]

    (entry,) = on_worker(win, resolved_entries)
    assert entry.patient_id == HTML_PATIENT
    assert dict(entry.detail) == {
        "keep": "theirs",
        "discarded": "laptop",
        "resource": f"{kept[0].resource_type}/{kept[0].local_id}",  # the gateway settles it
    }


def readable_note(resource: dict[str, Any]) -> str:
    data = resource["content"][0]["attachment"]["data"]
    return base64.b64decode(data).decode()


def test_UI3_lock_destroys_the_conflict_view_and_its_texts(qtbot: QtBot, tmp_path: Path) -> None:
    win, _session, _dialog = _conflict_view(qtbot, tmp_path)
    win.lock()
    flush_deletes()
    assert win.conflicts_dialog is None
    assert not [w for w in QApplication.allWidgets() if isinstance(w, ConflictsDialog)]
    assert not any("My edit on the wing." in t for t in widget_texts())
