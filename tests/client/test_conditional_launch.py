"""Conditional launch in the core, without Qt: the policy's device rules decide whether records
may open, unknown encryption fails closed, and a refusal is audited with the failed codes only."""

from __future__ import annotations

import functools
from pathlib import Path

from client.core.conditional_launch import check_launch, launch_failures
from client.core.device_checks import LinuxRoots
from client.core.session import Session
from sync.protocol.audit.entry import AuditEntry
from tests.support.device import CLINICIAN, policy_envelope, provision
from tests.support.fake_sys import fake_sys

ADMIN = ("it.admin", "admin passphrase!")


def _plain_disk(tmp: Path, data_dir: Path) -> LinuxRoots:
    (tmp / "sys-plain").mkdir()
    return fake_sys(tmp / "sys-plain", {"/": "8:1", str(data_dir): "8:1"}, {"sda1": {"dev": "8:1"}})


def _entries(session: Session) -> list[AuditEntry]:
    with session._act() as conn:  # raw read: the auditor's view is tested elsewhere
        return session._audit.entries(conn)


def test_unknown_encryption_fails_closed_only_when_the_policy_requires_it(tmp_path: Path) -> None:
    empty = LinuxRoots(tmp_path / "no-mountinfo", tmp_path / "x", tmp_path / "y")
    strict = provision(tmp_path / "a", policy=policy_envelope(device__require_disk_encryption=True))
    failures = launch_failures(strict.device.policy(), strict.data_dir, roots=empty, os_version="6")
    assert [f.code for f in failures] == ["disk_encryption_unknown"]
    assert all(f.what and f.todo for f in failures)
    lax = provision(tmp_path / "b", policy=policy_envelope(device__require_disk_encryption=False))
    assert launch_failures(lax.device.policy(), lax.data_dir, roots=empty, os_version="1") == []


def test_an_old_os_is_named_with_the_policy_minimum(tmp_path: Path) -> None:
    td = provision(
        tmp_path / "d",
        policy=policy_envelope(device__require_disk_encryption=False, device__min_os_version="6.8"),
    )
    failures = launch_failures(td.device.policy(), td.data_dir, os_version="6.1.0-26-amd64")
    assert [f.code for f in failures] == ["os_too_old"]
    assert "minimum (6.8)" in failures[0].what


def test_a_refused_clinician_is_audited_with_the_codes_only(tmp_path: Path) -> None:
    td = provision(tmp_path / "d", policy=policy_envelope(device__require_disk_encryption=True))
    check = functools.partial(
        launch_failures, roots=_plain_disk(tmp_path, td.data_dir), os_version="6.1"
    )
    session = Session.login(td.device, *CLINICIAN)
    failures = check_launch(check, session)
    assert [f.code for f in failures] == ["disk_not_encrypted"]
    refused = [e for e in _entries(session) if e.action == "conditional_launch_refused"]
    assert len(refused) == 1
    assert refused[0].outcome == "denied" and refused[0].user_id == CLINICIAN[0]
    assert dict(refused[0].detail) == {"failed": "disk_not_encrypted"}
    session.lock()


def test_a_passing_device_and_other_roles_leave_no_refusal(tmp_path: Path) -> None:
    td = provision(tmp_path / "d", policy=policy_envelope(device__require_disk_encryption=True))
    failing = functools.partial(
        launch_failures, roots=_plain_disk(tmp_path, td.data_dir), os_version="6.1"
    )
    session = Session.login(td.device, *CLINICIAN)
    assert check_launch(lambda _policy, _dir: [], session) == []
    session.lock()
    admin_device = provision(
        tmp_path / "adm",
        role="admin",
        user=ADMIN,
        policy=policy_envelope(device__require_disk_encryption=True),
    )
    admin = Session.login(admin_device.device, *ADMIN)
    assert check_launch(failing, admin) == []  # an admin sees no records: not checked
    assert "conditional_launch_refused" not in [e.action for e in _entries(admin)]
    admin.lock()
    again = Session.login(td.device, *CLINICIAN)
    assert "conditional_launch_refused" not in [e.action for e in _entries(again)]
    again.lock()
