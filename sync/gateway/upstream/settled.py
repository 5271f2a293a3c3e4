"""Upstream conflicts a clinician settled on the laptop by keeping the health record's version.

"Keep mine" needs nothing here: it queues a later version, which supersedes the conflict when it
is filed (``store.upstream_tables``). "Keep theirs" sends no record, only its verified audit
entry (``conflict_resolved`` with ``keep`` ``theirs`` and ``resource`` ``Type/id``); once that
entry is stored by audit ingestion, the resource's ``conflict`` rows close as ``superseded``.

Invariants:
- Only entries that verified as the device's chain and were newly stored are read (the caller
  passes them), and only rows of a resource of the device's own site are closed.
- Nothing is filed upstream and nothing is logged but a count.
- Not in the audit upload's transaction: a database failure just after the entries were stored
  is logged by the caller and leaves the row ``conflict`` until the next upstream pass, which
  (``settle_open_conflicts``) closes every open ``conflict`` row for which a stored, verified
  ``conflict_resolved`` "theirs" entry of that resource exists, from a device of the resource's
  own site, made at or after the row became a conflict (the laptop's trusted time; an older
  entry settled an earlier conflict of the same record, never this one).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from sync.gateway.store.base import Store
from sync.gateway.store.sql import SqlStore
from sync.protocol.audit.entry import AuditEntry, AuditFormatError, entry_from_canonical

_RESOURCE = re.compile(r"([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})")


def settle_kept_theirs(
    store: Store, entries: Iterable[AuditEntry], site: str, now: dt.datetime
) -> int:
    """Close the upstream conflicts the stored ``entries`` say were settled "theirs"."""
    if not isinstance(store, SqlStore):
        return 0
    closed = 0
    for entry in entries:
        resource = _kept_theirs(entry)
        if resource is not None:
            closed += store.outbox_settled_by_clinician(*resource, site, now)
    return closed


def settle_open_conflicts(store: SqlStore, now: dt.datetime) -> int:
    """Close the open upstream conflicts that a stored entry settled "theirs" but whose settle
    failed at upload (a database hiccup); returns the rows closed."""
    closed = 0
    for found in store.conflicts_with_resolutions():
        try:
            entry = entry_from_canonical(found.canonical, found.mac)
        except AuditFormatError:
            continue  # stored only after verification: never expected, never trusted
        if _kept_theirs(entry) == (found.rtype, found.rid):
            closed += store.outbox_settled_by_clinician(found.rtype, found.rid, found.site, now)
    return closed


def _kept_theirs(entry: AuditEntry) -> tuple[str, str] | None:
    """(type, id) of the record a ``conflict_resolved`` entry kept the health record's version
    of, else None."""
    if entry.action != "conflict_resolved" or entry.outcome != "success":
        return None
    if entry.detail.get("keep") != "theirs":
        return None
    found = _RESOURCE.fullmatch(str(entry.detail.get("resource", "")))
    return None if found is None else (found[1], found[2])
