"""Does this laptop hold a patient's whole record? (UI-5: missing data is never shown as absent.)

A chart that says "No active alerts recorded" must mean the record has none, not that the laptop
never received them. This module decides, per patient and per safety box (alerts, allergies),
whether what the laptop holds is the whole record, and if not, why and since when.

The laptop holds a patient's whole record when ALL of these hold:
- the patient is in the device's site scope (``patient_index.site``): a transferred or deleted
  patient is kept only for unsent work, and nothing of theirs is updated any more;
- a sync completed while they were in scope (``patient_index.complete_at``, set by the replica
  at the end of every successful sync for the in-scope caseload): a pull that stopped part-way
  may have brought the patient but not yet their alerts;
- nothing of theirs of that box's type is held back in quarantine (a Flag that failed
  validation is an alert the chart cannot show; an item whose type is unknown counts for both).

Invariants:
- Read-only; one query per question, all inside the caller's transaction.
- ``last_complete`` is the last moment the laptop held the whole record (None: never).
- The reasons are stable codes; the UI turns them into sentences.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

MOVED = "moved"  # the patient is at a site outside this laptop's scope (or was deleted)
NEVER_COMPLETE = "never_complete"  # no sync has completed since the patient arrived
HELD_BACK = "held_back"  # some of their records failed checks and are in quarantine

ALERT_TYPE = "Flag"
ALLERGY_TYPE = "AllergyIntolerance"


@dataclass(frozen=True)
class BoxCompleteness:
    """Whether one safety box (alerts or allergies) shows the whole record."""

    complete: bool
    reasons: tuple[str, ...]
    held_back: int  # quarantined items of this box's type (or of unknown type)


@dataclass(frozen=True)
class Completeness:
    site: str | None  # the patient's current site as the laptop last heard it
    in_scope: bool
    last_complete: datetime | None
    alerts: BoxCompleteness
    allergies: BoxCompleteness

    @property
    def complete(self) -> bool:
        return self.alerts.complete and self.allergies.complete

    @property
    def whole_record_held(self) -> bool:
        """True when the laptop holds everything of this patient as of their last complete
        pull: in scope and completely pulled at least once. When False, an empty problem,
        medication, vital-sign or timeline section means "not known here", never "none"."""
        return self.in_scope and self.last_complete is not None

    def banner_site(self, recorded_site: str | None) -> str:
        """The site the banner shows: the patient's current site, and when it is not this
        laptop's, that it is not; a patient who left to a site the laptop was not told names
        the site they left, never as their current one."""
        if self.in_scope:
            return self.site or recorded_site or "not recorded"
        if self.site:
            return f"{self.site} (transferred — not this laptop's site)"
        if recorded_site:
            return f"not known on this laptop (left {recorded_site})"
        return "not known on this laptop"


SECTION_NOT_HELD = "Not available on this laptop — see the warning above. Check the main record."


COMPLETE = BoxCompleteness(True, (), 0)


def _held_back(conn: sqlite3.Connection, patient_id: str, rtype: str) -> int:
    """Quarantined items of ``rtype`` (or of no known type) for this patient that no valid
    copy on the laptop has replaced."""
    (count,) = conn.execute(
        "SELECT count(*) FROM quarantine q WHERE q.patient_id = ?"
        " AND (q.resource_type IS NULL OR q.resource_type = ?)"
        " AND NOT EXISTS (SELECT 1 FROM resources r WHERE r.type = q.resource_type"
        " AND r.id = q.resource_id)",
        (patient_id, rtype),
    ).fetchone()
    return int(count)


def patient_completeness(
    conn: sqlite3.Connection, patient_id: str, site_scope: Collection[str]
) -> Completeness:
    row = conn.execute(
        "SELECT site, complete_at FROM patient_index WHERE patient_id = ?", (patient_id,)
    ).fetchone()
    site, complete_at = (row[0], row[1]) if row is not None else (None, None)
    in_scope = site is not None and site in site_scope
    last = datetime.fromisoformat(complete_at) if complete_at else None
    shared: list[str] = []
    if not in_scope:
        shared.append(MOVED)
    if last is None:
        shared.append(NEVER_COMPLETE)

    def box(rtype: str) -> BoxCompleteness:
        held = _held_back(conn, patient_id, rtype)
        reasons = (*shared, HELD_BACK) if held else tuple(shared)
        return BoxCompleteness(not reasons, reasons, held)

    return Completeness(site, in_scope, last, box(ALERT_TYPE), box(ALLERGY_TYPE))


def not_available_lines(
    completeness: Completeness,
    box: BoxCompleteness,
    what: str,
    format_moment: Callable[[datetime], str],
) -> list[str]:
    """The sentences a safety box shows instead of "none recorded" when ``box`` is incomplete
    (``what``: "alerts" or "allergy records"). Empty when the box is complete."""
    if box.complete:
        return []
    when = (
        f"last complete on {format_moment(completeness.last_complete)}"
        if completeness.last_complete is not None
        else "never complete on this laptop"
    )
    lines = [f"Not available on this laptop — {when}."]
    if MOVED in box.reasons:
        lines.append(
            f"This patient is now at {completeness.site}; this laptop no longer receives their "
            "record."
            if completeness.site
            else "This patient is no longer at a site this laptop covers."
        )
    if NEVER_COMPLETE in box.reasons and MOVED not in box.reasons:
        lines.append("No sync has finished since this record arrived: sync to get all of it.")
    if HELD_BACK in box.reasons:
        lines.append(
            f"{box.held_back} of their {what} could not be read and "
            f"{'is' if box.held_back == 1 else 'are'} held back for IT."
        )
    lines.append("Ask the patient and check the main record before relying on this.")
    return lines
