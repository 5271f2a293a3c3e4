"""Notes the gateway refused: which patient, why, and what to do — in words a clinician can act on.

Guarantees:
- ``refused_notes`` only reads: it groups the pending outbox entries that carry a push error
  (``last_error``, a code such as ``http_403:patient_left_site``) by patient and reason, and
  counts notes as consultations (outbox groups), not as FHIR resources.
- Every ``Refusal`` has one plain sentence (``sentence``: who and why) and what to do
  (``todo``), never "sync again" for a refusal a sync cannot fix; reason codes stay in
  ``code`` (for ``--json`` and tests), never in the sentence (UI-4).
- Nothing here logs: the sentences hold a patient's name and are shown only on the clinician's
  own screen.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final

LEFT_SITE: Final = "patient_left_site"
UNKNOWN_PATIENT: Final = "unknown_patient"
NO_IF_MATCH: Final = "no_if_match"  # held on the laptop: the server cannot check an edit's base
MAX_LISTED: Final = 20  # refusals named one by one; the rest are counted

_WHY: Final = {
    LEFT_SITE: "written after the patient left {site}",
    UNKNOWN_PATIENT: "the gateway does not hold this patient for {site}",
}
# Work this laptop holds back itself (never sent), said as held, not as refused.
_HELD_WHY: Final = {
    NO_IF_MATCH: "the records server cannot check that no one else changed the record first, "
    "so it was not sent rather than risk overwriting someone else's change",
}
_TODO: Final = {
    LEFT_SITE: (
        "The note is kept on this laptop, but syncing again will not send it. Call your site's "
        "clinical lead or IT so it can be added to the patient's record at their new prison."
    ),
    UNKNOWN_PATIENT: (
        "The note is kept on this laptop, but syncing again will not send it. Call IT to "
        "check the patient's record on the gateway."
    ),
    NO_IF_MATCH: (
        "The change is kept on this laptop and is sent once the records server can check for "
        "conflicting edits. Call IT: the server's settings need checking."
    ),
}
_TODO_OTHER: Final = (
    "The note is kept on this laptop and is tried again at each sync. If it is refused again, "
    "call IT and quote the code shown in the sync details."
)


@dataclass(frozen=True)
class Refusal:
    """``notes`` consultations for one patient refused for one reason."""

    patient_id: str | None
    patient_name: str
    notes: int
    items: int  # outbox entries (an Encounter, its observations, its note)
    code: str  # the stored push error code, e.g. http_403:patient_left_site
    sentence: str
    todo: str

    @property
    def retry_helps(self) -> bool:
        """False when the gateway gave a reason another sync cannot change."""
        return reason_of(self.code) not in _TODO


def reason_of(code: str) -> str:
    """The server's reason in a push error code (``http_403:patient_left_site`` → the part
    after the colon), else the code itself."""
    return code.partition(":")[2] or code


def site_display(site: str) -> str:
    """A site code as people say it: ``hmp-brixton`` → ``HMP Brixton``."""
    words = [w for w in site.split("-") if w]
    if words and words[0] == "hmp":
        return " ".join(["HMP", *(w.capitalize() for w in words[1:])])
    return " ".join(w.capitalize() for w in words) or "your site"


def describe(patient_name: str, notes: int, code: str, site: str) -> tuple[str, str]:
    """The sentence and what to do for ``notes`` refused notes of one patient."""
    reason = reason_of(code)
    what = "1 note" if notes == 1 else f"{notes} notes"
    if reason in _HELD_WHY:
        verb = "is" if notes == 1 else "are"
        held = f"{what[0].upper()}{what[1:]} for {patient_name} {verb} held on this laptop"
        return f"{held}: {_HELD_WHY[reason]}.", _TODO[reason]
    why = _WHY.get(reason, "the gateway did not accept it ({code})").format(
        site=site_display(site), code=code
    )
    return f"The gateway refused {what} for {patient_name}: {why}.", _TODO.get(reason, _TODO_OTHER)


def refused_notes(conn: sqlite3.Connection, site: str) -> tuple[Refusal, ...]:
    """Pending work the gateway refused, by patient and reason, oldest first."""
    rows = conn.execute(
        "SELECT o.patient_id, o.last_error, count(DISTINCT o.group_id), count(*),"
        " p.display_name"
        " FROM outbox o LEFT JOIN patient_index p ON p.patient_id = o.patient_id"
        " WHERE o.state = 'pending' AND o.last_error IS NOT NULL"
        " GROUP BY o.patient_id, o.last_error ORDER BY min(o.seq) LIMIT ?",
        (MAX_LISTED,),
    ).fetchall()
    refusals: list[Refusal] = []
    for patient_id, code, notes, items, name in rows:
        shown = name or "a patient no longer on this laptop"
        sentence, todo = describe(shown, int(notes), str(code), site)
        refusals.append(
            Refusal(patient_id, shown, int(notes), int(items), str(code), sentence, todo)
        )
    return tuple(refusals)
