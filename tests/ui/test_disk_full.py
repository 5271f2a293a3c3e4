"""A full disk on screen (SECURITY.md CR-3, UI-4): one sentence with what to do, never a
traceback, and the clinician's note stays in the form.

The laptop's data folder is on a real tmpfs mounted for the test; the save meets the real
early refusal of the core (too little space), shown by the real form and error boundary.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlcipher3
from pytestqt.qtbot import QtBot

from client.core import disk_space
from client.core.disk_space import DiskFull
from client.core.provisioning import add_user_online
from client.ui.consultation_form import ConsultationForm
from client.ui.error_boundary import NOTHING_LOST, explain
from client.ui.main_window import MainWindow
from client.ui.qt import QMessageBox, Qt
from client.ui.sync_panel import SyncOutcome, describe_outcome
from tests.support.small_disk import SmallDisk, small_disk
from tests.support.ui import (
    HTML_PATIENT,
    ProvisionedDevice,
    device,
    disk_is_fine,
    on_worker,
    open_chart,
    sign_in,
    workspace,
)
from tests.support.ui_gateway import NURSE, provision_for_tests, start_live_gateway

SENTENCE = re.compile(r"The laptop's disk is full: \d+ MB free, 16 MB needed — call IT\.")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk", 48) as mounted:
        yield mounted


@pytest.fixture
def td(disk: SmallDisk) -> ProvisionedDevice:
    return device(disk.root)


def test_cr3_saving_a_note_on_a_full_disk_says_so_and_keeps_the_note(
    qtbot: QtBot, td: ProvisionedDevice, disk: SmallDisk
) -> None:
    win, ws, session = workspace(qtbot, td)
    open_chart(qtbot, ws, HTML_PATIENT)
    ws.new_consultation()
    form = ws.patient_screen
    assert isinstance(form, ConsultationForm)
    before = on_worker(win, session.outbox_status)
    disk.fill(leave=4 * disk_space.MB)
    form.vital_fields["heart_rate"].setText("72")
    form.note.setPlainText("Chest clear. Keep-this-note.")
    form.plan.setPlainText("Review in two weeks.")
    form.submit()
    qtbot.waitUntil(lambda: win.findChild(QMessageBox, "error:disk_full") is not None, timeout=5000)

    box = win.findChild(QMessageBox, "error:disk_full")
    assert box is not None
    assert SENTENCE.search(box.text()) and NOTHING_LOST in box.text()
    assert "Errno" not in box.text() and "sqlcipher" not in box.text().lower()
    assert box.windowTitle() == "The laptop's disk is full"
    assert form.status.text().startswith("Not saved. The laptop's disk is full")
    assert form.note.toPlainText() == "Chest clear. Keep-this-note."  # nothing typed is lost
    assert form.vital_fields["heart_rate"].text() == "72"
    assert on_worker(win, session.outbox_status) == before  # nothing half-saved

    box.close()
    disk.unfill()
    with qtbot.waitSignal(form.saved, timeout=5000):
        form.submit()
    assert on_worker(win, session.outbox_status)[0] > before[0]


def test_cr3_a_sync_stopped_by_a_full_disk_reads_as_a_sentence() -> None:
    error = DiskFull(3 * disk_space.MB, disk_space.SYNC_BYTES)
    text = describe_outcome(SyncOutcome(None, error, dt.datetime(2026, 6, 1, 9, tzinfo=dt.UTC)))
    assert "The laptop's disk is full: 3 MB free, 64 MB needed — call IT." in text
    assert NOTHING_LOST in text


@pytest.mark.parametrize(
    "raw",
    [
        OSError(28, "No space left on device"),
        OSError(122, "Disk quota exceeded"),
        sqlcipher3.OperationalError("database or disk is full"),
    ],
)
def test_cr3_a_disk_full_error_that_escaped_classification_still_reads_as_a_sentence(
    raw: BaseException,
) -> None:
    shown = explain(raw)
    assert shown.reason == "disk_full" and shown.message.startswith("The laptop's disk is full")
    assert str(raw) not in shown.message


def test_cr3_the_sync_panel_refuses_a_sync_on_a_full_disk_in_one_sentence(
    qtbot: QtBot, tmp_path: Path, disk: SmallDisk
) -> None:
    """A real sync from the panel, against a real gateway, with the laptop's disk nearly full."""
    live = start_live_gateway(tmp_path / "gw", patients=6)
    try:
        raw = live.bundle(tmp_path / "bundle.json").read_bytes()
        laptop = provision_for_tests(disk.root / "laptop", raw)
        add_user_online(laptop, *NURSE)
        win = MainWindow(laptop, launch_check=disk_is_fine)
        win.app_state = lambda: Qt.ApplicationState.ApplicationActive
        qtbot.addWidget(win)
        win.show()
        sign_in(qtbot, win, NURSE)
        win.open_sync()
        panel = win.sync_panel
        assert panel is not None
        disk.fill(leave=10 * disk_space.MB)
        with qtbot.waitSignal(win.sync.finished, timeout=60000) as finished:
            panel.sync_now.click()
        outcome = finished.args[0]
        assert isinstance(outcome, SyncOutcome) and outcome.reason == "disk_full"
        text = panel.result.text()
        assert re.search(r"The laptop's disk is full: \d+ MB free, 64 MB needed — call IT\.", text)
        assert "Errno" not in text and "Traceback" not in text
    finally:
        live.stop()
