"""A full disk on the laptop: refused early, one plain error, and a reserve for reading (CR-3).

Guarantees:
- ``DiskFull`` (reason ``disk_full``, an ``EnvironmentFault``) is the one error for a full disk.
  It carries the free and needed figures, and its message is one sentence with what to do:
  "The laptop's disk is full: N MB free, M MB needed — call IT."
- ``is_disk_full`` recognises every form a full disk takes below us: ``OSError`` ENOSPC or
  EDQUOT, and SQLite's ``database or disk is full`` (SQLITE_FULL). SQLite reports a failed
  allocation of its shared-memory or journal file as ``disk I/O error``; that counts as a full
  disk only when the folder really has almost nothing free (``NEARLY_FULL_BYTES``), so a failing
  drive is never disguised as a full one.
- ``mapped`` turns those errors into ``DiskFull`` at the place they arise. It never changes what
  was written: callers keep their own all-or-nothing rules (vault transactions roll back, every
  file outside the vault is replaced atomically), so a ``DiskFull`` always means "nothing of
  this act was kept".
- ``require`` refuses before any work when the folder has less than the act needs
  (``SAVE_BYTES`` to save a note or change a password, ``SYNC_BYTES`` to sync).
- The reserve: ``disk.reserve`` holds ``RESERVE_BYTES`` of allocated space in the data folder.
  It is made whenever there is room for it beyond the act's own need, and released at sign-in
  when less than ``SIGN_IN_BYTES`` is free. The released space is what lets a clinician sign in
  and read on a full disk: the failed-attempt counter is written before every password try, and
  every record view is audited before it is shown (AD-1), exactly as on a healthy disk. If even
  that space is gone (another program took it), sign-in is refused with ``DiskFull`` before the
  password is tried: an attempt that cannot be counted is never made (AU-2).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import sqlcipher3

from client.core.errors import EnvironmentFault
from policy.atomic import fsync_directory

log = logging.getLogger(__name__)

MB: Final = 1024 * 1024
RESERVE_NAME: Final = "disk.reserve"
RESERVE_BYTES: Final = 8 * MB  # a read-only session's header writes, -shm, WAL and audit pages
SIGN_IN_BYTES: Final = 2 * MB  # below this at sign-in the reserve is released (reading only)
SAVE_BYTES: Final = 16 * MB  # a note (bounded text), its outbox rows, WAL growth and checkpoint
SYNC_BYTES: Final = 64 * MB  # pulled pages, WAL up to its checkpoint, header and policy writes
NEARLY_FULL_BYTES: Final = 1 * MB  # a SQLite "disk I/O error" below this is a full disk
_DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL_TEXT: Final = "database or disk is full"
_SQLITE_IO_TEXT: Final = "disk I/O error"
_CHUNK: Final = 1 * MB

FreeSpace = Callable[[Path], int]


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged program may still write in ``path``'s file system."""
    stats = os.statvfs(path)
    return int(stats.f_bavail) * int(stats.f_frsize)


def _whole_mb_down(count: int) -> int:
    return max(0, count) // MB


def _whole_mb_up(count: int) -> int:
    return max(1, -(-count // MB))


class DiskFull(EnvironmentFault):
    """The laptop's disk has no room for the act; nothing of it was kept."""

    def __init__(self, free: int, needed: int) -> None:
        super().__init__(
            "disk_full",
            f"The laptop's disk is full: {_whole_mb_down(free)} MB free, "
            f"{_whole_mb_up(needed)} MB needed — call IT.",
        )
        self.free_bytes = max(0, free)
        self.needed_bytes = needed


def is_disk_full(error: BaseException, free: int | None = None) -> bool:
    """Whether ``error`` is a full disk (``free``: bytes left, to judge a SQLite I/O error)."""
    if isinstance(error, DiskFull):
        return True
    if isinstance(error, OSError):
        return error.errno in _DISK_FULL_ERRNOS
    if isinstance(error, sqlcipher3.Error):
        text = str(error)
        if _SQLITE_FULL_TEXT in text:
            return True
        return _SQLITE_IO_TEXT in text and free is not None and free < NEARLY_FULL_BYTES
    return False


def _free_or_zero(directory: Path, probe: FreeSpace) -> int:
    try:
        return probe(directory)
    except OSError:
        return 0


def as_disk_full(
    error: BaseException, directory: Path, needed: int, probe: FreeSpace = free_bytes
) -> DiskFull | None:
    """``error`` as a ``DiskFull`` (figures measured now), or None if it is something else."""
    if isinstance(error, DiskFull):
        return error
    if not isinstance(error, OSError | sqlcipher3.Error):
        return None
    free = _free_or_zero(directory, probe)
    return DiskFull(free, needed) if is_disk_full(error, free) else None


@contextlib.contextmanager
def mapped(
    directory: Path, needed: int = SAVE_BYTES, probe: FreeSpace = free_bytes
) -> Iterator[None]:
    """Run the block; a full disk inside it leaves as ``DiskFull``, anything else unchanged."""
    try:
        yield
    except (OSError, sqlcipher3.Error) as error:
        full = as_disk_full(error, directory, needed, probe)
        if full is None:
            raise
        log.warning("disk full in %s (%s)", directory.name or "/", type(error).__name__)
        raise full from None


def require(directory: Path, needed: int, probe: FreeSpace = free_bytes) -> int:
    """Refuse early (``DiskFull``) unless ``needed`` bytes are free; remake a missing reserve
    when there is room for it as well. Returns the bytes free for the act."""
    free = _free_or_zero(directory, probe)
    missing = not reserve_path(directory).exists()
    if missing and free >= needed + RESERVE_BYTES and make_reserve(directory):
        free = _free_or_zero(directory, probe)
    if free < needed:
        log.warning("disk too full for the act: %d MB free", _whole_mb_down(free))
        raise DiskFull(free, needed)
    return free


# -- the reserve ---------------------------------------------------------------------------------


def reserve_path(directory: Path) -> Path:
    return Path(directory) / RESERVE_NAME


def make_reserve(directory: Path, size: int = RESERVE_BYTES) -> bool:
    """Allocate the reserve (atomically: whole or absent). Best effort: False if no room.

    The space is really allocated (``posix_fallocate``, else random bytes that no compressing
    file system can shrink), so releasing it frees ``size`` bytes."""
    target = reserve_path(directory)
    if target.exists():
        return True
    tmp = target.with_name(f".{RESERVE_NAME}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:  # pragma: no cover - not on Linux
                for start in range(0, size, _CHUNK):
                    os.write(fd, secrets.token_bytes(min(_CHUNK, size - start)))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("disk reserve not made (%s)", type(error).__name__)
        return False
    fsync_directory(directory)
    return True


def release_reserve(directory: Path) -> bool:
    """Free the reserve's space for the writes that keep reading safe. True if it existed."""
    target = reserve_path(directory)
    try:
        target.unlink()
    except FileNotFoundError:
        return False
    fsync_directory(directory)
    log.warning("disk nearly full: the disk reserve was released")
    return True


def prepare_sign_in(directory: Path, probe: FreeSpace = free_bytes) -> bool:
    """Before a sign-in: release the reserve when the disk is nearly full, or remake it when
    there is room. Returns True when the laptop has less than ``SAVE_BYTES`` free (reading
    only: saving, syncing and password changes will be refused)."""
    free = _free_or_zero(directory, probe)
    if free < SIGN_IN_BYTES:
        release_reserve(directory)
        free = _free_or_zero(directory, probe)
    elif not reserve_path(directory).exists() and free >= SAVE_BYTES + RESERVE_BYTES:
        make_reserve(directory)
        free = _free_or_zero(directory, probe)
    return free < SAVE_BYTES
