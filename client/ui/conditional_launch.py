"""Conditional launch: a device that fails the policy's device rules never opens records.

Guarantees:
- ``launch_failures`` checks what the signed policy asks for (``device.require_disk_encryption``,
  ``device.min_os_version``) through ``client.core.device_checks``; a disk whose encryption
  cannot be determined counts as NOT encrypted when encryption is required (fail closed).
- It runs on the executor (it reads sysfs), never on the GUI thread.
- When anything fails, the main window shows ``ConditionalLaunchScreen`` instead of the
  clinical workspace (no record is read), and the refusal is audited as
  ``conditional_launch_refused`` / ``denied`` with the failed checks' codes only.
- The screen says what failed and what IT must do, in plain text; it holds no patient data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.core.device_checks import (
    DiskEncryption,
    LinuxRoots,
    current_os_version,
    disk_encryption,
    os_version_ok,
)
from client.ui.qt import QFrame, QHBoxLayout, QVBoxLayout, QWidget
from client.ui.widgets import data_label
from policy.model import Policy


@dataclass(frozen=True)
class LaunchFailure:
    code: str  # stable, for the audit entry
    what: str  # what failed, for people
    todo: str  # what IT must do


LaunchCheck = Callable[[Policy, Path], list[LaunchFailure]]


def launch_failures(
    policy: Policy,
    data_dir: Path,
    *,
    roots: LinuxRoots | None = None,
    os_version: str | None = None,
) -> list[LaunchFailure]:
    """The policy's device rules this machine fails (empty: records may open)."""
    failures: list[LaunchFailure] = []
    if policy.get_bool("device.require_disk_encryption"):
        state = disk_encryption(data_dir, roots)
        if state is not DiskEncryption.ENCRYPTED:
            unknown = state is DiskEncryption.UNKNOWN
            failures.append(
                LaunchFailure(
                    "disk_encryption_unknown" if unknown else "disk_not_encrypted",
                    "Full-disk encryption could not be confirmed on this laptop."
                    if unknown
                    else "This laptop's disk is not encrypted.",
                    "IT must turn on full-disk encryption (dm-crypt/LUKS on Linux, BitLocker "
                    "on Windows, FileVault on macOS) for the disk that holds Gatehouse's data, "
                    "then restart Gatehouse.",
                )
            )
    minimum = policy.get_str("device.min_os_version")
    version = current_os_version() if os_version is None else os_version
    if minimum.strip() and not os_version_ok(version, minimum):
        failures.append(
            LaunchFailure(
                "os_too_old",
                f"The operating system version ({version[:40]}) is older than the policy's "
                f"minimum ({minimum}).",
                "IT must update the operating system to at least that version.",
            )
        )
    return failures


class ConditionalLaunchScreen(QWidget):
    """Records stay closed: what failed, what IT must do."""

    def __init__(self, failures: list[LaunchFailure], site: str, device_id: str) -> None:
        super().__init__()
        self.setObjectName("conditional_launch_screen")
        self.setAccessibleName("Records cannot open on this laptop")
        card = QFrame()
        card.setProperty("role", "banner")
        card.setMaximumWidth(720)
        inner = QVBoxLayout(card)
        inner.setContentsMargins(24, 20, 24, 20)
        inner.addWidget(data_label("Records cannot open on this laptop", role="title"))
        inner.addWidget(
            data_label(
                "The security policy IT signed for this site requires checks this laptop does "
                "not pass. No patient record has been opened, and nothing has been lost. "
                "This refusal has been recorded.",
                wrap=True,
            )
        )
        self.rows: list[QWidget] = []
        for number, failure in enumerate(failures, start=1):
            what = data_label(f"✖ Problem {number}: {failure.what}", role="error", wrap=True)
            todo = data_label(f"What IT must do: {failure.todo}", wrap=True)
            what.setAccessibleName(f"Problem {number}")
            inner.addWidget(what)
            inner.addWidget(todo)
            self.rows.extend((what, todo))
        inner.addWidget(
            data_label(
                f"Tell IT: device {device_id}, site {site}. You can lock or close Gatehouse.",
                role="hint",
                wrap=True,
            )
        )
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(card)
        row.addStretch(1)
        outer.addLayout(row)
        outer.addStretch(2)
