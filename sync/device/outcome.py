"""What a sync reports: its errors, its progress and its result (shared by the engine's parts).

Invariants:
- Every failure the engine, the push or the pull raises is a ``SyncError`` with a stable
  ``reason`` (for the audit log and tests) and a ``message`` safe to show; it never holds
  record data.
- ``Cancelled`` is raised only between pages and batches, never inside a replica transaction.
- ``SyncResult`` only counts: what was applied or sent is in the replica, not here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sync.device.errors import DeviceError
from sync.device.replica import SyncSummary

FHIR_JSON = "application/fhir+json"  # the media type of every data-plane request and answer
# Transport failures of the connection itself: nothing else can work in this sync after one.
CONNECTION_REASONS = frozenset({"pin_mismatch", "tls", "connection", "timeout", "config"})


class SyncError(DeviceError):
    """A sync that could not complete; ``reason`` is stable, ``message`` is for people."""


class Cancelled(SyncError):
    """The caller asked the sync to stop; every page and batch already committed is kept."""

    def __init__(self) -> None:
        super().__init__("cancelled", "The sync was cancelled; what was received is kept.")


@dataclass(frozen=True)
class Progress:
    phase: str  # "push" | "pull" | "control" | "done"
    detail: str  # e.g. the resource type being pulled
    items: int
    bytes: int


@dataclass
class SyncResult:
    pulled: int = 0
    deleted: int = 0
    pushed: int = 0
    conflicts: int = 0
    push_errors: int = 0
    quarantined: int = 0
    skipped_older: int = 0
    out_of_scope: int = 0  # resources outside the device's scope, not stored (NW-6)
    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    duration_s: float = 0.0
    # Every stream was pulled to its end through _history, so every deletion and transfer was
    # seen: the device holds the server's current caseload (the search fallback cannot say so).
    caseload_confirmed: bool = False
    error: str | None = None  # the first failure's reason (None: everything succeeded)
    failed_phases: dict[str, str] = field(default_factory=dict)
    # Resource types whose pull failed (type → reason); the other types were still pulled.
    failed_types: dict[str, str] = field(default_factory=dict)
    control: dict[str, Any] = field(default_factory=dict)
    # Patients who entered scope this sync whose older records were fetched by ``patient=``
    # (servers without _history: the keyset cursor had passed them).
    backfilled: int = 0
    # Types whose ids were compared with the server's this sync (no _history): type →
    # {"listed", "gone" (removed: deleted on the server), "missed" (fetched)}.
    reconciled: dict[str, dict[str, int]] = field(default_factory=dict)
    # What the data plane's CapabilityStatement offers (ServerProfile.to_json); None when the
    # server did not describe itself.
    server: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> SyncSummary:
        """The totals the replica records in this sync's one ``sync`` audit entry."""
        return SyncSummary(
            pulled=self.pulled,
            pushed=self.pushed,
            conflicts=self.conflicts,
            quarantined=self.quarantined,
            push_errors=self.push_errors,
            outcome="success" if self.ok else "failure",
            reason=self.error,
            caseload_confirmed=self.caseload_confirmed,
            out_of_scope=self.out_of_scope,
        )


def raise_if_cancelled(cancel: threading.Event) -> None:
    """``Cancelled`` once the caller has asked to stop (checked between pages and batches)."""
    if cancel.is_set():
        raise Cancelled()
