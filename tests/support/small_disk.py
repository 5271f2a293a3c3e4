"""A real small file system for the full-disk tests (CR-3): a tmpfs mounted for one test.

What it promises the tests built on it:
- ``small_disk`` mounts a fresh tmpfs of ``size_mb`` at a folder and unmounts it afterwards, so
  every ENOSPC, SQLITE_FULL and short write the product meets is the kernel's own.
- As root on Linux (CI: Debian, tests run as root) a failing mount FAILS the test loudly; it
  never silently falls back. Only where mounting is impossible by design (not root) is the
  test skipped, with the reason.
- ``fill(leave=n)`` takes every byte but ``n`` with one filler file; ``unfill()`` frees it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FILLER = ".filler"  # outside the data folder the product uses


@dataclass
class SmallDisk:
    root: Path

    @property
    def filler(self) -> Path:
        return self.root / FILLER

    def free(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Leave about ``leave`` bytes free (to the page); ``leave=0``: not one byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            take = self.free() - leave
            if take > 0:
                os.posix_fallocate(fd, os.fstat(fd).st_size, take)
            if leave == 0:  # the last partial pages too
                for chunk in (65536, 4096, 512, 1):
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, b"\0" * chunk)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)


@contextlib.contextmanager
def small_disk(where: Path, size_mb: int) -> Iterator[SmallDisk]:
    """A tmpfs of ``size_mb`` MiB mounted at ``where`` for the block."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux (CI runs these as root)")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"could not mount a {size_mb} MiB tmpfs at {where}: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(where)
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
