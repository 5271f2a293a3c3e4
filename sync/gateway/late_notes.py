"""Notes for a patient who has left the device's site: filed when they were written in time.

A clinician writes a consultation offline at site A; before the laptop syncs, the patient is
transferred to site B. The note belongs in the patient's record (now at B), so the gateway
files it there — but only when the device could have written it legitimately.

Invariants:
- ``admit`` is pure (no I/O, no clock): it decides from the patient's site stays, the device's
  verified break-glass uses and the resource itself.
- A clinical resource for a patient now managed elsewhere is admitted when its clinical time
  (``clinical_moment``: Encounter.period, Observation.effective[x], DocumentReference.context
  .period or date, …) falls inside a stay of the patient at the device's site, or inside a
  break-glass grant of this device to this patient (from the grant's audit entry, at most
  ``MAX_GRANT`` long, and — when the resource names its authors — to one of them).
- A resource with no readable clinical time, or a date without a time, is never admitted:
  it cannot be placed in a stay.
- Without a covering grant, the answer for a patient who was NEVER at the device's site is
  ``unknown_patient``, the same as for no patient at all (a device learns nothing about other
  sites); only a patient who was at the device's site may be refused as
  ``patient_left_site``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sync.gateway.store.base import BreakGlassUse, SiteStay
from sync.protocol.fhir import vocabulary as vocab

# The longest break-glass grant a policy can give (``session.break_glass_minutes`` ≤ 240): a
# grant's own ``expires_at`` is trusted only up to this.
MAX_GRANT: Final = dt.timedelta(minutes=240)
# When the grant's audit entry states no expiry: the policy's default grant.
DEFAULT_GRANT: Final = dt.timedelta(minutes=15)

ADMITTED: Final = "admitted"
LEFT_SITE: Final = "patient_left_site"
UNKNOWN_PATIENT: Final = "unknown_patient"


@dataclass(frozen=True)
class Admission:
    """``reason``: ``admitted``, ``patient_left_site`` or ``unknown_patient``; ``left_at``: when
    the patient's last stay at the device's site ended (for a refusal)."""

    reason: str
    left_at: dt.datetime | None = None

    @property
    def admitted(self) -> bool:
        return self.reason == ADMITTED


def _instant(value: Any) -> dt.datetime | None:
    """A FHIR dateTime/instant with a time and a zone, else None (a bare date is a whole day)."""
    if not isinstance(value, str) or len(value) <= 10:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _path(resource: dict[str, Any], *keys: str) -> Any:
    node: Any = resource
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


# Where each clinical type keeps the time it is about, first found wins.
_MOMENT_PATHS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "Encounter": (("period", "start"), ("period", "end")),
    "Observation": (("effectiveDateTime",), ("effectiveInstant",), ("effectivePeriod", "start")),
    "DocumentReference": (("context", "period", "start"), ("date",)),
    "Condition": (("recordedDate",), ("onsetDateTime",)),
    "AllergyIntolerance": (("recordedDate",), ("onsetDateTime",)),
    "MedicationStatement": (
        ("dateAsserted",),
        ("effectiveDateTime",),
        ("effectivePeriod", "start"),
    ),
    "Flag": (("period", "start"),),
}


def clinical_moment(resource: dict[str, Any]) -> dt.datetime | None:
    """When the care a resource records happened (None: not stated with a time)."""
    for path in _MOMENT_PATHS.get(str(resource.get("resourceType")), ()):
        moment = _instant(_path(resource, *path))
        if moment is not None:
            return moment
    return None


def _user_identifiers(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ident = item.get("identifier")
            if isinstance(ident, dict) and ident.get("system") == vocab.USER_SYSTEM:
                value = ident.get("value")
                if isinstance(value, str):
                    yield value
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def authors(resource: dict[str, Any]) -> frozenset[str]:
    """The Gatehouse user ids a resource names (participant, performer, author)."""
    return frozenset(_user_identifiers(resource))


def _granted(use: BreakGlassUse, moment: dt.datetime, named: frozenset[str]) -> bool:
    if named and use.user_id not in named:
        return False
    longest = use.at + MAX_GRANT
    expires = use.expires_at if use.expires_at is not None else use.at + DEFAULT_GRANT
    return use.at <= moment <= min(expires, longest)


def admit(
    resource: dict[str, Any],
    *,
    site: str,
    stays: Sequence[SiteStay],
    grants: Sequence[BreakGlassUse],
) -> Admission:
    """May a device of ``site`` write ``resource`` for a patient now managed elsewhere?"""
    moment = clinical_moment(resource)
    named = authors(resource)
    if moment is not None and any(_granted(use, moment, named) for use in grants):
        return Admission(ADMITTED)
    here = [stay for stay in stays if stay.site == site]
    if not here:
        return Admission(UNKNOWN_PATIENT)
    if moment is not None and any(stay.covers(moment) for stay in here):
        return Admission(ADMITTED)
    ends = [stay.end for stay in here if stay.end is not None]
    return Admission(LEFT_SITE, max(ends) if ends else None)
