"""The conflict view: a real 412 conflict in a real vault, both versions side by side as plain
text, keep theirs / keep mine through the session."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from pathlib import Path
from typing import Any

from pytestqt.qtbot import QtBot

from client.core import conflicts, consultation
from client.core.session import Session
from client.ui.conflicts import ConflictsDialog, readable
from client.ui.main_window import MainWindow
from client.ui.qt import QApplication, QLabel, QPlainTextEdit, Qt
from tests.support.ui import (
    HTML,
    HTML_PATIENT,
    device,
    flush_deletes,
    note,
    on_worker,
    sign_in,
    widget_texts,
    window,
)

NOTE_ID = "doc-html-1"


def _text(resource: dict[str, Any], text: str) -> dict[str, Any]:
    edited = copy.deepcopy(resource)
    edited["content"][0]["attachment"]["data"] = base64.b64encode(text.encode()).decode()
    return edited


def _make_conflict(win: Any, session: Session) -> None:
    server = note(NOTE_ID, HTML_PATIENT, f"Gateway version says {HTML}")
    server["meta"] = {"versionId": "7", "lastUpdated": "2026-06-01T08:00:00+00:00"}

    def work() -> None:
        with session._act() as conn:
            mine = _text(note(NOTE_ID, HTML_PATIENT, "x"), "My edit on the wing.")
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
    with qtbot.waitSignal(dialog.resolved, timeout=10000):
        dialog.keep_theirs.click()
    qtbot.waitUntil(lambda: dialog.items == [], timeout=10000)
    assert "No conflicts left" in dialog.feedback.text()
    assert on_worker(win, session.outbox_status)[1] == 0


def test_keep_mine_queues_the_edit_again_on_top_of_the_gateway_version(
    qtbot: QtBot, tmp_path: Path
) -> None:
    win, session, dialog = _conflict_view(qtbot, tmp_path)
    with qtbot.waitSignal(dialog.resolved, timeout=10000) as resolved:
        dialog.keep_mine.click()
    assert resolved.args == ["mine"]
    unsent, conflicts = on_worker(win, session.outbox_status)
    assert (unsent, conflicts) == (1, 0)  # the edit waits for the next sync, based on v7


def test_readable_decodes_notes_and_says_when_the_gateway_lost_the_record() -> None:
    text = readable(_text(note("d1", "p1", "x"), "<i>plain</i> words"))
    assert "<i>plain</i> words" in text and "meta" not in text
    assert "no longer holds" in readable(None)


def test_UI3_lock_destroys_the_conflict_view_and_its_texts(qtbot: QtBot, tmp_path: Path) -> None:
    win, _session, _dialog = _conflict_view(qtbot, tmp_path)
    win.lock()
    flush_deletes()
    assert win.conflicts_dialog is None
    assert not [w for w in QApplication.allWidgets() if isinstance(w, ConflictsDialog)]
    assert not any("My edit on the wing." in t for t in widget_texts())
