"""The replica protocol: the small interface through which the sync engine reads and writes
the device's local store. The client core implements it; sync/ never imports client/.

Invariants every implementation must keep (the engine relies on them for CR-1):
- ``apply_page`` is atomic: the page's resources, deletions, quarantined items and the new
  cursor are committed in ONE local transaction, or none of them is. A sync killed at any
  instant therefore resumes from the last committed cursor, and re-applying a page is harmless
  because resources are deduplicated by ``meta.versionId``.
- Outbox items leave the outbox only through ``mark_sent`` (server accepted it) or
  ``record_conflict`` (server has a newer version: both versions kept for the clinician).
  Neither is ever silent; each happens in one local transaction with its audit entry.
- Every implementation method may be called from the sync worker thread only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Deletion:
    """A resource the server deleted, or that left this device's scope."""

    resource_type: str
    resource_id: str
    version_id: str | None = None


@dataclass(frozen=True)
class Quarantined:
    """An inbound item that failed validation: kept aside with the reason, never applied."""

    resource_type: str | None
    resource_id: str | None
    reason: str
    path: str
    raw: bytes


@dataclass(frozen=True)
class Page:
    """One validated page of changes for one stream (e.g. a resource type's history)."""

    stream: str
    resources: Sequence[Mapping[str, Any]]
    deletions: Sequence[Deletion]
    quarantined: Sequence[Quarantined]
    next_cursor: str


@dataclass(frozen=True)
class ApplyStats:
    applied: int = 0
    skipped_older: int = 0
    deleted: int = 0
    quarantined: int = 0


@dataclass(frozen=True)
class OutboxItem:
    """A local write waiting to reach the server."""

    seq: int
    operation: str  # "create" | "update"
    resource_type: str
    local_id: str
    client_identifier: str | None
    body: Mapping[str, Any]
    base_version: str | None  # for ifMatch on updates
    extra: Mapping[str, Any] = field(default_factory=dict)


class Replica(Protocol):
    """What the sync engine needs from the device's store."""

    def read_cursor(self, stream: str) -> str | None:
        """The cursor committed with the last applied page of ``stream`` (None: never synced)."""
        ...

    def apply_page(self, page: Page) -> ApplyStats:
        """Apply resources, deletions, quarantine and the cursor in one local transaction."""
        ...

    def list_outbox(self, limit: int) -> Sequence[OutboxItem]:
        """Pending local writes, oldest first."""
        ...

    def mark_sent(self, seq: int, server_id: str, server_version: str) -> None:
        """The server accepted outbox item ``seq`` as ``server_id`` at ``server_version``."""
        ...

    def record_conflict(self, seq: int, server_resource: Mapping[str, Any] | None) -> None:
        """The server refused item ``seq`` (412): keep both versions for the clinician."""
        ...

    def record_push_error(self, seq: int, reason: str) -> None:
        """Item ``seq`` was refused for another reason; it stays pending and visible."""
        ...
