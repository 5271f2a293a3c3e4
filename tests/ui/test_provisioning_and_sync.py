"""First run against a real gateway (mutual TLS on 127.0.0.1): provisioning from a bundle, the
first online sign-in, later offline sign-in, sync with progress on its own worker, readiness,
the event loop turning during a sync, and the lock cancelling a running sync."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from client.core.device import is_provisioned
from client.core.session import Session
from client.core.sync_runner import run_sync
from client.ui.clinical import ClinicalWorkspace
from client.ui.login import LoginScreen
from client.ui.main_window import MainWindow
from client.ui.provisioning import ProvisioningWindow
from client.ui.qt import QLabel, Qt, QTimer
from client.ui.sync_panel import SyncOutcome
from sync.device.engine import Progress
from sync.gateway.cli import main as gateway_main
from tests.support.ui import disk_is_fine
from tests.support.ui_gateway import (
    NURSE,
    SITE,
    LiveGateway,
    provision_for_tests,
    start_live_gateway,
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = start_live_gateway(tmp_path_factory.mktemp("gw"), patients=20)
    try:
        yield gateway
    finally:
        gateway.stop()


def gateway_cli(args: list[str]) -> bool:
    """An IT command on the running gateway's data folder (its own store connection)."""
    return gateway_main(args) == 0


def _main(device: Any, **options: Any) -> MainWindow:
    options.setdefault("launch_check", disk_is_fine)
    win = MainWindow(device, **options)
    win.app_state = lambda: Qt.ApplicationState.ApplicationActive
    return win


def provisioned_window(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path, **options: Any
) -> tuple[ProvisioningWindow, MainWindow]:
    bundle = live.bundle(tmp_path / "bundle.json")
    first = ProvisioningWindow(
        tmp_path / "device",
        bundle_path=bundle,
        provision=provision_for_tests,
        open_main=lambda device: _main(device, **options),
    )
    first.show()  # not handed to qtbot: it closes (and deletes) itself on "Continue"
    screen = first.screen_widget
    qtbot.waitUntil(lambda: screen.enrol.isEnabled(), timeout=10000)
    screen.enrol.click()
    qtbot.waitUntil(lambda: screen.proceed.isVisible(), timeout=30000)
    screen.proceed.click()
    win = first.main_window
    assert isinstance(win, MainWindow)
    qtbot.addWidget(win)
    return first, win


def first_sign_in(qtbot: QtBot, win: MainWindow, user: tuple[str, str] = NURSE) -> Session:
    login = win.login_screen
    assert isinstance(login, LoginScreen)
    login.user.setText(user[0])
    login.password.setText(user[1])
    login.first.click()
    qtbot.waitUntil(lambda: win.session is not None, timeout=30000)
    assert win.session is not None
    return win.session


def test_provisioning_shows_the_bundle_then_enrols_and_leads_to_first_online_sign_in(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    bundle = live.bundle(tmp_path / "bundle.json")
    data_dir = tmp_path / "device"
    first = ProvisioningWindow(
        data_dir, bundle_path=bundle, provision=provision_for_tests, open_main=_main
    )
    first.show()  # not handed to qtbot: it closes (and deletes) itself on "Continue"
    screen = first.screen_widget
    qtbot.waitUntil(lambda: screen.enrol.isEnabled(), timeout=10000)
    # What the bundle names is shown before anything is sent or stored.
    assert screen.site.text() == SITE
    assert screen.gateway.text() == "127.0.0.1"
    # the bundle's expiry in UK local time, one display format
    assert re.fullmatch(r"\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}( GMT| BST)?", screen.expires.text())
    assert not is_provisioned(data_dir)
    screen.enrol.click()
    assert screen.busy.isVisible() and not screen.enrol.isEnabled()
    qtbot.waitUntil(lambda: screen.proceed.isVisible(), timeout=30000)
    device = screen.device
    assert device is not None and is_provisioned(data_dir)
    assert device.profile.device_id in screen.done.text() and SITE in screen.done.text()
    assert device.header.users() == []  # only the escrow slot: nobody can sign in offline yet

    screen.proceed.click()
    win = first.main_window
    assert isinstance(win, MainWindow)
    qtbot.addWidget(win)
    login = win.login_screen
    assert login is not None and login.first.isVisible()  # offered before anyone tries
    # A normal sign-in for a person with no slot explains the first, online sign-in.
    login.user.setText(NURSE[0])
    login.password.setText(NURSE[1])
    login.submit()
    qtbot.waitUntil(lambda: "first sign-in" in login.feedback.text(), timeout=10000)
    assert login.password.text() == NURSE[1]  # kept for the online attempt
    session = first_sign_in(qtbot, win)
    assert session.role == "clinician"
    assert isinstance(win.workspace, ClinicalWorkspace)
    assert (NURSE[0], "clinician") in device.header.users()

    # Later sign-ins are offline: stop nothing, but prove no network is used by pointing the
    # login at the slot only (the gateway is not consulted by Session.login).
    win.lock()
    qtbot.waitUntil(lambda: session.is_locked, timeout=10000)
    lock_screen = win.login_screen
    assert lock_screen is not None and not lock_screen.first.isVisible()
    lock_screen.password.setText(NURSE[1])
    lock_screen.submit()
    qtbot.waitUntil(lambda: win.session is not None, timeout=15000)


def test_a_bad_bundle_is_refused_in_plain_words_and_nothing_is_stored(
    qtbot: QtBot, tmp_path: Path
) -> None:
    bad = tmp_path / "bundle.json"
    bad.write_text('{"format": "something else", "site": "<b>x</b>"}')
    data_dir = tmp_path / "device"
    first = ProvisioningWindow(data_dir, bundle_path=bad, provision=provision_for_tests)
    qtbot.addWidget(first)
    screen = first.screen_widget
    qtbot.waitUntil(lambda: "not a valid" in screen.feedback.text(), timeout=10000)
    assert not screen.enrol.isEnabled()
    assert screen.site.text() == ""
    assert "Traceback" not in screen.feedback.text()
    assert not data_dir.exists()
    assert all(
        label.textFormat() == Qt.TextFormat.PlainText for label in screen.findChildren(QLabel)
    )


def test_sync_panel_pulls_pushes_and_shows_readiness(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    _first, win = provisioned_window(qtbot, live, tmp_path)
    session = first_sign_in(qtbot, win)
    win.open_sync()
    panel = win.sync_panel
    assert panel is not None
    qtbot.waitUntil(lambda: panel.facts is not None, timeout=10000)
    assert panel.last_sync.text()  # "Never…" or the enrolment's trusted time
    with qtbot.waitSignal(win.sync.finished, timeout=60000) as finished:
        panel.sync_now.click()
        assert not panel.sync_now.isEnabled() and panel.cancel.isEnabled()
    outcome = finished.args[0]
    assert isinstance(outcome, SyncOutcome) and outcome.ok, outcome.reason
    assert outcome.result is not None and outcome.result.pulled > 0
    assert "Sync finished" in panel.result.text() and "received" in panel.result.text()
    assert panel.connection.text().startswith("Online")
    qtbot.waitUntil(lambda: "✔ Ready" in _marks(panel), timeout=10000)
    marks = {key: pair[0].text() for key, pair in panel.readiness.labels.items()}
    assert marks["cache"] == "✔ Ready" and marks["policy"] == "✔ Ready"

    # A consultation written offline goes up with the next sync.
    patients = win.executor.submit(lambda: session.search("a")).result(timeout=30)
    target = next(p for p in patients if p.in_scope)
    win.executor.submit(
        lambda: session.write_consultation(
            target.id, vitals=[], note_text="Seen today.", plan_text="Review."
        )
    ).result(timeout=30)
    with qtbot.waitSignal(win.sync.finished, timeout=60000) as again:
        assert win.start_sync()
    second = again.args[0]
    assert second.ok and second.result.pushed >= 1
    qtbot.waitUntil(lambda: panel.facts is not None and panel.facts.status.unsent_items == 0)


def _marks(panel: Any) -> str:
    return " ".join(pair[0].text() for pair in panel.readiness.labels.values())


def test_the_event_loop_keeps_turning_during_a_sync(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    def slow_sync(session: Session, *, progress: Any, cancel: threading.Event) -> Any:
        def report(update: Progress) -> None:
            threading.Event().wait(0.05)  # a slow network, on the sync worker
            progress(update)

        return run_sync(session, progress=report, cancel=cancel)

    _first, win = provisioned_window(qtbot, live, tmp_path, sync=slow_sync)
    first_sign_in(qtbot, win)
    ticks: list[int] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    with qtbot.waitSignal(win.sync.finished, timeout=60000) as finished:
        assert win.start_sync()
    timer.stop()
    assert finished.args[0].ok
    assert len(ticks) >= 10, "the GUI thread was blocked during the sync"
    assert win.status_line.sync_text.startswith("Synced") and " in, " in win.status_line.sync_text


def test_lock_during_a_sync_cancels_it_and_closes_the_vault_once_it_stopped(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    reached, gate = threading.Event(), threading.Event()

    def gated_sync(session: Session, *, progress: Any, cancel: threading.Event) -> Any:
        def report(update: Progress) -> None:
            reached.set()
            gate.wait(20)  # hold the sync mid-way until the test has locked
            progress(update)

        return run_sync(session, progress=report, cancel=cancel)

    _first, win = provisioned_window(qtbot, live, tmp_path, sync=gated_sync)
    session = first_sign_in(qtbot, win)
    assert win.start_sync()
    qtbot.waitUntil(reached.is_set, timeout=20000)
    win.lock()
    # The screen is locked at once; the vault closes only after the sync has stopped.
    assert win.session is None and isinstance(win.login_screen, LoginScreen)
    assert win.sync.running and not session.is_locked
    with qtbot.waitSignal(win.sync.finished, timeout=60000) as finished:
        gate.set()
    outcome = finished.args[0]
    assert outcome.reason == "cancelled"
    qtbot.waitUntil(lambda: session.is_locked, timeout=10000)


def test_a_remote_lock_received_by_a_sync_locks_the_window(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    _first, win = provisioned_window(qtbot, live, tmp_path)
    session = first_sign_in(qtbot, win)
    assert gateway_cli(["device", "lock", "--data", str(live.data), win.device.profile.device_id])
    with qtbot.waitSignal(win.sync.finished, timeout=60000) as finished:
        assert win.start_sync()
    assert finished.args[0].lock_requested
    assert win.session is None and isinstance(win.login_screen, LoginScreen)
    qtbot.waitUntil(lambda: session.is_locked, timeout=10000)


def test_a_remote_wipe_received_by_a_sync_leaves_nothing_to_sign_in_to(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    _first, win = provisioned_window(qtbot, live, tmp_path)
    first_sign_in(qtbot, win)
    assert gateway_cli(["device", "wipe", "--data", str(live.data), win.device.profile.device_id])
    with qtbot.waitSignal(win.sync.finished, timeout=60000) as finished:
        assert win.start_sync()
    assert finished.args[0].wiped
    assert win.session is None and win.login_screen is None
    assert win.screens.currentWidget().objectName() == "wiped_screen"
    assert not is_provisioned(tmp_path / "device")


def test_a_spent_bundle_is_refused_by_the_gateway_in_plain_words(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    bundle = live.bundle(tmp_path / "bundle.json")
    screens = []
    for name in ("first", "second"):
        window = ProvisioningWindow(
            tmp_path / name, bundle_path=bundle, provision=provision_for_tests
        )
        qtbot.addWidget(window)
        screen = window.screen_widget
        qtbot.waitUntil(lambda s=screen: s.enrol.isEnabled(), timeout=10000)
        screen.enrol.click()
        screens.append(screen)
        qtbot.waitUntil(
            lambda s=screen: s.device is not None or "used" in s.feedback.text(), timeout=30000
        )
    first, second = screens
    assert first.device is not None
    assert second.device is None and "already been used" in second.feedback.text()
    assert "Nothing you saved has been lost" in second.feedback.text()
    assert second.enrol.isEnabled() and not second.busy.isVisible()
    assert not is_provisioned(tmp_path / "second")
