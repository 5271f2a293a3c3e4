"""Issue 14: the chart shows, for each note written on a laptop, where it has got to ("Saved
on this laptop", "At the gateway", "Filed in the health record on …", "Held at the gateway: …"),
as a text mark and words, and Tab reaches each state (a screen reader reads its name)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pytestqt.qtbot import QtBot

from client.core import records
from client.core.chart import open_chart
from client.ui.chart_view import ChartScreen
from client.ui.qt import QApplication, QLabel, Qt, QWidget
from client.ui.widgets import STYLESHEET
from sync.protocol.fhir.filing import FILED, HELD, FilingTag, with_filing_tag
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM
from tests.support.fhir import note, open_db, patient

REFUSED = FilingTag(HELD, "upstream_refused")


def _mine(resource: dict[str, Any], cid: str, tag: FilingTag | None = None) -> dict[str, Any]:
    resource = resource | {"identifier": [{"system": CLIENT_ID_SYSTEM, "value": cid}]}
    if tag is not None:
        resource = with_filing_tag(resource, tag)
        resource["meta"] |= {"versionId": "2", "lastUpdated": "2026-12-01T12:00:00+00:00"}
    return resource


def _screen(qtbot: QtBot, tmp_path: Path) -> ChartScreen:
    conn = open_db(tmp_path / "v.db")
    conn.execute("BEGIN")
    records.apply_resources(
        conn,
        [
            patient("p1", "Okafor", ["Grace"]),
            _mine(note("n1", "p1", "2026-12-04", "first"), "c1"),
            _mine(note("n2", "p1", "2026-12-03", "second"), "c2", FilingTag(FILED)),
            _mine(note("n3", "p1", "2026-12-02", "third"), "c3", REFUSED),
            note("n4", "p1", "2026-12-01", "from the record"),
        ],
    )
    conn.execute("COMMIT")
    chart = open_chart(conn, "p1", today=dt.date(2026, 12, 6), site_scope=("hmp-brixton",))
    screen = ChartScreen(chart, None)
    screen.setStyleSheet(STYLESHEET)
    qtbot.addWidget(screen)
    screen.resize(1366, 768)
    screen.show()
    qtbot.waitExposed(screen)
    return screen


def test_each_laptop_note_shows_its_filing_state_in_words(qtbot: QtBot, tmp_path: Path) -> None:
    screen = _screen(qtbot, tmp_path)
    labels = [w for w in screen.findChildren(QLabel) if w.objectName() == "note_filing"]
    assert [w.text() for w in labels] == [
        "→ At the gateway (not yet filed in the health record)",
        "✓ Filed in the health record on 01-Dec-2026 12:00",
        "⚠ Held at the gateway: the health record refused it. IT has been told.",
    ]  # the note from the health record has none
    assert all(w.textFormat() == Qt.TextFormat.PlainText for w in labels)
    assert labels[1].accessibleName() == "Filing: Filed in the health record on 01-Dec-2026 12:00"


def test_tab_reaches_every_filing_state(qtbot: QtBot, tmp_path: Path) -> None:
    screen = _screen(qtbot, tmp_path)
    screen.activateWindow()
    screen.back.setFocus()
    qtbot.waitUntil(screen.back.hasFocus)
    reached: list[str] = []
    for _ in range(40):
        current = QApplication.focusWidget()
        assert current is not None
        qtbot.keyClick(current, Qt.Key.Key_Tab)
        now: QWidget | None = QApplication.focusWidget()
        if isinstance(now, QLabel) and now.objectName() == "note_filing":
            reached.append(now.accessibleName())
        if now is screen.back:
            break
    assert reached == [
        "Filing: At the gateway (not yet filed in the health record)",
        "Filing: Filed in the health record on 01-Dec-2026 12:00",
        "Filing: Held at the gateway: the health record refused it. IT has been told.",
    ]
