"""Conditional launch: the Linux full-disk-encryption check and the OS version rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.core.device_checks import (
    DiskEncryption,
    LinuxRoots,
    disk_encryption,
    os_version_ok,
    parse_version,
)
from tests.support.fake_sys import fake_sys


def test_luks_under_lvm_is_encrypted(tmp_path: Path) -> None:
    roots = fake_sys(
        tmp_path,
        {"/": "254:1", "/boot": "8:1"},
        {
            "sda2": {"dev": "8:2"},
            "sda1": {"dev": "8:1"},
            "dm-0": {"dev": "254:0", "uuid": "CRYPT-LUKS2-abc-sda2_crypt", "slaves": ["sda2"]},
            "dm-1": {"dev": "254:1", "uuid": "LVM-xyz", "slaves": ["dm-0"]},
        },
    )
    assert disk_encryption(Path("/home/clinician/.gatehouse"), roots) is DiskEncryption.ENCRYPTED
    assert disk_encryption(Path("/boot/efi"), roots) is DiskEncryption.NOT_ENCRYPTED


def test_plain_partition_and_plain_lvm_are_not_encrypted(tmp_path: Path) -> None:
    roots = fake_sys(
        tmp_path,
        {"/": "8:2", "/data": "254:0"},
        {
            "sda2": {"dev": "8:2"},
            "sdb1": {"dev": "8:17"},
            "dm-0": {"dev": "254:0", "uuid": "LVM-plain", "slaves": ["sdb1"]},
        },
    )
    assert disk_encryption(Path("/var/lib/x"), roots) is DiskEncryption.NOT_ENCRYPTED
    assert disk_encryption(Path("/data/gatehouse"), roots) is DiskEncryption.NOT_ENCRYPTED


def test_a_filesystem_without_a_block_device_is_unknown(tmp_path: Path) -> None:
    roots = fake_sys(tmp_path, {"/": "0:31"}, {})
    assert disk_encryption(Path("/anything"), roots) is DiskEncryption.UNKNOWN
    missing = LinuxRoots(tmp_path / "nope", roots.sys_dev_block, roots.sys_class_block)
    assert disk_encryption(Path("/anything"), missing) is DiskEncryption.UNKNOWN


def test_the_real_machine_gives_an_answer(tmp_path: Path) -> None:
    assert disk_encryption(tmp_path) in set(DiskEncryption)


@pytest.mark.parametrize(
    ("current", "minimum", "ok"),
    [
        ("6.1.0-26-amd64", "5.15", True),
        ("5.4.0", "5.15", False),
        ("10.0.19045", "10.0.19044", True),
        ("14.2", "14.2.0", True),
        ("6.10", "6.9", True),  # numeric, not string, comparison
        ("garbage", "5", False),
        ("anything", "", True),
    ],
)
def test_os_version_rule(current: str, minimum: str, ok: bool) -> None:
    assert os_version_ok(current, minimum) is ok


def test_parse_version() -> None:
    assert parse_version("6.1.0-26-amd64") == (6, 1, 0)
    assert parse_version("") == ()
