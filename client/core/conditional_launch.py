"""Conditional launch: a device that fails the policy's device rules never opens records.

Guarantees:
- ``launch_failures`` checks what the signed policy asks for (``device.require_disk_encryption``,
  ``device.min_os_version``) through ``client.core.device_checks``; a disk whose encryption
  cannot be determined counts as NOT encrypted when encryption is required (fail closed).
- ``check_launch`` runs right after a clinician's login and before any record is read; when
  anything fails, the refusal is audited as ``conditional_launch_refused`` / ``denied`` with
  the failed checks' codes only (no path, no version string, no patient data). Other roles see
  no clinical content and are not checked.
- Both read sysfs: they run on the UI's executor, never on the GUI thread.
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
from client.core.session import CLINICIAN, Session
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


def check_launch(launch_check: LaunchCheck, session: Session) -> list[LaunchFailure]:
    """Right after login: may this device open records? (a refusal is audited)"""
    if session.role != CLINICIAN:
        return []
    failures = launch_check(session.policy, session.device.data_dir)
    if failures:
        session.record_event(
            "conditional_launch_refused",
            "denied",
            detail={"failed": ",".join(f.code for f in failures)},
        )
    return failures
