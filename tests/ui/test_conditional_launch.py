"""Conditional launch: where the policy requires full-disk encryption or a minimum OS version,
a device that fails it never opens records; the refusal is shown plainly and audited. The
Linux check runs through client.core.device_checks against a fake sysfs tree."""

from __future__ import annotations

import functools
from pathlib import Path

from pytestqt.qtbot import QtBot

from client.core.conditional_launch import launch_failures
from client.core.device_checks import LinuxRoots
from client.ui.clinical import ClinicalWorkspace
from client.ui.conditional_launch import ConditionalLaunchScreen
from client.ui.qt import QLabel, Qt
from tests.support.fake_sys import fake_sys
from tests.support.ui import audit_actions, device, flush_deletes, sign_in, window


def _plain_disk(tmp: Path, data_dir: Path) -> LinuxRoots:
    (tmp / "sys-plain").mkdir()
    return fake_sys(
        tmp / "sys-plain",
        {"/": "8:1", str(data_dir): "8:1"},
        {"sda1": {"dev": "8:1"}},
    )


def _luks_disk(tmp: Path, data_dir: Path) -> LinuxRoots:
    (tmp / "sys-luks").mkdir()
    return fake_sys(
        tmp / "sys-luks",
        {"/": "254:0", str(data_dir): "254:0"},
        {
            "sda2": {"dev": "8:2"},
            "dm-0": {"dev": "254:0", "uuid": "CRYPT-LUKS2-abc-root", "slaves": ["sda2"]},
        },
    )


def test_unencrypted_disk_refuses_records_with_a_clear_screen_and_an_audit_entry(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path, device__require_disk_encryption=True)
    roots = _plain_disk(tmp_path, td.data_dir)
    check = functools.partial(launch_failures, roots=roots, os_version="6.1.0")
    win = window(qtbot, td, launch_check=check)
    session = sign_in(qtbot, win)
    screen = win.workspace
    assert isinstance(screen, ConditionalLaunchScreen)
    assert not win.findChildren(ClinicalWorkspace)
    texts = [label.text() for label in screen.findChildren(QLabel)]
    assert any("disk is not encrypted" in t for t in texts)
    assert any("What IT must do" in t and "encryption" in t for t in texts)
    assert all(
        label.textFormat() == Qt.TextFormat.PlainText for label in screen.findChildren(QLabel)
    )
    actions = audit_actions(win, session)
    assert "conditional_launch_refused" in actions
    assert "record_view" not in actions and "search" not in actions


def test_os_below_the_minimum_is_refused_too(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path, device__require_disk_encryption=False, device__min_os_version="6.8")
    check = functools.partial(launch_failures, os_version="6.1.0-26-amd64")
    win = window(qtbot, td, launch_check=check)
    session = sign_in(qtbot, win)
    screen = win.workspace
    assert isinstance(screen, ConditionalLaunchScreen)
    assert any("older than the policy's minimum (6.8)" in w.text() for w in screen.rows)
    assert "conditional_launch_refused" in audit_actions(win, session)


def test_encrypted_disk_and_recent_os_open_the_clinical_workspace(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path, device__require_disk_encryption=True, device__min_os_version="6.1")
    roots = _luks_disk(tmp_path, td.data_dir)
    check = functools.partial(launch_failures, roots=roots, os_version="6.1.0-26-amd64")
    win = window(qtbot, td, launch_check=check)
    session = sign_in(qtbot, win)
    assert isinstance(win.workspace, ClinicalWorkspace)
    assert "conditional_launch_refused" not in audit_actions(win, session)
    win.lock()
    flush_deletes()
