"""A fake /proc and /sys tree for the disk-encryption check (the OS lies outside the product)."""

from __future__ import annotations

from pathlib import Path

from client.core.device_checks import (
    LinuxRoots,
)


def fake_sys(
    tmp: Path, mounts: dict[str, str], devices: dict[str, dict[str, object]]
) -> LinuxRoots:
    """Build /proc/self/mountinfo, /sys/dev/block and /sys/class/block for ``devices``.

    ``devices`` maps a block name to {"dev": "maj:min", "uuid": str | None, "slaves": [...]}.
    """
    mountinfo = tmp / "mountinfo"
    mountinfo.write_text(
        "".join(
            f"{i} 1 {dev} / {point} rw,relatime - ext4 /dev/x rw\n"
            for i, (point, dev) in enumerate(mounts.items(), start=20)
        )
    )
    dev_block, class_block = tmp / "sys/dev/block", tmp / "sys/class/block"
    dev_block.mkdir(parents=True)
    class_block.mkdir(parents=True)
    for name, spec in devices.items():
        node = tmp / "sys/devices/virtual/block" / name
        node.mkdir(parents=True)
        (class_block / name).symlink_to(node)
        (dev_block / str(spec["dev"])).symlink_to(node)
        if spec.get("uuid"):
            (node / "dm").mkdir()
            (node / "dm" / "uuid").write_text(str(spec["uuid"]) + "\n")
        slaves = node / "slaves"
        slaves.mkdir()
        for slave in spec.get("slaves", []):  # type: ignore[union-attr]
            (slaves / str(slave)).symlink_to(tmp / "sys/devices/virtual/block" / str(slave))
    return LinuxRoots(mountinfo, dev_block, class_block)
