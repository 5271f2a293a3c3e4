"""Cryptographic erase of a device's vault (WP-1, WP-2).

Invariants:
- Order: (1) a wipe-pending marker file (carrying the signed wipe report, if any) and the
  header's ``wipe_pending`` flag, (2) every key slot and the escrow slot destroyed (the header
  scrubbed in place, then rewritten without them), (3) the keyring's device secret, MAC keys
  and anchors deleted, (4) the database, its -wal/-shm, the header and stray temp files
  deleted (any temp file a killed atomic write left too), (5) the report from the marker
  written to ``wipe-report.json`` for ``client.core.wipe_report`` to send (WP-2, WP-3),
  (6) the marker removed. A pending report therefore exists only once the vault is destroyed,
  and always does after a wipe that was given one, whatever instant the process died at.
  After step 3 no copy of the data folder taken at any time can be opened, even with the right
  password: the device secret that every slot key needs is gone (WP-1).
- Every step is idempotent. Killed at any point, ``resume_wipe_if_pending`` (called at start-up,
  before anything else reads the vault) runs the whole sequence again and completes it (WP-2).
  While the marker or the header flag exists, unlocking is refused (``WipePending``).
- The returned ``WipeReport`` holds no secret; a later step signs it and sends it to the gateway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from client.core.device_keyring import FALLBACK_FILE_NAME, DeviceKeyring
from client.core.errors import EnvironmentFault, GatehouseError
from client.core.vault import DATABASE_NAME, DATABASE_SIDE_FILES
from client.core.vault_header import HEADER_NAME, VaultHeader
from policy.atomic import atomic_write, fsync_directory

log = logging.getLogger(__name__)

WIPE_MARKER_NAME: Final = "wipe.pending"
PENDING_REPORT_NAME: Final = "wipe-report.json"
STEPS: Final = (
    "mark",
    "destroy_slots",
    "destroy_keyring",
    "delete_files",
    "keep_report",
    "clear_marker",
)
_MAX_MARKER_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class WipeReport:
    """What a wipe destroyed and when (no secrets): the body of the receipt sent to the gateway."""

    device_id: str | None
    reason: str
    started_at: datetime
    completed_at: datetime
    destroyed: tuple[str, ...]
    keyring_destroyed: bool
    resumed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "reason": self.reason,
            "started_at": self.started_at.isoformat(),
            "completed_at": self.completed_at.isoformat(),
            "destroyed": list(self.destroyed),
            "keyring_destroyed": self.keyring_destroyed,
            "resumed": self.resumed,
        }


@dataclass
class _Wipe:
    data_dir: Path
    keyring: DeviceKeyring | None
    device_id: str | None
    reason: str
    started_at: datetime
    extra_names: tuple[str, ...] = ()
    report: dict[str, Any] | None = None  # signed beforehand; no secret in it
    destroyed: list[str] = field(default_factory=list)
    keyring_destroyed: bool = False


def _marker(data_dir: Path) -> Path:
    return Path(data_dir) / WIPE_MARKER_NAME


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as handle:
            data = json.loads(handle.read(_MAX_MARKER_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _header_flags(data_dir: Path) -> tuple[bool, str | None]:
    """(wipe_pending, device_id) read from the header without verifying it (fail-safe use)."""
    outer = _read_json(Path(data_dir) / HEADER_NAME)
    body = outer.get("body") if outer else None
    if not isinstance(body, dict):
        return False, None
    counters = body.get("counters")
    pending = isinstance(counters, dict) and counters.get("wipe_pending") is True
    device_id = body.get("device_id")
    return pending, device_id if isinstance(device_id, str) else None


def wipe_pending(data_dir: Path) -> bool:
    """True if a wipe was started here and not finished (marker file or header flag)."""
    return _marker(data_dir).exists() or _header_flags(data_dir)[0]


def _scrub_and_unlink(path: Path) -> bool:
    """Overwrite a file in place with random bytes (best effort on SSDs), then delete it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError), path.open("r+b") as handle:
        handle.write(secrets.token_bytes(size))
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink(missing_ok=True)
    return True


def _load_header(state: _Wipe) -> VaultHeader | None:
    if state.keyring is None:
        return None
    try:
        return VaultHeader.load(state.data_dir, state.keyring)
    except GatehouseError:  # tampered, restored, missing, keyring secret gone: wipe regardless
        return None


# -- the steps (looked up by name at run time, so a test can inject a crash after each) -------


def _step_mark(state: _Wipe) -> None:
    marker = _marker(state.data_dir)
    if not marker.exists():
        document = {
            "device_id": state.device_id,
            "reason": state.reason,
            "started_at": state.started_at.isoformat(),
            "extra_names": list(state.extra_names),
            "report": state.report,
        }
        atomic_write(marker, json.dumps(document, sort_keys=True).encode("utf-8"))
    header = _load_header(state)
    if header is not None and not header.counters.wipe_pending:
        header.update_counters(lambda c: setattr(c, "wipe_pending", True))


def _step_destroy_slots(state: _Wipe) -> None:
    header = _load_header(state)
    path = VaultHeader.path_in(state.data_dir)
    for stray in state.data_dir.glob(f".{HEADER_NAME}.*.tmp"):  # left by a killed write
        _scrub_and_unlink(stray)
    if header is not None and (header.slots or header.escrow_blob() is not None):
        state.destroyed.append(f"key_slots:{len(header.slots)}")
        if header.escrow_blob() is not None:
            state.destroyed.append("escrow_slot")
        with contextlib.suppress(OSError), path.open("r+b") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.write(secrets.token_bytes(size))
            handle.flush()
            os.fsync(handle.fileno())
        header.destroy_slots()
    elif header is None and path.exists():
        stub = {"wiped": True, "counters": {"wipe_pending": True}}
        _scrub_and_unlink(path)
        atomic_write(path, json.dumps({"body": stub}).encode("ascii"))
        state.destroyed.append("key_slots:unverified_header")


def _step_destroy_keyring(state: _Wipe) -> None:
    if state.keyring is None:
        return
    state.destroyed.extend(f"keyring:{name}" for name in state.keyring.destroy_all())
    state.keyring_destroyed = True


def _step_delete_files(state: _Wipe) -> None:
    names = [DATABASE_NAME + suffix for suffix in DATABASE_SIDE_FILES]
    names += [
        DATABASE_NAME,
        *state.extra_names,
        HEADER_NAME,
        HEADER_NAME + ".lock",
        FALLBACK_FILE_NAME,
    ]
    for name in names:
        path = state.data_dir / name
        if path.exists():
            path.unlink()
            state.destroyed.append(f"file:{name}")
    # Temp files of atomic writes a kill left behind (the keyring fallback's may hold secrets).
    for stray in state.data_dir.glob(".*.tmp"):
        if _scrub_and_unlink(stray):
            state.destroyed.append("file:stray_temp")
    fsync_directory(state.data_dir)


def _step_keep_report(state: _Wipe) -> None:
    if state.report is not None:
        atomic_write(
            state.data_dir / PENDING_REPORT_NAME,
            json.dumps(state.report, sort_keys=True).encode("utf-8"),
        )


def _step_clear_marker(state: _Wipe) -> None:
    _marker(state.data_dir).unlink(missing_ok=True)
    fsync_directory(state.data_dir)


def _run(state: _Wipe, now: datetime, resumed: bool) -> WipeReport:
    for name in STEPS:
        globals()[f"_step_{name}"](state)
    log.info("wipe: completed (resumed=%s)", resumed)
    return WipeReport(
        device_id=state.device_id,
        reason=state.reason,
        started_at=state.started_at,
        completed_at=now,
        destroyed=tuple(state.destroyed),
        keyring_destroyed=state.keyring_destroyed,
        resumed=resumed,
    )


def _safe_names(names: object) -> tuple[str, ...]:
    """Plain file names inside the data folder only (no paths, no dot-dot)."""
    if not isinstance(names, list | tuple):
        return ()
    return tuple(
        n for n in names if isinstance(n, str) and n and n == Path(n).name and n not in {".", ".."}
    )


def wipe(
    data_dir: Path,
    keyring: DeviceKeyring,
    *,
    now: datetime,
    reason: str = "requested",
    extra_names: Sequence[str] = (),
    report: dict[str, Any] | None = None,
) -> WipeReport:
    """Cryptographically erase this device's vault. Idempotent.

    ``extra_names``: other files of the data folder to delete in step 4 (plain names, e.g. the
    device profile or the installed policy); they are recorded in the marker so a resumed wipe
    deletes them too. ``report``: the signed wipe report (``client.core.wipe_report``), kept
    in the marker and left as ``wipe-report.json`` when the wipe is done; a wipe already under
    way keeps the report it started with.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    names = _safe_names(list(extra_names))
    if len(names) != len(extra_names):
        raise ValueError("extra_names must be plain file names")
    state = _Wipe(Path(data_dir), keyring, keyring.device_id, reason, now, names, report)
    existing = _read_json(_marker(data_dir))
    if existing is not None and isinstance(existing.get("started_at"), str):
        with contextlib.suppress(ValueError):
            state.started_at = datetime.fromisoformat(existing["started_at"])
    if existing is not None:
        kept = existing.get("report")
        state.report = kept if isinstance(kept, dict) else None
    return _run(state, now, resumed=existing is not None)


def resume_wipe_if_pending(
    data_dir: Path, keyring_for: Callable[[str], DeviceKeyring], *, now: datetime
) -> WipeReport | None:
    """Finish an interrupted wipe (call at start-up). ``None`` if no wipe is pending.

    ``keyring_for(device_id)`` opens the device's keyring; if the keyring cannot be reached the
    files are still deleted and the report says ``keyring_destroyed=False``.
    """
    data_dir = Path(data_dir)
    if not wipe_pending(data_dir):
        return None
    marker = _read_json(_marker(data_dir)) or {}
    device_id = marker.get("device_id")
    if not isinstance(device_id, str):
        device_id = _header_flags(data_dir)[1]
    reason = marker.get("reason") if isinstance(marker.get("reason"), str) else "resumed"
    started_at = now
    with contextlib.suppress(TypeError, ValueError):
        started_at = datetime.fromisoformat(marker.get("started_at"))  # type: ignore[arg-type]
    keyring: DeviceKeyring | None = None
    if device_id is not None:
        try:
            keyring = keyring_for(device_id)
        except (EnvironmentFault, ValueError):
            log.warning("wipe: keyring unreachable while resuming; deleting the files anyway")
    extra = _safe_names(marker.get("extra_names"))
    kept = marker.get("report")
    report = kept if isinstance(kept, dict) else None
    state = _Wipe(data_dir, keyring, device_id, str(reason), started_at, extra, report)
    return _run(state, now, resumed=True)
