"""Conditional launch: is this machine fit to hold patient records? (DESIGN.md §Policy device.*)

Guarantees:
- ``disk_encryption(path)`` answers ENCRYPTED only when the block device under ``path`` is, or
  sits on top of, a dm-crypt mapping (LUKS or plain); it answers NOT_ENCRYPTED when the chain
  down to the physical disk has no crypt layer, and UNKNOWN when it cannot tell (a network or
  virtual filesystem, no sysfs). The policy decides what UNKNOWN means; the session treats it
  as not encrypted when encryption is required (fail closed).
- ``os_version_ok`` compares dotted numeric versions, never strings.

Linux is implemented and tested against a sysfs tree; Windows (BitLocker: ``manage-bde
-status`` / WMI ``Win32_EncryptableVolume.ProtectionStatus``) and macOS (FileVault: ``fdesetup
status``) are documented in docs/deploy.md and answer UNKNOWN here until implemented.
"""

from __future__ import annotations

import enum
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path


class DiskEncryption(enum.Enum):
    ENCRYPTED = "encrypted"
    NOT_ENCRYPTED = "not_encrypted"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class LinuxRoots:
    """Where to read the kernel's view; tests point these at a fake tree."""

    mountinfo: Path = Path("/proc/self/mountinfo")
    sys_dev_block: Path = Path("/sys/dev/block")
    sys_class_block: Path = Path("/sys/class/block")


def disk_encryption(path: Path, roots: LinuxRoots | None = None) -> DiskEncryption:
    """Whether the filesystem holding ``path`` is on a dm-crypt device (Linux)."""
    if platform.system() != "Linux" and roots is None:
        return DiskEncryption.UNKNOWN
    roots = roots or LinuxRoots()
    device = _mount_device_of(path, roots.mountinfo)
    if device is None:
        return DiskEncryption.UNKNOWN
    node = roots.sys_dev_block / device
    if not node.exists():
        return DiskEncryption.UNKNOWN  # e.g. overlay or tmpfs: no block device at all
    name = node.resolve().name
    return _walk_for_crypt(name, roots.sys_class_block, depth=0)


def _mount_device_of(path: Path, mountinfo: Path) -> str | None:
    """The ``major:minor`` of the longest mount point containing ``path``."""
    try:
        lines = mountinfo.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), fields[2])
    return best[1] if best else None


_MAX_STACK_DEPTH = 8  # LVM on LUKS on RAID is 3 deep; 8 bounds a malformed sysfs loop


def _walk_for_crypt(name: str, sys_class_block: Path, depth: int) -> DiskEncryption:
    if depth > _MAX_STACK_DEPTH:
        return DiskEncryption.UNKNOWN
    base = sys_class_block / name
    uuid_file = base / "dm" / "uuid"
    if uuid_file.exists():
        try:
            if uuid_file.read_text(encoding="ascii").strip().startswith("CRYPT-"):
                return DiskEncryption.ENCRYPTED
        except OSError:
            return DiskEncryption.UNKNOWN
    # A partition's parent disk holds its slaves; a dm device lists its own.
    slaves_dir = base / "slaves"
    slaves = sorted(p.name for p in slaves_dir.iterdir()) if slaves_dir.is_dir() else []
    if not slaves:
        return DiskEncryption.NOT_ENCRYPTED
    results = [_walk_for_crypt(slave, sys_class_block, depth + 1) for slave in slaves]
    if all(r is DiskEncryption.ENCRYPTED for r in results):
        return DiskEncryption.ENCRYPTED
    if any(r is DiskEncryption.UNKNOWN for r in results):
        return DiskEncryption.UNKNOWN
    return DiskEncryption.NOT_ENCRYPTED


def parse_version(text: str) -> tuple[int, ...]:
    """Leading dotted integers of a version string: ``"6.1.0-26-amd64"`` → ``(6, 1, 0)``."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    if not match:
        return ()
    return tuple(int(part) for part in match.group(1).split("."))


def os_version_ok(current: str, minimum: str) -> bool:
    """True when no minimum is set or ``current`` is at least ``minimum``."""
    if not minimum.strip():
        return True
    have, need = parse_version(current), parse_version(minimum)
    if not have:
        return False
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def current_os_version() -> str:
    """The running kernel / OS release (Linux: kernel release; elsewhere ``platform``)."""
    return platform.release()
