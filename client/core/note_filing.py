"""Where a note written on a laptop has got to, in the clinician's words (issue 14).

"Saved on this laptop" → "At the gateway" → "Filed in the health record", or "Held at the
gateway" with the reason in words. The last two are learned through the normal sync: the
gateway stamps its copy with a filing tag (``sync.protocol.fhir.filing``) that arrives with
``_history`` like any change.

Invariants:
- Only records written on a device (they carry a Gatehouse client identifier) have a state;
  records that came from the health record have none (``note_filing`` returns None).
- Unsent work wins: a note with a pending (or conflicting) outbox entry, or a local version,
  is "Saved on this laptop" whatever its stored copy says.
- A filing tag is shown only on the version it stamps: a laptop never sends it (the outbox
  strips it from the labels an edit carries back), so a local edit never looks filed.
- Times are UK local (``humanize.format_moment``); reason codes become words here, never shown
  raw. Pure functions of stored rows: no clock, no writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from client.core.humanize import format_moment
from client.core.records import LOCAL_VERSION, client_id_of, parse_fhir_datetime
from sync.protocol.fhir.filing import CONFLICT, FILED, HELD, filing_tag

FilingKind = Literal["laptop", "conflict", "gateway", "filed", "held"]

SAVED_ON_LAPTOP = "Saved on this laptop (not yet sent)"
IN_CONFLICT = "Saved on this laptop: the record was changed elsewhere too (open Conflicts)"
AT_GATEWAY = "At the gateway (not yet filed in the health record)"
FILED_WORDS = "Filed in the health record"
HELD_WORDS = "Held at the gateway: {reason}. IT has been told."

# The gateway's reason codes for a held note (sync/gateway/upstream/filing.py), in words.
HELD_REASONS: dict[str, str] = {
    "upstream_refused": "the health record refused it",
    "depends_on_held": "it belongs with another note that is held",
    "if_match_not_offered": "the health record cannot take an edit safely",
    "upstream_duplicates": "the health record holds two copies of it",
    "no_client_identifier": "it has no Gatehouse identifier",
    "patient_not_filed": "patient details are filed by the health board, not from a laptop",
    "version_missing": "the gateway could not find this version",
    "upstream_answer_unreadable": "the health record's answer could not be read",
}
HELD_OTHERWISE = "the health record could not take it"


@dataclass(frozen=True)
class NoteFiling:
    kind: FilingKind
    words: str  # one plain sentence, UK local time included when known
    since: datetime | None = None  # when the gateway stamped it (filed or held)


def unsent_ids(conn: sqlite3.Connection, patient_id: str) -> dict[tuple[str, str], str]:
    """(type, id) → ``pending`` | ``conflict`` for the patient's unsent outbox entries (by the
    local id and, once known, the server id)."""
    rows = conn.execute(
        "SELECT resource_type, local_id, server_id, state FROM outbox"
        " WHERE patient_id = ? AND state IN ('pending', 'conflict')",
        (patient_id,),
    ).fetchall()
    found: dict[tuple[str, str], str] = {}
    for rtype, local_id, server_id, state in rows:
        for rid in (local_id, server_id):
            if rid and found.get((rtype, rid)) != "conflict":
                found[(rtype, rid)] = str(state)
    return found


def note_filing(
    resource: Mapping[str, Any], unsent: Mapping[tuple[str, str], str] | None = None
) -> NoteFiling | None:
    """The state of one stored resource (``unsent``: from ``unsent_ids``)."""
    if client_id_of(resource) is None:
        return None  # came from the health record, not written on a laptop
    key = (str(resource.get("resourceType")), str(resource.get("id")))
    meta = resource.get("meta")
    meta = meta if isinstance(meta, Mapping) else {}
    outbox_state = (unsent or {}).get(key)
    if outbox_state == "conflict":
        return NoteFiling("conflict", IN_CONFLICT)
    if outbox_state == "pending" or meta.get("versionId") == LOCAL_VERSION:
        return NoteFiling("laptop", SAVED_ON_LAPTOP)
    tag = filing_tag(resource)
    since = parse_fhir_datetime(meta.get("lastUpdated"))
    when = f" on {format_moment(since)}" if since is not None else ""
    if tag is not None and tag.code in (FILED, CONFLICT):
        # CONFLICT: the health record's own version (changed there); the laptop whose edit it
        # crossed has an open conflict, which the outbox state above shows instead.
        return NoteFiling("filed", f"{FILED_WORDS}{when}", since)
    if tag is not None and tag.code == HELD:
        reason = HELD_REASONS.get(tag.reason or "", HELD_OTHERWISE)
        return NoteFiling("held", HELD_WORDS.format(reason=reason), since)
    return NoteFiling("gateway", AT_GATEWAY)
