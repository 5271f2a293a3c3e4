"""IT and policy on screen (issue 12): device checks before a clinician meets them, the first
sign-in as the default for a new name, an empty laptop that says "sync first", Print only when
it can print, and a refused policy update in the sync result (PO-3).

Real widgets offscreen, real vaults, the real conditional-launch rules (only the OS version
string, which belongs to the machine and not to the product, is given), and a real gateway over
mutual TLS for the policy refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytestqt.qtbot import QtBot

from client.core.conditional_launch import LaunchFailure, launch_failures
from client.core.provisioning import add_user_online
from client.ui.admin import AdminPanel
from client.ui.caseload import NEVER_SYNCED, NO_MATCH
from client.ui.clinical import ClinicalWorkspace
from client.ui.main_window import MainWindow
from client.ui.provisioning import ProvisioningWindow
from client.ui.qt import Qt
from client.ui.sync_panel import SyncOutcome
from policy.model import Policy
from sync.gateway.store.base import PolicyRecord
from tests.support.policy import envelope_around
from tests.support.ui import (
    HTML_PATIENT,
    add_slot,
    device,
    disk_is_fine,
    open_chart,
    sign_in,
    window,
    workspace,
)
from tests.support.ui_gateway import (
    NURSE,
    SITE,
    LiveGateway,
    now,
    provision_for_tests,
    start_live_gateway,
)

ADMIN = ("it.admin", "provisioning desk password")
OLD_OS = "10.0"


def old_os(policy: Policy, data_dir: Path) -> list[LaunchFailure]:
    """The real device rules, on a machine reporting an old OS version (outside the product)."""
    return launch_failures(policy, data_dir, os_version=OLD_OS)


# -- conditional launch for IT ----------------------------------------------------------------


def test_the_admin_panel_shows_a_failing_device_check_and_what_to_do(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path, device__min_os_version="22.04", device__require_disk_encryption=False)
    add_slot(td, ADMIN, "admin")
    win = window(qtbot, td, launch_check=old_os)
    sign_in(qtbot, win, ADMIN)
    admin = win.workspace
    assert isinstance(admin, AdminPanel)
    qtbot.waitUntil(lambda: "older than the policy's minimum" in admin.device_checks.text())
    text = admin.device_checks.text()
    assert "Clinicians cannot open records" in text
    assert "What to do: IT must update the operating system" in text
    assert admin.device_checks.property("role") == "error"


def test_the_admin_panel_says_when_the_device_checks_pass(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, load=False)
    add_slot(td, ADMIN, "admin")
    win = window(qtbot, td)  # disk_is_fine: the test machine's disk is outside the product
    sign_in(qtbot, win, ADMIN)
    admin = win.workspace
    assert isinstance(admin, AdminPanel)
    qtbot.waitUntil(lambda: "Passes the policy's device rules" in admin.device_checks.text())
    assert admin.device_checks.property("role") == "ok"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveGateway]:
    gateway = start_live_gateway(tmp_path / "gw", patients=6, device__min_os_version="22.04")
    try:
        yield gateway
    finally:
        gateway.stop()


def test_provisioning_shows_it_a_failing_device_check_before_any_clinician_signs_in(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    bundle = live.bundle(tmp_path / "bundle.json")
    first = ProvisioningWindow(
        tmp_path / "laptop",
        bundle_path=bundle,
        provision=provision_for_tests,
        open_main=lambda d: MainWindow(d, launch_check=disk_is_fine),
        launch_check=old_os,
    )
    qtbot.addWidget(first)
    screen = first.screen_widget
    qtbot.waitUntil(lambda: screen.enrol.isEnabled(), timeout=10000)
    screen.start()
    qtbot.waitUntil(lambda: screen.device is not None, timeout=60000)
    text = screen.device_checks.text()
    assert "Clinicians cannot open records on this laptop" in text
    assert f"({OLD_OS}) is older than the policy's minimum (22.04)" in text
    assert "What to do: IT must update the operating system" in text
    assert screen.device_checks.property("role") == "error"


# -- sign-in -------------------------------------------------------------------------------


def test_a_name_new_to_the_laptop_makes_first_sign_in_the_default(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    laptop = provision_for_tests(tmp_path / "laptop", live.bundle(tmp_path / "b.json").read_bytes())
    assert add_user_online(laptop, *NURSE) == "clinician"
    win = MainWindow(laptop, launch_check=disk_is_fine)
    win.app_state = lambda: Qt.ApplicationState.ApplicationActive
    qtbot.addWidget(win)
    win.show()
    screen = win.login_screen
    assert screen is not None
    assert not screen.first.isVisible()  # someone has signed in here: not offered up front
    screen.user.setText("nurse.amria")  # a typo, or a colleague new to this laptop
    screen.user.editingFinished.emit()
    qtbot.waitUntil(lambda: screen.first.isVisible(), timeout=5000)
    assert screen.first.isDefault() and not screen.sign_in.isDefault()
    assert "Nobody with this user name has signed in on this laptop yet" in screen.feedback.text()
    assert "check the spelling" in screen.feedback.text()

    screen.user.setText(NURSE[0])  # the name that has a key slot here
    screen.user.editingFinished.emit()
    qtbot.waitUntil(lambda: screen.sign_in.isDefault(), timeout=5000)
    assert not screen.first.isVisible() and not screen.first.isDefault()
    screen.password.setText("not the password at all")
    screen.submit()
    qtbot.waitUntil(lambda: bool(screen.feedback.text()), timeout=15000)
    wrong_password = screen.feedback.text()
    assert wrong_password.startswith("The password is not right for this user name.")
    assert "attempt(s) left" in wrong_password
    assert "Nobody with this user name" not in wrong_password


# -- an empty laptop ---------------------------------------------------------------------------


def test_a_laptop_that_never_synced_says_sync_first_not_an_empty_list(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path, load=False)
    _win, ws, _session = workspace(qtbot, td)
    qtbot.waitUntil(lambda: ws.caseload.hint.text() == NEVER_SYNCED, timeout=5000)
    assert "No records yet — sync first" in ws.caseload.hint.text()
    assert ws.caseload.model.rowCount() == 0
    ws.caseload.query.setText("Nobody")
    ws.caseload.search_now()
    qtbot.waitUntil(lambda: ws.caseload.hint.text() == NO_MATCH, timeout=5000)


def test_a_laptop_with_records_lists_its_caseload(qtbot: QtBot, tmp_path: Path) -> None:
    _win, ws, _session = workspace(qtbot, device(tmp_path))
    qtbot.waitUntil(lambda: ws.caseload.model.rowCount() > 0, timeout=5000)
    assert "sync first" not in ws.caseload.hint.text()


# -- print -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy_allows", "printer", "shown"),
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_print_is_shown_only_when_the_policy_allows_it_and_a_printer_exists(
    qtbot: QtBot, tmp_path: Path, policy_allows: bool, printer: bool, shown: bool
) -> None:
    td = device(tmp_path, ui__printing=policy_allows)
    win = window(qtbot, td, has_printer=lambda: printer)  # the OS print queue: outside
    sign_in(qtbot, win)
    ws = win.workspace
    assert isinstance(ws, ClinicalWorkspace)
    chart = open_chart(qtbot, ws, HTML_PATIENT)
    assert chart.print_button.isVisible() is shown


# -- a refused policy update (PO-3) -------------------------------------------------------------


def test_po3_a_refused_policy_update_is_amber_in_the_sync_result_with_its_reason(
    qtbot: QtBot, live: LiveGateway, tmp_path: Path
) -> None:
    laptop = provision_for_tests(tmp_path / "laptop", live.bundle(tmp_path / "b.json").read_bytes())
    assert add_user_online(laptop, *NURSE) == "clinician"
    win = MainWindow(laptop, launch_check=disk_is_fine)
    win.app_state = lambda: Qt.ApplicationState.ApplicationActive
    qtbot.addWidget(win)
    win.show()
    session = sign_in(qtbot, win, NURSE)
    installed = session.policy
    # The gateway now offers version 2, signed by a key the laptop does not trust.
    moment = now()
    forged = envelope_around(
        moment,
        site=SITE,
        settings=dict(installed.settings),
        key=Ed25519PrivateKey.generate(),
        version=installed.version + 1,
    )
    live.store.add_policy(PolicyRecord(SITE, installed.version + 1, None, forged.decode(), moment))
    win.open_sync()
    panel = win.sync_panel
    assert panel is not None
    with qtbot.waitSignal(win.sync.finished, timeout=60000) as finished:
        assert win.start_sync()
    outcome = finished.args[0]
    assert isinstance(outcome, SyncOutcome) and outcome.ok
    qtbot.waitUntil(lambda: "policy update" in panel.result.text(), timeout=10000)
    text = panel.result.text()
    assert "not signed by the health board's policy keys, so it was refused" in text
    assert "This laptop keeps its current policy. Tell IT" in text
    assert "unknown_key" not in text  # the code stays in the audit entry (UI-4)
    assert panel.result.property("role") == "warning"  # amber, not green
    assert "policy update refused" in win.status_line.sync_text
    assert win.session is not None and win.session.policy.version == installed.version
