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
- Patients leaving the device's site scope (a deleted Patient, or a Patient whose
  ``managingOrganization`` now points outside the scope) are purged in the page's transaction,
  with an audit entry, unless they still have unsent work or open conflicts: then they are kept,
  marked out of scope, and purged by a later ``sync_finished`` (or retention run) once their
  work is sent. An out-of-scope Patient the device does not hold is never stored.
- ``sync_finished`` appends exactly one ``sync`` audit entry per sync, with the counts.
- Failures the engine must understand raise ``ReplicaError`` with a stable ``reason``; any other
  exception (disk, I/O) means the current transaction was rolled back and the sync should stop.
- Every implementation method may be called from the sync worker thread only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sync.device.errors import DeviceError

# Keys of ``OutboxItem.extra`` (all strings unless noted).
EXTRA_FULL_URL: Final = "full_url"  # "urn:uuid:<client id>": the entry's Bundle fullUrl
EXTRA_IF_NONE_EXIST: Final = "if_none_exist"  # "identifier=<system>|<client id>" for creates
EXTRA_GROUP: Final = "group_id"  # items of one group (a consultation) go in one Bundle
EXTRA_ATTEMPTS: Final = "attempts"  # int: refused pushes so far (record_push_error)


class ReplicaError(DeviceError):
    """The replica refused a call. ``reason`` is a stable code.

    Reasons: ``unknown_entry`` / ``not_pending`` / ``already_sent`` (an impossible outbox
    transition), ``bad_server_reply`` (a server id or version that is not a FHIR id),
    ``vault_locked`` (the user locked the app: stop the sync), ``in_transaction`` (a caller bug).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


@dataclass(frozen=True)
class Deletion:
    """A resource the server deleted, or that left this device's scope.

    A page's resources are applied before its deletions. A deletion whose integer
    ``version_id`` is lower than the stored version is ignored (the resource came back later).
    """

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
    """What one page did. ``quarantined`` counts the page's quarantined items plus resources
    the store refused; ``purged``/``held``: patients leaving scope purged, or kept for unsent
    work; ``out_of_scope``: resources not stored because they lie outside the device's scope
    (a Patient of another site the device never held, or a record of a patient it does not
    hold in scope: NW-6);
    ``replaced_local``: device-made copies superseded by the server's (no duplicates, CR-2).
    """

    applied: int = 0
    skipped_older: int = 0
    deleted: int = 0
    quarantined: int = 0
    purged: int = 0
    held: int = 0
    out_of_scope: int = 0
    replaced_local: int = 0


@dataclass(frozen=True)
class OutboxItem:
    """A local write waiting to reach the server; ``extra`` keys are the ``EXTRA_*`` names."""

    seq: int
    operation: str  # "create" | "update"
    resource_type: str
    local_id: str
    client_identifier: str | None
    body: Mapping[str, Any]
    base_version: str | None  # for ifMatch on updates
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SentItem:
    """The server's answer for one pushed outbox item: it holds it as ``server_id`` at
    ``server_version`` (and ``server_last_updated``, its ``meta.lastUpdated``, when the reply
    carried the resource: a server with opaque version ids orders versions by it)."""

    seq: int
    server_id: str
    server_version: str
    server_last_updated: str | None = None


@dataclass(frozen=True)
class SyncSummary:
    """The totals of one whole sync, for its single ``sync`` audit entry."""

    pulled: int = 0
    pushed: int = 0
    conflicts: int = 0
    quarantined: int = 0
    push_errors: int = 0
    outcome: str = "success"  # "success" | "failure" | "cancelled"
    reason: str | None = None  # a stable code when the outcome is not success
    # Every stream reached its end through _history (deletions seen): the caseload is current.
    caseload_confirmed: bool = False
    out_of_scope: int = 0  # resources outside the device's scope, not stored (NW-6)


class Replica(Protocol):
    """What the sync engine needs from the device's store."""

    def read_cursor(self, stream: str) -> str | None:
        """The cursor committed with the last applied page of ``stream`` (None: never synced)."""
        ...

    def apply_page(self, page: Page) -> ApplyStats:
        """Apply resources, deletions, quarantine and the cursor in one local transaction."""
        ...

    def held_ids(self, resource_type: str) -> Collection[str]:
        """The ids of ``resource_type`` the device holds as the server's (its own unsent work,
        ``versionId == "local"``, left out): what a reconciliation compares with the server's
        id list, and how the pull tells a patient entering scope from one already held."""
        ...

    def list_outbox(self, limit: int) -> Sequence[OutboxItem]:
        """Pending local writes, oldest first."""
        ...

    def mark_sent(self, seq: int, server_id: str, server_version: str) -> None:
        """The server accepted outbox item ``seq`` as ``server_id`` at ``server_version``."""
        ...

    def mark_sent_batch(self, sent: Sequence[SentItem]) -> Mapping[int, str]:
        """``mark_sent`` for a whole transaction Bundle's replies in ONE local transaction (a
        commit costs more than the work). An item the replica refuses is left untouched and
        returned as ``{seq: reason}``; the others are marked. Returns ``{}`` when all were."""
        ...

    def record_conflict(self, seq: int, server_resource: Mapping[str, Any] | None) -> None:
        """The server refused item ``seq`` (412): keep both versions for the clinician."""
        ...

    def record_push_error(self, seq: int, reason: str) -> None:
        """Item ``seq`` was refused for another reason; it stays pending and visible."""
        ...

    def sync_finished(self, summary: SyncSummary) -> None:
        """Once at the end of a sync: purge patients whose scope exit waited for their work to
        be sent; when ``caseload_confirmed``, mark the whole caseload as refreshed (retention); and
        append the ``sync`` audit entry with the summary's counts."""
        ...
