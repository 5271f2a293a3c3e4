"""Issue 12 item 3 on screen: a note the gateway refused is named in the sync result (amber) and
in the readiness check (red), with why and what to do — never green, never "Sync now" for it.
Real widgets (offscreen), a real vault and a real gateway over mutual TLS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pytestqt.qtbot import QtBot

from client.core.provisioning import add_user_online
from client.ui.main_window import MainWindow
from client.ui.qt import Qt
from client.ui.sync_panel import SyncOutcome
from client.ui.widgets import STYLESHEET
from sync.gateway.store.loader import load_resources
from tests.support.ui import disk_is_fine, sign_in
from tests.support.ui_gateway import (
    NURSE,
    OTHER_SITE,
    LiveGateway,
    provision_for_tests,
    start_live_gateway,
)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveGateway]:
    gateway = start_live_gateway(tmp_path / "gw", patients=12)
    try:
        yield gateway
    finally:
        gateway.stop()


def _transfer(live: LiveGateway, patient_id: str) -> None:
    stored = live.store.read("Patient", patient_id)
    assert stored is not None
    body = orjson.loads(stored.body)
    body.pop("meta", None)
    body["managingOrganization"] = {"reference": f"Organization/{OTHER_SITE}"}
    time.sleep(0.002)
    load_resources(live.store, [body])
    time.sleep(0.002)


def _sync(qtbot: QtBot, win: MainWindow) -> SyncOutcome:
    with qtbot.waitSignal(win.sync.finished, timeout=60000) as finished:
        assert win.start_sync()
    outcome = finished.args[0]
    assert isinstance(outcome, SyncOutcome)
    return outcome


def test_a_refused_note_is_amber_in_the_sync_result_and_red_in_readiness(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    device = provision_for_tests(tmp_path / "laptop", live.bundle(tmp_path / "b.json").read_bytes())
    assert add_user_online(device, *NURSE) == "clinician"
    win = MainWindow(device, launch_check=disk_is_fine)
    win.app_state = lambda: Qt.ApplicationState.ApplicationActive
    qtbot.addWidget(win)
    win.show()
    session = sign_in(qtbot, win, NURSE)
    win.open_sync()
    panel = win.sync_panel
    assert panel is not None
    first = _sync(qtbot, win)
    assert first.ok and first.result is not None and first.result.push_errors == 0
    qtbot.waitUntil(lambda: panel.result.property("role") == "ok", timeout=10000)

    patient = next(
        p for p in win.executor.submit(session.caseload).result(timeout=30) if p.in_scope
    )
    _transfer(live, patient.id)  # the laptop does not know yet
    win.executor.submit(
        lambda: session.write_consultation(
            patient.id, vitals=[], note_text="Seen on the wing.", plan_text="Review."
        )
    ).result(timeout=30)

    outcome = _sync(qtbot, win)
    assert outcome.ok and outcome.result is not None and outcome.result.push_errors == 2
    sentence = (
        f"The gateway refused 1 note for {patient.display_name}: written after the patient left "
        "HMP Brixton."
    )
    qtbot.waitUntil(lambda: sentence in panel.result.text(), timeout=10000)
    assert panel.result.property("role") == "warning"  # amber: finished, but a note refused
    assert "clinical lead or IT" in panel.result.text()

    mark, text = panel.readiness.labels["work"]
    qtbot.waitUntil(lambda: sentence in text.text(), timeout=10000)
    assert mark.text() == "✖ Not ready" and mark.property("role") == "error"  # red
    assert "What to do: The note is kept on this laptop" in text.text()
    assert "Sync now" not in text.text()
    assert panel.readiness.summary.property("role") == "error"
    assert 'QLabel[role="warning"]' in STYLESHEET  # amber is a real colour, not the default
