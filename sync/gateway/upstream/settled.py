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
  is logged by the caller and leaves the row ``conflict`` (still listed for IT and the auditor;
  the laptop's own conflict is closed).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from sync.gateway.store.base import Store
from sync.gateway.store.sql import SqlStore
from sync.protocol.audit.entry import AuditEntry

_RESOURCE = re.compile(r"([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})")


def settle_kept_theirs(
    store: Store, entries: Iterable[AuditEntry], site: str, now: dt.datetime
) -> int:
    """Close the upstream conflicts the stored ``entries`` say were settled "theirs"."""
    if not isinstance(store, SqlStore):
        return 0
    closed = 0
    for entry in entries:
        if entry.action != "conflict_resolved" or entry.outcome != "success":
            continue
        if entry.detail.get("keep") != "theirs":
            continue
        found = _RESOURCE.fullmatch(str(entry.detail.get("resource", "")))
        if found is not None:
            closed += store.outbox_settled_by_clinician(found[1], found[2], site, now)
    return closed
