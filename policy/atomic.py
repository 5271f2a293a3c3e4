"""Atomic, permission-first file writes.

Invariant: a reader of ``path`` sees either the complete old content or the complete new
content, never a mix and never an empty file; the new file has its final permissions (0600 by
default) before any byte is written to it, so a secret is never briefly world-readable.

Recipe (as in Electrum's ``storage.write``): create a temp file in the same directory with
``O_CREAT | O_EXCL`` and the final mode → write → flush → fsync → ``os.replace`` → fsync the
directory so the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_FILE_MODE = 0o600


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with ``mode`` from the start."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # umask cannot widen it, but make the mode exact
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(target.parent)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``directory`` durable (no-op where the OS cannot)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
