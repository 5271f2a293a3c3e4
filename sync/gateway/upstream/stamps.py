"""Filing stamps (issue 14): the gateway tells laptops, through the normal sync, that a note is
filed in the health record or held.

After the filing pass closes an outbox row as ``filed`` or ``held``, ``stamp_in_tx`` writes a
new version of the gateway's copy carrying the filing tag (``sync.protocol.fhir.filing``), in
the same store transaction that closes the row. That version reaches the site's laptops
through ``_history`` like any change.

Invariants:
- A stamp changes nothing but the filing tags: the content is the filed version's. It is
  recorded in ``upstream_stamps``, so a laptop's later edit naming the version it stamped is
  not a conflict (``api/transaction.py``).
- A stamp is written only when the version filed (or held) is still the note's latest content
  (the current version, or a stamp of it): a newer edit from a laptop is not yet filed, and
  will be stamped when it is. A deleted note is never stamped.
- A stamp is never queued for the upstream (only laptop writes are), and filing strips the
  tags before anything goes up: the upstream never sees them, so the import never echoes them.
- Nothing is logged; the reason code is a code, never record content.
"""

from __future__ import annotations

import orjson

from sync.gateway.store.base import WriteTx
from sync.gateway.store.outbox_tables import OutboxTables
from sync.gateway.store.upstream_tables import OutboxItem
from sync.protocol.fhir.filing import FILED, HELD, FilingTag, with_filing_tag


def stamp_in_tx(
    store: OutboxTables, tx: WriteTx, item: OutboxItem, state: str, reason: str | None
) -> bool:
    """Stamp the note of ``item`` as ``state`` (``filed`` or ``held``); True if written."""
    if item.op != "put" or state not in (FILED, HELD):
        return False
    current = tx.current(item.rtype, item.rid)
    if current is None or current.deleted:
        return False
    if not store.only_stamps_after(item.rtype, item.rid, item.version_id, current.version_id):
        return False  # edited since: the newer version is stamped when it is filed
    tag = FilingTag(FILED) if state == FILED else FilingTag(HELD, reason)
    body = orjson.loads(current.body)
    stamped = with_filing_tag(body, tag)
    if stamped == body:
        return False
    written = tx.put(item.rtype, item.rid, stamped)
    store.record_stamp_in_tx(item.rtype, item.rid, written.version_id)
    return True
