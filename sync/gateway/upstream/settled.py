"""Upstream conflicts a clinician settled on the laptop by keeping the health record's version.

"Keep mine" needs nothing here: it queues a later version, which supersedes the conflict when it
is filed (``store.upstream_tables``). "Keep theirs" sends no record, only its verified audit
entry (``conflict_resolved`` with ``keep`` ``theirs`` and ``resource`` ``Type/id``); once that
entry is stored by audit ingestion, the resource's ``conflict`` rows close as ``superseded``.

Invariants:
- Only entries that verified as the device's chain and were newly stored are read (the caller
  passes them), and only rows of a resource of the device's own site are closed.
- Nothing is filed upstream and nothing is logged but a count.
- An entry that names the refused edit's gateway version (``refused_version``, which laptops
  write since this rule) closes only the ``conflict`` row of that version, whenever it was
  made: an entry about an earlier conflict of the same record never closes a later one, and a
  laptop clock that is behind does not matter. An entry without it (an older laptop) closes
  the resource's ``conflict`` rows as before, and in the next pass only those it postdates.
- Not in the audit upload's transaction: a database failure just after the entries were stored
  is logged by the caller and leaves the row ``conflict`` until the next upstream pass, which
  (``settle_open_conflicts``) closes every open ``conflict`` row for which a stored, verified
  ``conflict_resolved`` "theirs" entry of that resource exists, from a device of the resource's
  own site, that names the row's version (or, naming none, was made at or after the row
  became a conflict, by the laptop's trusted time).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sync.gateway.store.base import Store
from sync.gateway.store.sql import SqlStore
from sync.protocol.audit.entry import AuditEntry, AuditFormatError, entry_from_canonical

_RESOURCE = re.compile(r"([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


@dataclass(frozen=True)
class KeptTheirs:
    """What one "keep theirs" entry settled."""

    rtype: str
    rid: str
    refused_version: int | None  # the refused edit's gateway version; None: not named


def settle_kept_theirs(
    store: Store, entries: Iterable[AuditEntry], site: str, now: dt.datetime
) -> int:
    """Close the upstream conflicts the stored ``entries`` say were settled "theirs"."""
    if not isinstance(store, SqlStore):
        return 0
    closed = 0
    for entry in entries:
        kept = _kept_theirs(entry)
        if kept is not None:
            closed += store.outbox_settled_by_clinician(
                kept.rtype, kept.rid, site, now, version=kept.refused_version
            )
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
        kept = _kept_theirs(entry)
        if kept is None or (kept.rtype, kept.rid) != (found.rtype, found.rid):
            continue
        if kept.refused_version is None and not found.made_after:
            continue  # an older laptop's entry: only its clock can tell which conflict it meant
        if kept.refused_version not in (None, found.version_id):
            continue  # it settled another conflict of the same record
        closed += store.outbox_settled_by_clinician(
            found.rtype, found.rid, found.site, now, version=found.version_id
        )
    return closed


def _kept_theirs(entry: AuditEntry) -> KeptTheirs | None:
    """The record (and refused version) a ``conflict_resolved`` entry kept the health record's
    version of, else None (also when it names a version that is not one)."""
    if entry.action != "conflict_resolved" or entry.outcome != "success":
        return None
    if entry.detail.get("keep") != "theirs":
        return None
    found = _RESOURCE.fullmatch(str(entry.detail.get("resource", "")))
    if found is None:
        return None
    named = entry.detail.get("refused_version")
    if named is None:
        return KeptTheirs(found[1], found[2], None)
    if not _VERSION.fullmatch(str(named)):
        return None
    return KeptTheirs(found[1], found[2], int(str(named)))
